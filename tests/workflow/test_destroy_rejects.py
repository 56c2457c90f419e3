"""A destroy whose first step rejects the request ends at once, as invalid.

Stand-in activities fail a chosen step with a chosen error type, on the real
Temporal dev server. The real teardown raises these types in its first step:
tests/lifecycle/test_destroy.py checks that on the local cluster.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from deployer import contracts
from deployer.contracts import (
    GoneRequest,
    NamespaceRequest,
    StatusResult,
    TeardownRequest,
    TeardownResult,
)
from deployer.lifecycle import DestroyStatus
from deployer.phases import TEARDOWN_ORDER, Phase, PhaseState
from tests.cli.test_cli import run_cli
from tests.cli.test_cli_runs import RELEASE, client_env
from worker.main import WORKFLOWS


class FailingTeardown:
    """Teardown stand-ins whose step `phase` fails with `error_type` once."""

    def __init__(self, phase: Phase, error_type: str) -> None:
        self.phase = phase
        self.error_type = error_type
        self.failed = False
        self.torn_down: list[Phase] = []

    @activity.defn(name=contracts.TEARDOWN_PHASE)
    async def teardown_phase(self, job: TeardownRequest) -> TeardownResult:
        self.torn_down.append(job.phase)
        if job.phase is self.phase and not self.failed:
            self.failed = True
            raise ApplicationError(
                f"step {job.phase.value} failed as {self.error_type}",
                type=self.error_type,
                non_retryable=True,
            )
        return TeardownResult(phase=job.phase)

    @activity.defn(name=contracts.WAIT_DELETED)
    async def wait_deleted(self, job: GoneRequest) -> StatusResult:
        return StatusResult()

    @activity.defn(name=contracts.WAIT_DRAINED)
    async def wait_drained(self, job: Any) -> StatusResult:
        return StatusResult(statuses={contracts.DRAIN_KEY: "no queues"})

    @activity.defn(name=contracts.DELETE_NAMESPACE)
    async def delete_namespace(self, job: NamespaceRequest) -> StatusResult:
        return StatusResult()

    def activities(self) -> list[Any]:
        return [
            self.teardown_phase,
            self.wait_deleted,
            self.wait_drained,
            self.delete_namespace,
        ]


async def start_destroy(
    client: Client, task_queue: str, namespace: str | None = None
) -> WorkflowHandle[Any, Any]:
    """Start a destroy that deletes the namespace, by default a new one."""
    namespace = namespace or f"ns-{uuid.uuid4().hex[:8]}"
    return await client.start_workflow(
        "VentrosDestroy",
        {
            "release": RELEASE,
            "namespace": namespace,
            "delete_data": True,
            "delete_namespace": True,
        },
        id=f"destroy-{namespace}.{RELEASE}",
        task_queue=task_queue,
    )


@asynccontextmanager
async def destroy_run(
    client: Client, standins: FailingTeardown, namespace: str | None = None
) -> AsyncIterator[tuple[str, WorkflowHandle[Any, Any]]]:
    """Start a destroy on a new task queue, with a worker of standins polling it."""
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=standins.activities(),
    ):
        yield task_queue, await start_destroy(client, task_queue, namespace)


async def status_of(handle: WorkflowHandle[Any, Any]) -> DestroyStatus:
    return await handle.query("status", result_type=DestroyStatus)


async def step_state(
    handle: WorkflowHandle[Any, Any], phase: Phase, state: PhaseState
) -> DestroyStatus:
    """Poll the destroy's status until step phase is in state."""
    for _ in range(200):
        status = await status_of(handle)
        record = next(r for r in status.phases if r.phase is phase)
        if record.state is state:
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"step {phase.value} never became {state.value}: {status}")


