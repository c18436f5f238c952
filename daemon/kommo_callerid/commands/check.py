"""``kommo-callerid check`` without ``--offline``: log in to AMI, watch it for a few seconds,
call Kommo once, and say in plain words what is wrong and how to fix it.

AMI has no action that returns one's read classes, so ``read = call`` is judged by its
effect: call events in the listen window prove it; channels that started or ended (seen
through ``CoreShowChannels``, whose list is the action's own answer) without a single call
event disprove it; anything else is reported as not enough traffic to judge.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from collections import Counter
from dataclasses import dataclass, field

from kommo_callerid.ami.client import AmiClient
from kommo_callerid.ami.hints import is_legacy
from kommo_callerid.ami.supervisor import EVENT_FILTERS
from kommo_callerid.commands.check_cluster import check_cluster
from kommo_callerid.commands.check_kommo import check_kommo
from kommo_callerid.commands.report import Report
from kommo_callerid.core.config import Config
from kommo_callerid.core.models import (
    AmiActionRefused,
    AmiConnectionError,
    AmiLoginError,
    ChannelEvent,
    ChannelEventKind,
)
from kommo_callerid.core.pbx_config import PbxConfig

#: Seconds check listens to AMI by default (``--listen``).
DEFAULT_LISTEN = 5.0
#: Asterisk queues events; one for a channel already listed may still be on its way.
_LATE_EVENT_GRACE = 0.5
_QUEUE_SIZE = 10_000

_MANAGER_CONF = "/etc/asterisk/manager.conf"
_RELOAD = 'then run: asterisk -rx "manager reload"'


@dataclass(slots=True)
class Observation:
    """What one listen window showed."""

    seconds: float
    call_events: int = 0
    #: Uniqueids from CoreShowChannels before and after the window; None if it was refused.
    channels_before: frozenset[str] | None = None
    channels_after: frozenset[str] | None = None
    channels_refused: str = ""
    #: context -> {"new calls": channels that start a call there, "other channels": legs}
    contexts: dict[str, Counter[str]] = field(default_factory=dict)


async def run_online_checks(
    config: Config, *, listen: float = DEFAULT_LISTEN, report: Report | None = None
) -> bool:
    """Every online check, printed as it goes; True when nothing failed (warnings allowed)."""
    report = report or Report()
    report.heading("Online checks:")
    for pbx in config.pbxs:  # one after the other, so each PBX's lines stay together
        await check_ami(pbx, listen, report, originate=config.clicktocall.enabled)
    await check_kommo(config, report)
    await check_cluster(config, report)
    report.summary()
    return report.all_well


async def check_ami(
    pbx: PbxConfig, listen: float, report: Report, *, originate: bool = False
) -> None:
    """One PBX's AMI; its lines say ``AMI north:`` with several PBXs, ``AMI:`` with one."""
    ami, who = pbx.ami, _who(pbx)
    queue: asyncio.Queue[ChannelEvent] = asyncio.Queue(maxsize=_QUEUE_SIZE)
    client = AmiClient(ami, queue, pbx=pbx.name)
    try:
        info = await client.connect()
        report.ok(
            f"{who}: logged in to {info.host}:{info.port} as {ami.username!r} "
            f"(banner: Asterisk Call Manager/{info.ami_version})"
        )
        if is_legacy(info.ami_version):
            report.warn(
                f"{who}: AMI {info.ami_version} is Asterisk 11 or older (no Linkedid): calls are "
                "tied to their legs only by Dial events, and the call journal is off for it",
                "upgrade to Asterisk 13 or later for full call tracking and the journal",
            )
        await _check_filter(client, pbx, report)
        if originate:
            await _check_originate(client, pbx, report)
        seen = await _listen(client, queue, listen, ami.connect_timeout)
        _judge_call_class(seen, pbx, report)
        _report_contexts(seen, pbx, report)
    except AmiLoginError as exc:
        report.fail(f"{who}: login as {ami.username!r} refused ({exc})", _login_fix(pbx))
    except (AmiConnectionError, OSError, TimeoutError) as exc:
        report.fail(f"{who}: {exc or type(exc).__name__}", _connect_fix(pbx))
    finally:
        await client.close()


def _who(pbx: PbxConfig) -> str:
    return f"AMI {pbx.name}" if pbx.name else "AMI"


def _section(pbx: PbxConfig) -> str:
    return f"[ami.{pbx.name}]" if pbx.name else "[ami]"


async def _check_filter(client: AmiClient, pbx: PbxConfig, report: Report) -> None:
    """The daemon's own filters: harmless here, they let through what check counts."""
    ami, who = pbx.ami, _who(pbx)
    try:
        for expression in EVENT_FILTERS:
            await client.add_filter(expression, ami.connect_timeout)
    except TimeoutError:
        # What the daemon does then: it reconnects once and filters events itself.
        report.warn(
            f"{who}: no answer to Filter within {ami.connect_timeout:g} s (Asterisk loaded, "
            "or a proxy in the way): the daemon will reconnect once and filter events itself",
            "if it stays so, look at Asterisk's load (core show sysinfo) and its manager log",
        )
        return
    except AmiActionRefused as exc:
        report.fail(
            f"{who}: Filter refused ({exc}): Asterisk will send every event and the daemon "
            "filters them itself, at a CPU cost on a busy PBX",
            f"add write = system to [{ami.username}] in {_MANAGER_CONF}; {_RELOAD}",
        )
        return
    report.ok(f"{who}: Filter allowed (Asterisk sends only Newchannel, NewCallerid, Hangup)")


