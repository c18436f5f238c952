"""Typed values that cross module boundaries.

Raw panoramisk messages stay in the ``ami/`` room and raw Kommo JSON in the
``kommo/`` room; everything else in the daemon speaks these types.

Size: every type that crosses rooms, in one place to look them up.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from enum import IntEnum, StrEnum


class ChannelEventKind(StrEnum):
    """The AMI events the daemon uses (the names Asterisk sends, case-sensitive)."""

    NEWCHANNEL = "Newchannel"
    NEWCALLERID = "NewCallerid"
    HANGUP = "Hangup"
    #: A Dial ended (``DialStatus``: ANSWER, BUSY, NOANSWER, CANCEL, CONGESTION, CHANUNAVAIL).
    DIAL_END = "DialEnd"
    #: A channel joined / left a bridge: who talks with whom (the call outcome tracker).
    BRIDGE_ENTER = "BridgeEnter"
    BRIDGE_LEAVE = "BridgeLeave"
    #: AMI 1.x (Asterisk 11 and older) ``Event: Dial`` with ``SubEvent: Begin``, the only tie
    #: between a dialled channel and its caller there (no Linkedid): it arrives as a
    #: ChannelEvent of the dialled channel (``Destination``, ``DestUniqueID``) whose
    #: ``linkedid`` is the dialling channel's ``UniqueID``.
    DIAL_LEGACY = "Dial"
    #: Not from Asterisk: the supervisor's marker that the AMI link was lost (a gap).
    LINK_LOST = "LinkLost"
    #: A channel up when a session began, from ``CoreShowChannels`` (its ``CoreShowChannel``
    #: item): not a new channel, so nothing is notified for it; ``age`` says how old it is.
    CHANNEL_UP = "CoreShowChannel"
    #: Not from Asterisk: every channel up was sent as CHANNEL_UP (the list is complete).
    CHANNELS_LISTED = "ChannelsListed"
    #: Not from Asterisk: after a gap no channel list came (refused, unanswered, AMI 1.x).
    CHANNELS_UNKNOWN = "ChannelsUnknown"
    #: A ``VarSet`` of ``MIXMONITOR_FILENAME`` only (an AMI user with ``read = dialplan``):
    #: the file MixMonitor writes for the channel, in ``recording_file``. ``ami/`` drops
    #: every other VarSet.
    RECORDING_FILE = "VarSet"


@dataclass(frozen=True, slots=True)
class ChannelEvent:
    """One channel event from Asterisk, reduced to the fields call detection and the outcome
    tracker need."""

    kind: ChannelEventKind
    channel: str
    uniqueid: str
    #: The call's id. Asterisk before 13.5 sends none: then it equals ``uniqueid``.
    linkedid: str
    caller_num: str
    caller_name: str
    context: str
    exten: str
    #: ``loop.time()`` when the event was parsed: the call's clock starts here.
    received_at: float
    # Outcome fields (the call journal); empty unless the event carries them.
    #: DialEnd: the dialled channel and its Uniqueid (the dialling side is ``channel``).
    dest_channel: str = ""
    dest_uniqueid: str = ""
    #: DialEnd: ``DialStatus``.
    dial_status: str = ""
    #: Hangup: the Q.850 ``Cause`` (16 normal, 17 busy, ...); 0 when absent.
    cause: int = 0
    #: BridgeEnter / BridgeLeave: ``BridgeUniqueid``.
    bridge_id: str = ""
    #: The PBX it came from (its ``[ami.NAME]``); "" for the one unnamed ``[ami]``.
    pbx: str = ""
    #: False when Asterisk sent no Linkedid (AMI 1.x): ``linkedid`` is then a guess, and the
    #: call's outcome cannot be followed.
    has_linkedid: bool = True
    #: CHANNEL_UP: seconds the channel had existed when listed (``Duration``).
    age: float = 0.0
    #: RECORDING_FILE: the file MixMonitor writes (as Asterisk names it, usually absolute).
    recording_file: str = ""

    @classmethod
    def link_lost(cls, at: float, pbx: str = "") -> ChannelEvent:
        return cls.marker(ChannelEventKind.LINK_LOST, at, pbx)

    @classmethod
    def marker(cls, kind: ChannelEventKind, at: float, pbx: str = "") -> ChannelEvent:
        """A marker that is no channel's event (LINK_LOST, CHANNELS_LISTED, ...)."""
        return cls(kind, "", "", "", "", "", "", "", at, pbx=pbx)


