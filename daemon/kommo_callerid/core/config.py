"""Configuration schema: the sections of the contract's configuration and :class:`Config`.

Reading it (TOML file, ``KOMMO_CALLERID_<SECTION>__<KEY>`` env overrides, systemd credentials)
and turning mistakes into sentences lives in :mod:`kommo_callerid.core.config_load`; the extra
settings sources in :mod:`kommo_callerid.core.config_sources`; several PBXs
(``[ami.NAME]``) in :mod:`kommo_callerid.core.pbx_config`.

Size: every section of the contract's configuration in one schema, so a key is found in one file.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from redis.connection import parse_url

from kommo_callerid.core.config_sources import ENV_PREFIX, CommaListEnvSource, CredentialsSource

if TYPE_CHECKING:
    from kommo_callerid.core.pbx_config import PbxConfig

Seconds = float
# Upper bounds: every number has one, so a typo cannot mean "never" (inf is refused too).
MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
#: A Kommo user id (64-bit, positive).
UserId = Annotated[int, Field(ge=1, le=2**63 - 1)]


class _Section(BaseModel):
    # inf and nan are never a sane timeout, rate or size.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class AmiConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=5038, ge=1, le=65535)
    username: str = "kommo-callerid"
    secret: SecretStr
    tls: bool = False
    connect_timeout: Seconds = Field(default=10.0, gt=0, le=MINUTE * 5)
    ping_interval: Seconds = Field(default=10.0, gt=0, le=HOUR)
    ping_timeout: Seconds = Field(default=5.0, gt=0, le=MINUTE * 5)
    reconnect_min: Seconds = Field(default=0.5, gt=0, le=MINUTE * 5)
    reconnect_max: Seconds = Field(default=30.0, gt=0, le=HOUR)

    @model_validator(mode="after")
    def _backoff_order(self) -> AmiConfig:
        if self.reconnect_max < self.reconnect_min:
            raise ValueError("reconnect_max must not be smaller than reconnect_min")
        return self


class LookupMode(StrEnum):
    BY_PHONE = "by_phone"
    CONTACTS = "contacts"
    AUTO = "auto"


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class KommoConfig(_Section):
    base_url: str
    access_token: SecretStr = SecretStr("")
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    redirect_uri: str = ""
    refresh_token: SecretStr = SecretStr("")
    token_file: Path = Path("/var/lib/kommo-callerid/tokens.json")
    timeout: Seconds = Field(default=10.0, gt=0, le=MINUTE * 5)
    rate_limit: float = Field(default=7.0, gt=0, le=1000)
    lookup: LookupMode = LookupMode.AUTO
    #: An http(s) proxy URL for every Kommo request; empty: HTTPS_PROXY / NO_PROXY from the
    #: environment are honoured.
    proxy: str = ""

    @field_validator("base_url")
    @classmethod
    def _https_unless_loopback(cls, value: str) -> str:
        shown = url_for_messages(value)  # never echo a user:password@ back
        bad = f"must be a URL like https://yourcompany.kommo.com, got {shown!r}"
        try:
            parts = urlsplit(value)
            hostname = parts.hostname
        except ValueError:  # e.g. an unclosed [ of an IPv6 address
            raise ValueError(bad) from None
        if parts.scheme not in ("http", "https") or not hostname:
            raise ValueError(bad)
        if "@" in parts.netloc:
            raise ValueError(
                "must not carry a user or password (Kommo takes the token, not a password in "
                f"the URL), got {shown!r}"
            )
        if parts.scheme == "http" and not is_loopback_host(hostname):
            raise ValueError(
                f"must use https:// (plain http is allowed only for loopback hosts), got {shown!r}"
            )
        return value.rstrip("/")

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.hostname):
            # The value may hold a password: not repeated here.
            raise ValueError("must be empty or a URL like http://proxy.example.com:3128")
        return value

    @model_validator(mode="after")
    def _one_auth_mode(self) -> KommoConfig:
        oauth = (self.client_id, self.client_secret.get_secret_value(), self.redirect_uri)
        if self.access_token.get_secret_value():
            return self
        if all(oauth):
            return self
        raise ValueError(
            "no Kommo credentials: set access_token (a long-lived token), or client_id, "
            "client_secret and redirect_uri (OAuth, with refresh_token or a token_file)"
        )

    @property
    def oauth(self) -> bool:
        return not self.access_token.get_secret_value()


class CallsConfig(_Section):
    inbound_contexts: tuple[str, ...] = (
        "from-trunk",
        "from-pstn",
        "from-external",
        "from-did-direct",
    )
    min_digits: int = Field(default=7, ge=1, le=20)
    default_region: str = ""
    notify_ttl: Seconds = Field(default=45.0, gt=0, le=HOUR)
    #: Where the PBX's own phones start calls; a call started here to a number of at least
    #: ``min_digits`` digits is an outbound call (journaled).
    outbound_contexts: tuple[str, ...] = ("from-internal",)

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        if not value:
            return value
        import phonenumbers  # noqa: PLC0415  (only needed when a region is set)

        region = value.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown region {value!r}; use a two-letter code like 'US' or 'RU'")
        return region


class Recipient(StrEnum):
    RINGING = "ringing"
    DID = "did"
    RESPONSIBLE = "responsible"


class NotifyConfig(_Section):
    to: tuple[Recipient, ...] = (Recipient.RINGING, Recipient.DID, Recipient.RESPONSIBLE)
    fallback: Literal["all", "none"] = "all"
    fallback_after: Seconds = Field(default=3.0, ge=0, le=HOUR)
    extensions: dict[str, UserId] = Field(default_factory=dict)
    dids: dict[str, tuple[UserId, ...]] = Field(default_factory=dict)


class CacheConfig(_Section):
    ttl: Seconds = Field(default=300.0, ge=0, le=DAY * 30)
    negative_ttl: Seconds = Field(default=60.0, ge=0, le=DAY * 30)
    max_entries: int = Field(default=10_000, ge=1, le=10_000_000)


class LogConfig(_Section):
    format: Literal["json", "console", "auto"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"
    mask_numbers: bool = False

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8899"`` or ``"[::1]:8899"`` -> (host, port); port 0 picks a free one."""
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be HOST:PORT like 127.0.0.1:8899 or [::1]:8899, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets, like [::1]:8899, got {value!r}")
    if not host:
        raise ValueError(f"needs a host (an empty host means every interface), got {value!r}")
    return host, int(port)


