"""Stand-in activities registered under the real activity names.

They touch no cluster: apply returns one object reference per phase, and
wait sleeps for that phase's delay. A phase listed in ``failures`` fails its
wait that many times with a non-retryable TerminalFailure, like a Job that
reached its backoff limit. With ``hold_validate``, or for a phase listed in
``held_applies`` or ``held_waits``, that activity heartbeats until it is
cancelled;
``holding`` is set once one is held, and ``cancelled`` records which were
cancelled, as (activity, phase).

BlockingStandIns does the same for the destroy's and the rollback's
activities, and cancel_seen and cancel_until_ended drive a cancel request.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.exceptions import ApplicationError, CancelledError

from deployer import contracts
from deployer.contracts import (
    ApplyRequest,
    ApplyResult,
    GoneRequest,
    RollbackJob,
    RollbackPlan,
    StatusResult,
    TeardownRequest,
    TeardownResult,
    ValidateResult,
    WaitRequest,
    WaitResult,
)
from deployer.inputs import parse_request
from deployer.lifecycle import ReleaseTarget, RollbackRequest
from deployer.phases import ObjectRef, Phase
from tests.conftest import keep_history

DELAYS_S = {
    Phase.BASE: 0.2,
    Phase.DATA: 0.6,
    Phase.MESSAGING: 0.6,
    Phase.CACHE: 0.3,
    Phase.TEMPORAL: 0.3,
    Phase.MIGRATION: 0.2,
    Phase.APP: 0.2,
}


async def hold(
    holding: asyncio.Event, cancelled: list[Any], what: tuple[str, Any]
) -> None:
    """Set holding, then heartbeat until the workflow cancels this activity;
    append what to cancelled when it does."""
    holding.set()
    try:
        while True:
            activity.heartbeat()
            await asyncio.sleep(0.1)
    except asyncio.CancelledError:
        cancelled.append(what)
        raise


@dataclass
class StandIns:
    failures: Counter[Phase] = field(default_factory=Counter)
    applied: Counter[Phase] = field(default_factory=Counter)
    # (phase, "start"|"end", time.monotonic()) for every wait.
    timeline: list[tuple[Phase, str, float]] = field(default_factory=list)
    hold_validate: bool = False
    held_applies: set[Phase] = field(default_factory=set)
    held_waits: set[Phase] = field(default_factory=set)
    cancelled: list[tuple[str, Phase]] = field(default_factory=list)
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    # The releases whose deployed revision the workflow noted, in order.
    recorded: list[str] = field(default_factory=list)

    def activities(self) -> list[Any]:
        return [
            self.validate_request,
            self.apply_phase,
            self.wait_ready,
            self.record_deployed,
        ]

    @activity.defn(name=contracts.VALIDATE_REQUEST)
    async def validate_request(self, raw: dict[str, Any]) -> ValidateResult:
        parse_request(raw)
        if self.hold_validate:
            await self._hold("validate", Phase.BASE)
        return ValidateResult(chart="chart", objects=12)

    @activity.defn(name=contracts.APPLY_PHASE)
    async def apply_phase(self, job: ApplyRequest) -> ApplyResult:
        self.applied[job.phase] += 1
        if job.phase in self.held_applies:
            await self._hold("apply", job.phase)
        ref = ObjectRef(
            api_version="v1",
            kind="ConfigMap",
            name=f"{job.phase.value}-object",
            namespace="ns",
        )
        return ApplyResult(phase=job.phase, applied=1, waits=[ref])

    @activity.defn(name=contracts.WAIT_READY)
    async def wait_ready(self, job: WaitRequest) -> WaitResult:
        self.timeline.append((job.phase, "start", time.monotonic()))
        if job.phase in self.held_waits:
            await self._hold("wait", job.phase)
        await asyncio.sleep(DELAYS_S[job.phase])
        self.timeline.append((job.phase, "end", time.monotonic()))
        if self.failures[job.phase] > 0:
            self.failures[job.phase] -= 1
            raise ApplicationError(
                f"job/{job.phase.value}-object failed: BackoffLimitExceeded",
                type=contracts.TERMINAL_FAILURE,
                non_retryable=True,
            )
        return WaitResult(
            phase=job.phase, statuses={ref.describe(): "ready" for ref in job.refs}
        )

    @activity.defn(name=contracts.RECORD_DEPLOYED)
    async def record_deployed(self, target: ReleaseTarget) -> int:
        self.recorded.append(target.release)
        return len(self.recorded)

    async def _hold(self, step: str, phase: Phase) -> None:
        await hold(self.holding, self.cancelled, (step, phase))

    def span(self, phase: Phase) -> tuple[float, float]:
        starts = [t for p, kind, t in self.timeline if p is phase and kind == "start"]
        ends = [t for p, kind, t in self.timeline if p is phase and kind == "end"]
        return min(starts), max(ends)


async def cancel_until_ended(
    handle: WorkflowHandle[Any, Any], history_name: str | None
) -> tuple[dict[str, Any], list[Any]]:
    """Send a cancel request and wait until the run ended as canceled; return
    its last status, as JSON, and its history's events.

    A run that the cancel does not end waits for a retry forever, so the
    60 s bound guards against hanging and measures nothing.
    """
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(handle.result(), timeout=60)
    assert isinstance(failure.value.cause, CancelledError)
    description = await handle.describe()
    assert description.status is WorkflowExecutionStatus.CANCELED
    if history_name:
        await keep_history(handle, history_name)
    status: dict[str, Any] = await handle.query("status", result_type=dict[str, Any])
    history = await handle.fetch_history()
    return status, list(history.events)


async def cancel_seen(handle: WorkflowHandle[Any, Any]) -> None:
    """Return once a workflow task completed after the cancel request, so the
    workflow has taken it."""
    for _ in range(200):
        kinds = [event.event_type for event in (await handle.fetch_history()).events]
        requested = kinds.index(
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED
        )
        if EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED in kinds[requested:]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the workflow never took the cancel request")


APP = ObjectRef(
    api_version="apps/v1", kind="Deployment", name="ventros-crm", namespace="ns"
)


class BlockingStandIns:
    """Stand-in activities. The one named in hold heartbeats until cancelled."""

    def __init__(
        self, hold: tuple[str, Phase | None], finish_s: float | None = None
    ) -> None:
        self.hold = hold
        # With finish_s, the held activity neither heartbeats nor notices a
        # cancel: it returns after finish_s seconds, like a helm step that
        # ends before its worker learns of the cancel.
        self.finish_s = finish_s
        self.holding = asyncio.Event()
        self.cancelled: list[tuple[str, Phase | None]] = []
        self.torn_down: list[Phase] = []
        self.waited: list[Phase] = []

    async def _maybe_hold(self, step: str, phase: Phase | None) -> None:
        if (step, phase) != self.hold:
            return
        if self.finish_s is None:
            await hold(self.holding, self.cancelled, (step, phase))
            return
        self.holding.set()
        await asyncio.shield(asyncio.sleep(self.finish_s))

    @activity.defn(name=contracts.TEARDOWN_PHASE)
    async def teardown_phase(self, job: TeardownRequest) -> TeardownResult:
        self.torn_down.append(job.phase)
        await self._maybe_hold("teardown", job.phase)
        return TeardownResult(phase=job.phase, deleted=[f"{job.phase.value} objects"])

    @activity.defn(name=contracts.WAIT_DELETED)
    async def wait_deleted(self, job: GoneRequest) -> StatusResult:
        await self._maybe_hold("wait", job.phase)
        return StatusResult()

    @activity.defn(name=contracts.WAIT_DRAINED)
    async def wait_drained(self, job: Any) -> StatusResult:
        return StatusResult(statuses={contracts.DRAIN_KEY: "no queues"})

    @activity.defn(name=contracts.PLAN_ROLLBACK)
    async def plan_rollback(self, request: RollbackRequest) -> RollbackPlan:
        await self._maybe_hold("plan", None)
        return RollbackPlan(
            current_version="2.0.0", target_version="1.0.0", helm_revision=1, app=APP
        )

    @activity.defn(name=contracts.ROLL_BACK_APP)
    async def roll_back_app(self, job: RollbackJob) -> ApplyResult:
        await self._maybe_hold("roll back", None)
        return ApplyResult(phase=Phase.APP, applied=1, waits=[job.plan.app])

    @activity.defn(name=contracts.WAIT_READY)
    async def wait_ready(self, job: WaitRequest) -> WaitResult:
        self.waited.append(job.phase)
        return WaitResult(phase=job.phase, statuses={})

    @activity.defn(name=contracts.RECORD_DEPLOYED)
    async def record_deployed(self, target: ReleaseTarget) -> int:
        await self._maybe_hold("record", None)
        return 1

    def activities(self) -> list[Any]:
        return [
            self.teardown_phase,
            self.wait_deleted,
            self.wait_drained,
            self.plan_rollback,
            self.roll_back_app,
            self.wait_ready,
            self.record_deployed,
        ]