@dataclass(frozen=True, slots=True)
class AmiSessionInfo:
    """What a successful AMI login tells us."""

    host: str
    port: int
    ami_version: str


class EntityType(StrEnum):
    CONTACT = "contact"
    LEAD = "lead"
    COMPANY = "company"
    CUSTOMER = "customer"


@dataclass(frozen=True, slots=True)
class Entity:
    """A Kommo record a phone number belongs to."""

    type: EntityType
    id: int
    name: str
    responsible_user_id: int | None


@dataclass(frozen=True, slots=True)
class LookupResult:
    """The answer to "who is calling?"; ``entity`` is None for an unknown number."""

    number: str
    entity: Entity | None
    #: For a lead or customer: the contact or company that carries the phone number.
    phone_entity: Entity | None
    #: Which API answered: "by_phone" or "contacts".
    source: str
    cached: bool
    ms: float

    @property
    def responsible_user_id(self) -> int | None:
        return self.entity.responsible_user_id if self.entity else None


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """Who the Kommo token belongs to (GET /api/v4/account)."""

    id: int
    name: str
    subdomain: str


class KommoError(Exception):
    """A Kommo request that did not give a usable answer (already logged as kommo.error)."""

    def __init__(self, status: int | None, endpoint: str, detail: str) -> None:
        super().__init__(f"{endpoint}: {status} {detail}")
        self.status = status
        self.endpoint = endpoint
        self.detail = detail


class KommoAuthError(KommoError):
    """Kommo will not accept our credentials until a human acts (retrying cannot help)."""


class DeadlineReached(KommoError):
    """Retries ran out of time (the call's ``notify_ttl``); carries the last failure."""

    def __init__(self, status: int | None, endpoint: str, detail: str, attempts: int) -> None:
        super().__init__(status, endpoint, detail)
        self.attempts = attempts


class NotifyOutcome(StrEnum):
    SENT = "sent"
    #: Not delivered while the call could still use it (``kommo.notify_dropped`` reason ttl).
    DROPPED_TTL = "ttl"
    #: Kommo refused it (4xx) or the credentials are unusable (reason rejected).
    REJECTED = "rejected"


class AmiLoginError(Exception):
    """Asterisk refused the login (wrong username or secret); carries the server's message."""


class AmiConnectionError(Exception):
    """The AMI link could not be opened or was lost before the login finished."""


class AmiActionRefused(Exception):
    """Asterisk answered an action with an error (usually a missing write class)."""


#: Upper bounds (seconds) of the latency histograms: from a cache hit to a slow Kommo.
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class LatencyHistogram:
    """A fixed-bucket histogram of seconds: cheap to observe, read by /metrics at scrape time.

    Kept dependency-free so the modules that observe latencies need no metrics library.
    """

    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        #: Observations per bucket (not cumulative); the last slot is +Inf.
        self.counts = [0] * (len(buckets) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # The first bound at or above ``seconds``; past the last bound: the +Inf slot.
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) pairs ending with (+inf, count)."""
        pairs, running = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            pairs.append((bound, running))
        return pairs


@dataclass(slots=True)
class AmiCounters:
    received: int = 0  # events of a ChannelEventKind read from Asterisk
    delivered: int = 0  # put on the queue
    dropped: int = 0  # lost because the queue was full
    invalid: int = 0  # unusable (no Uniqueid) or failed to convert
    oversized: int = 0  # messages longer than MAX_MESSAGE_BYTES, skipped to the next blank line
    garbage: int = 0  # messages with neither an Event nor a Response header
    ignored: int = 0  # other events, dropped unparsed (cheap: most of a read=all user's stream)


class CallDirection(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class CallStatus(IntEnum):
    """Kommo's ``call_status`` codes for a finished call (``POST /api/v4/calls``)."""

    ANSWERED = 4
    INVALID_NUMBER = 5  # congestion, channel unavailable
    NO_ANSWER = 6  # missed: nobody answered, or the caller gave up
    BUSY = 7  # every dialled leg busy


