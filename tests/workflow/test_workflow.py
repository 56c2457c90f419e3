"""VentrosDeploy with stand-in activities on a real Temporal dev server, and a
replay of a recorded history so that a change that breaks determinism fails."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowHistory,
    WorkflowUpdateFailedError,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker, WorkflowReplayResult

from client.cli import start_attributes
from deployer.phases import (
    PHASE_ATTRIBUTE,
    PHASE_ORDER,
    DeployStatus,
    Phase,
    PhaseRecord,
    PhaseState,
)
from deployer.settings import TemporalSettings
from tests.conftest import HISTORIES, RECORD_HISTORY, keep_history
from tests.workflow.standins import StandIns, cancel_until_ended
from worker.main import HEARTBEAT_THROTTLE, WORKFLOWS
from workflows.deploy import VentrosDeploy

HISTORY_FILE = HISTORIES / "deploy_with_retry.json"


def request(namespace: str = "ns") -> dict[str, Any]:
    return {"release": "ventros-crm", "namespace": namespace}


async def start(
    env: WorkflowEnvironment, queue: str, raw: Any
) -> WorkflowHandle[Any, Any]:
    return await env.client.start_workflow(
        "VentrosDeploy", raw, id=f"wf-{uuid.uuid4().hex[:8]}", task_queue=queue
    )


def worker(env: WorkflowEnvironment, queue: str, standins: StandIns) -> Worker:
    return Worker(
        env.client,
        task_queue=queue,
        workflows=[VentrosDeploy],
        activities=standins.activities(),
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
    )


async def wait_for_state(
    handle: WorkflowHandle[Any, Any], phase: Phase, state: PhaseState
) -> DeployStatus:
    for _ in range(200):
        status: DeployStatus = await handle.query("status", result_type=DeployStatus)
        if next(r for r in status.phases if r.phase is phase).state is state:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"{phase} never reached {state}")


async def test_workflow_follows_dependencies(temporal_env: WorkflowEnvironment) -> None:
    """Independent phases overlap; dependents start only after what they need."""
    queue, standins = f"tq-{uuid.uuid4().hex[:8]}", StandIns()
    async with worker(temporal_env, queue, standins):
        handle = await start(temporal_env, queue, request())
        result = DeployStatus.model_validate(await handle.result())
        await keep_history(handle, "deploy_recorded")
    assert result.state == "succeeded"
    data, messaging, cache = (
        standins.span(p) for p in (Phase.DATA, Phase.MESSAGING, Phase.CACHE)
    )
    assert messaging[0] < data[1]
    assert cache[0] < data[1]
    assert standins.span(Phase.TEMPORAL)[0] >= data[1]
    assert standins.span(Phase.MIGRATION)[0] >= data[1]
    app_start = standins.span(Phase.APP)[0]
    for phase in (
        Phase.DATA,
        Phase.MESSAGING,
        Phase.CACHE,
        Phase.TEMPORAL,
        Phase.MIGRATION,
    ):
        assert app_start >= standins.span(phase)[1]
    # Noted once, after the app was ready.
    assert standins.recorded == ["ventros-crm"]


async def test_workflow_retry_signal_reruns_failed_phase(
    temporal_env: WorkflowEnvironment,
) -> None:
    """A failed phase waits; the retry signal runs it again and nothing else."""
    queue, standins = f"tq-{uuid.uuid4().hex[:8]}", StandIns()
    standins.failures[Phase.MIGRATION] = 1
    async with worker(temporal_env, queue, standins):
        handle = await start(temporal_env, queue, request())
        status = await wait_for_state(
            handle, Phase.MIGRATION, PhaseState.WAITING_FOR_RETRY
        )
        migration = next(r for r in status.phases if r.phase is Phase.MIGRATION)
        assert migration.error == "job/migration-object failed: BackoffLimitExceeded"
        assert migration.error_type == "TerminalFailure"
        await handle.signal("retry-signal", "migration")
        result = DeployStatus.model_validate(await handle.result())
    assert result.state == "succeeded"
    assert standins.applied[Phase.MIGRATION] == 2
    for phase in (
        Phase.BASE,
        Phase.DATA,
        Phase.MESSAGING,
        Phase.CACHE,
        Phase.TEMPORAL,
        Phase.APP,
    ):
        assert standins.applied[phase] == 1


async def test_workflow_retry_rejected_without_failure(
    temporal_env: WorkflowEnvironment,
) -> None:
    """The retry update is rejected by its validator when no phase failed."""
    queue, standins = f"tq-{uuid.uuid4().hex[:8]}", StandIns()
    async with worker(temporal_env, queue, standins):
        handle = await start(temporal_env, queue, request())
        with pytest.raises(WorkflowUpdateFailedError) as rejected:
            await handle.execute_update("retry", None, result_type=list[str])
        await handle.result()
    assert isinstance(rejected.value.cause, ApplicationError)
    assert "no phase is waiting for retry" in rejected.value.cause.message


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"release": "Bad_Name"}, "release"),
        ({"namespace": "--kubeconfig=/etc/x"}, "namespace"),
        ({"namespace": "kube-system"}, "namespace: starts with 'kube-'"),
        ({"timeouts": {"app": 1}}, "timeouts.app"),
        ({"chart": {"path": "../../etc"}}, "chart"),
        ({"colour": "blue"}, "colour"),
        ("not an object", "(request)"),
    ],
)
async def test_workflow_rejects_invalid_request(
    temporal_env: WorkflowEnvironment, raw: Any, field: str
) -> None:
    """Invalid input fails the workflow at once, naming the field; nothing runs,
    and the status shows the run invalid with the same message."""
    queue, standins = f"tq-{uuid.uuid4().hex[:8]}", StandIns()
    async with worker(temporal_env, queue, standins):
        handle = await start(temporal_env, queue, raw)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        status = await handle.query("status", result_type=DeployStatus)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "InvalidRequest"
    assert cause.non_retryable
    assert field in cause.message or "JSON object" in cause.message
    assert sum(standins.applied.values()) == 0
    assert status.state == "invalid"
    assert status.message == cause.message


async def start_listed(
    env: WorkflowEnvironment, queue: str, release: str, fields: dict[str, Any]
) -> WorkflowHandle[Any, Any]:
    """Start a deploy of release in namespace ns, with the search attributes
    that the client sets at start and the extra request fields."""
    return await env.client.start_workflow(
        "VentrosDeploy",
        {"release": release, "namespace": "ns", **fields},
        id=f"wf-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
        search_attributes=start_attributes(
            TemporalSettings(search_attributes=True), release, "ns"
        ),
    )


async def test_workflow_sets_phase_search_attribute(
    temporal_env: WorkflowEnvironment,
) -> None:
    """With release and namespace attributes set at start, the workflow keeps
    VentrosPhase current, so the UI's list filters by release and phase."""
    queue, standins = f"tq-{uuid.uuid4().hex[:8]}", StandIns()
    release = f"r{uuid.uuid4().hex[:6]}"
    async with worker(temporal_env, queue, standins):
        handle = await start_listed(temporal_env, queue, release, {})
        await handle.result()
    query = f'VentrosRelease = "{release}" AND VentrosPhase = "succeeded"'
    found: list[str] = []
    for _ in range(100):
        found = [w.id async for w in temporal_env.client.list_workflows(query)]
        if found:
            break
        await asyncio.sleep(0.1)
    assert found == [handle.id]


