"""File descriptors: the soft limit raised to the hard one at start-up, and each listener's
share of it, so the clients of the HTTP endpoints can never take the last descriptor.

systemd starts a service with a soft limit of 1,024 (the hard one is far higher; the unit
sets ``LimitNOFILE``); 1,100 idle connections to the local endpoint once exhausted it: AMI
could not reconnect ("Too many open files") and Kommo requests failed. Every listener (the
local ``[http]`` one and ``[public]``) takes its caps from :func:`listener_limits`: at most
its equal share of the limit less RESERVE, which stays free for the rest of the daemon. A
connection costs one descriptor, TLS or not; the guard closes a shed one at once (abort), so
none lingers uncounted.
"""

from __future__ import annotations

import resource

from kommo_callerid.serving.guard import ConnectionLimits

#: Descriptors no listener may take: AMI links, Kommo's connection pool, Redis, the SQLite
#: files, resolver threads, the event loop's own, and the recordings being sent (one open
#: file each, at most recordings.serve.MAX_DOWNLOADS = 32). Generous: the daemon uses a few
#: dozen.
RESERVE = 256
#: The listeners that share the rest: ``[http]`` and ``[public]``.
LISTENERS = 2
#: No use raising further: a listener's own cap is far lower (ConnectionLimits).
MAX_SOFT_LIMIT = 65536
#: Even at an absurdly low limit a listener keeps a few connections (a health probe).
MIN_SHARE = 8


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard one; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_SOFT_LIMIT if hard == resource.RLIM_INFINITY else min(hard, MAX_SOFT_LIMIT)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # a sandbox may refuse: the shares below still hold
            return soft
        return target
    return soft


def listener_share(listeners: int = LISTENERS) -> int:
    """How many connections one listener may hold under the current soft limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = MAX_SOFT_LIMIT
    return max(MIN_SHARE, (soft - RESERVE) // max(1, listeners))


def listener_limits(wanted: ConnectionLimits, listeners: int = LISTENERS) -> ConnectionLimits:
    """``wanted``, capped to one listener's share: what every listener is built with, after
    :func:`raise_descriptor_limit` (the daemon raises it before it builds any)."""
    return wanted.within(listener_share(listeners))
