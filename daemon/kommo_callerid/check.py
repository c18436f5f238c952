"""``kommo-callerid check`` without ``--offline``: log in to AMI and call Kommo once, and say
in plain words what is wrong when something is.
"""

from __future__ import annotations

import asyncio

from .ami import AmiClient
from .config import Config
from .kommo import KommoClient
from .models import AmiConnectionError, AmiLoginError, ChannelEvent, KommoError

#: A number nobody has: the lookup only proves that the token and the URL work.
PROBE_NUMBER = "+10000000000"


def _say(ok: bool, text: str) -> bool:
    print(f"  {'OK ' if ok else 'FAIL'} {text}")
    return ok


async def check_ami(config: Config) -> bool:
    ami = config.ami
    queue: asyncio.Queue[ChannelEvent] = asyncio.Queue(maxsize=100)
    client = AmiClient(ami, queue)
    try:
        info = await client.connect()
    except AmiLoginError as exc:
        return _say(
            False,
            f"AMI login as {ami.username!r} refused: {exc}. Check [ami] username/secret "
            "against the user in /etc/asterisk/manager.conf.",
        )
    except (AmiConnectionError, OSError, TimeoutError) as exc:
        return _say(
            False,
            f"AMI at {ami.host}:{ami.port} cannot be reached: {exc or type(exc).__name__}. "
            "Is Asterisk running, is the manager enabled (manager.conf [general] enabled = yes)?",
        )
    finally:
        await client.close()
    return _say(True, f"AMI: logged in to {info.host}:{info.port} (AMI {info.ami_version})")


async def check_kommo(config: Config) -> bool:
    async with KommoClient(config.kommo, config.cache) as kommo:
        try:
            result = await kommo.lookup(PROBE_NUMBER)
        except KommoError as exc:
            hint = {
                401: "the token is expired, revoked or for another account",
                403: "the account is blocked or this IP is not allowed",
                404: "wrong base_url (subdomain?)",
            }.get(exc.status or 0, "see the detail")
            return _say(False, f"Kommo {exc.endpoint}: HTTP {exc.status} {exc.detail} ({hint})")
    return _say(True, f"Kommo: {config.kommo.base_url} answered ({result.source} lookup)")


async def run_online_checks(config: Config) -> bool:
    print("Online checks:")
    ami_ok = await check_ami(config)
    kommo_ok = await check_kommo(config)
    return ami_ok and kommo_ok
