"""sd_notify without a dependency: one datagram to ``$NOTIFY_SOCKET`` per state change.

``READY=1`` once the daemon runs (AMI may still be connecting), ``STATUS=`` with what an
operator wants in ``systemctl status``, ``WATCHDOG=1`` from the event loop at half of
``WatchdogSec`` (a stuck loop stops the pings and systemd restarts it), ``STOPPING=1``.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger(__name__)


class SystemdNotifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is written "@name" and addressed with a leading NUL byte.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *states: str) -> None:
        if not self._address:
            return
        message = "\n".join(states).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:  # systemd gone or socket full: never fatal
            log.debug("systemd.notify_failed", error=str(exc))

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")


def _watchdog_interval(env: os._Environ[str] | dict[str, str]) -> float | None:
    """Half of ``WatchdogSec`` in seconds, when systemd asked this process for pings."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1_000_000 / 2
    except ValueError:
        return None
