"""The call journal on a cluster: each call journaled by exactly one daemon, even when the one
that took it dies before Kommo has its record.

Every daemon that sees a call's end tries its ``journal`` claim; the winner hands the call to
its journal and *holds the claim until the call is settled* (the sender's ``on_settled``:
Kommo accepted the record, or it was given up), renewed meanwhile by the claims ticker. The
others keep the finished call in memory and watch the claim: when the winner dies its claim
lapses within the claim TTL and the first watcher takes the call over and journals it. A
settled call's claim is finished with a marker kept ``retain`` seconds (as long as any outbox
keeps a pending record).

Every record also passes a gate on its way to Kommo (:class:`ClaimedCallLog`): it is sent
only under a claim this daemon holds. That covers the records a daemon finds in its outbox
when it starts again after a crash: one whose claim another daemon finished is not sent again
(it is dropped, "journaled by another daemon"); one another daemon holds now waits (retried);
one nobody holds is claimed and sent; one this daemon settled itself before is sent again
(``journal retry``). It also covers a claim lost while the record waited (an event loop
stalled past the TTL and another daemon took the call over).

At least once, not exactly once, in these windows: a daemon that dies (or stalls, or loses
Redis, for longer than the claim TTL) after Kommo accepted a request of records but before
their claims were marked done (the answer, the outbox update, one Redis call: the records of
the request in flight, at most one batch), or whose marking failed (Redis unreachable at that
moment); while Redis is unreachable, when every daemon that sees a call claims it locally
and journals it; and after Redis lost its data (a restart without persistence), when the
done markers a restarted daemon's outbox would be checked against are gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from kommo_callerid.cluster.claims import FINISHED, Claim, Claims
from kommo_callerid.core.models import (
    CallbackTask,
    FinishedCall,
    JournalAnswer,
    JournalCall,
    JournalVerdict,
)
from kommo_callerid.daemon.notifier import TaskOwner
from kommo_callerid.daemon.outcomes import JournalSink
from kommo_callerid.journal.sender import CallLog, JournalSender

#: The claim's purpose for the call journal.
JOURNAL = "journal"
#: How long a stopping daemon waits for the claims of settled calls to be marked done (else
#: they lapse and another daemon journals those calls again).
FINISH_GRACE = 2.0


class ClusterJournal:
    """The journal claims this daemon holds, from winning one to the call being settled."""

    def __init__(self, claims: Claims, node: str, *, retain: float) -> None:
        self._claims = claims
        self._node = node
        #: How long a settled call's marker stays, and a watcher waits for the owner.
        self.retain = retain
        self._held: dict[str, Claim] = {}
        #: Marking settled calls done: drained by :meth:`close`, after the journal's last
        #: request (the daemon's call tasks are cancelled by then).
        self._finishing = TaskOwner()

    def sink(self, sink: JournalSink, tasks: TaskOwner) -> JournalSink:
        """``sink`` behind the claims. A sink that says when calls settle (the journal's
        sender) keeps each claim until then; any other has it finished at once."""
        if isinstance(sink, JournalSender):
            sink.on_settled = self.settled
            return ClusterJournalSink(sink, self, tasks, settles=True)
        return ClusterJournalSink(sink, self, tasks, settles=False)

    def calls(self, api: CallLog) -> CallLog:
        """``api`` behind the gate: a record goes to Kommo only under our claim."""
        return ClaimedCallLog(api, self)

    async def take(self, call: FinishedCall, sink: JournalSink, *, settles: bool) -> None:
        """Journal ``call`` here if this daemon wins its claim, now or when the owner dies."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.retain  # its record would have expired by then
        claim = await self._claims.wait_claim(
            call.call_id, JOURNAL, until=lambda: loop.time() > give_up
        )
        if claim is None:
            return  # another daemon journaled it (or the daemon stops)
        if not settles:
            sink.record(call)
            await claim.finish(self.retain)
            return
        self._held[call.call_id] = claim
        try:
            sink.record(call)  # settles at once when the call is not journaled at all
        except BaseException:
            self._held.pop(call.call_id, None)
            await claim.release()
            raise

    def settled(self, call_id: str, accepted: bool) -> None:
        """The sender's ``on_settled``: finish the call's claim (nobody journals it again)."""
        claim = self._held.pop(call_id, None)
        if claim is not None:
            self._finishing.spawn(claim.finish(self.retain), name=f"journal-settled-{call_id}")

    async def close(self) -> None:
        """Let the last settled calls' claims be marked done (up to :data:`FINISH_GRACE`)."""
        await self._finishing.drain(FINISH_GRACE)

    async def admit(self, call_id: str) -> JournalAnswer | None:
        """None: send the record (our claim is held). Else the answer that keeps it back:
        retried while another daemon holds it, dropped once another daemon finished it."""
        claim = self._held.get(call_id)
        if claim is not None and claim.held:
            return None
        won, state, by = await self._claims.try_claim(call_id, JOURNAL)
        if won is not None:
            self._held[call_id] = won
            return None
        if state == FINISHED and by != self._node:
            detail = f"journaled by another daemon of the cluster ({by or 'unknown'})"
            return JournalAnswer(call_id, JournalVerdict.REJECTED, detail=detail)
        if state == FINISHED:
            return None  # settled here before (``journal retry``): ours to send again
        detail = "another daemon of the cluster is journaling this call"
        return JournalAnswer(call_id, JournalVerdict.RETRY, detail=detail)


class ClusterJournalSink:
    """Hands a finished call to the journal only on the daemon that wins its ``journal``
    claim; the others watch the claim and take the call over if the winner dies before the
    call is settled."""

    def __init__(
        self, sink: JournalSink, journal: ClusterJournal, tasks: TaskOwner, *, settles: bool
    ) -> None:
        self._sink = sink
        self._journal = journal
        self._tasks = tasks
        self._settles = settles

    def record(self, call: FinishedCall) -> None:
        take = self._journal.take(call, self._sink, settles=self._settles)
        self._tasks.spawn(take, name=f"journal-claim-{call.call_id}")


class ClaimedCallLog:
    """The journal's way to Kommo on a cluster: :meth:`ClusterJournal.admit` first."""

    def __init__(self, api: CallLog, journal: ClusterJournal) -> None:
        self._api = api
        self._journal = journal

    async def add_calls(self, calls: Sequence[JournalCall]) -> list[JournalAnswer]:
        kept = {call.uniq: await self._journal.admit(call.uniq) for call in calls}
        admitted = [call for call in calls if kept[call.uniq] is None]
        answers = iter(await self._api.add_calls(admitted) if admitted else [])
        return [answer if (answer := kept[call.uniq]) else next(answers) for call in calls]

    async def add_unsorted(
        self, call: JournalCall, *, pipeline_id: int, service_code: str
    ) -> JournalAnswer:
        kept = await self._journal.admit(call.uniq)
        if kept is not None:
            return kept
        return await self._api.add_unsorted(
            call, pipeline_id=pipeline_id, service_code=service_code
        )

    async def add_task(self, task: CallbackTask) -> JournalAnswer:
        # After the call itself was accepted (its claim finished by us): no claim to take.
        return await self._api.add_task(task)
