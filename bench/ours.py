"""Run the VentrosDeploy workflow once and read its timeline from the history.

The deploy goes through the real worker process. Its timeline (apply and
wait of each phase) comes from the activity events of the workflow history,
with the times the Temporal server recorded. The bench decrypts their inputs
with the worker's key ring to learn which phase and objects each one has.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError

from bench.services import BenchError
from deployer import contracts
from deployer.inputs import workflow_id_for
from deployer.phases import (
    NAMESPACE_ATTRIBUTE,
    PHASE_ATTRIBUTE,
    PHASE_ORDER,
    RELEASE_ATTRIBUTE,
)

WORKFLOW_TYPE = "VentrosDeploy"
STATUS_POLL_S = 2.0
FAILING_TASK_ATTEMPTS = 3
TASK_RETRY_EVENTS = (
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
)


@dataclass
class Span:
    """One activity: its phase, kind (validate, apply, wait) and server times."""

    phase: str
    step: str
    scheduled: float
    started: float | None = None
    completed: float | None = None
    refs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class OursRun:
    """The measurements of one deploy."""

    namespace: str
    started: float
    ended: float
    spans: list[Span]
    history_events: int
    largest_payload_bytes: int
    # From the workflow's start event to its first completed workflow task: the
    # worker's first task after its start includes loading the workflow sandbox.
    first_task_s: float
    # Workflow tasks that timed out (a busy worker) or failed, then were retried.
    task_retries: int
    # Seconds each workflow task waited in its queue, from scheduled to started.
    task_queue_waits_s: list[float]

    @property
    def wall_s(self) -> float:
        return self.ended - self.started


async def run_deploy(
    client: Client, task_queue: str, request: dict[str, Any], timeout_s: float
) -> OursRun:
    """Start one deploy, wait for it, and return its measurements.

    A phase that fails makes the workflow wait for retry or abort; the
    benchmark aborts it and raises BenchError with the phase's error.
    """
    namespace = request["namespace"]
    workflow_id = workflow_id_for(namespace, request["release"])
    started = time.time()
    attributes = TypedSearchAttributes(
        [
            SearchAttributePair(RELEASE_ATTRIBUTE, request["release"]),
            SearchAttributePair(NAMESPACE_ATTRIBUTE, namespace),
            SearchAttributePair(PHASE_ATTRIBUTE, "validating"),
        ]
    )
    handle: WorkflowHandle[Any, Any] = await client.start_workflow(
        WORKFLOW_TYPE,
        request,
        id=workflow_id,
        task_queue=task_queue,
        search_attributes=attributes,
    )
    await _wait_result(handle, timeout_s)
    ended = time.time()
    history = await handle.fetch_history()
    spans = await _spans(client, history.events)
    return OursRun(
        namespace=namespace,
        started=started,
        ended=ended,
        spans=spans,
        history_events=len(history.events),
        largest_payload_bytes=largest_payload(history.events),
        first_task_s=first_task_s(history.events),
        task_retries=sum(
            event.event_type in TASK_RETRY_EVENTS for event in history.events
        ),
        task_queue_waits_s=task_queue_waits_s(history.events),
    )


async def _wait_result(handle: WorkflowHandle[Any, Any], timeout_s: float) -> None:
    result = asyncio.create_task(handle.result())
    deadline = time.monotonic() + timeout_s
    try:
        while not result.done():
            await asyncio.wait({result}, timeout=STATUS_POLL_S)
            if result.done():
                break
            failed = await _failed_phase(handle) or await _failing_task(handle)
            if failed or time.monotonic() > deadline:
                reason = failed or f"not finished after {timeout_s:.0f} s"
                await handle.terminate(reason=f"benchmark: {reason}")
                raise BenchError(f"our deploy {handle.id} failed: {reason}")
        result.result()
    finally:
        result.cancel()


async def _failed_phase(handle: WorkflowHandle[Any, Any]) -> str | None:
    try:
        status = await handle.query("status")
    except RPCError:
        return None
    for record in status.get("phases", []):
        if record.get("state") == "waiting-for-retry":
            return f"phase {record['phase']} failed: {record.get('error')}"
    return None


async def _failing_task(handle: WorkflowHandle[Any, Any]) -> str | None:
    """Return a message when the workflow task keeps failing (a workflow bug).

    Workflow tasks that time out because the worker is busy are retried by
    the server and do not count: only a WorkflowTaskFailed event does.
    """
    description = await handle.describe()
    pending = description.raw_description.pending_workflow_task
    if pending.attempt < FAILING_TASK_ATTEMPTS:
        return None
    history = await handle.fetch_history()
    failed = EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    if any(event.event_type == failed for event in history.events):
        return (
            f"its workflow task failed {pending.attempt - 1} times; "
            "the worker log in the benchmark's output folder has the error"
        )
    return None


async def _decode_input(client: Client, payloads: list[Payload]) -> Any:
    if not payloads:
        return None
    decoded = await client.data_converter.decode(payloads)
    return decoded[0]


async def _spans(client: Client, events: Sequence[HistoryEvent]) -> list[Span]:
    by_id: dict[int, Span] = {}
    for event in events:
        kind = event.event_type
        when = event.event_time.ToMicroseconds() / 1e6
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled_event = event.activity_task_scheduled_event_attributes
            payloads = list(scheduled_event.input.payloads)
            data = await _decode_input(client, payloads)
            name = scheduled_event.activity_type.name
            by_id[event.event_id] = _span_of(name, data, when)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            scheduled = event.activity_task_started_event_attributes.scheduled_event_id
            by_id[scheduled].started = when
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            completed = event.activity_task_completed_event_attributes
            by_id[completed.scheduled_event_id].completed = when
    return list(by_id.values())


def _span_of(activity: str, data: Any, when: float) -> Span:
    if activity == contracts.VALIDATE_REQUEST:
        return Span("validate", "validate", when)
    if activity == contracts.RECORD_DEPLOYED:
        # Noting the deployed revision, the app phase's last step.
        return Span("app", "record", when)
    step = "apply" if activity == contracts.APPLY_PHASE else "wait"
    refs = list(data.get("refs", [])) if step == "wait" else []
    return Span(str(data["phase"]), step, when, refs=refs)


def first_task_s(events: Sequence[HistoryEvent]) -> float:
    """Return seconds from the workflow's start to its first completed task."""
    started = events[0].event_time.ToMicroseconds()
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            return float(event.event_time.ToMicroseconds() - started) / 1e6
    return float("nan")


