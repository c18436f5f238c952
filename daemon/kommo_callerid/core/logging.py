"""One structlog processor chain for the daemon's own lines and for the stdlib records of
panoramisk and aiohttp: JSON lines on stdout (or a console view on a terminal).

Per-call fields (``call_id``, ``caller``) come from structlog's contextvars, bound by the
daemon around everything it does for one call. With ``mask_numbers`` the caller's number is
shortened in every line. As a last guard, every line is scrubbed of known secret values (the
config's, and the OAuth tokens learnt at run time through :meth:`SecretScrubber.remember`)
and of anything shaped like a bearer token or JWT; and control characters from the outside
(a ``CallerIDName`` with ESC) are escaped and long values capped before any renderer sees them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections import deque
from collections.abc import Iterable
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from kommo_callerid.core.config import LogConfig

#: Fields that carry a phone number and are masked when ``mask_numbers`` is on.
NUMBER_FIELDS = ("caller", "number", "phone_number")
#: Libraries that are chatty at INFO; they log at WARNING unless the level is debug.
QUIET_LIBRARIES = ("panoramisk", "aiohttp.access")
#: Fields that carry a name from the outside (a caller ID, a CRM record) and how long they get.
NAME_FIELDS = ("name", "caller_name")
NAME_CHARS = 80
#: Any other text field longer than this is cut (a traceback is left whole).
VALUE_CHARS = 2000
SCRUBBED = "**********"
#: How many run-time secrets (rotated OAuth tokens) are remembered; older ones are dead.
LIVE_SECRETS = 8
#: Token shapes scrubbed whoever's they are: a JWT (Kommo's access tokens), a Kommo refresh
#: token, whatever follows "Bearer".
_TOKEN_SHAPES = (
    r"eyJ[A-Za-z0-9_-]{6,}\.eyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]*",
    r"def50200[0-9a-f]{32,}",
    r"(?i:(?<=bearer )[A-Za-z0-9._~+/=-]{8,})",
)
#: A line is searched with the shapes only when it holds one of these (plain ``in`` is cheap).
_SHAPE_HINTS = ("eyJ", "def50200", "earer ", "EARER ")
#: C0/C1 controls and the invisible format characters that reorder or hide text.
_CONTROLS = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]"
)
#: The same, but a traceback keeps its tabs and line breaks.
_TRACEBACK_CONTROLS = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]"
)
#: What json.dumps leaves raw of those (it escapes C0 itself; its indent is real newlines).
_JSON_RAW_CONTROLS = re.compile(
    r"[\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]"
)


def mask_number(number: str) -> str:
    """``+18305803077`` -> ``+1830***3077``: enough to recognise, not enough to dial."""
    if len(number) <= 6:
        return "***"
    head = 5 if len(number) > 9 else 2
    return f"{number[:head]}***{number[-4:]}"


def _mask_numbers(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in NUMBER_FIELDS:
        value = event_dict.get(key)
        if isinstance(value, str) and value:
            event_dict[key] = mask_number(value)
    return event_dict


class SecretScrubber:
    """Replaces any secret that reached a log line (it never should): the known values, and
    anything shaped like a token.

    One regex search over all string fields at once keeps the common case (no secret) cheap.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._fixed = frozenset(s for s in secrets if len(s) >= 4)
        self._live: deque[str] = deque(maxlen=LIVE_SECRETS)
        self._compile()

    def remember(self, secret: str) -> None:
        """A secret learnt at run time (a rotated OAuth token): scrubbed from now on."""
        if len(secret) >= 4 and secret not in self._fixed and secret not in self._live:
            self._live.append(secret)
            self._compile()

    def _compile(self) -> None:
        known = sorted({*self._fixed, *self._live}, key=len, reverse=True)
        self._hints = (*known, *_SHAPE_HINTS)
        self._pattern = re.compile("|".join([*map(re.escape, known), *_TOKEN_SHAPES]))

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        text = "\0".join([value for value in event_dict.values() if isinstance(value, str)])
        # substring tests first: a regex alternation tried at every position costs far more
        for hint in self._hints:
            if hint in text:
                break
        else:
            return event_dict
        pattern = self._pattern
        for key, value in event_dict.items():
            if isinstance(value, str):
                event_dict[key] = pattern.sub(SCRUBBED, value)
        return event_dict


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``"Eve\x1b[2J"`` -> ``"Eve\\x1b[2J"``: safe to print on a terminal."""
    return _CONTROLS.sub(_escape, text)


def json_for_terminal(value: object, indent: int | None = None) -> str:
    """JSON as a command prints it: letters stay readable (``ensure_ascii=False``), but the
    controls json leaves raw (C1, bidi overrides, zero-width marks) become ``\\uXXXX``
    escapes, so a hostile contact name cannot rewrite the operator's terminal. The text
    decodes to the same value."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    return _JSON_RAW_CONTROLS.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def _clean(key: str, value: str) -> str:
    if key == "exception":  # a traceback keeps its lines
        return _TRACEBACK_CONTROLS.sub(_escape, value)
    limit = NAME_CHARS if key in NAME_FIELDS else VALUE_CHARS
    if len(value) > limit:
        value = value[: limit - 1] + "\u2026"
    return _CONTROLS.sub(_escape, value)


def _neutralise_text(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Escape control characters and cap long values in every text field (one level of
    lists too), so no renderer writes an ESC from a caller ID to a terminal."""
    for value in event_dict.values():  # the common line has nothing to escape or cut
        if isinstance(value, str):
            if len(value) > NAME_CHARS or not value.isprintable():
                break
        elif isinstance(value, list | tuple):
            break
    else:
        return event_dict
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = _clean(key, value)
        elif isinstance(value, list | tuple) and any(isinstance(v, str) for v in value):
            event_dict[key] = [_clean(key, v) if isinstance(v, str) else v for v in value]
    return event_dict


class _SafeWriteLogger(structlog.WriteLogger):
    """Writes a rendered line; a closed or broken stdout must never stop the daemon."""

    def msg(self, message: str) -> None:
        # as the stdlib handlers do: losing a log line beats losing the process
        with contextlib.suppress(OSError, ValueError):
            super().msg(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _drop_stdlib_noise(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("_from_structlog", None)
    event_dict.pop("_record", None)
    return event_dict


def _renderer(fmt: str, stream: TextIO) -> Processor:
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=stream.isatty())
    return structlog.processors.JSONRenderer()


def configure_logging(
    config: LogConfig,
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    scrubber: SecretScrubber | None = None,
) -> SecretScrubber:
    """Install the chain for structlog and the stdlib root logger (idempotent); returns the
    scrubber, so the OAuth tokens learnt later can be added to it (pass it back in to keep
    them when the chain is installed again, e.g. after a reload).

    The daemon's own lines take structlog's native path (a filtering bound logger writing
    straight to the stream: a few microseconds a line, next to nothing for a filtered debug
    line); the stdlib records of panoramisk and aiohttp go through the same processors via
    ``ProcessorFormatter``, so every line looks alike.
    """
    stream = stream or sys.stdout
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if config.mask_numbers:
        shared.append(_mask_numbers)
    scrubber = scrubber or SecretScrubber(secrets)
    shared.extend([scrubber, _neutralise_text])
    level = getattr(logging, config.level.upper())
    renderer = _renderer(config.format, stream)
    structlog.configure(
        processors=[*shared, renderer],
        logger_factory=lambda *_: _SafeWriteLogger(stream),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared[:1], structlog.stdlib.add_logger_name, *shared[1:]],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _drop_stdlib_noise,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    return scrubber