class HttpConfig(_Section):
    listen: str = ""
    #: The endpoint has no authentication: anything but loopback must be asked for explicitly.
    allow_public: bool = False
    #: /callerid answers empty after this long; the lookup goes on and fills the cache.
    callerid_timeout: Seconds = Field(default=0.5, gt=0, le=10)
    #: The name goes into a SIP header: keep it short.
    callerid_max_length: int = Field(default=40, ge=1, le=200)

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        value = value.strip()
        if value:
            parse_listen(value)
        return value

    @model_validator(mode="after")
    def _loopback_unless_allowed(self) -> HttpConfig:
        if self.listen and not self.allow_public:
            host, _ = parse_listen(self.listen)
            if not is_loopback_host(host):
                raise ValueError(
                    f"listen = {self.listen!r} is not a loopback address; the endpoint has no "
                    "authentication, so set allow_public = true to serve it beyond this host"
                )
        return self

    @property
    def address(self) -> tuple[str, int]:
        return parse_listen(self.listen)


#: An extension the daemon may put into an AMI channel name: no separators, no line breaks.
EXTENSION = re.compile(r"(?:[a-z0-9_-]+/)?[0-9A-Za-z*#+_-]{1,32}")


def _no_control(value: str) -> str:
    """AMI is a line protocol: a header value with a line break injects headers."""
    if any(not ch.isprintable() for ch in value):
        raise ValueError("must not contain line breaks or control characters")
    return value


