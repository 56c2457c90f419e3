"""Upgrades. A new app version runs its migration once and rolls the app out,
while phases whose objects did not change pass at their first readiness check.
A deploy with nothing changed changes nothing. Old migration Jobs are pruned."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.deploy import (
    CONFIG_MAP,
    MIGRATED_KEY,
    MIGRATION_HISTORY,
    history_name,
    migrations_name,
)
from activities.kubeapi import JsonObject, KubeClient, well_known
from activities.rollback import RAN_KEY
from deployer import contracts
from deployer.phases import PHASE_ORDER, DeployStatus, PhaseState
from deployer.settings import WorkerSettings
from tests.conftest import running_worker
from tests.lifecycle.conftest import (
    DEPLOYMENT,
    JOB,
    POSTGRESQL,
    RABBITMQ,
    RELEASE,
    app_image_tag,
    deploy,
    record,
    start_deploy,
    wait_for_step,
)

STATEFULSET = well_known("apps/v1", "StatefulSet")
SECRET = well_known("v1", "Secret")
REPLICASET = well_known("apps/v1", "ReplicaSet")
READY_AT = "sim.ventros.io/ready-at"
MIGRATION_SELECTOR = (
    f"deploy.ventros.io/phase=migration,app.kubernetes.io/instance={RELEASE}"
)


async def get(kube: KubeClient, rtype: Any, name: str, namespace: str) -> JsonObject:
    obj = await kube.get(rtype, name, namespace)
    assert obj is not None, f"{rtype.kind}/{name} in {namespace} is missing"
    return obj


async def unchanged_objects(kube: KubeClient, namespace: str) -> dict[str, Any]:
    """Return what a deploy of the same objects must leave as it was.

    The generation changes only on a spec change, and the simulated
    operators write ready-at only when they reconcile.
    """
    pg = await get(kube, POSTGRESQL, f"{RELEASE}-db", namespace)
    rabbit = await get(kube, RABBITMQ, f"{RELEASE}-rabbitmq", namespace)
    redis = await get(kube, STATEFULSET, f"{RELEASE}-redis", namespace)
    deployments = await kube.list(DEPLOYMENT, namespace)
    snapshot: dict[str, Any] = {
        "postgresql generation": pg["metadata"]["generation"],
        "postgresql ready-at": pg["metadata"]["annotations"][READY_AT],
        "rabbitmq generation": rabbit["metadata"]["generation"],
        "rabbitmq ready-at": rabbit["metadata"]["annotations"][READY_AT],
        "redis generation": redis["metadata"]["generation"],
    }
    for item in deployments["items"]:
        name = item["metadata"]["name"]
        if name != RELEASE:  # The app Deployment changes in an upgrade.
            snapshot[f"deployment/{name} generation"] = item["metadata"]["generation"]
    return snapshot


def print_durations(title: str, status: DeployStatus) -> None:
    durations = ", ".join(
        f"{r.phase.value} {r.duration_s:.1f} s" for r in status.phases
    )
    print(f"{title}: {durations}")


async def migration_jobs(kube: KubeClient, namespace: str) -> list[JsonObject]:
    listing = await kube.list(JOB, namespace, label_selector=MIGRATION_SELECTOR)
    return [
        job for job in listing["items"] if not job["metadata"].get("deletionTimestamp")
    ]


async def test_upgrade_new_version(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A new app version runs its own migration Job once and rolls the app out.
    Every other phase passes in one attempt without changing its objects."""
    async with running_worker(temporal_env.client, lifecycle_settings):
        await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        app_before = await get(kube, DEPLOYMENT, RELEASE, namespace)
        before = await unchanged_objects(kube, namespace)
        status = await deploy(temporal_env, lifecycle_settings, namespace, "1.1.0")
    print_durations("upgrade 1.0.0 -> 1.1.0", status)
    assert status.state == "succeeded"
    for phase in PHASE_ORDER:
        assert record(status, phase.value).attempts == 1, phase
    assert await unchanged_objects(kube, namespace) == before

    new_job = await get(kube, JOB, f"{RELEASE}-migrate-1-1-0", namespace)
    assert new_job["status"].get("succeeded") == 1
    assert new_job["status"].get("failed", 0) == 0
    old_job = await kube.get(JOB, f"{RELEASE}-migrate-1-0-0", namespace)
    assert old_job is not None

    app = await get(kube, DEPLOYMENT, RELEASE, namespace)
    assert app_image_tag(app) == "1.1.0"
    assert app["metadata"]["generation"] > app_before["metadata"]["generation"]
    assert app["status"]["observedGeneration"] == app["metadata"]["generation"]
    assert app["status"]["updatedReplicas"] == 2
    assert app["status"]["availableReplicas"] == 2
    replica_sets = await kube.list(
        REPLICASET,
        namespace,
        label_selector=f"app.kubernetes.io/instance={RELEASE},"
        "app.kubernetes.io/component=app",
    )
    by_revision = {
        rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]: rs
        for rs in replica_sets["items"]
    }
    assert sorted(by_revision) == ["1", "2"]
    assert app_image_tag(by_revision["2"]) == "1.1.0"
    assert by_revision["1"]["spec"]["replicas"] == 0


