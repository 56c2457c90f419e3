"""End-to-end deploys: the real workflow and activities, a real Temporal dev
server, and the local control plane with its simulated operators."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.helm import Helm
from activities.kubeapi import KubeClient, NotFoundError, ResourceType, well_known
from deployer import contracts
from deployer.phases import DeployStatus, PhaseState
from deployer.settings import WorkerSettings
from testbed.leftovers import remove_namespace
from tests.conftest import (
    REPO_ROOT,
    deploy_request,
    listener,
    running_worker,
    temporal_cli,
)

NAMESPACE_TYPE = well_known("v1", "Namespace")
DEPLOYMENT = well_known("apps/v1", "Deployment")
CLUSTER_ROLE = well_known("rbac.authorization.k8s.io/v1", "ClusterRole")
CONFIG_MAP = ResourceType("v1", "ConfigMap", "configmaps", True)


async def start(
    env: WorkflowEnvironment, settings: WorkerSettings, request: dict[str, Any]
) -> WorkflowHandle[Any, Any]:
    return await env.client.start_workflow(
        "VentrosDeploy",
        request,
        id=f"deploy-{request['namespace']}.{request['release']}",
        task_queue=settings.task_queue,
    )


async def status_of(handle: WorkflowHandle[Any, Any]) -> DeployStatus:
    return await handle.query("status", result_type=DeployStatus)


async def wait_for_phase_state(
    handle: WorkflowHandle[Any, Any],
    phase: str,
    state: PhaseState,
    timeout_s: float = 90,
) -> DeployStatus:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        status = await status_of(handle)
        record = next(r for r in status.phases if r.phase.value == phase)
        if record.state is state:
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"phase {phase} never reached {state}: "
                f"{status.model_dump_json(indent=1)}"
            )
        await asyncio.sleep(0.3)


async def job_complete_soon(
    kube: KubeClient, namespace: str, name: str
) -> dict[str, Any]:
    """Return the Job once its Complete condition is True; fail after 3 s.

    The deploy's wait ends when the Job's pods succeeded, and the Job
    controller writes Complete up to 1 s later.
    """
    job: dict[str, Any] | None = None
    for _ in range(30):
        job = await kube.get(well_known("batch/v1", "Job"), name, namespace)
        conditions = ((job or {}).get("status") or {}).get("conditions") or []
        if any(c["type"] == "Complete" and c["status"] == "True" for c in conditions):
            assert job is not None
            return job
        await asyncio.sleep(0.1)
    pytest.fail(f"job/{name} was not Complete 3 s after the deploy: {job}")


def created_at(obj: dict[str, Any]) -> datetime.datetime:
    return datetime.datetime.fromisoformat(
        obj["metadata"]["creationTimestamp"].replace("Z", "+00:00")
    )


def ended(status: DeployStatus, phase: str) -> datetime.datetime:
    record = next(r for r in status.phases if r.phase.value == phase)
    assert record.ended_at is not None
    return datetime.datetime.fromisoformat(record.ended_at)


def started(status: DeployStatus, phase: str) -> datetime.datetime:
    record = next(r for r in status.phases if r.phase.value == phase)
    assert record.started_at is not None
    return datetime.datetime.fromisoformat(record.started_at)


async def test_deploy_happy_path(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A deploy makes every phase succeed and every object ready, in order."""
    async with running_worker(temporal_env.client, worker_settings):
        handle = await start(temporal_env, worker_settings, deploy_request(namespace))
        result = await handle.result()
    status = DeployStatus.model_validate(result)
    assert status.state == "succeeded"
    assert [r.state for r in status.phases] == [PhaseState.SUCCEEDED] * 7

    pg = await kube.get(
        well_known("acid.zalan.do/v1", "postgresql"), "ventros-crm-db", namespace
    )
    assert pg is not None
    assert pg["status"]["PostgresClusterStatus"] == "Running"
    rabbit = await kube.get(
        well_known("rabbitmq.com/v1beta1", "RabbitmqCluster"),
        "ventros-crm-rabbitmq",
        namespace,
    )
    assert rabbit is not None
    job = await job_complete_soon(kube, namespace, "ventros-crm-migrate-1-0-0")
    app = await kube.get(well_known("apps/v1", "Deployment"), "ventros-crm", namespace)
    assert app is not None
    assert app["status"]["availableReplicas"] == 2

    # The migration Job exists only after PostgreSQL is Running, and the app
    # Deployment only after the Job's pod succeeded. The wait ends on the pod,
    # so the Job's Complete condition may come up to 1 s after the app.
    pg_ready_ms = int(pg["metadata"]["annotations"]["sim.ventros.io/ready-at"])
    assert created_at(job).timestamp() * 1000 >= pg_ready_ms - 1000
    pods = await kube.list(
        well_known("v1", "Pod"),
        namespace,
        label_selector="batch.kubernetes.io/job-name=ventros-crm-migrate-1-0-0",
    )
    [pod] = [p for p in pods["items"] if p["status"]["phase"] == "Succeeded"]
    finished = datetime.datetime.fromisoformat(
        pod["status"]["containerStatuses"][0]["state"]["terminated"][
            "finishedAt"
        ].replace("Z", "+00:00")
    )
    assert created_at(app) >= finished
    # PostgreSQL and RabbitMQ run at the same time, not one after the other.
    assert started(status, "messaging") < ended(status, "data")
    assert started(status, "data") < ended(status, "messaging")


