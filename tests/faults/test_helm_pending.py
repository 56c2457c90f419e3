"""Helm releases left pending-install or pending-upgrade by a killed helm.

The test produces the state for real. It runs `helm upgrade --install --wait`
of the postgres-operator release (part of the base phase) in a namespace
whose pods never become ready, so helm waits with the release pending. The
test SIGKILLs helm once the release Secret carries that status. Helm then
rejects every further operation on the release until someone rolls it back
or uninstalls it, and the deploy must do that by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.deploy import temporal_chart_values
from activities.helm import Helm, HelmError
from activities.kubeapi import KubeClient, well_known
from deployer.inputs import ChartRef
from deployer.phases import DeployStatus, PhaseState
from deployer.settings import WorkerSettings
from testbed.cluster import LocalCluster, tool_path
from tests.conftest import (
    FIXTURE_CHARTS,
    REPO_ROOT,
    deploy_request,
    helm_set_values,
    running_worker,
)
from tests.faults.harness import activity_runs, start_deploy

OPERATOR_RELEASE = "ventros-crm-postgres-operator"
OPERATOR_CHART = f"{FIXTURE_CHARTS}/postgres-operator"
TEMPORAL_RELEASE = "ventros-crm-temporal"
TEMPORAL_CHART = f"{FIXTURE_CHARTS}/temporal"
# The values the deployer gives the Temporal chart, which the stand-in requires.
TEMPORAL_VALUES = [
    f"--set={flag}"
    for flag in helm_set_values(
        temporal_chart_values("ventros-crm-db", "ventros-crm", "3d")
    )
]
NAMESPACE = well_known("v1", "Namespace")
SECRET = well_known("v1", "Secret")
DEPLOYMENT = well_known("apps/v1", "Deployment")
# Pods in the namespace wait this long before they turn Ready, so `helm --wait`
# keeps the release pending for as long as the test needs.
HOLD_PODS = "sim.ventros.io/ready-delay"
IN_PROGRESS = "another operation (install/upgrade/rollback) is in progress"


def helm_for(cluster: LocalCluster) -> Helm:
    return Helm(str(tool_path("helm")), str(cluster.kubeconfig), None, REPO_ROOT)


async def hold_pods(kube: KubeClient, namespace: str, seconds: str | None) -> None:
    patch = {"metadata": {"annotations": {HOLD_PODS: seconds}}}
    await kube.merge_patch(NAMESPACE, namespace, patch)


async def wait_available(kube: KubeClient, namespace: str, name: str) -> None:
    """Wait until the Deployment name has all its replicas available."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        deployment = await kube.get(DEPLOYMENT, name, namespace)
        status = (deployment or {}).get("status") or {}
        if (
            deployment
            and status.get("availableReplicas") == deployment["spec"]["replicas"]
        ):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"deployment/{name} in {namespace} not available within 60 s")


