"""Stand-in activities registered under the real activity names.

They touch no cluster: apply returns one object reference per phase, and
wait sleeps for that phase's delay. A phase listed in ``failures`` fails its
wait that many times with a non-retryable TerminalFailure, like a Job that
reached its backoff limit. With ``hold_validate``, or for a phase listed in
``held_applies`` or ``held_waits``, that activity heartbeats until it is
cancelled;
``holding`` is set once one is held, and ``cancelled`` records which were
cancelled, as (activity, phase).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio import activity
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
    ValidateResult,
    WaitRequest,
    WaitResult,
)
from deployer.inputs import parse_request
from deployer.lifecycle import ReleaseTarget
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
