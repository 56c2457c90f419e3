"""Worker crashes: SIGKILL the worker process at chosen points of a deploy.

Each plan is one deploy (or an install and then an upgrade) with a list of
kill points in the order the deploy reaches them. At each point the test
waits until the named activity runs on the current worker, waits the delay,
kills the worker's whole process group (helm included) and starts a new
worker. The deploy must still succeed with one attempt per phase, and the
migration Job of each app version must be created exactly once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.kubeapi import KubeClient
from deployer.inputs import workflow_id_for
from deployer.phases import DeployStatus, PhaseState
from testbed.cluster import LocalCluster
from tests.conftest import deploy_request
from tests.faults.conftest import WorkerFactory, dev_server_address
from tests.faults.harness import (
    JobCreations,
    KillPointMissedError,
    WorkerProcess,
    final_status,
    running_activities,
    runs_on,
    wait_for_activity,
)

PHASE_TIMEOUT_S = 180


@dataclass(frozen=True)
class KillPoint:
    """Kill the worker delay_s after the activity named by step started on it.

    step is the start of the activity summary: "validate", "base: apply",
    "data: wait" and so on.
    """

    step: str
    delay_s: float

    def __str__(self) -> str:
        return f"{self.step} +{self.delay_s:.1f} s"


QUICK_PLAN = (
    KillPoint("base: apply", 0.5),
    KillPoint("data: wait", 1.0),
    KillPoint("migration: wait", 0.5),
)
# 20 points over all phases, apply and wait, in four installs and an upgrade.
# A kill ends every activity that runs at that moment, and they resume only
# after the heartbeat timeout, when their objects are often ready already. So
# a plan has at most one point per level of the dependency order: validate,
# base, then one of data, messaging and cache, then one of temporal and
# migration, then app.
INSTALL_PLANS = {
    "install-a": (
        KillPoint("validate", 0.0),
        KillPoint("base: apply", 0.3),
        KillPoint("data: wait", 0.5),
        KillPoint("migration: apply", 0.0),
        KillPoint("app: wait", 0.5),
    ),
    "install-b": (
        KillPoint("validate", 0.0),
        KillPoint("base: wait", 0.2),
        KillPoint("messaging: wait", 0.5),
        KillPoint("temporal: apply", 0.5),
        KillPoint("app: apply", 0.0),
    ),
    "install-c": (
        KillPoint("base: apply", 1.5),
        KillPoint("data: apply", 0.1),
        KillPoint("migration: wait", 0.5),
        KillPoint("app: wait", 0.2),
    ),
    "install-d": (
        KillPoint("cache: wait", 0.3),
        KillPoint("temporal: wait", 1.0),
        KillPoint("app: apply", 1.0),
    ),
}
# On an upgrade only base, migration and app have work to wait for.
UPGRADE_PLAN = (
    KillPoint("base: apply", 0.8),
    KillPoint("migration: apply", 0.8),
    KillPoint("app: wait", 0.5),
)


def short_name(summary: str) -> str:
    """Return "data: wait" for "data: wait for ...", "validate" for validate."""
    if summary.startswith("validate"):
        return "validate"
    return " ".join(summary.split(" ", 2)[:2])


def request_for(namespace: str, app_version: str) -> dict[str, Any]:
    timeouts = {
        phase: PHASE_TIMEOUT_S for phase in deploy_request(namespace)["timeouts"]
    }
    return deploy_request(namespace, app_version=app_version, timeouts=timeouts)


async def deploy_with_kills(
    client: Client,
    worker: WorkerProcess,
    request: dict[str, Any],
    plan: tuple[KillPoint, ...],
) -> tuple[DeployStatus, list[str]]:
    """Run one deploy, killing and restarting the worker at each point.

    Returns the final status and, per kill, what ran on the worker when it died.
    """
    handle = await client.start_workflow(
        "VentrosDeploy",
        request,
        id=workflow_id_for(request["namespace"], request["release"]),
        task_queue=worker.task_queue,
    )
    landed: list[str] = []
    for point in plan:
        missed = ""
        try:
            await wait_for_activity(handle, point.step, worker.pid)
            await asyncio.sleep(point.delay_s)
        except KillPointMissedError:
            # A short step (validate, a quick apply) can end between two
            # polls. The worker is killed at once then, wherever the deploy is.
            missed = " (missed)"
        running = [
            short_name(activity.summary)
            for activity in await running_activities(handle)
            if runs_on(activity, worker.pid)
        ]
        worker.kill()
        where = ", ".join(running) or "no activity"
        landed.append(f"{point}{missed}: killed during {where}")
        await worker.start()
    return await final_status(handle, timeout_s=300), landed


def assert_survived(status: DeployStatus) -> None:
    assert status.state == "succeeded", status.model_dump_json(indent=1)
    for record in status.phases:
        assert record.state is PhaseState.SUCCEEDED, record
        assert record.attempts == 1, record


async def run_plans(
    temporal_env: WorkflowEnvironment,
    cluster: LocalCluster,
    kube: KubeClient,
    namespace: str,
    worker_factory: WorkerFactory,
    plans: list[tuple[str, tuple[KillPoint, ...]]],
    record_property: Any,
) -> dict[str, int]:
    """Deploy each (app version, plan) in turn; return Job creations per name."""
    worker = worker_factory(dev_server_address(temporal_env), cluster.kubeconfig)
    await worker.start()
    kills: list[str] = []
    async with JobCreations(kube, namespace) as creations:
        for app_version, plan in plans:
            request = request_for(namespace, app_version)
            status, landed = await deploy_with_kills(
                temporal_env.client, worker, request, plan
            )
            kills += landed
            assert_survived(status)
    record_property("kills survived", len(kills))
    record_property("kill points", kills)
    record_property("migration Job creations", creations.per_name())
    return creations.per_name()


async def test_worker_kill_quick(
    temporal_env: WorkflowEnvironment,
    cluster: LocalCluster,
    kube: KubeClient,
    slow_namespace: str,
    worker_factory: WorkerFactory,
    record_property: Any,
) -> None:
    """A deploy survives 3 worker kills and creates its migration Job once."""
    created = await run_plans(
        temporal_env, cluster, kube, slow_namespace, worker_factory,
        [("1.0.0", QUICK_PLAN)], record_property,
    )  # fmt: skip
    assert created == {"ventros-crm-migrate-1-0-0": 1}


@pytest.mark.faults
@pytest.mark.parametrize("plan", sorted(INSTALL_PLANS))
async def test_worker_kill_install(
    temporal_env: WorkflowEnvironment,
    cluster: LocalCluster,
    kube: KubeClient,
    slow_namespace: str,
    worker_factory: WorkerFactory,
    record_property: Any,
    plan: str,
) -> None:
    """An install survives 3-5 worker kills over its phases; one migration Job."""
    created = await run_plans(
        temporal_env, cluster, kube, slow_namespace, worker_factory,
        [("1.0.0", INSTALL_PLANS[plan])], record_property,
    )  # fmt: skip
    assert created == {"ventros-crm-migrate-1-0-0": 1}


@pytest.mark.faults
async def test_worker_kill_upgrade(
    temporal_env: WorkflowEnvironment,
    cluster: LocalCluster,
    kube: KubeClient,
    slow_namespace: str,
    worker_factory: WorkerFactory,
    record_property: Any,
) -> None:
    """An upgrade survives 3 worker kills; one migration Job per app version."""
    created = await run_plans(
        temporal_env, cluster, kube, slow_namespace, worker_factory,
        [("1.0.0", ()), ("1.1.0", UPGRADE_PLAN)], record_property,
    )  # fmt: skip
    assert created == {"ventros-crm-migrate-1-0-0": 1, "ventros-crm-migrate-1-1-0": 1}
