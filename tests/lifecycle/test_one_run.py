"""At most one deploy, rollback or destroy of a release runs at a time, also
when the runs are started without the client, as `temporal workflow start`
does. Each run checks the others in its first step, and rejects there a
workflow id other than its release's."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.kubeapi import KubeClient
from deployer import contracts
from deployer.inputs import workflow_id_for
from deployer.lifecycle import (
    DestroyStatus,
    destroy_workflow_id_for,
    rollback_workflow_id_for,
)
from deployer.phases import PhaseState
from deployer.settings import WorkerSettings
from tests.conftest import deploy_request, running_worker
from tests.lifecycle.conftest import DEPLOYMENT, RELEASE, record, wait_for_step

TYPES = {
    "deploy": "VentrosDeploy",
    "rollback": "VentrosRollback",
    "destroy": "VentrosDestroy",
}
ID_OF = {
    "deploy": workflow_id_for,
    "rollback": rollback_workflow_id_for,
    "destroy": destroy_workflow_id_for,
}


def request_of(kind: str, namespace: str) -> dict[str, Any]:
    if kind == "deploy":
        return deploy_request(namespace)
    if kind == "destroy":
        return {"release": RELEASE, "namespace": namespace, "force": True}
    return {"release": RELEASE, "namespace": namespace}


async def hold(client: Client, kind: str, namespace: str) -> WorkflowHandle[Any, Any]:
    """Start a run of kind under its release's id on a queue no worker polls,
    so that it stays running."""
    return await client.start_workflow(
        TYPES[kind],
        request_of(kind, namespace),
        id=ID_OF[kind](namespace, RELEASE),
        task_queue=f"held-{uuid.uuid4().hex[:8]}",
    )


async def rejection_of(
    handle: WorkflowHandle[Any, Any], kind: str
) -> tuple[str | None, str]:
    """Return the error type and message with which the run of kind refused.

    A deploy and a rollback fail, and so does a destroy that its first step
    rejected as invalid. A destroy's first step that another run blocks
    waits for a retry, and is aborted here.
    """
    if kind == "destroy":
        ended = asyncio.ensure_future(handle.result())
        waiting = asyncio.ensure_future(
            wait_for_step(handle, "app", PhaseState.WAITING_FOR_RETRY, timeout_s=60)
        )
        await asyncio.wait([ended, waiting], return_when=asyncio.FIRST_COMPLETED)
        if waiting.done() and not ended.done():
            await handle.execute_update("abort", "test ends", result_type=str)
        else:
            waiting.cancel()
        with pytest.raises(WorkflowFailureError):
            await ended
        status = await handle.query("status", result_type=DestroyStatus)
        step = record(status, "app")
        return step.error_type, step.error or ""
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(handle.result(), timeout=60)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError)
    return cause.type, cause.message


@pytest.mark.parametrize(
    ("running", "started"),
    [
        ("rollback", "deploy"),
        ("rollback", "destroy"),
        ("deploy", "rollback"),
        ("destroy", "rollback"),
    ],
)
async def test_rollback_excludes_deploy_and_destroy(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
    running: str,
    started: str,
) -> None:
    """A run started while a run of another kind of the release runs fails
    its first step as OtherRunActive, naming the other run, how to follow it
    and how to stop it, and changes nothing in the namespace."""
    blocker = await hold(temporal_env.client, running, namespace)
    try:
        async with running_worker(temporal_env.client, lifecycle_settings):
            handle = await temporal_env.client.start_workflow(
                TYPES[started],
                request_of(started, namespace),
                id=ID_OF[started](namespace, RELEASE),
                task_queue=lifecycle_settings.task_queue,
            )
            error_type, message = await rejection_of(handle, started)
    finally:
        await blocker.terminate("the test is done")
    assert error_type == contracts.OTHER_RUN_ACTIVE, message
    assert f"{blocker.id} is running" in message
    assert f"`ventros-deploy watch {blocker.id}`" in message
    if running == "rollback":
        assert f"`temporal workflow cancel --workflow-id {blocker.id}`" in message
    else:
        assert f"`ventros-deploy abort {blocker.id}`" in message
    assert await kube.get(DEPLOYMENT, RELEASE, namespace) is None


@pytest.mark.parametrize("kind", ["deploy", "rollback", "destroy"])
async def test_run_under_another_id_is_rejected(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
    kind: str,
) -> None:
    """A run whose workflow id is not its release's would escape Temporal's
    one run per id and the checks above, so its first step rejects it as
    InvalidRequest and names the id to use. Nothing is applied or deleted."""
    async with running_worker(temporal_env.client, lifecycle_settings):
        handle = await temporal_env.client.start_workflow(
            TYPES[kind],
            request_of(kind, namespace),
            id=f"my-{kind}-{uuid.uuid4().hex[:8]}",
            task_queue=lifecycle_settings.task_queue,
        )
        error_type, message = await rejection_of(handle, kind)
        ended = await handle.describe()
        state = (await handle.query("status")).get("state")
    assert error_type == contracts.INVALID_REQUEST, message
    assert ended.status is WorkflowExecutionStatus.FAILED
    assert state == "invalid"
    expected = ID_OF[kind](namespace, RELEASE)
    assert f"runs as workflow id {handle.id}" in message
    assert f"--workflow-id {expected}" in message
    assert await kube.get(DEPLOYMENT, RELEASE, namespace) is None


def test_ids_of_releases_differ() -> None:
    """Namespace a-b with release c and namespace a with release b-c used to
    share one workflow id, so a destroy by id could remove the other release."""
    for make in ID_OF.values():
        assert make("a-b", "c") != make("a", "b-c")
