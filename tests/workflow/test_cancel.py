"""A cancel request (`temporal workflow cancel`) ends a destroy or a rollback
as canceled, on a real Temporal dev server with stand-in activities.

The deploy's cases are in test_workflow.py. Each stand-in that changes the
cluster here blocks until it is cancelled, and the tests check that the run
ends only after the worker stopped it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from deployer.lifecycle import (
    DestroyStatus,
    RollbackStatus,
)
from deployer.phases import TEARDOWN_ORDER, Phase, PhaseState
from tests.workflow.standins import (
    BlockingStandIns,
    cancel_seen,
    cancel_until_ended,
)
from worker.main import HEARTBEAT_THROTTLE
from workflows.destroy import VentrosDestroy
from workflows.rollback import VentrosRollback


async def run_canceled(
    env: WorkflowEnvironment,
    workflow_type: str,
    blocking: BlockingStandIns,
    history_name: str | None = None,
    while_canceling: Callable[[WorkflowHandle[Any, Any]], Awaitable[None]]
    | None = None,
) -> tuple[dict[str, Any], list[Any]]:
    """Start the workflow, cancel it once its blocking activity runs, and wait
    until it ended as canceled; return its last status and its history's
    events."""
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[VentrosDestroy, VentrosRollback],
        activities=blocking.activities(),
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
    ):
        handle = await env.client.start_workflow(
            workflow_type,
            {"release": "ventros-crm", "namespace": "ns", "force": True}
            if workflow_type == "VentrosDestroy"
            else {"release": "ventros-crm", "namespace": "ns"},
            id=f"wf-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
        )
        await asyncio.wait_for(blocking.holding.wait(), timeout=60)
        if while_canceling is None:
            return await cancel_until_ended(handle, history_name)
        await handle.cancel()
        await cancel_seen(handle)
        await while_canceling(handle)
        return await cancel_until_ended(handle, history_name)


def ended_after_cancel_completed(events: list[Any]) -> bool:
    kinds = [event.event_type for event in events]
    return kinds.index(EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED) < kinds.index(
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED
    )


async def test_cancel_stops_destroy_step(temporal_env: WorkflowEnvironment) -> None:
    """A cancel request during a removal step's delete ends the destroy as
    canceled once the delete stopped; the steps after it do not run."""
    blocking = BlockingStandIns(("teardown", Phase.CACHE))
    raw, events = await run_canceled(
        temporal_env, "VentrosDestroy", blocking, "destroy_cancel_during_delete"
    )
    status = DestroyStatus.model_validate(raw)

    assert blocking.cancelled == [("teardown", Phase.CACHE)]
    assert ended_after_cancel_completed(events)
    assert status.state == "canceled"
    assert status.message is not None
    assert "a cancel request stopped the destroy" in status.message
    records = {r.phase: r for r in status.phases}
    assert records[Phase.CACHE].state is PhaseState.ABORTED
    assert records[Phase.CACHE].error_type == "Canceled"
    after = TEARDOWN_ORDER[TEARDOWN_ORDER.index(Phase.CACHE) + 1 :]
    assert after
    for phase in after:
        assert records[phase].state is PhaseState.PENDING
        assert phase not in blocking.torn_down


async def test_cancel_stops_destroy_wait(temporal_env: WorkflowEnvironment) -> None:
    """A cancel request while a step waits for objects to be gone ends the
    destroy as canceled."""
    blocking = BlockingStandIns(("wait", Phase.APP))
    raw, _ = await run_canceled(temporal_env, "VentrosDestroy", blocking)
    status = DestroyStatus.model_validate(raw)

    assert status.state == "canceled"
    assert blocking.torn_down == [Phase.APP]
    records = {r.phase: r for r in status.phases}
    assert records[Phase.APP].state is PhaseState.ABORTED


async def test_cancel_stops_rollback(temporal_env: WorkflowEnvironment) -> None:
    """A cancel request during the rollback's helm step ends the rollback as
    canceled, not failed, and only once the worker stopped helm."""
    blocking = BlockingStandIns(("roll back", None))
    raw, events = await run_canceled(
        temporal_env, "VentrosRollback", blocking, "rollback_cancel"
    )
    status = RollbackStatus.model_validate(raw)

    assert blocking.cancelled == [("roll back", None)]
    assert ended_after_cancel_completed(events)
    assert status.state == "canceled"
    assert status.message is not None
    assert status.message.startswith("canceled: a cancel request stopped the rollback")


async def test_cancel_during_rollback_plan(temporal_env: WorkflowEnvironment) -> None:
    """A cancel request while the rollback plans ends it as canceled; nothing
    is rolled back."""
    blocking = BlockingStandIns(("plan", None))
    raw, _ = await run_canceled(temporal_env, "VentrosRollback", blocking)
    status = RollbackStatus.model_validate(raw)

    assert status.state == "canceled"
    assert status.from_version is None
    assert status.message is not None
    assert "before it changed anything" in status.message


async def test_cancel_kept_when_helm_step_ends(
    temporal_env: WorkflowEnvironment,
) -> None:
    """A rollback's helm step that ends before its worker learns of a cancel
    request does not swallow the cancel: the run ends as canceled and never
    waits for the rollout."""
    blocking = BlockingStandIns(("roll back", None), finish_s=1.5)
    raw, _ = await run_canceled(temporal_env, "VentrosRollback", blocking)
    status = RollbackStatus.model_validate(raw)

    assert blocking.cancelled == []
    assert blocking.waited == []
    assert status.state == "canceled"
    assert status.message is not None
    assert "while helm rolled back" in status.message
    assert "2.0.0 or 1.0.0" in status.message


async def test_retry_and_abort_rejected_after_cancel(
    temporal_env: WorkflowEnvironment,
) -> None:
    """Once the run took a cancel request, retry and abort updates are
    rejected, and the run still ends as canceled, not aborted."""
    rejected: list[str] = []

    async def retry_and_abort(handle: WorkflowHandle[Any, Any]) -> None:
        for name, arg in (("retry", None), ("abort", "too late")):
            with pytest.raises(WorkflowUpdateFailedError) as failure:
                await handle.execute_update(name, arg)
            rejected.append(str(failure.value.cause))

    blocking = BlockingStandIns(("teardown", Phase.CACHE), finish_s=3)
    raw, _ = await run_canceled(
        temporal_env, "VentrosDestroy", blocking, while_canceling=retry_and_abort
    )
    status = DestroyStatus.model_validate(raw)

    assert len(rejected) == 2
    for message in rejected:
        assert "this destroy is being canceled" in message
    assert status.state == "canceled"
    records = {r.phase: r for r in status.phases}
    assert records[Phase.CACHE].error_type == "Canceled"


async def test_cancel_during_rollback_record(
    temporal_env: WorkflowEnvironment,
) -> None:
    """A cancel request while the rollback notes its helm revision reports that
    the rollback itself is done."""
    blocking = BlockingStandIns(("record", None))
    raw, _ = await run_canceled(temporal_env, "VentrosRollback", blocking)
    status = RollbackStatus.model_validate(raw)

    assert blocking.waited == [Phase.APP]
    assert status.state == "canceled"
    assert status.message is not None
    assert "the rollback to 1.0.0 is done" in status.message