async def test_invalid_input_sets_phase_search_attribute(
    temporal_env: WorkflowEnvironment,
) -> None:
    """A run whose input cannot be parsed shows VentrosPhase=invalid in the
    UI's list, not the validating that the client set at start."""
    queue, standins = f"tq-{uuid.uuid4().hex[:8]}", StandIns()
    release = f"r{uuid.uuid4().hex[:6]}"
    async with worker(temporal_env, queue, standins):
        handle = await start_listed(
            temporal_env, queue, release, {"install_operators": "yes"}
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    await keep_history(handle, "deploy_invalid_input")
    # Describe reads the run's own attributes, not the list's index, so it
    # shows the upsert once the run has ended.
    description = await handle.describe()
    assert description.typed_search_attributes.get(PHASE_ATTRIBUTE) == "invalid"
    assert sum(standins.applied.values()) == 0


def record(status: DeployStatus, phase: Phase) -> PhaseRecord:
    return next(r for r in status.phases if r.phase is phase)


async def aborted(handle: WorkflowHandle[Any, Any]) -> ApplicationError:
    """Return the failure of an aborted deploy; fail if it does not end soon.

    Without the abort's cancel, a held activity never ends, so the bound here
    is a guard against hanging, not a measurement.
    """
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(handle.result(), timeout=60)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    return cause


async def test_abort_cancels_running_wait(temporal_env: WorkflowEnvironment) -> None:
    """An abort during a phase's wait cancels the wait. The deploy ends as
    aborted, the phase is marked stopped, the finished phases stay succeeded,
    and the worker's activity receives the cancellation."""
    queue, standins = f"tq-{uuid.uuid4().hex[:8]}", StandIns()
    standins.held_waits.add(Phase.APP)
    async with worker(temporal_env, queue, standins):
        handle = await start(temporal_env, queue, request())
        await asyncio.wait_for(standins.holding.wait(), timeout=60)
        await handle.execute_update("abort", "stop the app wait", result_type=str)
        cause = await aborted(handle)
        status = await handle.query("status", result_type=DeployStatus)

        for _ in range(300):
            if standins.cancelled:
                break
            await asyncio.sleep(0.05)
        history = await handle.fetch_history()
        await keep_history(handle, "deploy_abort_during_wait")

    assert cause.type == "Aborted"
    assert cause.non_retryable
    assert "stop the app wait" in cause.message
    assert status.state == "aborted"
    app = record(status, Phase.APP)
    assert app.state is PhaseState.ABORTED
    assert app.error == "stopped while running: stop the app wait"
    assert app.error_type == "Aborted"
    assert app.ended_at is not None
    for phase in PHASE_ORDER[:-1]:
        assert record(status, phase).state is PhaseState.SUCCEEDED
    assert standins.cancelled == [("wait", Phase.APP)]
    # The app never became ready, so no rollback may return to this deploy.
    assert standins.recorded == []
    kinds = {event.event_type for event in history.events}
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED in kinds
    assert EventType.EVENT_TYPE_MARKER_RECORDED in kinds


async def test_abort_waits_for_running_apply_to_stop(
    temporal_env: WorkflowEnvironment,
) -> None:
    """An abort during an apply ends the deploy only once the worker stopped
    the apply, so nothing is still applied after it reports aborted. A second
    abort keeps the first reason, and phases that had not started stay
    pending."""
    queue, standins = f"tq-{uuid.uuid4().hex[:8]}", StandIns()
    standins.held_applies.add(Phase.MIGRATION)
    async with worker(temporal_env, queue, standins):
        handle = await start(temporal_env, queue, request())
        await asyncio.wait_for(standins.holding.wait(), timeout=60)
        await handle.execute_update("abort", "stop the migration", result_type=str)
        # The run waits for the apply to stop, so it still takes updates.
        await handle.execute_update("abort", "second reason", result_type=str)
        cause = await aborted(handle)
        cancelled_at_end = list(standins.cancelled)
        status = await handle.query("status", result_type=DeployStatus)
    assert cause.type == "Aborted"
    assert cancelled_at_end == [("apply", Phase.MIGRATION)]
    migration = record(status, Phase.MIGRATION)
    assert migration.state is PhaseState.ABORTED
    assert migration.error == "stopped while running: stop the migration"
    assert "second reason" not in cause.message
    assert record(status, Phase.APP).state is PhaseState.PENDING
    assert standins.applied[Phase.APP] == 0


async def test_abort_signal_cancels_running_wait(
    temporal_env: WorkflowEnvironment,
) -> None:
    """The abort signal, for clients without updates, stops a running wait too."""
    queue, standins = f"tq-{uuid.uuid4().hex[:8]}", StandIns()
    standins.held_waits.add(Phase.DATA)
    async with worker(temporal_env, queue, standins):
        handle = await start(temporal_env, queue, request())
        await asyncio.wait_for(standins.holding.wait(), timeout=60)
        await handle.signal("abort-signal", "signalled stop")
        cause = await aborted(handle)
        status = await handle.query("status", result_type=DeployStatus)
    assert cause.type == "Aborted"
    assert record(status, Phase.DATA).state is PhaseState.ABORTED
    for phase in (Phase.TEMPORAL, Phase.MIGRATION, Phase.APP):
        assert record(status, phase).state is PhaseState.PENDING


async def test_abort_stops_validate(temporal_env: WorkflowEnvironment) -> None:
    """An abort during validate ends the deploy as aborted, with the reason
    as its message, and no phase starts."""
    queue, standins = f"tq-{uuid.uuid4().hex[:8]}", StandIns(hold_validate=True)
    async with worker(temporal_env, queue, standins):
        handle = await start(temporal_env, queue, request())
        await asyncio.wait_for(standins.holding.wait(), timeout=60)
        await handle.execute_update("abort", "first reason", result_type=str)
        cause = await aborted(handle)
        status = await handle.query("status", result_type=DeployStatus)

    assert cause.type == "Aborted"
    assert "first reason" in cause.message
    assert status.state == "aborted"
    assert status.message == "aborted: first reason"
    assert all(r.state is PhaseState.PENDING for r in status.phases)
    assert sum(standins.applied.values()) == 0


async def test_cancel_during_validate(temporal_env: WorkflowEnvironment) -> None:
    """A cancel request while validate runs ends the run as cancelled, not as
    a failed validate, and no phase starts."""
    queue, standins = f"tq-{uuid.uuid4().hex[:8]}", StandIns(hold_validate=True)
    async with worker(temporal_env, queue, standins):
        handle = await start(temporal_env, queue, request())
        await asyncio.wait_for(standins.holding.wait(), timeout=60)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), timeout=60)
        description = await handle.describe()

    assert isinstance(failure.value.cause, CancelledError)
    assert description.status is WorkflowExecutionStatus.CANCELED
    assert ("validate", Phase.BASE) in standins.cancelled
    assert sum(standins.applied.values()) == 0


