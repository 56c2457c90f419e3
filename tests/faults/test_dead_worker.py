"""A worker that dies in a long wait is noticed by the heartbeat timeout.

The simulator is steered so that one phase waits for its whole 300 s
timeout: PostgreSQL stays Creating (data) or the migration Job runs for 10
minutes (migration). The test kills the worker during that wait and starts a
new one. The server must then time out the dead attempt by its heartbeat
(WAIT_HEARTBEAT_TIMEOUT) and start attempt 2 on the new worker, long before
the phase timeout would end the wait.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import pytest
from temporalio.api.enums.v1 import TimeoutType
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.kubeapi import KubeClient, well_known
from testbed.cluster import REPO_ROOT, LocalCluster
from tests.conftest import deploy_request
from tests.faults.conftest import WorkerFactory, dev_server_address
from tests.faults.harness import start_deploy, wait_for_activity
from workflows.deploy import WAIT_HEARTBEAT_TIMEOUT

NAMESPACE = well_known("v1", "Namespace")
PHASE_TIMEOUT_S = 300
# Time allowed on top of the heartbeat timeout: the retry back-off (1 s) and
# the new worker's first poll.
MARGIN_S = 20.0


async def pending(
    handle: WorkflowHandle[Any, Any], activity_id: str
) -> PendingActivityInfo:
    description = await handle.describe()
    for info in description.raw_description.pending_activities:
        if info.activity_id == activity_id:
            return info
    raise AssertionError(f"activity {activity_id} is no longer pending")


async def second_attempt(
    handle: WorkflowHandle[Any, Any], activity_id: str, worker_pid: int
) -> tuple[float, PendingActivityInfo]:
    """Wait until attempt 2 or later of the activity runs on the given worker.

    Returns the wall time when attempt 2 was first seen (the dead attempt had
    timed out) and the activity's pending info once attempt 2 runs.
    """
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    seen_at: float | None = None
    while time.monotonic() < deadline:
        info = await pending(handle, activity_id)
        if info.attempt >= 2 and seen_at is None:
            seen_at = time.time()
        if info.attempt >= 2 and info.last_worker_identity.startswith(f"{worker_pid}@"):
            assert seen_at is not None
            return seen_at, info
        await asyncio.sleep(0.2)
    raise AssertionError("the wait was not retried within the phase timeout")


async def kill_during_long_wait(
    temporal_env: WorkflowEnvironment,
    cluster: LocalCluster,
    kube: KubeClient,
    namespace: str,
    worker_factory: WorkerFactory,
    record_property: Any,
    phase: str,
    steer: dict[str, str],
) -> None:
    """Kill the worker in phase's wait, which steer makes last; check the retry."""
    await kube.merge_patch(NAMESPACE, namespace, {"metadata": {"annotations": steer}})
    timeouts = {name: 60 for name in deploy_request(namespace)["timeouts"]}
    timeouts[phase] = PHASE_TIMEOUT_S
    request = deploy_request(namespace, timeouts=timeouts)
    worker = worker_factory(dev_server_address(temporal_env), cluster.kubeconfig)
    await worker.start()
    handle = await start_deploy(temporal_env.client, request, worker.task_queue)
    try:
        first = await wait_for_activity(handle, f"{phase}: wait", worker.pid)
        # Let the wait run a while, as a real long wait would, before the crash.
        await asyncio.sleep(5)
        killed_at = worker.kill()
        await worker.start()
        seen_at, retried = await second_attempt(handle, first.activity_id, worker.pid)
    finally:
        await handle.terminate("fault test finished")

    noticed_s = seen_at - killed_at
    restarted_s = retried.last_started_time.ToNanoseconds() / 1e9 - killed_at
    record_property(
        "attempt 2 seen (dead attempt timed out)", f"{noticed_s:.1f} s after kill"
    )
    record_property(
        "attempt 2 started on the new worker", f"{restarted_s:.1f} s after kill"
    )
    timeout_type = retried.last_failure.timeout_failure_info.timeout_type
    assert timeout_type == TimeoutType.TIMEOUT_TYPE_HEARTBEAT
    assert noticed_s <= WAIT_HEARTBEAT_TIMEOUT.total_seconds() + 1
    assert restarted_s < WAIT_HEARTBEAT_TIMEOUT.total_seconds() + MARGIN_S
    assert restarted_s < PHASE_TIMEOUT_S / 5


async def test_dead_worker_data_wait(
    temporal_env: WorkflowEnvironment,
    cluster: LocalCluster,
    kube: KubeClient,
    namespace: str,
    worker_factory: WorkerFactory,
    record_property: Any,
) -> None:
    """A worker killed in the data wait is replaced within the heartbeat."""
    await kill_during_long_wait(
        temporal_env, cluster, kube, namespace, worker_factory, record_property,
        "data", {"sim.ventros.io/postgres-outcome": "creating"},
    )  # fmt: skip


@pytest.mark.faults
async def test_dead_worker_migration_wait(
    temporal_env: WorkflowEnvironment,
    cluster: LocalCluster,
    kube: KubeClient,
    namespace: str,
    worker_factory: WorkerFactory,
    record_property: Any,
) -> None:
    """A worker killed in the migration wait is replaced within the heartbeat."""
    await kill_during_long_wait(
        temporal_env, cluster, kube, namespace, worker_factory, record_property,
        "migration", {"sim.ventros.io/job-duration": "600"},
    )  # fmt: skip


async def test_status_after_worker_kill(
    temporal_env: WorkflowEnvironment,
    cluster: LocalCluster,
    kube: KubeClient,
    namespace: str,
    worker_factory: WorkerFactory,
) -> None:
    """status shows a running deploy right after its worker was killed and a
    new one started. Its first query goes to the dead worker's sticky queue
    and times out, so the client queries again, and the new worker handles it."""
    steer = {"sim.ventros.io/postgres-outcome": "creating"}
    await kube.merge_patch(NAMESPACE, namespace, {"metadata": {"annotations": steer}})
    request = deploy_request(namespace)
    worker = worker_factory(dev_server_address(temporal_env), cluster.kubeconfig)
    await worker.start()
    handle = await start_deploy(temporal_env.client, request, worker.task_queue)
    try:
        await wait_for_activity(handle, "data: wait", worker.pid)
        worker.kill()
        await worker.start()
        status = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "client",
            "status",
            handle.id,
            env=worker.env(),
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await status.communicate()
    finally:
        await handle.terminate("fault test finished")

    assert status.returncode == 0, stderr.decode()
    assert f"{handle.id} ({namespace}): running" in stdout.decode()