async def test_deploy_creates_temporal_namespace(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """The Temporal chart's schema Job creates the namespace that the app's
    values name, with their retention, and the deploy waits for that Job."""
    values = {
        "app": {"replicas": 1},
        "rabbitmq": {"replicas": 1},
        "temporal": {"namespace": "crm-prod", "namespaceRetention": "7d"},
    }
    request = deploy_request(namespace, values=values)
    async with running_worker(temporal_env.client, worker_settings):
        handle = await start(temporal_env, worker_settings, request)
        status = DeployStatus.model_validate(await handle.result())
    assert status.state == "succeeded"

    jobs = await kube.list(
        well_known("batch/v1", "Job"),
        namespace,
        label_selector="app.kubernetes.io/instance=ventros-crm-temporal",
    )
    [job] = jobs["items"]
    [init] = job["spec"]["template"]["spec"]["initContainers"]
    assert init["name"] == "create-crm-prod-namespace"
    assert "create namespace crm-prod with retention 7d" in init["command"][-1]
    await job_complete_soon(kube, namespace, job["metadata"]["name"])
    config = await kube.get(CONFIG_MAP, "ventros-crm-config", namespace)
    assert config is not None
    assert config["data"]["TEMPORAL_NAMESPACE"] == "crm-prod"


async def test_deploy_migration_failure_then_retry(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A Job at its backoff limit leaves the deploy waiting; retry completes it."""
    await kube.merge_patch(
        NAMESPACE_TYPE,
        namespace,
        {"metadata": {"annotations": {"sim.ventros.io/fail-jobs": "migrate"}}},
    )
    async with running_worker(temporal_env.client, worker_settings):
        handle = await start(temporal_env, worker_settings, deploy_request(namespace))
        status = await wait_for_phase_state(
            handle, "migration", PhaseState.WAITING_FOR_RETRY
        )
        migration = next(r for r in status.phases if r.phase.value == "migration")
        assert migration.error is not None
        assert "job/ventros-crm-migrate-1-0-0" in migration.error
        assert "BackoffLimitExceeded" in migration.error
        assert migration.error_type == "TerminalFailure"
        app = next(r for r in status.phases if r.phase.value == "app")
        assert app.state is PhaseState.PENDING
        attempts_before = {r.phase.value: r.attempts for r in status.phases}

        # Fix the cause, then retry: only the failed phase runs again.
        await kube.merge_patch(
            NAMESPACE_TYPE,
            namespace,
            {"metadata": {"annotations": {"sim.ventros.io/fail-jobs": None}}},
        )
        retried = await handle.execute_update("retry", None, result_type=list[str])
        assert retried == ["migration"]
        result = DeployStatus.model_validate(await handle.result())
    assert result.state == "succeeded"
    attempts_after = {r.phase.value: r.attempts for r in result.phases}
    assert attempts_after["migration"] == 2
    for phase in ("base", "data", "messaging", "cache", "temporal"):
        assert attempts_after[phase] == attempts_before[phase] == 1


async def test_deploy_abort_fails_workflow(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """abort ends a deploy that waits for retry as failed, keeping what succeeded."""
    await kube.merge_patch(
        NAMESPACE_TYPE,
        namespace,
        {
            "metadata": {
                "annotations": {"sim.ventros.io/postgres-outcome": "create-failed"}
            }
        },
    )
    async with running_worker(temporal_env.client, worker_settings):
        handle = await start(temporal_env, worker_settings, deploy_request(namespace))
        status = await wait_for_phase_state(
            handle, "data", PhaseState.WAITING_FOR_RETRY
        )
        data = next(r for r in status.phases if r.phase.value == "data")
        assert data.error is not None
        assert "postgresql/ventros-crm-db" in data.error
        assert "CreateFailed" in data.error
        await handle.execute_update("abort", "test abort", result_type=str)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        final = await status_of(handle)
    assert "aborted: test abort" in str(failure.value.cause)
    assert final.state == "aborted"
    states = {r.phase.value: r.state for r in final.phases}
    assert states["base"] is PhaseState.SUCCEEDED
    assert states["data"] is PhaseState.FAILED
    assert states["app"] is PhaseState.PENDING


@pytest_asyncio.fixture
async def new_namespace(kube: KubeClient) -> AsyncIterator[str]:
    """A namespace name that does not exist yet; deleted after the test."""
    name = f"t-new-{uuid.uuid4().hex[:10]}"
    yield name
    with contextlib.suppress(NotFoundError):
        await remove_namespace(kube, name)


async def test_deploy_started_with_temporal_cli(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    new_namespace: str,
) -> None:
    """`temporal workflow start` with the same JSON input deploys the same way.

    The target namespace does not exist before: the base phase creates it,
    with the `name` label that helm's --create-namespace used to set. The
    input gives no app version, so the status shows the chart's.
    """
    namespace = new_namespace
    assert await kube.get(NAMESPACE_TYPE, namespace) is None
    request = deploy_request(namespace)
    del request["app_version"]
    workflow_id = f"deploy-{namespace}.ventros-crm"
    async with running_worker(temporal_env.client, worker_settings):
        process = await asyncio.create_subprocess_exec(
            temporal_cli(),
            "workflow",
            "start",
            "--address",
            temporal_env.client.service_client.config.target_host,
            "--type",
            "VentrosDeploy",
            "--task-queue",
            worker_settings.task_queue,
            "--workflow-id",
            workflow_id,
            "--input",
            json.dumps(request),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        handle = temporal_env.client.get_workflow_handle(workflow_id)
        result = DeployStatus.model_validate(await handle.result())
    assert result.state == "succeeded"
    assert [r.state for r in result.phases] == [PhaseState.SUCCEEDED] * 7
    # chart/Chart.yaml's appVersion, which the app's image tag defaults to.
    assert result.app_version == "1.0.0"
    app = await kube.get(well_known("apps/v1", "Deployment"), "ventros-crm", namespace)
    assert app is not None
    assert app["status"]["availableReplicas"] == 2
    created = await kube.get(NAMESPACE_TYPE, namespace)
    assert created is not None
    assert created["metadata"]["labels"]["name"] == namespace


async def test_deploy_object_owned_elsewhere(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """An object helm may not adopt fails the base phase once, naming it.

    The ConfigMap exists before the first deploy, without helm's ownership
    metadata, as when another tool or another release created it. Retrying
    cannot change that, so the phase waits for the user after one attempt.
    """
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "ventros-crm-config", "namespace": namespace},
        "data": {"owner": "someone else"},
    }
    await kube.create(CONFIG_MAP, config_map, namespace)
    async with running_worker(temporal_env.client, worker_settings):
        handle = await start(temporal_env, worker_settings, deploy_request(namespace))
        status = await wait_for_phase_state(
            handle, "base", PhaseState.WAITING_FOR_RETRY
        )
        base = next(r for r in status.phases if r.phase.value == "base")
        assert base.error_type == "OwnedElsewhere"
        assert base.attempts == 1
        assert base.error is not None
        assert 'ConfigMap "ventros-crm-config"' in base.error
        assert "install_operators: false" in base.error
        await handle.execute_update("abort", "test done", result_type=str)
        with contextlib.suppress(WorkflowFailureError):
            await handle.result()
    untouched = await kube.get(CONFIG_MAP, "ventros-crm-config", namespace)
    assert untouched is not None
    assert untouched["data"] == {"owner": "someone else"}


async def test_unreachable_operator_chart_fails_validate(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """An operator chart whose repository cannot be reached (a closed port on
    loopback) fails validate, naming the chart, before anything is applied.
    Before, the base phase upgraded the app's base release on each retry
    while the operator chart could not be fetched. The request itself is
    valid, so the run shows state failed, not invalid."""
    request = deploy_request(namespace)
    request["operator_charts"]["rabbitmq_operator"] = {
        "repository": "https://127.0.0.1:9/charts",
        "name": "rabbitmq-cluster-operator",
        "version": "4.4.4",
    }
    helm = Helm(worker_settings.helm, str(worker_settings.kubeconfig), None, REPO_ROOT)
    settings = worker_settings.model_copy(
        update={"chart_repositories": "https://127.0.0.1:9"}
    )
    async with running_worker(temporal_env.client, settings):
        handle = await start(temporal_env, settings, request)
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), timeout=120)
        status = await status_of(handle)
    releases = await helm.run(["list", f"--namespace={namespace}", "--short"])
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "HelmFailed"
    assert (
        "cannot fetch the rabbitmqOperator chart rabbitmq-cluster-operator 4.4.4 "
        "from https://127.0.0.1:9/charts" in cause.message
    )
    assert status.state == "failed"
    assert all(r.attempts == 0 for r in status.phases)
    assert releases.strip() == ""


async def test_unlisted_chart_repository_never_contacted(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """An operator chart from a repository that the worker does not allow
    fails validate as InvalidRequest, and the worker never connects to it: a
    listening socket on loopback stands for that host and counts accepts."""
    async with listener() as remote:
        port = remote.port
        request = deploy_request(namespace)
        request["operator_charts"]["rabbitmq_operator"] = {
            "repository": f"https://127.0.0.1:{port}/charts",
            "name": "rabbitmq-cluster-operator",
            "version": "4.4.4",
        }
        async with running_worker(temporal_env.client, worker_settings):
            handle = await start(temporal_env, worker_settings, request)
            with pytest.raises(WorkflowFailureError) as failure:
                await asyncio.wait_for(handle.result(), timeout=120)
            status = await status_of(handle)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == contracts.INVALID_REQUEST
    assert (
        f"operator_charts.rabbitmq_operator: chart repository "
        f"https://127.0.0.1:{port}/charts is not allowed" in cause.message
    )
    assert status.state == "invalid"
    assert all(r.attempts == 0 for r in status.phases)
    assert remote.accepted == []
    assert await kube.get(CONFIG_MAP, "ventros-crm-config", namespace) is None


async def test_unusable_kubeconfig_fails_validate(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    tmp_path: Path,
) -> None:
    """A worker whose kubeconfig is not YAML fails validate once, as
    KubeconfigInvalid naming the file and the setting, without retries and
    without quoting the file, which can hold credentials."""
    garbage = tmp_path / "kubeconfig"
    garbage.write_text("token: sEcReT-7781\n{[}: nope\n")
    settings = worker_settings.model_copy(update={"kubeconfig": garbage})
    async with running_worker(temporal_env.client, settings):
        handle = await start(temporal_env, settings, deploy_request("unused"))
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), timeout=60)
        status = await status_of(handle)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == contracts.KUBECONFIG_INVALID
    assert f"the worker's kubeconfig {garbage} is not YAML" in cause.message
    assert "VENTROS_DEPLOY_KUBECONFIG" in cause.message
    assert cause.message.endswith("or start the run again if it has ended")
    assert "sEcReT-7781" not in cause.message
    # The worker's kubeconfig, not the request, is at fault.
    assert status.state == "failed"


async def test_second_release_operators_rejected(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """Operators installed in one namespace block a second install in another.

    The second deploy fails in validate, as OperatorsInstalled, naming both
    running operators, and applies nothing: no release, no RabbitMQ operator
    beside the first one. The same deploy with install_operators false then
    succeeds on the first one's operators.
    """
    second = f"{namespace}-b"
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": second}}
    await kube.create(NAMESPACE_TYPE, body)
    helm = Helm(worker_settings.helm, str(worker_settings.kubeconfig), None, REPO_ROOT)
    try:
        async with running_worker(temporal_env.client, worker_settings):
            first = await start(
                temporal_env, worker_settings, deploy_request(namespace)
            )
            first_result = DeployStatus.model_validate(await first.result())
            assert first_result.state == "succeeded"

            colliding = await start(
                temporal_env, worker_settings, deploy_request(second)
            )
            # Bounded, because without the check the base phase waits for a
            # retry and the run never ends.
            with pytest.raises(WorkflowFailureError) as failure:
                await asyncio.wait_for(colliding.result(), timeout=120)
            rejected = await status_of(colliding)
            releases = await helm.run(["list", f"--namespace={second}", "--short"])
            operators = await kube.list(
                DEPLOYMENT, second, label_selector="app.kubernetes.io/name"
            )

            request = deploy_request(second, install_operators=False)
            shared = await start(temporal_env, worker_settings, request)
            result = DeployStatus.model_validate(await shared.result())
    finally:
        await remove_namespace(kube, second)

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "OperatorsInstalled"
    assert cause.non_retryable
    assert (
        f"postgres-operator (deployment/ventros-crm-postgres-operator in namespace "
        f"{namespace}, helm release ventros-crm-postgres-operator)" in cause.message
    )
    assert (
        "rabbitmq-cluster-operator (deployment/ventros-crm-rabbitmq-operator in "
        f"namespace {namespace}, helm release ventros-crm-rabbitmq-operator)"
        in cause.message
    )
    assert (
        "ClusterRole postgres-pod (of helm release ventros-crm-postgres-operator "
        f"in namespace {namespace})" in cause.message
    )
    assert "install_operators: false" in cause.message
    assert rejected.state == "invalid"
    assert all(r.attempts == 0 for r in rejected.phases)
    assert releases.strip() == ""
    assert operators["items"] == []
    assert result.state == "succeeded"


async def test_manifest_installed_operator_rejected(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A postgres-operator installed from the Zalando manifest (label
    application, no helm release) also rejects install_operators, in validate,
    and the message states that helm did not install it."""
    other = f"{namespace}-op"
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}}
    await kube.create(NAMESPACE_TYPE, body)
    labels = {"application": "postgres-operator"}
    operator = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "postgres-operator", "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "operator", "image": "operator"}]},
            },
        },
    }
    try:
        await kube.create(DEPLOYMENT, operator, other)
        async with running_worker(temporal_env.client, worker_settings):
            handle = await start(
                temporal_env, worker_settings, deploy_request(namespace)
            )
            with pytest.raises(WorkflowFailureError) as failure:
                await asyncio.wait_for(handle.result(), timeout=120)
            status = await status_of(handle)
    finally:
        await remove_namespace(kube, other)

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "OperatorsInstalled"
    assert (
        f"postgres-operator (deployment/postgres-operator in namespace {other}, "
        "not installed by helm)" in cause.message
    )
    assert "rabbitmq-cluster-operator" not in cause.message
    assert status.state == "invalid"
    assert all(r.attempts == 0 for r in status.phases)


