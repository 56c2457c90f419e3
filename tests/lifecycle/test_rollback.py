"""Rollback: `ventros-deploy rollback` returns the app and the base helm
release to the previous app version, and leaves the migrations applied."""

from __future__ import annotations

import json
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from activities.deploy import digest_key_of
from activities.deploy import secrets_digest as keyed_digest
from activities.helm import Helm
from activities.kubeapi import KubeClient, well_known
from activities.rollback import CONFIG_MAP, RAN_KEY, history_name
from deployer.lifecycle import RollbackStatus, rollback_workflow_id_for
from deployer.phases import PhaseState
from deployer.settings import WorkerSettings
from tests.conftest import REPO_ROOT, keep_history, running_worker
from tests.lifecycle.conftest import (
    DEPLOYMENT,
    JOB,
    NAMESPACE,
    RELEASE,
    annotate,
    app_image_tag,
    cli_env,
    deploy,
    run_cli,
    start_deploy,
    wait_for_step,
)
from tests.lifecycle.test_upgrade import deploy_each, migration_job_names

STATEFULSET = well_known("apps/v1", "StatefulSet")


def secrets_digest(obj: dict[str, Any] | None) -> str:
    """Return the secrets digest annotation of a pod template."""
    assert obj is not None
    annotations = obj["spec"]["template"]["metadata"]["annotations"]
    return str(annotations["deploy.ventros.io/secrets-digest"])


async def base_release_tag(settings: WorkerSettings, namespace: str) -> str:
    """Return image.tag of the base release's current revision."""
    helm = Helm(settings.helm, str(settings.kubeconfig), None, REPO_ROOT)
    out = await helm.run(
        ["get", "values", RELEASE, f"--namespace={namespace}", "--output=json"]
    )
    return str(json.loads(out)["image"]["tag"])


async def base_release_versions(settings: WorkerSettings, namespace: str) -> list[str]:
    """Return the app version that helm records for each base release revision."""
    helm = Helm(settings.helm, str(settings.kubeconfig), None, REPO_ROOT)
    return [entry["app_version"] for entry in await helm.history(RELEASE, namespace)]