async def test_redeploy_unchanged(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """Deploying the same version again changes nothing: one attempt per phase,
    the same migration Job and the same app Deployment generation."""
    async with running_worker(temporal_env.client, lifecycle_settings):
        await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        job_before = await get(kube, JOB, f"{RELEASE}-migrate-1-0-0", namespace)
        app_before = await get(kube, DEPLOYMENT, RELEASE, namespace)
        before = await unchanged_objects(kube, namespace)
        started = time.monotonic()
        status = await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        elapsed = time.monotonic() - started
    print(f"unchanged redeploy took {elapsed:.1f} s")
    print_durations("unchanged redeploy", status)
    assert status.state == "succeeded"
    for phase in PHASE_ORDER:
        assert record(status, phase.value).state is PhaseState.SUCCEEDED, phase
        assert record(status, phase.value).attempts == 1, phase
    job_after = await get(kube, JOB, f"{RELEASE}-migrate-1-0-0", namespace)
    assert job_after["metadata"]["uid"] == job_before["metadata"]["uid"]
    app_after = await get(kube, DEPLOYMENT, RELEASE, namespace)
    assert app_after["metadata"]["generation"] == app_before["metadata"]["generation"]
    assert await unchanged_objects(kube, namespace) == before


async def test_version_with_the_same_job_name_migrates(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """Versions 1.0.0 and 1-0-0 give one migration Job name. The Job that ran
    for 1.0.0 is replaced, so 1-0-0 migrates too, with its own image."""
    async with running_worker(temporal_env.client, lifecycle_settings):
        await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        before = await get(kube, JOB, f"{RELEASE}-migrate-1-0-0", namespace)
        status = await deploy(temporal_env, lifecycle_settings, namespace, "1-0-0")
    assert status.state == "succeeded"
    after = await get(kube, JOB, f"{RELEASE}-migrate-1-0-0", namespace)
    assert after["metadata"]["uid"] != before["metadata"]["uid"]
    assert after["metadata"]["annotations"]["deploy.ventros.io/app-version"] == (
        "1-0-0"
    )
    image = after["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(":1-0-0")
    assert after["status"].get("succeeded") == 1


async def test_running_shared_name_migration_kept(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A deploy of 1-0-0 was aborted while its migration ran. A deploy of
    1.0.0, whose Job has the same name, does not delete that running Job: its
    migration phase fails with MigrationBusy and waits for a retry."""
    slow = {
        "app": {"replicas": 2},
        "rabbitmq": {"replicas": 1},
        "migration": {"podAnnotations": {"sim.ventros.io/job-duration": "120"}},
    }
    name = f"{RELEASE}-migrate-1-0-0"
    async with running_worker(temporal_env.client, lifecycle_settings):
        first = await start_deploy(
            temporal_env, lifecycle_settings, namespace, "1-0-0", values=slow
        )
        await wait_for_step(first, "migration", PhaseState.RUNNING, timeout_s=150)
        running = None
        for _ in range(100):
            running = await kube.get(JOB, name, namespace)
            if running is not None:
                break
            await asyncio.sleep(0.2)
        assert running is not None
        await first.execute_update("abort", "the test stops 1-0-0", result_type=str)
        with pytest.raises(WorkflowFailureError):
            await first.result()
        second = await start_deploy(
            temporal_env, lifecycle_settings, namespace, "1.0.0"
        )
        status = await wait_for_step(
            second, "migration", PhaseState.WAITING_FOR_RETRY, timeout_s=150
        )
        still = await kube.get(JOB, name, namespace)
        await second.execute_update("abort", "the test ends", result_type=str)
        with pytest.raises(WorkflowFailureError):
            await second.result()
    migration = record(status, "migration")
    assert migration.error_type == contracts.MIGRATION_BUSY
    assert migration.error is not None
    assert "still runs the migration of app version 1-0-0" in migration.error
    assert still is not None
    assert still["metadata"]["uid"] == running["metadata"]["uid"]


async def deploy_each(
    temporal_env: WorkflowEnvironment,
    settings: WorkerSettings,
    namespace: str,
    versions: list[str],
) -> DeployStatus:
    """Deploy each version in turn; return the last deploy's status."""
    async with running_worker(temporal_env.client, settings):
        for version in versions:
            status = await deploy(temporal_env, settings, namespace, version)
            assert status.state == "succeeded", version
    return status


async def migration_job_names(kube: KubeClient, namespace: str) -> list[str]:
    return sorted(
        job["metadata"]["name"] for job in await migration_jobs(kube, namespace)
    )


async def test_migration_history_pruned(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """After four versions the current migration Job and the two before it
    remain, and the oldest one is deleted."""
    versions = ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]
    await deploy_each(temporal_env, lifecycle_settings, namespace, versions)
    names = await migration_job_names(kube, namespace)
    assert len(names) == MIGRATION_HISTORY
    assert names == [
        f"{RELEASE}-migrate-1-1-0",
        f"{RELEASE}-migrate-1-2-0",
        f"{RELEASE}-migrate-1-3-0",
    ]


async def test_pruned_version_not_migrated_again(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A version whose migration Job completed and was pruned does not
    migrate again when it is deployed later. The phase notes that and names the
    later migrations, which stay applied. The pruned versions are noted in a
    ConfigMap of their own, and the rollback's history keeps its revisions."""
    versions = ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.0.0"]
    status = await deploy_each(temporal_env, lifecycle_settings, namespace, versions)
    names = await migration_job_names(kube, namespace)
    migration = record(status, "migration")
    history = await get(kube, CONFIG_MAP, history_name(RELEASE), namespace)
    noted = await get(kube, CONFIG_MAP, migrations_name(RELEASE), namespace)
    migrated = json.loads(noted["data"][MIGRATED_KEY])

    # The skipped version has no Job, so the three newest others stay.
    assert names == [
        f"{RELEASE}-migrate-1-1-0",
        f"{RELEASE}-migrate-1-2-0",
        f"{RELEASE}-migrate-1-3-0",
    ]
    assert migration.last_status is not None
    assert "app version 1.0.0 migrated at" in migration.last_status
    assert "was removed since; not run again" in migration.last_status
    assert "later app versions stay applied (1.1.0, 1.2.0, 1.3.0)" in (
        migration.last_status
    )
    assert migration.notes[0].startswith("app version 1.0.0 migrated at")
    assert app_image_tag(await get(kube, DEPLOYMENT, RELEASE, namespace)) == "1.0.0"
    assert "1.0.0" in migrated
    assert history["data"][RAN_KEY]


async def test_unchangeable_value_fails_validate(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A new Redis volume size, which a StatefulSet cannot take, fails the
    deploy in validate, naming the StatefulSet and the value, before the base
    release gets a new revision. Before, base was upgraded and the cache phase
    failed on the API server's refusal."""
    values = {
        "app": {"replicas": 2},
        "rabbitmq": {"replicas": 1},
        "redis": {"persistence": {"size": "2Gi"}},
    }
    async with running_worker(temporal_env.client, lifecycle_settings):
        await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        handle = await start_deploy(
            temporal_env, lifecycle_settings, namespace, "1.0.0", values=values
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        status = await handle.query("status", result_type=DeployStatus)

        # An invalid value of a field that may change gets no advice on
        # fields that cannot.
        bad_key = {**values, "redis": {}, "app": {"podAnnotations": {"a/b/c": "x"}}}
        handle = await start_deploy(
            temporal_env, lifecycle_settings, namespace, "1.0.0", values=bad_key
        )
        with pytest.raises(WorkflowFailureError) as invalid:
            await handle.result()
    records = await kube.list(
        SECRET, namespace, label_selector=f"owner=helm,name={RELEASE}"
    )
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == contracts.OBJECT_INVALID
    assert f"StatefulSet {RELEASE}-redis in namespace {namespace}" in cause.message
    assert "redis.persistence.size" in cause.message
    key_cause = invalid.value.cause
    assert isinstance(key_cause, ApplicationError)
    assert key_cause.type == contracts.OBJECT_INVALID
    assert f"Deployment {RELEASE} in namespace {namespace}" in key_cause.message
    assert "Fix the value in the request that sets this field" in key_cause.message
    assert "cannot change once" not in key_cause.message
    assert status.state == "invalid"
    assert all(r.attempts == 0 for r in status.phases)
    # Only the first deploy's revision of the base release.
    assert len(records["items"]) == 1


async def test_plain_deploy_over_newer_version_rejected(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A deploy that names no app version, over a release that runs a newer one
    than the chart's default (1.0.0), fails in validate and changes nothing. A
    version set through the image.tag value goes back as requested."""
    async with running_worker(temporal_env.client, lifecycle_settings):
        await deploy(temporal_env, lifecycle_settings, namespace, "1.1.0")
        handle = await start_deploy(temporal_env, lifecycle_settings, namespace, None)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        status = await handle.query("status", result_type=DeployStatus)
        records = await kube.list(
            SECRET, namespace, label_selector=f"owner=helm,name={RELEASE}"
        )
        running = app_image_tag(await get(kube, DEPLOYMENT, RELEASE, namespace))

        values = {
            "app": {"replicas": 2},
            "rabbitmq": {"replicas": 1},
            "image": {"tag": "1.0.0"},
        }
        back = await deploy(
            temporal_env, lifecycle_settings, namespace, None, values=values
        )
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == contracts.INVALID_REQUEST
    assert cause.non_retryable
    assert "would replace app version 1.1.0" in cause.message
    assert f"which Deployment {RELEASE} is set to run, with 1.0.0" in cause.message
    assert "--app-version 1.1.0" in cause.message
    assert status.state == "invalid"
    assert all(r.attempts == 0 for r in status.phases)
    assert len(records["items"]) == 1
    assert running == "1.1.0"
    assert back.state == "succeeded"
    assert app_image_tag(await get(kube, DEPLOYMENT, RELEASE, namespace)) == "1.0.0"


async def test_temporal_namespace_change_replaces_schema_job(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A new temporal.namespace changes the finished schema Job's pod template,
    which the API server rejects. The temporal phase replaces that Job, the
    deploy succeeds, and the new Job creates the new namespace."""
    values = {
        "app": {"replicas": 2},
        "rabbitmq": {"replicas": 1},
        "temporal": {"namespace": "other-ns"},
    }
    async with running_worker(temporal_env.client, lifecycle_settings):
        await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        jobs = await kube.list(
            JOB,
            namespace,
            label_selector=f"app.kubernetes.io/instance={RELEASE}-temporal",
        )
        [before] = jobs["items"]
        status = await deploy(
            temporal_env, lifecycle_settings, namespace, "1.0.0", values=values
        )
        after = await kube.get(JOB, before["metadata"]["name"], namespace)
    assert status.state == "succeeded", status.model_dump_json(indent=1)
    temporal = record(status, "temporal")
    assert temporal.attempts == 1
    assert after is not None
    assert after["metadata"]["uid"] != before["metadata"]["uid"]
    init = [c["name"] for c in after["spec"]["template"]["spec"]["initContainers"]]
    assert "create-other-ns-namespace" in init
