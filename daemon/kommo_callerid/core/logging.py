"""One structlog processor chain for the daemon's own lines and for the stdlib records of
panoramisk and aiohttp: JSON lines on stdout (or a console view on a terminal).

Per-call fields (``call_id``, ``caller``) come from structlog's contextvars, bound by the
daemon around everything it does for one call. With ``mask_numbers`` the caller's number is
shortened in every line. As a last guard, every line is scrubbed of known secret values (the
config's, and the OAuth tokens learnt at run time through :meth:`SecretScrubber.remember`)
and of anything shaped like a bearer token or JWT; and control characters from the outside
(a ``CallerIDName`` with ESC) are escaped and long values capped before any renderer sees them
(:mod:`kommo_callerid.core.log_guards`).

A line is logged on the hot path of a call (about 13 per inbound call), so the chain is two
processors, not eight: :class:`_LineHead` does what structlog's ``merge_contextvars``,
``add_log_level``, ``TimeStamper`` and ``format_exc_info`` and the guards did, in one pass and
with the date formatted once a second; the JSON renderer reuses one encoder. What a line says
is unchanged, key for key.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

import structlog
from structlog.contextvars import STRUCTLOG_KEY_PREFIX
from structlog.typing import EventDict, Processor, WrappedLogger

from kommo_callerid.core.config import LogConfig
from kommo_callerid.core.log_guards import (
    LIVE_SECRETS,
    NAME_CHARS,
    NAME_FIELDS,
    NUMBER_FIELDS,
    SCRUBBED,
    VALUE_CHARS,
    LineGuard,
    SecretScrubber,
    escape_controls,
    json_for_terminal,
    mask_number,
)

__all__ = [
    "LIVE_SECRETS",
    "NAME_CHARS",
    "NAME_FIELDS",
    "NUMBER_FIELDS",
    "QUIET_LIBRARIES",
    "SCRUBBED",
    "VALUE_CHARS",
    "SecretScrubber",
    "UtcStamp",
    "configure_logging",
    "escape_controls",
    "json_for_terminal",
    "mask_number",
]

#: Libraries that are chatty at INFO; they log at WARNING unless the level is debug.
QUIET_LIBRARIES = ("panoramisk", "aiohttp.access")
#: As structlog's ``add_log_level`` names a method's level (``warn`` is the stdlib's alias).
_LEVEL_NAMES = {"warn": "warning", "exception": "error"}
_CONTEXT_KEY = len(STRUCTLOG_KEY_PREFIX)


class UtcStamp:
    """The timestamp structlog's ``TimeStamper(fmt="iso", utc=True)`` writes
    (``2026-12-01T15:00:00.123456Z``; a whole second has no fraction, as ``isoformat``),
    with the date and time of day formatted once a second instead of once a line."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        # one tuple, replaced whole: a thread never pairs one second with another's text
        self._second: tuple[int, str] = (-1, "")

    def __call__(self) -> str:
        second, nanos = divmod(self._clock_ns(), 1_000_000_000)
        cached, prefix = self._second
        if second != cached:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, prefix)
        micros = nanos // 1000
        return f"{prefix}.{micros:06d}Z" if micros else f"{prefix}Z"


class _LineHead:
    """structlog's ``merge_contextvars``, ``add_log_level``, ``TimeStamper`` and
    ``format_exc_info``, then the guards, as one processor (the same keys in the same order)."""

    def __init__(self, guard: LineGuard, stamp: UtcStamp, *, merge: bool) -> None:
        self._guard = guard
        self._stamp = stamp
        self._merge = merge

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        if self._merge:
            for var, value in contextvars.copy_context().items():
                name = var.name
                if name.startswith(STRUCTLOG_KEY_PREFIX) and value is not Ellipsis:
                    event_dict.setdefault(name[_CONTEXT_KEY:], value)
        event_dict["level"] = _LEVEL_NAMES.get(method, method)
        event_dict["timestamp"] = self._stamp()
        if "exc_info" in event_dict:
            structlog.processors.format_exc_info(logger, method, event_dict)
        return self._guard(logger, method, event_dict)


def _json_default(value: Any) -> Any:
    """As structlog's JSONRenderer: an object's ``__structlog__`` view, else its repr."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


class _JsonLine:
    """The text ``json.dumps(event_dict, default=...)`` gives, as structlog's JSONRenderer
    calls it, from one C encoder built once: ``dumps`` with ``default=`` builds a new
    encoder for every line, and ``JSONEncoder.encode`` a new C encoder for every call.

    The C encoder is made without the circular-reference check (a log line's values are
    never circular; one that was would raise RecursionError instead of ValueError).
    """

    def __init__(self) -> None:
        # the C encoder json.encoder uses itself (None without the accelerator)
        make = getattr(json.encoder, "c_make_encoder", None)
        if make is None:  # an interpreter without the C accelerator: the plain encoder
            self._encode: Callable[[object], str] = json.JSONEncoder(default=_json_default).encode
        else:
            chunks = make(
                None, _json_default, json.encoder.encode_basestring_ascii,
                None, ": ", ", ", False, False, True,
            )  # fmt: skip
            self._encode = lambda value: "".join(chunks(value, 0))

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> str:
        return self._encode(event_dict)


class _SafeWriteLogger(structlog.WriteLogger):
    """Writes a rendered line; a closed or broken stdout must never stop the daemon."""

    def msg(self, message: str) -> None:
        # as the stdlib handlers do: losing a log line beats losing the process
        try:
            with self._lock:
                self._write(message + "\n")
                self._flush()
        except (OSError, ValueError):
            pass

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
    return _JsonLine()


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
    ``ProcessorFormatter``, so every line looks alike. Loggers are not cached on first use
    (a reload or a test's ``capture_logs`` must reach the module-level loggers), so the
    one writer is shared rather than built for every line.
    """
    stream = stream or sys.stdout
    scrubber = scrubber or SecretScrubber(secrets)
    guard = LineGuard(scrubber, mask=config.mask_numbers)
    stamp = UtcStamp()
    level = getattr(logging, config.level.upper())
    renderer = _renderer(config.format, stream)
    writer = _SafeWriteLogger(stream)
    structlog.configure(
        # the renderer stays last and alone: the demo slips its view in just before it
        processors=[_LineHead(guard, stamp, merge=True), renderer],
        logger_factory=lambda *_: writer,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_logger_name,
            _LineHead(guard, stamp, merge=False),
        ],
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