async def test_rollback_previous_version(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """After 1.0.0 and then 1.1.0, rollback runs 1.0.0 again, completes its
    rollout, keeps the 1.1.0 migration Job and prints that it stays applied.
    1.1.0 set a Redis password, and the rollback takes Redis back to the
    password of 1.0.0 along with the Secret and the app. A second rollback
    returns to 1.1.0."""
    values = {
        "app": {"replicas": 2},
        "rabbitmq": {"replicas": 1},
        "secrets": {"redisPassword": "rollback-test-password"},
    }
    async with running_worker(temporal_env.client, lifecycle_settings):
        await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        first_digest = secrets_digest(
            await kube.get(STATEFULSET, f"{RELEASE}-redis", namespace)
        )
        await deploy(
            temporal_env, lifecycle_settings, namespace, "1.1.0", values=values
        )
        newer_digest = secrets_digest(
            await kube.get(STATEFULSET, f"{RELEASE}-redis", namespace)
        )
        result = await run_cli(
            ["rollback", "--release", RELEASE, "--namespace", namespace],
            cli_env(temporal_env, lifecycle_settings),
        )
        app = await kube.get(DEPLOYMENT, RELEASE, namespace)
        redis = await kube.get(STATEFULSET, f"{RELEASE}-redis", namespace)
        helm_tag = await base_release_tag(lifecycle_settings, namespace)
        again = await run_cli(
            ["rollback", f"deploy-{namespace}.{RELEASE}", "--json"],
            cli_env(temporal_env, lifecycle_settings),
        )
    print(result.stdout, result.stderr)
    assert result.returncode == 0
    assert "from 1.1.0 to 1.0.0" in result.stdout
    assert (
        "database migrations are not undone: migration "
        f"{RELEASE}-migrate-1-1-0 for 1.1.0 stays applied"
    ) in result.stdout

    assert app is not None
    assert app_image_tag(app) == "1.0.0"
    key = digest_key_of(lifecycle_settings)
    assert key is not None
    assert first_digest == keyed_digest(key, namespace, RELEASE, {})
    assert newer_digest == keyed_digest(key, namespace, RELEASE, values)
    assert newer_digest != first_digest
    assert secrets_digest(redis) == first_digest
    assert secrets_digest(app) == first_digest
    assert redis is not None
    assert redis["status"].get("readyReplicas") == redis["spec"]["replicas"]
    assert redis["status"]["observedGeneration"] == redis["metadata"]["generation"]
    assert app["status"]["observedGeneration"] == app["metadata"]["generation"]
    assert app["status"]["updatedReplicas"] == 2
    assert app["status"]["availableReplicas"] == 2
    assert await kube.get(JOB, f"{RELEASE}-migrate-1-1-0", namespace) is not None
    assert helm_tag == "1.0.0"

    # A second rollback returns to the newer version, like `rollout undo`.
    assert again.returncode == 0
    second = RollbackStatus.model_validate_json(again.stdout.splitlines()[-1])
    assert second.from_version == "1.0.0"
    assert second.to_version == "1.1.0"
    final = await kube.get(DEPLOYMENT, RELEASE, namespace)
    assert final is not None
    assert app_image_tag(final) == "1.1.0"
    # helm list and helm history show the version that ran at each revision.
    assert await base_release_versions(lifecycle_settings, namespace) == [
        "1.0.0",
        "1.1.0",
        "1.0.0",
        "1.1.0",
    ]
    handle = temporal_env.client.get_workflow_handle(
        rollback_workflow_id_for(namespace, RELEASE)
    )
    await keep_history(handle, "rollback")


async def test_rollback_without_history(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    namespace: str,
) -> None:
    """A rollback right after the first deploy fails with exit code 1 and an
    error stating that no earlier version exists."""
    async with running_worker(temporal_env.client, lifecycle_settings):
        await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        result = await run_cli(
            ["rollback", f"deploy-{namespace}.{RELEASE}"],
            cli_env(temporal_env, lifecycle_settings),
        )
    assert result.returncode == 1
    assert "an earlier app version is not in the history" in result.stderr
    assert "the running version is 1.0.0" in result.stderr


async def test_rollback_skips_unfinished_deploy(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """1.0.0 ran, 2.0.0 was aborted while its app pods were held, 2.0.1 ran:
    rollback returns to 1.0.0, not to 2.0.0, whose base revision exists but
    whose app never became ready, and names both later migrations as kept."""
    hold = {"sim.ventros.io/hold-init": "wait-for-redis"}
    async with running_worker(temporal_env.client, lifecycle_settings):
        await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        await annotate(kube, NAMESPACE, namespace, None, hold)
        handle = await start_deploy(
            temporal_env, lifecycle_settings, namespace, "2.0.0", timeouts={"app": 600}
        )
        await wait_for_step(handle, "app", PhaseState.RUNNING, timeout_s=150)
        await handle.execute_update("abort", "the test stops 2.0.0", result_type=str)
        with pytest.raises(WorkflowFailureError):
            await handle.result()

        await annotate(
            kube, NAMESPACE, namespace, None, {"sim.ventros.io/hold-init": None}
        )
        latest = await deploy(temporal_env, lifecycle_settings, namespace, "2.0.1")
        noted = await kube.get(CONFIG_MAP, history_name(RELEASE), namespace)
        result = await run_cli(
            ["rollback", "--release", RELEASE, "--namespace", namespace, "--json"],
            cli_env(temporal_env, lifecycle_settings),
        )
        app = await kube.get(DEPLOYMENT, RELEASE, namespace)
        history = await kube.get(CONFIG_MAP, history_name(RELEASE), namespace)
        to_unfinished = await run_cli(
            [
                "rollback",
                *("--release", RELEASE, "--namespace", namespace),
                *("--to-version", "2.0.0"),
            ],
            cli_env(temporal_env, lifecycle_settings),
        )

    assert latest.state == "succeeded"
    # 2.0.0 is in the history, but no deploy of it finished.
    assert to_unfinished.returncode == 1, to_unfinished.stderr
    assert "no deploy of 2.0.0 finished" in to_unfinished.stderr
    assert "deploy that version instead" in to_unfinished.stderr
    assert noted is not None
    # Revisions 1 (1.0.0) and 3 (2.0.1) ran; 2 (2.0.0) was aborted.
    assert noted["data"][RAN_KEY] == "1,3"
    assert result.returncode == 0, result.stderr
    status = RollbackStatus.model_validate_json(result.stdout.splitlines()[-1])
    assert status.from_version == "2.0.1"
    assert status.to_version == "1.0.0"
    assert status.helm_revision == 1
    # Both migrations that ran after 1.0.0's stay applied, 2.0.0's too,
    # although its deploy did not finish.
    assert status.migration_note is not None
    assert (
        f"migration {RELEASE}-migrate-2-0-0 for 2.0.0, migration "
        f"{RELEASE}-migrate-2-0-1 for 2.0.1 stay applied"
    ) in status.migration_note
    assert app is not None
    assert app_image_tag(app) == "1.0.0"
    # The rollback's own revision (4) ran too, so a second rollback may
    # return to it.
    assert history is not None
    assert history["data"][RAN_KEY] == "1,3,4"


async def test_rollback_names_pruned_migrations(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """A rollback to 1.0.0 after four later versions names every later
    migration as kept: 1.1.0's, whose Job was pruned but noted, and the three
    whose Jobs remain. 1.0.0's own Job was pruned too."""
    versions = ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"]
    await deploy_each(temporal_env, lifecycle_settings, namespace, versions)
    async with running_worker(temporal_env.client, lifecycle_settings):
        result = await run_cli(
            [
                "rollback",
                *("--release", RELEASE, "--namespace", namespace),
                *("--to-version", "1.0.0"),
                "--json",
            ],
            cli_env(temporal_env, lifecycle_settings),
        )
    names = await migration_job_names(kube, namespace)

    assert names == [
        f"{RELEASE}-migrate-1-2-0",
        f"{RELEASE}-migrate-1-3-0",
        f"{RELEASE}-migrate-1-4-0",
    ]
    assert result.returncode == 0, result.stderr
    status = RollbackStatus.model_validate_json(result.stdout.splitlines()[-1])
    assert status.to_version == "1.0.0"
    assert status.migration_note == (
        "database migrations are not undone: the migration for 1.1.0 (its Job "
        f"was deleted), migration {RELEASE}-migrate-1-2-0 for 1.2.0, migration "
        f"{RELEASE}-migrate-1-3-0 for 1.3.0, migration {RELEASE}-migrate-1-4-0 "
        "for 1.4.0 stay applied"
    )
