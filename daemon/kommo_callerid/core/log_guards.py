"""What a log line must never carry, checked in one pass over its fields: a caller's whole
number (with ``mask_numbers``), a secret (the config's, the OAuth tokens learnt at run time,
anything shaped like a bearer token or JWT), a control character from the outside (a
``CallerIDName`` with ESC) or a value long enough to flood the journal.

The common line has none of these, and :class:`LineGuard` proves that with a few C-level
string operations on its joined text; only a line that may hold something takes the slow,
per-field path (regex substitution, escaping, caps).
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Iterable

from structlog.typing import EventDict, WrappedLogger

#: Fields that carry a phone number and are masked when ``mask_numbers`` is on.
NUMBER_FIELDS = ("caller", "number", "phone_number")
#: Fields that carry a name from the outside (a caller ID, a CRM record) and how long they get.
NAME_FIELDS = ("name", "caller_name")
NAME_CHARS = 80
#: Any other text field longer than this is cut (a traceback is left whole).
VALUE_CHARS = 2000
SCRUBBED = "**********"
#: How many run-time secrets (rotated OAuth tokens) are remembered; older ones are dead.
LIVE_SECRETS = 8
#: Token shapes scrubbed whoever's they are: a JWT (Kommo's access tokens), a Kommo refresh
#: token, whatever follows "Bearer" (in any case: HTTP auth schemes are case-insensitive).
_TOKEN_SHAPES = (
    r"eyJ[A-Za-z0-9_-]{6,}\.eyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]*",
    r"def50200[0-9a-f]{32,}",
    r"(?i:(?<=bearer )[A-Za-z0-9._~+/=-]{8,})",
)
#: A line is searched with the shapes only when its case-folded text holds one of these.
_SHAPE_HINTS = ("eyj", "def50200", "bearer ")
#: Joins a line's text fields for the one-pass checks. Printable, so the joined text is
#: printable exactly when every field is; a hint it makes up across two fields only sends the
#: line down the slow path, which looks at each field alone.
_JOIN = " "
_SEQUENCES = (list, tuple)
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


def mask_numbers(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in NUMBER_FIELDS:
        value = event_dict.get(key)
        if isinstance(value, str) and value:
            event_dict[key] = mask_number(value)
    return event_dict


class SecretScrubber:
    """Replaces any secret that reached a log line (it never should): the known values, and
    anything shaped like a token.

    Substring tests on the case-folded text of the whole line keep the common case (no
    secret) cheap: a regex alternation tried at every position costs far more. Case folding
    maps each character alone, so a value holding a secret folds to text holding the folded
    secret: a hint can be a false alarm, never a miss.
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
        self._pattern = re.compile("|".join([*map(re.escape, known), *_TOKEN_SHAPES]))
        hints = list(_SHAPE_HINTS)
        for secret in map(str.casefold, known):
            # a JWT or a refresh token holds a shape's hint already: one test covers them all
            if not any(hint in secret for hint in hints):
                hints.append(secret)
        self._hints = tuple(hints)

    def may_hold(self, text: str) -> bool:
        """False only when ``text`` holds no secret and nothing shaped like a token."""
        folded = text.casefold()
        for hint in self._hints:  # noqa: SIM110 (any() builds a generator for every line)
            if hint in folded:
                return True
        return False

    def scrub(self, event_dict: EventDict) -> EventDict:
        """The slow path: every text field (and the text in a list) searched alone."""
        sub = self._pattern.sub
        return each_text(event_dict, lambda _key, value: sub(SCRUBBED, value))

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        if self.may_hold(_JOIN.join(_texts(event_dict))):
            self.scrub(event_dict)
        return event_dict


def _texts(event_dict: EventDict) -> list[str]:
    """The line's text: its text fields and the text in its lists."""
    texts = []
    for value in event_dict.values():
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, _SEQUENCES):
            texts.extend(v for v in value if isinstance(v, str))
    return texts


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


def neutralise(event_dict: EventDict) -> EventDict:
    """The slow path: escape control characters and cap long values in every text field
    (one level of lists too), so no renderer writes an ESC from a caller ID to a terminal."""
    return each_text(event_dict, _clean)


def each_text(event_dict: EventDict, change: Callable[[str, str], str]) -> EventDict:
    """``change(key, text)`` applied to every text field, and to the text in a list field."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = change(key, value)
        elif isinstance(value, _SEQUENCES) and any(isinstance(v, str) for v in value):
            event_dict[key] = [change(key, v) if isinstance(v, str) else v for v in value]
    return event_dict


def neutralise_text(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """:func:`neutralise` as a processor, skipped when no field needs it."""
    for value in event_dict.values():  # the common line has nothing to escape or cut
        if isinstance(value, str):
            if len(value) > NAME_CHARS or not value.isprintable():
                return neutralise(event_dict)
        elif isinstance(value, _SEQUENCES):
            return neutralise(event_dict)
    return event_dict


class LineGuard:
    """Masking, scrubbing, escaping and caps as one processor: the same result as
    ``mask_numbers``, ``scrubber`` and ``neutralise_text`` in a row, at a fraction of the
    cost for a line that needs none of them.

    The fast path joins the text fields once and asks of that one string: any hint of a
    secret? any character that is not printable? any field longer than a name may be? A
    line with text in a list takes the slow path whole (rare, and a list may hide anything).
    """

    def __init__(self, scrubber: SecretScrubber, *, mask: bool) -> None:
        self._scrubber = scrubber
        self._mask = mask

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        if self._mask:
            mask_numbers(_, __, event_dict)
        texts = []
        for value in event_dict.values():
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, _SEQUENCES):
                for item in value:  # a list of numbers (users) needs nothing
                    if isinstance(item, str):
                        return neutralise_text(_, __, self._scrubber(_, __, event_dict))
        text = _JOIN.join(texts)
        if self._scrubber.may_hold(text):
            return neutralise_text(_, __, self._scrubber.scrub(event_dict))
        if not text.isprintable() or max(map(len, texts), default=0) > NAME_CHARS:
            return neutralise(event_dict)
        return event_dict
