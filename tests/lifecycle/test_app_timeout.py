"""An app phase that times out names the pods that are not ready and, for each,
the init container that blocks it or the container in CrashLoopBackOff."""

from __future__ import annotations

import re

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from activities.kubeapi import KubeClient
from deployer import contracts
from deployer.phases import PhaseState
from deployer.settings import WorkerSettings
from tests.conftest import running_worker
from tests.lifecycle.conftest import (
    NAMESPACE,
    RELEASE,
    annotate,
    record,
    start_deploy,
    wait_for_step,
)

APP_TIMEOUT_S = 15
# Pods of the app Deployment: <release>-<pod-template-hash>-<suffix>.
APP_POD = re.compile(rf"pod {RELEASE}-[a-z0-9]+-[a-z0-9]+: ")


async def app_timeout_error(
    env: WorkflowEnvironment,
    settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
    steering: dict[str, str],
) -> tuple[str, str | None]:
    """Deploy with the namespace steered and a short app timeout; return the
    app phase's error type and error, then abort the deploy."""
    await annotate(kube, NAMESPACE, namespace, None, steering)
    timeouts = {phase: 60 for phase in ("base", "data", "messaging", "cache")}
    timeouts |= {"temporal": 60, "migration": 60, "app": APP_TIMEOUT_S}
    async with running_worker(env.client, settings):
        handle = await start_deploy(
            env, settings, namespace, "1.0.0", timeouts=timeouts
        )
        status = await wait_for_step(
            handle, "app", PhaseState.WAITING_FOR_RETRY, timeout_s=150
        )
        await handle.execute_update("abort", "test ends", result_type=str)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    app = record(status, "app")
    print(app.error)
    return str(app.error_type), app.error


async def test_app_timeout_names_init_container(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """App pods held in wait-for-rabbitmq: the timeout error names each pod and
    that init container."""
    error_type, error = await app_timeout_error(
        temporal_env,
        lifecycle_settings,
        kube,
        namespace,
        {"sim.ventros.io/hold-init": "wait-for-rabbitmq"},
    )
    assert error_type == contracts.PHASE_TIMEOUT
    assert error is not None
    assert f"timed out after {APP_TIMEOUT_S} s" in error
    assert "Pods not ready" in error
    assert len(APP_POD.findall(error)) == 2
    assert "init container wait-for-rabbitmq is still running" in error


async def test_app_timeout_names_crashloop(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """App containers in CrashLoopBackOff: the timeout error names each pod, the
    container and its state."""
    error_type, error = await app_timeout_error(
        temporal_env,
        lifecycle_settings,
        kube,
        namespace,
        {"sim.ventros.io/crashloop": "app"},
    )
    assert error_type == contracts.PHASE_TIMEOUT
    assert error is not None
    assert "Pods not ready" in error
    assert len(APP_POD.findall(error)) == 2
    assert "container app is CrashLoopBackOff (5 restarts)" in error