async def cancel_held(
    env: WorkflowEnvironment,
    standins: StandIns,
    history_name: str | None = None,
    phase_waiting: Phase | None = None,
) -> tuple[DeployStatus, list[Any]]:
    """Start a deploy, and cancel it once a stand-in blocks (or once
    phase_waiting waits for a retry). Return the canceled run's last status
    and its history's events."""
    queue = f"tq-{uuid.uuid4().hex[:8]}"
    async with worker(env, queue, standins):
        handle = await start(env, queue, request())
        if phase_waiting is None:
            await asyncio.wait_for(standins.holding.wait(), timeout=60)
        else:
            await wait_for_state(handle, phase_waiting, PhaseState.WAITING_FOR_RETRY)
        raw, events = await cancel_until_ended(handle, history_name)
    return DeployStatus.model_validate(raw), events


async def test_cancel_during_wait_ends_run(temporal_env: WorkflowEnvironment) -> None:
    """A cancel request while a phase waits cancels the wait and ends the run
    as canceled. The phase shows it was stopped by the cancel, finished phases
    stay succeeded and later ones pending, and nothing more is applied."""
    standins = StandIns()
    standins.held_waits.add(Phase.TEMPORAL)
    status, _ = await cancel_held(temporal_env, standins)
    # A wait is cancelled without waiting for the worker, so its stand-in may
    # learn of it after the run ended.
    for _ in range(300):
        if standins.cancelled:
            break
        await asyncio.sleep(0.05)

    assert status.state == "canceled"
    assert status.message is not None
    assert status.message.startswith("canceled: a cancel request stopped the deploy")
    temporal = record(status, Phase.TEMPORAL)
    assert temporal.state is PhaseState.ABORTED
    assert temporal.error == "stopped while running: the run was canceled"
    assert temporal.error_type == "Canceled"
    assert temporal.ended_at is not None
    for phase in (Phase.BASE, Phase.DATA, Phase.MESSAGING, Phase.CACHE):
        assert record(status, phase).state is PhaseState.SUCCEEDED
    # The migration needs only the data phase, so it may have finished.
    assert record(status, Phase.APP).state is PhaseState.PENDING
    assert standins.applied[Phase.APP] == 0
    assert standins.cancelled == [("wait", Phase.TEMPORAL)]
    assert standins.recorded == []