def task_queue_waits_s(events: Sequence[HistoryEvent]) -> list[float]:
    """Return, for each started workflow task, the seconds from its scheduled
    event to its started event: how long it waited for a worker's poll."""
    scheduled: dict[int, int] = {}
    waits = []
    for event in events:
        when = event.event_time.ToMicroseconds()
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            scheduled[event.event_id] = when
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            origin = event.workflow_task_started_event_attributes.scheduled_event_id
            if origin in scheduled:
                waits.append((when - scheduled[origin]) / 1e6)
    return waits


def largest_payload(events: Sequence[HistoryEvent]) -> int:
    """Return the size in bytes of the largest Payload anywhere in the events."""
    return max((_largest_in(event) for event in events), default=0)


def _largest_in(message: Message) -> int:
    if isinstance(message, Payload):
        return message.ByteSize()
    largest = 0
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        if descriptor.message_type.GetOptions().map_entry:
            items = value.values()
        elif isinstance(value, Message):
            items = [value]
        else:
            items = value  # A repeated message field.
        for item in items:
            if isinstance(item, Message):
                largest = max(largest, _largest_in(item))
    return largest


def phase_windows(run: OursRun) -> dict[str, dict[str, float]]:
    """Return each phase's apply, wait (and for app, record) start and end, in
    seconds from start."""
    windows: dict[str, dict[str, float]] = {}
    for span in run.spans:
        if span.completed is None:
            continue
        window = windows.setdefault(span.phase, {})
        window[f"{span.step}_start"] = span.scheduled - run.started
        window[f"{span.step}_end"] = span.completed - run.started
    order = ["validate", *(phase.value for phase in PHASE_ORDER)]
    return {phase: windows[phase] for phase in order if phase in windows}