async def test_leftover_cluster_role_rejected(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A ClusterRole postgres-pod left by a release whose namespace is gone
    fails validate, naming it and its release, before the RabbitMQ operator
    is installed. helm would reject it only after that install."""
    deleted_namespace = f"{namespace}-gone"
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": "postgres-pod",
            "labels": {"app.kubernetes.io/name": "postgres-operator"},
            "annotations": {
                "meta.helm.sh/release-name": "old-postgres-operator",
                "meta.helm.sh/release-namespace": deleted_namespace,
            },
        },
        "rules": [],
    }
    await kube.create(CLUSTER_ROLE, role)
    try:
        async with running_worker(temporal_env.client, worker_settings):
            handle = await start(
                temporal_env, worker_settings, deploy_request(namespace)
            )
            with pytest.raises(WorkflowFailureError) as failure:
                await asyncio.wait_for(handle.result(), timeout=120)
        helm = Helm(
            worker_settings.helm, str(worker_settings.kubeconfig), None, REPO_ROOT
        )
        releases = await helm.run(["list", f"--namespace={namespace}", "--short"])
    finally:
        await kube.delete(CLUSTER_ROLE, "postgres-pod")

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "OperatorsInstalled"
    assert (
        "ClusterRole postgres-pod (of helm release old-postgres-operator in "
        f"namespace {deleted_namespace}, a namespace that no longer exists)"
        in cause.message
    )
    assert releases.strip() == ""


@pytest.mark.parametrize("install_operators", [False, True])
async def test_release_name_of_other_chart_rejected(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
    install_operators: bool,
) -> None:
    """A release named like another release's operator release fails validate
    as ReleaseNameTaken, and leaves that release at its revision and chart.
    With operators, the check of other operators fails too, and the release
    name's error is the one shown."""
    helm = Helm(worker_settings.helm, str(worker_settings.kubeconfig), None, REPO_ROOT)
    operator_release = "ventros-crm-rabbitmq-operator"
    async with running_worker(temporal_env.client, worker_settings):
        first = await start(temporal_env, worker_settings, deploy_request(namespace))
        assert DeployStatus.model_validate(await first.result()).state == "succeeded"
        request = deploy_request(
            namespace, release=operator_release, install_operators=install_operators
        )
        handle = await temporal_env.client.start_workflow(
            "VentrosDeploy",
            request,
            id=f"deploy-{namespace}.{operator_release}",
            task_queue=worker_settings.task_queue,
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), timeout=120)
    history = json.loads(
        await helm.run(
            ["history", operator_release, f"--namespace={namespace}", "-o", "json"]
        )
    )

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "ReleaseNameTaken"
    assert cause.non_retryable
    assert (
        f"{operator_release} (chart rabbitmq-cluster-operator; this deploy would "
        "install ventros-crm)" in cause.message
    )
    assert [entry["revision"] for entry in history] == [1]
    assert history[0]["chart"].startswith("rabbitmq-cluster-operator-")


async def test_release_name_cannot_take_objects(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A second release named like an object of the first one fails validate as
    OwnedElsewhere, naming that object, and changes nothing.

    Release ventros-crm-db renders its app Service as ventros-crm-db, the name
    of the first release's database Service that the postgres-operator made.
    """
    service = well_known("v1", "Service")
    async with running_worker(temporal_env.client, worker_settings):
        first = await start(temporal_env, worker_settings, deploy_request(namespace))
        assert DeployStatus.model_validate(await first.result()).state == "succeeded"
        before = await kube.get(service, "ventros-crm-db", namespace)

        request = deploy_request(
            namespace, release="ventros-crm-db", install_operators=False
        )
        taking = await start(temporal_env, worker_settings, request)
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(taking.result(), timeout=60)
        status = await status_of(taking)
    after = await kube.get(service, "ventros-crm-db", namespace)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == contracts.OWNED_ELSEWHERE
    assert "Service ventros-crm-db (owned by postgresql ventros-crm-db" in cause.message
    assert "choose another release name" in cause.message
    assert status.state == "invalid"
    assert before is not None
    assert after is not None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