async def test_cancel_during_apply_waits_for_it(
    temporal_env: WorkflowEnvironment,
) -> None:
    """A cancel request while a phase applies ends the run only once the
    worker stopped the apply, so nothing is applied after the run ended."""
    standins = StandIns()
    standins.held_applies.add(Phase.MIGRATION)
    status, events = await cancel_held(
        temporal_env, standins, "deploy_cancel_during_apply"
    )

    assert standins.cancelled == [("apply", Phase.MIGRATION)]
    assert record(status, Phase.MIGRATION).state is PhaseState.ABORTED
    assert record(status, Phase.APP).state is PhaseState.PENDING
    kinds = [event.event_type for event in events]
    # The run ended after the activity's cancellation was recorded.
    assert kinds.index(EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED) < kinds.index(
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED
    )


async def test_cancel_during_last_wait_ends_run(
    temporal_env: WorkflowEnvironment,
) -> None:
    """A cancel request during the app's wait, when no other phase is left,
    ends the run as canceled too."""
    standins = StandIns()
    standins.held_waits.add(Phase.APP)
    status, _ = await cancel_held(
        temporal_env, standins, "deploy_cancel_during_last_wait"
    )

    assert status.state == "canceled"
    assert record(status, Phase.APP).state is PhaseState.ABORTED
    for phase in PHASE_ORDER[:-1]:
        assert record(status, phase).state is PhaseState.SUCCEEDED


