"""``kommo-callerid check`` with ``[cluster]``: reach Redis, as the daemon will at start-up."""

from __future__ import annotations

from kommo_callerid.cluster.link import ClusterLink, ClusterStartError
from kommo_callerid.commands.report import Report
from kommo_callerid.core.config import Config


async def check_cluster(config: Config, report: Report) -> None:
    if not config.cluster.enabled:
        return
    link = ClusterLink(config.cluster)
    try:
        await link.connect()
    except ClusterStartError as exc:
        report.fail(str(exc), "fix [cluster] redis_url or the redis_password credential")
    else:
        if link.ok:
            report.ok(f"Redis answered; this daemon is node {link.node!r} of the cluster")
        else:
            report.fail(
                f"Redis answered but refuses writes ({link.reason}); daemons would work alone",
                "free memory in Redis (maxmemory), or point redis_url at the primary",
            )
    finally:
        await link.close()
