"""`ventros-deploy abort` stops a deploy or a destroy in the middle of a
phase: the running wait is cancelled, the phase ends as aborted, and what the
finished phases did stays in place."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment

from activities.kubeapi import KubeClient
from deployer.lifecycle import DestroyStatus
from deployer.phases import DeployStatus, PhaseState
from deployer.settings import WorkerSettings
from tests.conftest import running_worker
from tests.lifecycle.conftest import (
    DEPLOYMENT,
    MESSAGES,
    NAMESPACE,
    POSTGRESQL,
    RABBITMQ,
    RELEASE,
    annotate,
    cli_env,
    deploy,
    record,
    run_cli,
    start_deploy,
    start_destroy,
    wait_for_step,
)


async def abort_with_cli(
    env: WorkflowEnvironment, settings: WorkerSettings, handle: WorkflowHandle[Any, Any]
) -> tuple[str, ApplicationError]:
    """Run `ventros-deploy abort ID`; return its output and the run's failure.

    Without the cancel, the held wait runs until its phase timeout (600 s), so
    the 60 s bound guards against hanging and measures nothing.
    """
    result = await run_cli(
        ["abort", handle.id, "--reason", "operator stop"], cli_env(env, settings)
    )
    assert result.returncode == 0, result.stderr
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(handle.result(), timeout=60)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    return result.stdout, cause


async def cancel_requested(handle: WorkflowHandle[Any, Any]) -> bool:
    history = await handle.fetch_history()
    return any(
        event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED
        for event in history.events
    )


async def start_held_app(
    env: WorkflowEnvironment,
    settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> WorkflowHandle[Any, Any]:
    """Start a deploy whose app pods stay in an init container, with a 600 s
    app timeout. Return once the app phase waits on its objects."""
    await annotate(
        kube, NAMESPACE, namespace, None, {"sim.ventros.io/hold-init": "wait-for-redis"}
    )
    handle = await start_deploy(
        env, settings, namespace, "1.0.0", timeouts={"app": 600}
    )
    await wait_for_step(handle, "app", PhaseState.RUNNING, timeout_s=150)
    for _ in range(100):
        status = await handle.query("status", result_type=DeployStatus)
        if record(status, "app").waiting_on:
            break
        await asyncio.sleep(0.2)
    return handle


async def test_abort_stops_app_wait(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """App pods held in an init container and a 600 s app timeout: an abort
    during the app's wait ends the deploy at once. The app phase is aborted,
    the other phases stay succeeded, and the app's Deployment stays."""
    async with running_worker(temporal_env.client, lifecycle_settings):
        handle = await start_held_app(temporal_env, lifecycle_settings, kube, namespace)
        output, cause = await abort_with_cli(temporal_env, lifecycle_settings, handle)
        status = await handle.query("status", result_type=DeployStatus)
        cancelled = await cancel_requested(handle)
        again = await run_cli(
            ["abort", handle.id], cli_env(temporal_env, lifecycle_settings)
        )
        retried = await run_cli(
            ["retry", handle.id], cli_env(temporal_env, lifecycle_settings)
        )
        shown = await run_cli(
            ["status", handle.id], cli_env(temporal_env, lifecycle_settings)
        )

    assert f"aborted {handle.id}: a running phase is stopped" in output
    assert shown.returncode == 1, shown.stderr
    assert "aborted: operator stop" in shown.stdout
    assert "the run has ended" in output
    assert again.returncode == 1
    assert f"{handle.id} has already ended, so there is nothing to abort" in (
        again.stderr
    )
    assert retried.returncode == 1
    assert "nothing to retry" in retried.stderr
    assert status.message == "aborted: operator stop"
    assert cause.type == "Aborted"
    assert "operator stop" in cause.message
    assert status.state == "aborted"
    app = record(status, "app")
    assert app.state is PhaseState.ABORTED
    assert app.error == "stopped while running: operator stop"
    assert app.error_type == "Aborted"
    for phase in ("base", "data", "messaging", "cache", "temporal", "migration"):
        assert record(status, phase).state is PhaseState.SUCCEEDED
    assert cancelled
    assert await kube.get(DEPLOYMENT, RELEASE, namespace) is not None


async def test_abort_stops_destroy_drain(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A destroy waiting 600 s for 5 queued messages: an abort ends it at once.
    The messaging step is aborted, RabbitMQ and PostgreSQL stay, and the steps
    after it never ran."""
    rabbit = f"{RELEASE}-rabbitmq"
    async with running_worker(temporal_env.client, lifecycle_settings):
        await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        await annotate(kube, RABBITMQ, rabbit, namespace, {MESSAGES: "5"})
        handle = await start_destroy(
            temporal_env,
            lifecycle_settings,
            namespace,
            delete_data=True,
            drain_timeout_s=600,
        )
        await wait_for_step(handle, "messaging", PhaseState.RUNNING)
        output, cause = await abort_with_cli(temporal_env, lifecycle_settings, handle)
        status = await handle.query("status", result_type=DestroyStatus)
        cancelled = await cancel_requested(handle)

    assert f"aborted {handle.id}" in output
    assert cause.type == "Aborted"
    assert "What the finished steps removed stays removed" in cause.message
    assert status.state == "aborted"
    messaging = record(status, "messaging")
    assert messaging.state is PhaseState.ABORTED
    assert messaging.error == "stopped while running: operator stop"
    for step in ("app", "migration", "temporal", "cache"):
        assert record(status, step).state is PhaseState.SUCCEEDED
    for step in ("data", "base"):
        assert record(status, step).state is PhaseState.PENDING
        assert record(status, step).attempts == 0
    assert cancelled
    assert await kube.get(RABBITMQ, rabbit, namespace) is not None
    assert await kube.get(POSTGRESQL, f"{RELEASE}-db", namespace) is not None


async def test_cancel_stops_app_wait(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A cancel request (`temporal workflow cancel`) during the app's wait ends
    the deploy as canceled, as an abort would: the run requests the wait's
    cancellation, `ventros-deploy status` shows the run canceled and exits 1, and
    the app's Deployment stays."""
    async with running_worker(temporal_env.client, lifecycle_settings):
        handle = await start_held_app(temporal_env, lifecycle_settings, kube, namespace)
        await handle.cancel()
        # Without the cancel reaching the phase, the run waits for a retry.
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), timeout=60)
        status = await handle.query("status", result_type=DeployStatus)
        shown = await run_cli(
            ["status", handle.id], cli_env(temporal_env, lifecycle_settings)
        )
        history = await handle.fetch_history()

    assert isinstance(failure.value.cause, CancelledError)
    assert status.state == "canceled"
    app = record(status, "app")
    assert app.state is PhaseState.ABORTED
    assert app.error_type == "Canceled"
    for phase in ("base", "data", "messaging", "cache", "temporal", "migration"):
        assert record(status, phase).state is PhaseState.SUCCEEDED
    assert shown.returncode == 1, shown.stderr
    assert "canceled: a cancel request stopped the deploy" in shown.stdout
    kinds = [event.event_type for event in history.events]
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED in kinds
    assert kinds[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED
    assert await kube.get(DEPLOYMENT, RELEASE, namespace) is not None