async def _check_originate(client: AmiClient, pbx: PbxConfig, report: Report) -> None:
    """Click-to-call needs ``write = originate``. An Originate without a Channel places no
    call: Asterisk answers "Permission denied" without the class, else "Channel not
    specified"."""
    ami, who = pbx.ami, _who(pbx)
    probe = {"Action": "Originate", "Async": "false"}
    try:
        answer = await client.send_action(probe, ami.connect_timeout)
    except TimeoutError:
        report.warn(f"{who}: no answer to an Originate probe within {ami.connect_timeout:g} s")
        return
    if "permission denied" in answer.get("Message", "").lower():
        report.fail(
            f"{who}: the AMI user {ami.username!r} may not Originate: click-to-call answers 502",
            f"add originate to write = in [{ami.username}] of {_MANAGER_CONF}; {_RELOAD}",
        )
        return
    report.ok(f"{who}: write = originate allowed (click-to-call can place calls)")


async def _listen(
    client: AmiClient, queue: asyncio.Queue[ChannelEvent], seconds: float, timeout: float
) -> Observation:
    seen = Observation(seconds)
    seen.channels_before = await _channels(client, timeout, seen)
    await _collect(queue, seconds, seen)
    seen.channels_after = await _channels(client, timeout, seen)
    if client.events_received == 0 and seen.channels_before != seen.channels_after:
        await _collect(queue, _LATE_EVENT_GRACE, seen)
    seen.call_events = client.events_received
    return seen


async def _channels(client: AmiClient, timeout: float, seen: Observation) -> frozenset[str] | None:
    try:
        return await client.active_channels(timeout)
    except AmiActionRefused as exc:
        seen.channels_refused = str(exc)
        return None


async def _collect(queue: asyncio.Queue[ChannelEvent], seconds: float, seen: Observation) -> None:
    """Note the context of every new channel for ``seconds``."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                _note(await queue.get(), seen)
    while not queue.empty():
        _note(queue.get_nowait(), seen)


def _note(event: ChannelEvent, seen: Observation) -> None:
    if event.kind is ChannelEventKind.NEWCHANNEL:
        role = "new calls" if event.uniqueid == event.linkedid else "other channels"
        seen.contexts.setdefault(event.context, Counter())[role] += 1


def _judge_call_class(seen: Observation, pbx: PbxConfig, report: Report) -> None:
    username, who = pbx.ami.username, _who(pbx)
    window = f"{seen.seconds:g} s"
    if seen.call_events:
        report.ok(f"{who}: read = call works ({seen.call_events} call events in {window})")
        return
    test_call = "make a test call while `kommo-callerid check --listen 30` runs"
    before, after = seen.channels_before, seen.channels_after
    if before is None or after is None:
        report.warn(
            f"{who}: no call events in {window}, and the user may not list channels "
            f"(CoreShowChannels: {seen.channels_refused}): no traffic to judge read = call by",
            test_call,
        )
    elif before != after:
        report.fail(
            f"{who}: channels started or ended during {window} but no call event came: "
            f"the AMI user {username!r} lacks read = call",
            f"add read = call to [{username}] in {_MANAGER_CONF}; {_RELOAD}",
        )
    elif before:
        report.warn(
            f"{who}: {len(before)} active channels but no call events in {window}: "
            "the user may lack read = call (calls already talking send none)",
            f"{test_call}; if it shows none, add read = call to [{username}] in {_MANAGER_CONF}",
        )
    else:
        report.warn(
            f"{who}: no traffic to judge read = call by (no channels in {window})", test_call
        )


def _report_contexts(seen: Observation, pbx: PbxConfig, report: Report) -> None:
    if not seen.contexts:
        return
    patterns = pbx.inbound_contexts
    where = f"{_section(pbx)} or [calls]" if pbx.name else "[calls]"
    title = f"contexts of new channels in {seen.seconds:g} s (inbound = {where} patterns):"
    report.info(f"{pbx.name}: {title}" if pbx.name else title.capitalize())
    for context, roles in sorted(seen.contexts.items()):
        pattern = next((p for p in patterns if fnmatch.fnmatchcase(context, p)), None)
        verdict = f"inbound (matches {pattern!r})" if pattern else "not inbound"
        counts = ", ".join(f"{role} {n}" for role, n in sorted(roles.items()))
        report.info(f"  {context or '(none)'}: {counts}; {verdict}")
    starts = [c for c, roles in seen.contexts.items() if roles["new calls"]]
    if starts and not any(fnmatch.fnmatchcase(c, p) for c in starts for p in patterns):
        report.info(
            "  no call started in an inbound context: if calls from outside arrive in one of "
            f"these, add it to {where} inbound_contexts"
        )


def _login_fix(pbx: PbxConfig) -> str:
    username = pbx.ami.username
    credential = f"ami_secret_{pbx.name}" if pbx.name else "ami_secret"
    return (
        f"make {_section(pbx)} username and secret (or the {credential} credential file) match a "
        f"[{username}] section in {_MANAGER_CONF}; its permit= must allow this host "
        f"(Asterisk says Authentication failed for a denied IP too); {_RELOAD}"
    )


def _connect_fix(pbx: PbxConfig) -> str:
    ami = pbx.ami
    return (
        f"check {_section(pbx)} host/port/tls "
        f"({ami.host}:{ami.port}, tls={str(ami.tls).lower()}) and "
        f"that Asterisk runs with enabled = yes, port and bindaddr in [general] of "
        f"{_MANAGER_CONF}"
    )
