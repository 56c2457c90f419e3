"""The check against an implicit downgrade, where it reads the migrations.

Tags without numbers have no order of their own, and a release without its
app Deployment (a destroy that kept the data) runs no version. In both cases
the check reads the migrations: the completed migration Jobs that validate
listed, and the note of deleted ones in the release's migrations ConfigMap,
read from the local API server here.
"""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from activities.deploy import (
    APP_VERSION_ANNOTATION,
    INSTANCE_LABEL,
    PHASE_LABEL,
    DeployActivities,
    ObjectKey,
    check_not_older,
    note_migrated,
)
from activities.kubeapi import JsonObject, KubeClient
from deployer import contracts
from deployer.inputs import parse_request
from deployer.settings import WorkerSettings
from tests.conftest import deploy_request

RELEASE = "ventros-crm"
APP_KEY = ("apps/v1", "Deployment", RELEASE)


def app_deployment(tag: str) -> JsonObject:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": RELEASE, "labels": {PHASE_LABEL: "app"}},
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "app", "image": f"crm:{tag}"}]}
            }
        },
    }


def completed_job(tag: str, at: str) -> JsonObject:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{RELEASE}-migrate-{tag}",
            "labels": {PHASE_LABEL: "migration", INSTANCE_LABEL: RELEASE},
            "annotations": {APP_VERSION_ANNOTATION: tag},
            "creationTimestamp": at,
        },
        "spec": {"completions": 1},
        "status": {
            "succeeded": 1,
            "completionTime": at,
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True"},
                {"type": "Complete", "status": "True"},
            ],
        },
    }


async def check(
    settings: WorkerSettings,
    namespace: str,
    existing: dict[ObjectKey, JsonObject],
    rendered: str = "stable",
    **overrides: Any,
) -> None:
    """Run the check as validate does, for a render of tag rendered, with
    the migrations note read from the API server."""
    activities = DeployActivities(settings)
    request = parse_request(deploy_request(namespace, app_version=None, **overrides))
    try:
        noted = await activities._migrations_note(request)
        check_not_older(request, [app_deployment(rendered)], existing, noted)
    finally:
        await activities.close()


async def migrated_state(
    kube: KubeClient, namespace: str, stable_at: str
) -> dict[ObjectKey, JsonObject]:
    """Note the chart's default tag stable as migrated at stable_at, and return
    validate's listing: the app running abc1234, whose Job completed on
    2026-02-01."""
    await note_migrated(kube, RELEASE, namespace, {"stable": stable_at})
    return {
        APP_KEY: app_deployment("abc1234"),
        ("batch/v1", "Job", "m"): completed_job("abc1234", "2026-02-01T10:00:00Z"),
    }


async def test_tag_migrated_earlier_rejected(
    worker_settings: WorkerSettings, kube: KubeClient, namespace: str
) -> None:
    """The running tag migrated after the chart's default, per its Job."""
    existing = await migrated_state(kube, namespace, "2026-01-01T10:00:00Z")
    with pytest.raises(ApplicationError) as raised:
        await check(worker_settings, namespace, existing)
    assert raised.value.type == contracts.INVALID_REQUEST
    assert raised.value.non_retryable
    assert "would replace app version abc1234" in raised.value.message
    assert "with stable, the chart's default" in raised.value.message


async def test_tag_migrated_later_passes(
    worker_settings: WorkerSettings, kube: KubeClient, namespace: str
) -> None:
    """The chart's default migrated last (a rollback before), per the note."""
    existing = await migrated_state(kube, namespace, "2026-03-01T10:00:00Z")
    await check(worker_settings, namespace, existing)


async def test_tag_without_migration_passes(
    worker_settings: WorkerSettings, namespace: str
) -> None:
    """No migration of either tag, no note: the order is unknown."""
    await check(worker_settings, namespace, {APP_KEY: app_deployment("abc1234")})


async def test_explicit_tag_value_passes(
    worker_settings: WorkerSettings, kube: KubeClient, namespace: str
) -> None:
    """A request that sets image.tag itself may go back."""
    existing = await migrated_state(kube, namespace, "2026-01-01T10:00:00Z")
    values = {"image": {"tag": "stable"}}
    await check(worker_settings, namespace, existing, values=values)


async def test_no_deployment_newest_migration_rejected(
    worker_settings: WorkerSettings, kube: KubeClient, namespace: str
) -> None:
    """Without the app Deployment, the newest migration is the version the
    database was migrated for, and the chart's older default fails."""
    migrated = {"1.0.0": "2026-01-01T10:00:00Z", "1.1.0": "2026-02-01T10:00:00Z"}
    await note_migrated(kube, RELEASE, namespace, migrated)
    with pytest.raises(ApplicationError) as raised:
        await check(worker_settings, namespace, {}, rendered="1.0.0")
    message = raised.value.message
    assert raised.value.type == contracts.INVALID_REQUEST
    assert "would replace app version 1.1.0, for which the release's" in message
    assert "(--app-version 1.1.0)" in message


async def test_no_deployment_default_migrated_last_passes(
    worker_settings: WorkerSettings, kube: KubeClient, namespace: str
) -> None:
    """The chart's default migrated last (after a rollback to it), so the
    deploy is not a step back."""
    migrated = {"1.1.0": "2026-02-01T10:00:00Z", "1.0.0": "2026-03-01T10:00:00Z"}
    await note_migrated(kube, RELEASE, namespace, migrated)
    await check(worker_settings, namespace, {}, rendered="1.0.0")
    await check(worker_settings, namespace, {}, rendered="1.2.0")
