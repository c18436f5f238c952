"""The call journal's Kommo endpoints: ``POST /api/v4/calls`` (in batches), an incoming lead
for an unknown caller (``POST /api/v4/leads/unsorted/sip``) and a call-back task
(``POST /api/v4/tasks``).

Every request goes through the one transport (its rate limiter, 429/403 gate and token) with
:attr:`Priority.JOURNAL`, the lowest, and a single attempt: the journal is durable and does
its own, slower backoff, so a journal request never holds a slot a notification could use.
Raw Kommo JSON stays here; the journal gets :class:`JournalAnswer` values.

Kommo's documentation (amocrm.ru/developers/content/crm_platform/calls-api) describes the
batch call, the attach rule (a contact or company with the number; its one active lead and
no customer: the lead; its one customer and no active lead: the customer) and that a number
without an entity is not added. It names no batch limit for calls; other v4 batch methods
take 50 at most, so :data:`MAX_BATCH` is 50. An unattachable call comes back as an item of
``errors`` (matched by ``request_id``); should Kommo refuse the whole batch with a 400
instead, every call is sent again alone, so one bad number never sinks the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import structlog

from kommo_callerid.core.models import (
    CallbackTask,
    DeadlineReached,
    EntityType,
    JournalAnswer,
    JournalCall,
    JournalVerdict,
    KommoError,
)
from kommo_callerid.kommo.journal_parse import (
    batch_answers,
    body_json,
    created_task_id,
    unsorted_lead_id,
)
from kommo_callerid.kommo.limits import Clock, Priority, Sleep
from kommo_callerid.kommo.parse import Response, error_detail
from kommo_callerid.kommo.transport import KommoTransport

log = structlog.get_logger(__name__)

CALLS_PATH = "/api/v4/calls"
UNSORTED_SIP_PATH = "/api/v4/leads/unsorted/sip"
TASKS_PATH = "/api/v4/tasks"
#: Calls per ``POST /api/v4/calls``.
MAX_BATCH = 50
TASK_TYPE_CALL = 1
#: How long a journal request may wait for a slot behind notifications and lookups (then it
#: is retried later, with the journal's backoff): a backlog of calls must not starve it.
QUEUE_WAIT = 60.0
#: Requests per second of the rate limit the journal leaves to notifications and lookups, so
#: a notification arriving after a journal burst finds the window open, not used up.
HEADROOM = 2.0

#: ``entity_type`` as ``POST /api/v4/tasks`` wants it.
TASK_ENTITY = {
    EntityType.CONTACT: "contacts",
    EntityType.LEAD: "leads",
    EntityType.COMPANY: "companies",
    EntityType.CUSTOMER: "customers",
}


class KommoJournal:
    """Fills the journal's ``CallLog`` protocol with Kommo requests."""

    def __init__(
        self,
        transport: KommoTransport,
        *,
        timeout: float,
        rate_limit: float,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._http = transport
        self._timeout = timeout
        self._clock = clock
        self._sleep = sleep
        #: The journal's own pace: at most ``rate_limit - HEADROOM`` requests per second.
        self._interval = 1.0 / max(rate_limit - HEADROOM, min(rate_limit, 1.0))
        self._last_request = float("-inf")

    async def add_calls(self, calls: Sequence[JournalCall]) -> list[JournalAnswer]:
        """One answer per call, in order; at most :data:`MAX_BATCH` calls per request."""
        answers: list[JournalAnswer] = []
        for start in range(0, len(calls), MAX_BATCH):
            answers.extend(await self._add_batch(calls[start : start + MAX_BATCH]))
        return answers

    async def add_unsorted(
        self, call: JournalCall, *, pipeline_id: int, service_code: str
    ) -> JournalAnswer:
        """An incoming lead carrying the call; ATTACHED answers name the lead."""
        body = [_unsorted_item(call, pipeline_id, service_code)]
        response = await self._post(UNSORTED_SIP_PATH, body)
        if isinstance(response, JournalAnswer):
            return _for(response, call.uniq)
        if not 200 <= response.status < 300:
            return self._refused(response, call.uniq)
        lead_id = unsorted_lead_id(body_json(response.body))
        if lead_id is None:
            return self._odd(response, call.uniq, "no lead in the answer")
        return JournalAnswer(call.uniq, JournalVerdict.ATTACHED, EntityType.LEAD, lead_id)

    async def add_task(self, task: CallbackTask) -> JournalAnswer:
        """A call-back task; ATTACHED answers carry the task's id as ``entity_id``."""
        item: dict[str, Any] = {
            "task_type_id": TASK_TYPE_CALL,
            "text": task.text,
            "complete_till": task.complete_till,
            "entity_id": task.entity_id,
            "entity_type": TASK_ENTITY[task.entity_type],
            "request_id": task.uniq,
        }
        if task.responsible_user_id is not None:
            item["responsible_user_id"] = task.responsible_user_id
        response = await self._post(TASKS_PATH, [item])
        if isinstance(response, JournalAnswer):
            return _for(response, task.uniq)
        if not 200 <= response.status < 300:
            return self._refused(response, task.uniq)
        task_id = created_task_id(body_json(response.body))
        if task_id is None:
            return self._odd(response, task.uniq, "no task in the answer")
        return JournalAnswer(task.uniq, JournalVerdict.ATTACHED, task.entity_type, task_id)

    async def _add_batch(self, calls: Sequence[JournalCall]) -> list[JournalAnswer]:
        body = [_call_item(call, index) for index, call in enumerate(calls)]
        response = await self._post(CALLS_PATH, body)
        if isinstance(response, JournalAnswer):
            return [_for(response, call.uniq) for call in calls]
        if response.status == 400 and len(calls) > 1:
            # The whole batch refused for one call's sake: find it by sending each alone.
            return [answer for call in calls for answer in await self._add_batch([call])]
        if response.status == 400:
            return [_single_refusal(response, calls[0].uniq)]
        if not 200 <= response.status < 300:
            return [self._refused(response, call.uniq) for call in calls]
        return batch_answers(body_json(response.body), calls)

    async def _post(self, path: str, body: Any) -> Response | JournalAnswer:
        """The answer, or a RETRY answer when none came (logged as ``kommo.error``)."""
        wait = self._last_request + self._interval - self._clock()
        if wait > 0:
            await self._sleep(wait)
        self._last_request = self._clock()
        try:
            return await self._http.request(
                "POST",
                path,
                payload=body,
                priority=Priority.JOURNAL,
                deadline=self._clock() + QUEUE_WAIT + self._timeout,
                max_attempts=1,
            )
        except DeadlineReached as exc:
            detail, status = exc.detail, exc.status
        except KommoError as exc:  # unusable credentials or an oversized answer: later
            detail, status = exc.detail, exc.status
        log.warning("kommo.error", status=status, endpoint=path, detail=detail)
        return JournalAnswer("", JournalVerdict.RETRY, detail=detail, status=status)

    def _refused(self, response: Response, uniq: str) -> JournalAnswer:
        detail = error_detail(response)
        log.warning("kommo.error", status=response.status, endpoint=response.path, detail=detail)
        verdict = _verdict_for_status(response.status)
        return JournalAnswer(uniq, verdict, detail=detail, status=response.status)

    def _odd(self, response: Response, uniq: str, detail: str) -> JournalAnswer:
        log.warning("kommo.error", status=response.status, endpoint=response.path, detail=detail)
        return JournalAnswer(uniq, JournalVerdict.RETRY, detail=detail, status=response.status)


def _call_item(call: JournalCall, index: int) -> dict[str, Any]:
    item: dict[str, Any] = {
        "direction": str(call.direction),
        "uniq": call.uniq,
        "duration": call.duration,
        "source": call.source,
        "phone": call.phone,
        "call_status": int(call.status),
        "call_result": call.result,
        "created_at": call.created_at,
        "request_id": str(index),
    }
    if call.link:
        item["link"] = call.link
    if call.responsible_user_id is not None:
        item["responsible_user_id"] = call.responsible_user_id
        item["created_by"] = call.responsible_user_id
    return item


def _unsorted_item(call: JournalCall, pipeline_id: int, service_code: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "is_call_event_needed": True,
        "uniq": call.uniq,
        "duration": call.duration,
        "service_code": service_code,
        "link": call.link,
        "phone": call.phone,
        "called_at": call.created_at,
        "from": call.phone,
    }
    item: dict[str, Any] = {
        "source_name": call.source,
        "source_uid": call.uniq,
        "created_at": call.created_at,
        "metadata": metadata,
        "_embedded": {
            "leads": [{"name": f"Call from {call.phone}"}],
            "contacts": [
                {
                    "name": call.phone,
                    "custom_fields_values": [
                        {"field_code": "PHONE", "values": [{"value": call.phone}]}
                    ],
                }
            ],
        },
    }
    if pipeline_id:
        item["pipeline_id"] = pipeline_id
    return item


def _single_refusal(response: Response, uniq: str) -> JournalAnswer:
    detail = error_detail(response)
    not_found = "not found" in detail.lower()
    verdict = JournalVerdict.UNKNOWN if not_found else JournalVerdict.REJECTED
    log.warning("kommo.error", status=400, endpoint=response.path, detail=detail)
    return JournalAnswer(uniq, verdict, detail=detail, status=400)


def _verdict_for_status(status: int) -> JournalVerdict:
    if status in (401, 403, 429) or status >= 500:
        return JournalVerdict.RETRY
    return JournalVerdict.REJECTED


def _for(answer: JournalAnswer, uniq: str) -> JournalAnswer:
    return JournalAnswer(uniq, answer.verdict, detail=answer.detail, status=answer.status)
