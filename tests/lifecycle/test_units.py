"""The pure parts of rollback and destroy, with tables of realistic inputs:
queue depths, stuck-namespace statuses, image tags, requests and settings,
and the teardown's kinds checked against what the chart renders."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError

from activities.deploy import PHASE_LABEL, image_tag
from activities.drain import ManagementError, queue_depth
from activities.helm import Helm
from activities.rollback import RollbackActivities
from activities.teardown import (
    PHASE_KINDS,
    deleting_status,
    namespace_status,
    needs_operator,
)
from deployer.contracts import RollbackPlan
from deployer.inputs import ChartRef, InvalidRequestError
from deployer.lifecycle import (
    RollbackRequest,
    parse_destroy_request,
    parse_rollback_request,
)
from deployer.phases import ObjectRef, Phase
from deployer.settings import WorkerSettings
from testbed.cluster import tool_path
from tests.conftest import REPO_ROOT
from workflows.rollback import migration_note

TERMINATING = {
    "metadata": {"name": "shop"},
    "status": {
        "phase": "Terminating",
        "conditions": [
            {
                "type": "NamespaceDeletionDiscoveryFailure",
                "status": "False",
                "reason": "ResourcesDiscovered",
                "message": "All resources successfully discovered",
            },
            {
                "type": "NamespaceDeletionContentFailure",
                "status": "True",
                "reason": "ContentDeletionFailed",
                "message": "Failed to delete all resource types, 1 remaining: "
                "Internal error occurred: error resolving resource",
            },
            {
                "type": "NamespaceFinalizersRemaining",
                "status": "True",
                "reason": "SomeFinalizersRemain",
                "message": "Some content in the namespace has finalizers "
                "remaining: example.test/hold in 1 resource instances",
            },
        ],
    },
}


@pytest.mark.parametrize(
    ("queues", "drained", "text"),
    [
        ([], True, "0 messages in 0 queues"),
        (
            [{"name": "events", "vhost": "/", "messages": 0}],
            True,
            "0 messages in 1 queue",
        ),
        (
            [
                {"name": "events", "vhost": "/", "messages": 5},
                {"name": "mail", "vhost": "crm", "messages": 2},
                {"name": "idle", "vhost": "/", "messages": 0},
            ],
            False,
            "7 messages in 2 queues (events: 5, mail (vhost crm): 2)",
        ),
        (
            [{"name": "fresh", "vhost": "/"}],
            False,
            "1 queue without a message count yet (fresh)",
        ),
    ],
)
def test_queue_depth_table(
    queues: list[dict[str, Any]], drained: bool, text: str
) -> None:
    """Queue listings become a total, a drained verdict and one status line;
    a queue without statistics counts as not drained."""
    depth = queue_depth(queues)
    assert depth.drained is drained
    assert depth.describe() == text


def test_queue_depth_rejects_non_list() -> None:
    """A response that is not a list of queues is a management API error."""
    with pytest.raises(ManagementError, match="no list of queues"):
        queue_depth({"error": "not_authorized"})


def test_namespace_status_names_true_conditions() -> None:
    """A stuck namespace's status lists the conditions that are True, with
    their messages, and leaves out the ones that are fine."""
    status = namespace_status(TERMINATING)
    assert status.startswith("Terminating: ")
    assert "NamespaceDeletionContentFailure: Failed to delete" in status
    assert "example.test/hold in 1 resource instances" in status
    assert "NamespaceDeletionDiscoveryFailure" not in status


def test_namespace_status_without_conditions() -> None:
    """Before the namespace controller sets conditions, the status states it."""
    status = namespace_status({"status": {"phase": "Terminating"}})
    assert status == "Terminating (no deletion conditions reported yet)"


def test_deleting_status_names_finalizers() -> None:
    """An object marked for deletion shows since when and which finalizers hold it."""
    obj = {
        "metadata": {
            "deletionTimestamp": "2026-01-01T00:00:00Z",
            "finalizers": ["deletion.finalizers.rabbitmqclusters.rabbitmq.com"],
        }
    }
    assert deleting_status(obj) == (
        "deleting since 2026-01-01T00:00:00Z, held by finalizers "
        "deletion.finalizers.rabbitmqclusters.rabbitmq.com"
    )
    assert deleting_status({"metadata": {}}) == "still exists"


def deployment(image: str, version_label: str = "9.9.9") -> dict[str, Any]:
    return {
        "spec": {
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/version": version_label}},
                "spec": {
                    "containers": [
                        {"name": "sidecar", "image": "busybox:1.37"},
                        {"name": "app", "image": image},
                    ]
                },
            }
        }
    }


RABBITMQ_FINALIZER = "deletion.finalizers.rabbitmqclusters.rabbitmq.com"


def operator_object(
    namespace: str, deleting: bool = False, finalizers: list[str] | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "db", "namespace": namespace}
    if deleting:
        metadata["deletionTimestamp"] = "2026-12-05T03:00:00Z"
    if finalizers:
        metadata["finalizers"] = finalizers
    return {"metadata": metadata}


@pytest.mark.parametrize(
    ("item", "needed"),
    [
        (operator_object("shop"), True),
        (operator_object("shop", deleting=True), False),
        (operator_object("gone"), False),
        (operator_object("gone", finalizers=[RABBITMQ_FINALIZER]), True),
        (operator_object("shop", deleting=True, finalizers=[RABBITMQ_FINALIZER]), True),
    ],
    ids=[
        "live",
        "deleting",
        "namespace-terminating",
        "finalizer",
        "deleting-finalizer",
    ],
)
def test_needs_operator_table(item: dict[str, Any], needed: bool) -> None:
    """An object leaving without a finalizer no longer needs its operator."""
    assert needs_operator(item, terminating={"gone"}) is needed


@pytest.mark.parametrize(
    ("image", "tag"),
    [
        ("ghcr.io/ventros/crm:1.1.0", "1.1.0"),
        ("registry.local:5000/ventros/crm:2.0.0-rc.1", "2.0.0-rc.1"),
        ("registry.local:5000/ventros/crm", "9.9.9"),
        ("ghcr.io/ventros/crm@sha256:" + "a" * 64, "9.9.9"),
    ],
)
def test_image_tag_table(image: str, tag: str) -> None:
    """The running version is the app container's tag; without a tag it is the
    version label, never a registry port."""
    assert image_tag(deployment(image)) == tag


def test_destroy_request_namespace_needs_data() -> None:
    """Deleting the namespace deletes the database in it, so it needs delete_data."""
    with pytest.raises(InvalidRequestError, match="set delete_data too"):
        parse_destroy_request({"delete_namespace": True})
    request = parse_destroy_request({"delete_namespace": True, "delete_data": True})
    assert request.workflow_id == "destroy-ventros-crm.ventros-crm"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"release": "Bad Name"}, "release"),
        ({"namespace": "-x"}, "namespace"),
        ({"force": "maybe"}, "force"),
        ({"drain_timeout_s": 1}, "drain_timeout_s"),
        ({"purge": True}, "purge"),
    ],
)
def test_destroy_request_rejects(raw: dict[str, Any], field: str) -> None:
    """Invalid destroy requests fail with a message naming the field."""
    with pytest.raises(InvalidRequestError, match=f"invalid destroy request: {field}"):
        parse_destroy_request(raw)


def test_rollback_request_rejects_bad_version() -> None:
    """A to_version that is not an image tag is rejected, naming the field."""
    with pytest.raises(InvalidRequestError, match="to_version: must be an image tag"):
        parse_rollback_request({"to_version": "-rf"})
    with pytest.raises(InvalidRequestError, match="must be a JSON object"):
        parse_rollback_request("ventros-crm")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://{name}.{namespace}.svc:15672",
        "http://{name}.{namespace}.svc:15672/{vhost}",
        "http://{0}:15672",
    ],
)
def test_management_url_setting_rejects(url: str) -> None:
    """The management URL must be http(s) with only {name} and {namespace}."""
    with pytest.raises(ValidationError, match="rabbitmq_management_url"):
        WorkerSettings(rabbitmq_management_url=url)


async def test_phase_kinds_cover_chart() -> None:
    """Every kind the chart labels with a phase that the destroy deletes by
    label is in that phase's PHASE_KINDS, so none is left behind."""
    helm = Helm(str(tool_path("helm")), None, None, REPO_ROOT)
    objects = await helm.template(
        "ventros-crm", "ventros-crm", ChartRef(path="chart"), {}
    )
    rendered: dict[str, set[tuple[str, str]]] = {}
    for obj in objects:
        phase = (obj["metadata"].get("labels") or {}).get(PHASE_LABEL)
        rendered.setdefault(str(phase), set()).add((obj["apiVersion"], obj["kind"]))
    for phase, kinds in PHASE_KINDS.items():
        assert rendered[phase.value] <= set(kinds), phase
    # The rest is the base phase, which the destroy uninstalls with helm.
    assert set(rendered) - {p.value for p in PHASE_KINDS} == {Phase.BASE.value}


