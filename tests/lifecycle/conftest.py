"""Fixtures and helpers for upgrade, rollback and destroy tests.

They run the real workflows and activities on the real Temporal dev server
against the local cluster. The RabbitMQ management API is the test bed's
stand-in (testbed.rabbitmq_management), started in the test process on a
free loopback port, so queue depths follow the
``sim.ventros.io/rabbitmq-messages`` annotation.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.kubeapi import JsonObject, KubeClient, well_known
from deployer import codec
from deployer.lifecycle import destroy_workflow_id_for
from deployer.phases import DeployStatus, PhaseRecord, PhaseState
from deployer.settings import WorkerSettings
from testbed.rabbitmq_management import ManagementApi
from tests.conftest import CLIENT_KEY_RING, REPO_ROOT, deploy_request

RELEASE = "ventros-crm"
RABBITMQ = well_known("rabbitmq.com/v1beta1", "RabbitmqCluster")
POSTGRESQL = well_known("acid.zalan.do/v1", "postgresql")
DEPLOYMENT = well_known("apps/v1", "Deployment")
JOB = well_known("batch/v1", "Job")
NAMESPACE = well_known("v1", "Namespace")
MESSAGES = "sim.ventros.io/rabbitmq-messages"


@pytest_asyncio.fixture(scope="session")
async def management_url(kube: KubeClient) -> AsyncIterator[str]:
    """The URL template of the management API stand-in, for the worker setting."""
    api = ManagementApi(kube)
    port = await api.start(0)
    yield f"http://127.0.0.1:{port}/api/namespaces/{{namespace}}/{{name}}"
    await api.stop()


@pytest.fixture
def lifecycle_settings(
    worker_settings: WorkerSettings, management_url: str, tmp_path: Path
) -> WorkerSettings:
    """The worker's settings, with a key ring file of its own, so that these
    tests deploy with the keyed secrets digest."""
    key_ring = tmp_path / "worker-keys.json"
    codec.generate_key_ring_file(str(key_ring))
    return worker_settings.model_copy(
        update={"rabbitmq_management_url": management_url, "codec_keys_file": key_ring}
    )


async def deploy(
    env: WorkflowEnvironment,
    settings: WorkerSettings,
    namespace: str,
    version: str | None,
    **overrides: Any,
) -> DeployStatus:
    """Deploy one app version, or the chart's default for None, and return the
    final status."""
    request = deploy_request(namespace, app_version=version, **overrides)
    handle = await env.client.start_workflow(
        "VentrosDeploy",
        request,
        id=f"deploy-{namespace}.{RELEASE}",
        task_queue=settings.task_queue,
    )
    return DeployStatus.model_validate(await handle.result())


async def start_deploy(
    env: WorkflowEnvironment,
    settings: WorkerSettings,
    namespace: str,
    version: str | None,
    **overrides: Any,
) -> WorkflowHandle[Any, Any]:
    return await env.client.start_workflow(
        "VentrosDeploy",
        deploy_request(namespace, app_version=version, **overrides),
        id=f"deploy-{namespace}.{RELEASE}",
        task_queue=settings.task_queue,
    )


async def start_destroy(
    env: WorkflowEnvironment, settings: WorkerSettings, namespace: str, **fields: Any
) -> WorkflowHandle[Any, Any]:
    request = {"release": RELEASE, "namespace": namespace, **fields}
    return await env.client.start_workflow(
        "VentrosDestroy",
        request,
        id=destroy_workflow_id_for(namespace, RELEASE),
        task_queue=settings.task_queue,
    )


def record(status: DeployStatus, phase: str) -> PhaseRecord:
    return next(r for r in status.phases if r.phase.value == phase)


async def wait_for_step(
    handle: WorkflowHandle[Any, Any],
    phase: str,
    state: PhaseState,
    timeout_s: float = 120,
) -> DeployStatus:
    """Poll the status query until the phase (or removal step) reaches state."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        status = await handle.query("status", result_type=DeployStatus)
        if record(status, phase).state is state:
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"{phase} never reached {state.value}: "
                + status.model_dump_json(indent=1)
            )
        await asyncio.sleep(0.3)


async def annotate(
    kube: KubeClient, rtype: Any, name: str, namespace: str | None, values: dict
) -> None:
    await kube.merge_patch(
        rtype, name, {"metadata": {"annotations": values}}, namespace
    )


def app_image_tag(deployment: JsonObject) -> str:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    app = next(c for c in containers if c["name"] == "app")
    return str(app["image"]).rpartition(":")[2]


def cli_env(env: WorkflowEnvironment, settings: WorkerSettings) -> dict[str, str]:
    variables = dict(os.environ)
    variables.update(
        {
            "VENTROS_DEPLOY_TEMPORAL_ADDRESS": (
                env.client.service_client.config.target_host
            ),
            "VENTROS_DEPLOY_TASK_QUEUE": settings.task_queue,
            "VENTROS_DEPLOY_CODEC_KEYS": CLIENT_KEY_RING.to_json(),
            "COLUMNS": "200",
        }
    )
    variables.pop("VENTROS_DEPLOY_CODEC_KEYS_FILE", None)
    return variables


async def run_cli(
    args: list[str], env: dict[str, str], timeout_s: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run `python -m client` as a subprocess, without blocking the event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "client",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO_ROOT,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    return subprocess.CompletedProcess(
        args, process.returncode or 0, out.decode(), err.decode()
    )