async def kill_helm_when(
    kube: KubeClient,
    cluster: LocalCluster,
    namespace: str,
    release: str,
    state: str,
    args: list[str],
) -> None:
    """Run helm with args; SIGKILL it once the release's Secret has status state."""
    process = await asyncio.create_subprocess_exec(
        str(tool_path("helm")),
        *args,
        f"--namespace={namespace}",
        f"--kubeconfig={cluster.kubeconfig}",
        "--wait",
        "--timeout=10m",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    selector = f"owner=helm,name={release},status={state}"
    deadline = time.monotonic() + 60
    try:
        while not (await kube.list(SECRET, namespace, label_selector=selector))[
            "items"
        ]:
            if process.returncode is not None or time.monotonic() > deadline:
                stderr = (await process.communicate())[1].decode(errors="replace")
                raise AssertionError(f"helm never left the release {state}: {stderr}")
            await asyncio.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def assert_stuck(
    helm: Helm, namespace: str, release: str, chart: str, state: str
) -> None:
    """Check that helm reports state and rejects an upgrade because of it."""
    assert await helm.status(release, namespace) == state
    with pytest.raises(HelmError) as rejected:
        await helm.upgrade_install(release, namespace, ChartRef(path=chart), {})
    assert IN_PROGRESS in rejected.value.stderr


async def deploy_and_notes(
    temporal_env: WorkflowEnvironment,
    settings: WorkerSettings,
    namespace: str,
    phase: str,
) -> tuple[DeployStatus, list[str], int]:
    """Run a deploy; return its status, and the notes and attempt of phase's apply."""
    request = deploy_request(namespace)
    async with running_worker(temporal_env.client, settings):
        handle = await start_deploy(temporal_env.client, request, settings.task_queue)
        status = DeployStatus.model_validate(await handle.result())
    runs = [
        r
        for r in await activity_runs(handle)
        if r.summary.startswith(f"{phase}: apply")
    ]
    assert len(runs) == 1
    notes = list((runs[0].result or {}).get("notes", []))
    return status, notes, runs[0].attempt


def assert_all_succeeded_once(status: DeployStatus) -> None:
    assert status.state == "succeeded", status.model_dump_json(indent=1)
    for record in status.phases:
        assert record.state is PhaseState.SUCCEEDED, record
        assert record.attempts == 1, record


async def test_helm_pending_install_recovered(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    cluster: LocalCluster,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A release a killed helm left pending-install is uninstalled and reinstalled."""
    helm = helm_for(cluster)
    await hold_pods(kube, namespace, "600")
    install = ["upgrade", "--install", OPERATOR_RELEASE, OPERATOR_CHART]
    await kill_helm_when(
        kube, cluster, namespace, OPERATOR_RELEASE, "pending-install", install
    )
    await assert_stuck(
        helm, namespace, OPERATOR_RELEASE, OPERATOR_CHART, "pending-install"
    )
    await hold_pods(kube, namespace, None)

    status, notes, attempt = await deploy_and_notes(
        temporal_env, worker_settings, namespace, "base"
    )
    assert_all_succeeded_once(status)
    assert attempt == 1
    expected = f"uninstalled release {OPERATOR_RELEASE}, left pending-install"
    assert any(note.startswith(expected) for note in notes), notes
    assert await helm.status(OPERATOR_RELEASE, namespace) == "deployed"


async def test_helm_pending_upgrade_recovered(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    cluster: LocalCluster,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A release a killed helm left pending-upgrade is rolled back, then upgraded."""
    helm = helm_for(cluster)
    chart = ChartRef(path=OPERATOR_CHART)
    await helm.upgrade_install(OPERATOR_RELEASE, namespace, chart, {})
    # Revision 1 must be healthy before the hold, or its rollback cannot finish.
    await wait_available(kube, namespace, OPERATOR_RELEASE)
    await hold_pods(kube, namespace, "600")
    new_image = "--set=image=ghcr.io/zalando/postgres-operator:v1.14.1"
    upgrade = ["upgrade", OPERATOR_RELEASE, OPERATOR_CHART, new_image]
    await kill_helm_when(
        kube, cluster, namespace, OPERATOR_RELEASE, "pending-upgrade", upgrade
    )
    await assert_stuck(
        helm, namespace, OPERATOR_RELEASE, OPERATOR_CHART, "pending-upgrade"
    )
    await hold_pods(kube, namespace, None)

    status, notes, attempt = await deploy_and_notes(
        temporal_env, worker_settings, namespace, "base"
    )
    assert_all_succeeded_once(status)
    assert attempt == 1
    expected = (
        f"rolled release {OPERATOR_RELEASE} back to revision 1, left pending-upgrade"
    )
    assert expected in notes
    assert await helm.status(OPERATOR_RELEASE, namespace) == "deployed"


@pytest.mark.faults
async def test_helm_pending_temporal_recovered(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    cluster: LocalCluster,
    kube: KubeClient,
    namespace: str,
) -> None:
    """The temporal phase reinstalls its release that a killed helm left pending."""
    helm = helm_for(cluster)
    await hold_pods(kube, namespace, "600")
    install = [
        "upgrade",
        "--install",
        TEMPORAL_RELEASE,
        TEMPORAL_CHART,
        *TEMPORAL_VALUES,
    ]
    await kill_helm_when(
        kube, cluster, namespace, TEMPORAL_RELEASE, "pending-install", install
    )
    assert await helm.status(TEMPORAL_RELEASE, namespace) == "pending-install"
    await hold_pods(kube, namespace, None)

    status, notes, attempt = await deploy_and_notes(
        temporal_env, worker_settings, namespace, "temporal"
    )
    assert_all_succeeded_once(status)
    assert attempt == 1
    expected = f"uninstalled release {TEMPORAL_RELEASE}, left pending-install"
    assert any(note.startswith(expected) for note in notes), notes
    assert await helm.status(TEMPORAL_RELEASE, namespace) == "deployed"


async def test_helm_run_timeout_raises_helm_error(
    cluster: LocalCluster, kube: KubeClient, namespace: str
) -> None:
    """A helm call over its time limit is killed and raises HelmError."""
    helm = helm_for(cluster)
    await hold_pods(kube, namespace, "600")
    install = ["upgrade", "--install", OPERATOR_RELEASE, OPERATOR_CHART, "--wait"]
    with pytest.raises(HelmError) as timed_out:
        await helm.run([*install, f"--namespace={namespace}"], timeout_s=3)
    assert timed_out.value.command == "upgrade --install"
    assert "timed out after 3 s and was killed" in timed_out.value.stderr
    # The killed helm left the release pending, as a crashed worker would.
    assert await helm.status(OPERATOR_RELEASE, namespace) == "pending-install"
