"""What an operator should check when the AMI link will not come up, and what an old
Asterisk cannot do: the sentences behind the supervisor's warnings."""

from __future__ import annotations

import structlog

from kommo_callerid.core.config import AmiConfig

log = structlog.get_logger(__name__)

#: AMI 2.0 came with Asterisk 12; 1.x speaks of Asterisk 11 and older (no Linkedid).
FIRST_MODERN_MAJOR = 2


def connect_hint(reason: str, config: AmiConfig) -> str:
    """One sentence on what is probably wrong, judged by how the connect failed."""
    where = f"{config.host}:{config.port}"
    text = reason.lower()
    if "not an ami server" in text:
        return f"{where} answers, but not as Asterisk's AMI: check [ami] port (manager.conf port)"
    if "ssl" in text or "tls" in text or "handshake" in text:
        if config.tls:
            return f"tls = true, but {where} does not speak TLS: set tls = false or the TLS port"
        return f"TLS trouble at {where}: check [ami] tls and the certificate"
    if "no answer" in text:
        if not config.tls:
            return (
                f"{where} accepted the connection but sent no AMI banner: a TLS port "
                "(tlsbindport, usually 5039) needs tls = true, or a firewall holds the link"
            )
        return f"{where} accepted the connection but did not finish the TLS handshake or login"
    if "refused" in text:
        return (
            f"nothing listens on {where}: is Asterisk running, with enabled = yes and this "
            "port/bindaddr in manager.conf?"
        )
    if "login failed" in text:
        return "check username/secret and permit/deny in manager.conf"
    return f"check that Asterisk's AMI is reachable at {where} (host, port, firewall)"


def ami_major(version: str) -> int | None:
    """The major number of an AMI version such as ``1.3`` or ``7.0.3``; None if unreadable."""
    head = version.strip().split(".", 1)[0]
    return int(head) if head.isdigit() else None


def is_legacy(version: str) -> bool:
    major = ami_major(version)
    return major is not None and major < FIRST_MODERN_MAJOR


def warn_if_legacy(version: str) -> None:
    """Asterisk 11 and older: say plainly what the daemon cannot do there."""
    if is_legacy(version):
        log.warning(
            "ami.legacy_version",
            ami_version=version,
            detail=(
                "AMI 1.x (Asterisk 11 or older) sends no Linkedid: a channel is tied to its "
                "call only by the Dial that created it (attended transfers and pickups are "
                "not followed), and the call journal is off for this PBX (no Linkedid, DialEnd "
                "or bridge events to tell an answered call from a missed one)"
            ),
            hint="upgrade to Asterisk 13 or later for full call tracking",
        )