@dataclass(frozen=True, slots=True)
class FinishedCall:
    """One ended call (every channel of its Linkedid hung up), as the call journal records it.

    Made by the pure outcome tracker in ``calls/``; written to the outbox by ``journal/``.
    """

    #: ``NAME/LINKEDID`` with several PBXs, else the Linkedid; Kommo's ``uniq``.
    call_id: str
    #: The PBX's name; "" for the one unnamed ``[ami]``.
    pbx: str
    linkedid: str
    #: The root channel's Uniqueid.
    uniqueid: str
    direction: CallDirection
    #: The caller's number (inbound) or the dialled number (outbound), normalised.
    phone: str
    #: Unix time of the call's start (the root channel's Newchannel).
    started_at: float
    #: Whole seconds from the first answer to the call's end; 0 if never answered.
    duration: int
    status: CallStatus
    #: The extension that answered first (not a Local half); None when unanswered.
    answered_by: str | None
    #: Outbound: the calling extension. Inbound: None.
    extension: str | None
    #: Inbound: the dialled number (the inbound channel's Exten). Outbound: None.
    did: str | None
    #: ``call_result``: a short human line (who answered and transfers, or why missed).
    result: str
    #: A click-to-call: the Kommo user who clicked (the record's responsible user).
    user_id: int | None = None
    #: The Uniqueids of the call's channels, most likely to name its recording first (the
    #: one that set ``MIXMONITOR_FILENAME``, the root, the bridged ones, the others in order
    #: of birth), at most :data:`MAX_CALL_UNIQUEIDS`: FreePBX names a file by the Uniqueid
    #: of the channel that ran MixMonitor (an agent's leg of a queue call, the caller's).
    uniqueids: tuple[str, ...] = ()
    #: The file MixMonitor wrote for the call, when Asterisk said (``MIXMONITOR_FILENAME``).
    recording_file: str = ""


#: Uniqueids kept per call for finding its recording: a queue ringing a big team makes
#: three channels per agent, but the file's channel is the root or one that was bridged.
MAX_CALL_UNIQUEIDS = 16


@dataclass(frozen=True, slots=True)
class JournalCall:
    """One finished call as Kommo's ``POST /api/v4/calls`` takes it: built by ``journal/``
    from a :class:`FinishedCall` and the configuration, sent by ``kommo/``."""

    #: The call id (Kommo's ``uniq``).
    uniq: str
    direction: CallDirection
    phone: str
    duration: int
    status: CallStatus
    result: str
    #: ``responsible_user_id`` and ``created_by``; None: Kommo picks.
    responsible_user_id: int | None
    #: Unix time of the call's start.
    created_at: int
    #: The recording's URL, or "".
    link: str
    source: str


class JournalVerdict(StrEnum):
    """What Kommo made of one journal request."""

    ATTACHED = "attached"  # the call is in an entity's timeline
    UNKNOWN = "unknown"  # no contact or company has this number
    REJECTED = "rejected"  # Kommo refused it; sending it again will not help
    RETRY = "retry"  # no usable answer (outage, 5xx, 429, token): try again later


@dataclass(frozen=True, slots=True)
class JournalAnswer:
    """Kommo's answer for one :class:`JournalCall` (or one follow-up request)."""

    uniq: str
    verdict: JournalVerdict
    entity_type: EntityType | None = None
    entity_id: int | None = None
    #: The attached entity's responsible user, when Kommo says.
    responsible_user_id: int | None = None
    #: Kommo's words for a refusal or failure.
    detail: str = ""
    #: The HTTP status, None when no answer came.
    status: int | None = None


@dataclass(frozen=True, slots=True)
class CallbackTask:
    """A call-back task after a missed call (``POST /api/v4/tasks``, task type 1 = call)."""

    uniq: str
    entity_type: EntityType
    entity_id: int
    responsible_user_id: int | None
    #: Unix time of the deadline.
    complete_till: int
    text: str