class VersionsByRevision(RollbackActivities):
    """Rollback activities whose revision versions come from a table."""

    def __init__(self, versions: dict[int, str]) -> None:
        self.versions = versions

    async def _version_of(
        self, helm: Any, request: RollbackRequest, entry: dict[str, Any]
    ) -> str:
        return self.versions[int(entry["revision"])]


async def test_rollback_error_marks_unfinished_revisions() -> None:
    """The error for a missing version marks every revision whose deploy did
    not finish, the running version's ones included."""
    versions = {6: "2.0.0", 5: "2.0.0", 2: "2.0.0", 1: "2.0.0"}
    activities = VersionsByRevision(versions)
    request = RollbackRequest(release="r", namespace="n")
    revisions = [{"revision": r} for r in versions]
    with pytest.raises(ApplicationError) as raised:
        await activities._target(None, request, "2.0.0", revisions, {1, 5, 6})  # type: ignore[arg-type]
    message = raised.value.message
    assert "6: 2.0.0; 5: 2.0.0; 2: 2.0.0, did not finish; 1: 2.0.0" in message


def test_migration_note_names_failed_and_running_migrations() -> None:
    """The rollback's note names every kept migration, and marks the one that
    failed (it may be applied in part) or still runs."""
    plan = RollbackPlan(
        current_version="3.0",
        target_version="1.0",
        helm_revision=1,
        app=ObjectRef(
            api_version="apps/v1", kind="Deployment", name="crm", namespace="shop"
        ),
        kept_migrations=[
            ("crm-migrate-2-0", "2.0", "complete"),
            ("crm-migrate-3-0", "3.0", "failed"),
            ("crm-migrate-3-1", "3.1", "running"),
        ],
    )
    assert migration_note(plan) == (
        "database migrations are not undone: migration crm-migrate-2-0 for 2.0, "
        "migration crm-migrate-3-0 for 3.0 (failed, and may be applied in part), "
        "migration crm-migrate-3-1 for 3.1 (still running) stay applied"
    )