@pytest.mark.parametrize(
    "error_type", sorted(contracts.DESTROY_REJECTED_TYPES), ids=lambda kind: kind
)
async def test_rejected_first_step_ends_run(
    temporal_env: WorkflowEnvironment,
    encrypted_client: Client,
    key_ring_file: Path,
    error_type: str,
) -> None:
    """A first step that rejects the request ends the destroy as invalid. The
    step failed after one attempt, no later step ran, and status exits 2."""
    standins = FailingTeardown(TEARDOWN_ORDER[0], error_type)
    async with destroy_run(encrypted_client, standins) as (task_queue, handle):
        with pytest.raises(WorkflowFailureError) as raised:
            await asyncio.wait_for(handle.result(), timeout=30)
        status = await status_of(handle)
        shown = await run_cli(
            ["status", handle.id], client_env(temporal_env, task_queue, key_ring_file)
        )

    cause = raised.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == error_type
    assert status.state == "invalid"
    assert status.message == f"step app failed as {error_type}"
    first = status.phases[0]
    assert first.phase is TEARDOWN_ORDER[0]
    assert first.state is PhaseState.FAILED
    assert first.attempts == 1
    assert first.error_type == error_type
    assert all(r.state is PhaseState.PENDING for r in status.phases[1:])
    assert standins.torn_down == [TEARDOWN_ORDER[0]]
    assert shown.returncode == 2, shown.stdout + shown.stderr


@pytest.mark.parametrize(
    ("phase", "error_type"),
    [
        (TEARDOWN_ORDER[0], contracts.OTHER_RUN_ACTIVE),
        (Phase.DATA, contracts.RELEASE_NOT_FOUND),
    ],
    ids=["other-run-first-step", "release-not-found-later-step"],
)
async def test_other_failures_wait_for_retry(
    encrypted_client: Client, phase: Phase, error_type: str
) -> None:
    """Another run of the release may end, so that error leaves the first step
    waiting for a retry, and so does any error of a later step. The retry
    then finishes the destroy."""
    standins = FailingTeardown(phase, error_type)
    async with destroy_run(encrypted_client, standins) as (_, handle):
        waiting = await step_state(handle, phase, PhaseState.WAITING_FOR_RETRY)
        retried = await handle.execute_update("retry", phase.value, result_type=list)
        await asyncio.wait_for(handle.result(), timeout=30)
        done = await status_of(handle)

    assert waiting.state == "running"
    record = next(r for r in waiting.phases if r.phase is phase)
    assert record.error_type == error_type
    assert retried == [phase.value]
    assert done.state == "succeeded"
    assert standins.torn_down.count(phase) == 2


async def test_rejected_destroy_status_without_worker(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """With no worker to run the status query, status shows the steps from
    the failure that ended the run and still exits 2 for a release that is not
    there."""
    standins = FailingTeardown(TEARDOWN_ORDER[0], contracts.RELEASE_NOT_FOUND)
    async with destroy_run(encrypted_client, standins) as (task_queue, handle):
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(handle.result(), timeout=30)
    shown = await run_cli(
        ["status", handle.id], client_env(temporal_env, task_queue, key_ring_file)
    )
    assert shown.returncode == 2, shown.stdout + shown.stderr
    assert re.search(rf"{re.escape(handle.id)} \(ns-[0-9a-f]+\): invalid", shown.stdout)
    assert re.search(r"app +│ failed +│ +1 │", shown.stdout), shown.stdout
    assert "error type: ReleaseNotFound" in shown.stdout
    assert "status query" not in shown.stdout


@pytest.mark.parametrize("namespace", ["default", "kube-system"])
async def test_cluster_namespace_deletion_rejected(
    encrypted_client: Client, namespace: str
) -> None:
    """A destroy started straight through Temporal that would delete a
    namespace of the cluster fails as invalid before any step runs."""
    standins = FailingTeardown(TEARDOWN_ORDER[0], contracts.RELEASE_NOT_FOUND)
    async with destroy_run(encrypted_client, standins, namespace) as (_, handle):
        with pytest.raises(WorkflowFailureError) as raised:
            await asyncio.wait_for(handle.result(), timeout=30)
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == contracts.INVALID_REQUEST
    assert cause.non_retryable
    assert f"would delete namespace '{namespace}'" in cause.message
    assert standins.torn_down == []