async def test_cancel_after_abort_stays_abort(
    temporal_env: WorkflowEnvironment,
) -> None:
    """A cancel request that comes while an abort stops an apply does not
    change how the run ends: it fails as aborted, with the abort's reason,
    once the worker stopped the apply."""
    queue, standins = f"tq-{uuid.uuid4().hex[:8]}", StandIns()
    standins.held_applies.add(Phase.MIGRATION)
    async with worker(temporal_env, queue, standins):
        handle = await start(temporal_env, queue, request())
        await asyncio.wait_for(standins.holding.wait(), timeout=60)
        await handle.execute_update("abort", "operator gave up", result_type=str)
        await handle.cancel()
        cause = await aborted(handle)
        cancelled_at_end = list(standins.cancelled)
        status = await handle.query("status", result_type=DeployStatus)

    assert cause.type == "Aborted"
    assert "operator gave up" in cause.message
    assert status.state == "aborted"
    assert status.message == "aborted: operator gave up"
    migration = record(status, Phase.MIGRATION)
    assert migration.state is PhaseState.ABORTED
    assert migration.error == "stopped while running: operator gave up"
    assert cancelled_at_end == [("apply", Phase.MIGRATION)]
    await keep_history(handle, "deploy_abort_then_cancel")


async def test_cancel_while_waiting_for_retry(
    temporal_env: WorkflowEnvironment,
) -> None:
    """A cancel request while a failed phase waits for a retry ends the run as
    canceled. The phase then shows failed and keeps its error."""
    standins = StandIns()
    standins.failures[Phase.CACHE] = 1
    status, _ = await cancel_held(temporal_env, standins, phase_waiting=Phase.CACHE)

    assert status.state == "canceled"
    cache = record(status, Phase.CACHE)
    assert cache.state is PhaseState.FAILED
    assert cache.error_type == "TerminalFailure"
    assert record(status, Phase.APP).state is PhaseState.PENDING


