"""Rollback: `ventros-deploy rollback` returns the app and the base helm
release to the previous app version, and leaves the migrations applied."""

from __future__ import annotations

import json

from temporalio.testing import WorkflowEnvironment

from activities.helm import Helm
from activities.kubeapi import KubeClient
from deployer.lifecycle import RollbackStatus, rollback_workflow_id_for
from deployer.settings import WorkerSettings
from tests.conftest import REPO_ROOT, keep_history, running_worker
from tests.lifecycle.conftest import (
    DEPLOYMENT,
    JOB,
    RELEASE,
    app_image_tag,
    cli_env,
    deploy,
    run_cli,
)


async def base_release_tag(settings: WorkerSettings, namespace: str) -> str:
    """Return image.tag of the base release's current revision."""
    helm = Helm(settings.helm, str(settings.kubeconfig), None, REPO_ROOT)
    out = await helm.run(
        ["get", "values", RELEASE, f"--namespace={namespace}", "--output=json"]
    )
    return str(json.loads(out)["image"]["tag"])


async def test_rollback_previous_version(
    temporal_env: WorkflowEnvironment,
    lifecycle_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
) -> None:
    """After 1.0.0 and then 1.1.0, rollback runs 1.0.0 again, completes its
    rollout, keeps the 1.1.0 migration Job and prints that it stays applied.
    A second rollback returns to 1.1.0."""
    async with running_worker(temporal_env.client, lifecycle_settings):
        await deploy(temporal_env, lifecycle_settings, namespace, "1.0.0")
        await deploy(temporal_env, lifecycle_settings, namespace, "1.1.0")
        result = await run_cli(
            ["rollback", "--release", RELEASE, "--namespace", namespace],
            cli_env(temporal_env, lifecycle_settings),
        )
        app = await kube.get(DEPLOYMENT, RELEASE, namespace)
        helm_tag = await base_release_tag(lifecycle_settings, namespace)
        again = await run_cli(
            ["rollback", f"deploy-{namespace}-{RELEASE}", "--json"],
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
            ["rollback", f"deploy-{namespace}-{RELEASE}"],
            cli_env(temporal_env, lifecycle_settings),
        )
    assert result.returncode == 1
    assert "an earlier app version is not in the history" in result.stderr
    assert "the running version is 1.0.0" in result.stderr