def origin_of(url: str) -> str:
    """``https://Example.kommo.com/x`` -> ``https://example.kommo.com`` (a browser's Origin)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(parts.scheme)
    port = f":{parts.port}" if parts.port and parts.port != default else ""
    return f"{parts.scheme}://{host}{port}"


class PublicConfig(_Section):
    """The endpoint Kommo's web UI reaches (click-to-call, recordings); empty listen: off."""

    listen: str = ""
    url: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    origins: tuple[str, ...] = ()

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        value = value.strip()
        if value:
            parse_listen(value)
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise ValueError(f"must be a URL like https://pbx.example.com:8443, got {value!r}")
        return value.rstrip("/")

    @field_validator("origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
                raise ValueError(f"an origin is scheme://host[:port], got {origin!r}")
        return tuple(origin_of(origin) for origin in value)

    @model_validator(mode="after")
    def _tls_unless_loopback(self) -> PublicConfig:
        if self.listen and not (self.tls_cert and self.tls_key):
            host, _ = parse_listen(self.listen)
            if not is_loopback_host(host):
                raise ValueError(
                    f"listen = {self.listen!r} is not a loopback address: set tls_cert and "
                    "tls_key (plain HTTP is only for a TLS proxy in front, on loopback)"
                )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        return self

    @property
    def address(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)


class ClickToCallConfig(_Section):
    """A click on a phone number in Kommo rings the user's extension, then dials it."""

    enabled: bool = False
    channel: str = "Local/{extension}@from-internal"
    context: str = Field(default="from-internal", min_length=1, max_length=80)
    caller_id: str = "{name} <{number}>"
    dial_rules: tuple[tuple[str, str], ...] = ()
    timeout: Seconds = Field(default=30.0, gt=0, le=MINUTE * 5)
    min_interval: Seconds = Field(default=3.0, ge=0, le=HOUR)
    users: dict[UserId, str] = Field(default_factory=dict)

    @field_validator("channel", "context", "caller_id")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return _no_control(value)

    @field_validator("channel")
    @classmethod
    def _channel_template(cls, value: str) -> str:
        try:
            value.format(extension="101")
        except (KeyError, IndexError, ValueError):
            raise ValueError("may use only the placeholder {extension}") from None
        if "{extension}" not in value:
            raise ValueError("must contain {extension}, e.g. Local/{extension}@from-internal")
        return value

    @field_validator("caller_id")
    @classmethod
    def _caller_id_template(cls, value: str) -> str:
        try:
            value.format(name="n", number="1")
        except (KeyError, IndexError, ValueError):
            raise ValueError("may use only the placeholders {name} and {number}") from None
        return value

    @field_validator("dial_rules")
    @classmethod
    def _rules(cls, value: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        for pattern, replacement in value:
            try:
                re.compile(pattern).sub(replacement, "")
            except (re.error, IndexError) as exc:
                raise ValueError(f"dial rule {pattern!r} -> {replacement!r}: {exc}") from None
        return value

    @field_validator("users")
    @classmethod
    def _extensions(cls, value: dict[int, str]) -> dict[int, str]:
        for user, extension in value.items():
            if not EXTENSION.fullmatch(extension):
                raise ValueError(
                    f"user {user}: {extension!r} is not an extension like 101 or north/101"
                )
        return value


class JournalConfig(_Section):
    """Finished calls logged to Kommo (``POST /api/v4/calls``) through a durable outbox."""

    enabled: bool = True
    directions: tuple[Literal["inbound", "outbound"], ...] = ("inbound", "outbound")
    source: str = Field(default="kommo-callerid", min_length=1, max_length=100)
    recording_url: str = ""
    unknown: Literal["skip", "unsorted"] = "skip"
    pipeline_id: int = Field(default=0, ge=0, le=2**63 - 1)
    missed_task: bool = False
    missed_task_deadline: Seconds = Field(default=3600.0, gt=0, le=DAY * 30)
    retain: Seconds = Field(default=86400.0, gt=0, le=DAY * 30)
    database: Path = Path("/var/lib/kommo-callerid/journal.sqlite3")


class RecordingsConfig(_Section):
    """Signed links to call recordings, served by the public endpoint; empty ``directory``: off."""

    directory: Path | None = None
    #: Under ``directory``; {yyyy} {mm} {dd} (the call's date) and {uniqueid} (each channel).
    pattern: str = Field(default="{yyyy}/{mm}/{dd}/*-{uniqueid}.*", min_length=1)
    #: Seconds a link stays valid; 0: until the signing key changes.
    link_ttl: Seconds = Field(default=0.0, ge=0, le=DAY * 3650)
    #: The signing key (the credential file ``recordings_key``); empty: one generated once.
    key: SecretStr = SecretStr("")

    @field_validator("directory", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("pattern")
    @classmethod
    def _pattern_names_the_call(cls, value: str) -> str:
        if "{uniqueid}" not in value:
            raise ValueError(f"must contain {{uniqueid}} (the file of one call), got {value!r}")
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError(f"must be relative to directory, without '..', got {value!r}")
        try:
            value.format(yyyy="2000", mm="01", dd="01", uniqueid="1.1")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"may use only {{yyyy}} {{mm}} {{dd}} {{uniqueid}}, got {value!r} ({exc})"
            ) from None
        return value


def url_for_messages(url: str) -> str:
    """The URL without its user and password (``redis://:p@w@host`` -> ``redis://host``).

    Everything between the scheme and the *last* ``@`` goes: a password may carry ``@``,
    ``/`` or ``?`` unencoded (URL parsers take the host after the last ``@`` too), and a
    message that shows too little of an odd URL beats one that shows part of a password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


#: The Redis URL in a message (the name the cluster room knows it by).
redis_url_for_messages = url_for_messages


class ClusterConfig(_Section):
    """Several daemons sharing one Kommo account through Redis; empty ``redis_url``: alone."""

    redis_url: str = ""
    redis_password: SecretStr = SecretStr("")
    node: str = ""
    key_prefix: str = Field(default="kommo-callerid", min_length=1)
    expected_nodes: int = Field(default=2, ge=1, le=100)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        shown = redis_url_for_messages(value)
        if value and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {shown!r}")
        if value:
            try:  # redis-py's own reading of it, so what passes here connects the same way
                parse_url(value)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            except ValueError as exc:
                raise ValueError(f"is not a usable Redis URL ({exc}): {shown!r}") from None
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)


class PhonebookConfig(_Section):
    """A local mirror of Kommo's phone book: lookups answered without a request."""

    enabled: bool = False
    database: Path = Path("/var/lib/kommo-callerid/phonebook.sqlite3")
    sync_interval: Seconds = Field(default=10.0, ge=1.0, le=HOUR)
    full_sync_interval: Seconds = Field(default=86400.0, ge=MINUTE, le=DAY * 30)
    trust_unknown: bool = True


class DaemonConfig(_Section):
    shutdown_timeout: Seconds = Field(default=5.0, ge=0, le=MINUTE * 10)


class Config(BaseSettings):
    """The whole configuration. Build it with :func:`load_config`."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_ignore_empty=False,
    )

    ami: AmiConfig
    kommo: KommoConfig
    calls: CallsConfig = CallsConfig()
    notify: NotifyConfig = NotifyConfig()
    cache: CacheConfig = CacheConfig()
    log: LogConfig = LogConfig()
    http: HttpConfig = HttpConfig()
    daemon: DaemonConfig = DaemonConfig()
    journal: JournalConfig = JournalConfig()
    cluster: ClusterConfig = ClusterConfig()
    phonebook: PhonebookConfig = PhonebookConfig()
    recordings: RecordingsConfig = RecordingsConfig()
    public: PublicConfig = PublicConfig()
    clicktocall: ClickToCallConfig = ClickToCallConfig()
    _pbxs: tuple[PbxConfig, ...] = PrivateAttr(default=())

    @property
    def pbxs(self) -> tuple[PbxConfig, ...]:
        """Every PBX to watch: the ``[ami.NAME]`` tables, or the one unnamed ``[ami]`` ("")."""
        return self._pbxs

    @model_validator(mode="after")
    def _clicktocall_needs(self) -> Config:
        public, http = self.public, self.http
        if public.listen and http.listen and public.address[1] == http.address[1] != 0:
            raise ValueError("[public] listen must not share a port with [http] listen")
        if not self.clicktocall.enabled:
            return self
        if not self.public.listen:
            raise ValueError("[clicktocall] enabled needs [public] listen (Kommo reaches it)")
        if not (self.kommo.client_id and self.kommo.client_secret.get_secret_value()):
            raise ValueError(
                "[clicktocall] enabled needs [kommo] client_id and client_secret: Kommo signs "
                "its tokens with the integration's secret"
            )
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _several_pbxs(cls, data: Any, handler: ModelWrapValidatorHandler[Config]) -> Config:
        from kommo_callerid.core.pbx_config import validate_with_pbxs  # noqa: PLC0415 (cycle)

        return validate_with_pbxs(data, handler)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs and ranks lowest: env and credentials override it.
        env = CommaListEnvSource(settings_cls)  # env_settings, but a list may be a comma list
        return env, CredentialsSource(settings_cls), init_settings