async def record_history(env: WorkflowEnvironment) -> str:
    """Run a deploy with one failed-and-retried phase; return its history as JSON."""
    queue, standins = f"tq-{uuid.uuid4().hex[:8]}", StandIns()
    standins.failures[Phase.DATA] = 1
    async with worker(env, queue, standins):
        handle = await start(env, queue, request())
        await wait_for_state(handle, Phase.DATA, PhaseState.WAITING_FOR_RETRY)
        await handle.execute_update("retry", "data", result_type=list[str])
        await handle.result()
        history = await handle.fetch_history()
    return history.to_json()


async def test_workflow_replays_recorded_history() -> None:
    """The recorded history (deploy, data failure, retry update) replays without
    nondeterminism. Regenerate it only for an intended, versioned change:
    VENTROS_RECORD_HISTORY=1 python -m pytest -k replays."""
    if os.environ.get(RECORD_HISTORY) == "1":
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(
                Path(__file__).parents[2] / ".venv" / "bin" / "temporal"
            ),
            data_converter=pydantic_data_converter,
        )
        try:
            HISTORY_FILE.parent.mkdir(exist_ok=True)
            HISTORY_FILE.write_text(await record_history(env))
        finally:
            await env.shutdown()
    result = await replay(HISTORY_FILE)
    assert result.replay_failure is None


# Histories of real runs against the local cluster, saved by the lifecycle tests
# named here when they run with VENTROS_RECORD_HISTORY=1.
LIFECYCLE_HISTORIES = {
    "destroy_with_drain": "tests/lifecycle/test_destroy.py::"
    "test_destroy_waits_for_queues",
    "rollback": "tests/lifecycle/test_rollback.py::test_rollback_previous_version",
}


def test_recorded_histories_present() -> None:
    """Every history the replay tests rely on is recorded."""
    for name, recorder in LIFECYCLE_HISTORIES.items():
        path = HISTORIES / f"{name}.json"
        assert path.exists(), (
            f"missing {path}; record it with VENTROS_RECORD_HISTORY=1 python -m "
            f"pytest {recorder}"
        )


@pytest.mark.parametrize(
    "path", sorted(HISTORIES.glob("*.json")), ids=lambda path: path.stem
)
async def test_every_history_replays(path: Path) -> None:
    """Each recorded history replays without nondeterminism, including older
    versions kept next to the newest."""
    result = await replay(path)
    assert result.replay_failure is None


def load_history(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))


async def replay(path: Path) -> WorkflowReplayResult:
    """Replay the history in path with every workflow the worker runs."""
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    return await replayer.replay_workflow(load_history(path))


@pytest.mark.parametrize(
    ("history", "fields"),
    [
        ("deploy_with_retry", {"timeouts": {"app": "600"}, "install_operators": "yes"}),
        ("deploy_with_retry", {"values": {"weight": float("nan")}}),
        ("destroy_with_drain", {"force": "false", "drain_timeout_s": 60.0}),
        ("deploy_with_retry", {"namespace": "kube-apps"}),
        (
            "destroy_release_not_found",
            {"namespace": "default", "delete_data": True, "delete_namespace": True},
        ),
    ],
)
async def test_lax_input_of_old_runs_replays(
    history: str, fields: dict[str, Any]
) -> None:
    """A run recorded before the strict JSON types took "600" as 600 and
    "yes" as true, and scheduled its activities. Its replay takes the input the
    same way, instead of failing the workflow where the history has an
    activity: the strict parse applies only to runs with its patch. So does
    the check of the cluster's namespaces (kube-, and default for a
    namespace deletion)."""
    path = HISTORIES / f"{history}.json"
    data = json.loads(path.read_text())
    started = data["events"][0]["workflowExecutionStartedEventAttributes"]
    payload = started["input"]["payloads"][0]
    request = json.loads(base64.b64decode(payload["data"]))
    request.update(fields)
    payload["data"] = base64.b64encode(json.dumps(request).encode()).decode()
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(
        WorkflowHistory.from_json(path.stem, data), raise_on_replay_failure=False
    )
    assert result.replay_failure is None, result.replay_failure
