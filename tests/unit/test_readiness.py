"""Readiness verdicts per kind and pod diagnostics, from realistic objects."""

from __future__ import annotations

from typing import Any

import pytest

from activities import readiness
from activities.diagnose import pod_blocker


def deployment(
    generation: int = 2,
    observed: int = 2,
    replicas: int = 3,
    updated: int = 3,
    available: int = 3,
    total: int = 3,
    progressing_reason: str = "NewReplicaSetAvailable",
) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": "app", "generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "replicas": total,
            "updatedReplicas": updated,
            "availableReplicas": available,
            "conditions": [
                {"type": "Progressing", "status": "True", "reason": progressing_reason}
            ],
        },
    }


@pytest.mark.parametrize(
    ("obj", "ready", "failed"),
    [
        (deployment(), True, False),
        (deployment(observed=1), False, False),
        (deployment(available=2), False, False),
        (deployment(total=4), False, False),  # an old replica is still there
        (deployment(updated=2), False, False),
        (deployment(progressing_reason="ProgressDeadlineExceeded"), False, True),
    ],
)
def test_readiness_deployment(obj: dict[str, Any], ready: bool, failed: bool) -> None:
    """A Deployment is ready only when the rollout of its generation is complete."""
    verdict = readiness.evaluate(obj)
    assert verdict.ready is ready
    assert (verdict.failure is not None) is failed


def job(*conditions: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "kind": "Job",
        "metadata": {"name": "migrate", "generation": 1},
        "status": {
            "failed": 4,
            "conditions": [
                {"type": kind, "status": status, "reason": reason, "message": "m"}
                for kind, status, reason in conditions
            ],
        },
    }


def test_readiness_job_complete() -> None:
    """A Job with Complete True is ready."""
    assert readiness.evaluate(job(("Complete", "True", ""))).ready


def test_readiness_job_failed_names_reason() -> None:
    """A Job with Failed True is a terminal failure naming its reason."""
    verdict = readiness.evaluate(job(("Failed", "True", "BackoffLimitExceeded")))
    assert verdict.failure is not None
    assert "BackoffLimitExceeded" in verdict.failure
    assert not verdict.soft_failure


def test_readiness_job_running() -> None:
    """A Job without conditions is still waited on."""
    verdict = readiness.evaluate(job())
    assert not verdict.ready
    assert verdict.failure is None


@pytest.mark.parametrize(
    ("state", "ready", "terminal", "soft"),
    [
        ("Running", True, False, False),
        ("Creating", False, False, False),
        (None, False, False, False),
        ("CreateFailed", False, True, False),
        ("UpdateFailed", False, True, False),
        ("SyncFailed", False, False, True),
    ],
)
def test_readiness_postgresql(
    state: str | None, ready: bool, terminal: bool, soft: bool
) -> None:
    """postgresql: Running is ready, Create/UpdateFailed terminal, SyncFailed soft."""
    obj = {
        "kind": "postgresql",
        "metadata": {"name": "db"},
        "status": {"PostgresClusterStatus": state},
    }
    verdict = readiness.evaluate(obj)
    assert verdict.ready is ready
    hard_failure = verdict.failure is not None and not verdict.soft_failure
    assert hard_failure is terminal
    assert verdict.soft_failure is soft


def rabbitmq(
    observed: int, generation: int, reconcile: str = "True", others: str = "True"
) -> dict[str, Any]:
    return {
        "kind": "RabbitmqCluster",
        "metadata": {"name": "mq", "generation": generation},
        "status": {
            "observedGeneration": observed,
            "conditions": [
                {"type": "AllReplicasReady", "status": others},
                {"type": "ClusterAvailable", "status": others},
                {
                    "type": "ReconcileSuccess",
                    "status": reconcile,
                    "reason": "FailedReconcile",
                },
            ],
        },
    }


def test_readiness_rabbitmq_ready() -> None:
    """All three conditions True for the current generation is ready."""
    assert readiness.evaluate(rabbitmq(3, 3)).ready


def test_readiness_rabbitmq_old_generation() -> None:
    """Conditions of an older generation do not count."""
    verdict = readiness.evaluate(rabbitmq(2, 3))
    assert not verdict.ready
    assert verdict.failure is None


def test_readiness_rabbitmq_reconcile_false() -> None:
    """ReconcileSuccess False for the current generation fails with its reason."""
    verdict = readiness.evaluate(rabbitmq(3, 3, reconcile="False"))
    assert verdict.failure is not None
    assert "FailedReconcile" in verdict.failure


def test_readiness_rabbitmq_replicas_not_ready() -> None:
    """AllReplicasReady False keeps the wait going."""
    assert not readiness.evaluate(rabbitmq(3, 3, others="False")).ready


def test_readiness_crd_established() -> None:
    """A CRD is ready once Established is True."""
    crd = {
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "x"},
        "status": {"conditions": [{"type": "Established", "status": "True"}]},
    }
    assert readiness.evaluate(crd).ready


def pod(init: list[dict[str, Any]], containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": "app-1"},
        "spec": {"nodeName": "n"},
        "status": {
            "phase": "Pending",
            "initContainerStatuses": init,
            "containerStatuses": containers,
        },
    }


def test_pod_blocker_names_running_init() -> None:
    """The init container still running is named as the blocker."""
    blocked = pod(
        [
            {"name": "wait-for-postgres", "state": {"terminated": {"exitCode": 0}}},
            {"name": "wait-for-rabbitmq", "state": {"running": {}}},
        ],
        [
            {
                "name": "app",
                "ready": False,
                "state": {"waiting": {"reason": "PodInitializing"}},
            }
        ],
    )
    assert pod_blocker(blocked) == (
        "pod app-1: init container wait-for-rabbitmq is still running "
        "(waiting for its service)"
    )


def test_pod_blocker_names_crashloop() -> None:
    """A container in CrashLoopBackOff is named with its restart count."""
    crashing = pod(
        [],
        [
            {
                "name": "app",
                "ready": False,
                "restartCount": 5,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            }
        ],
    )
    assert (
        pod_blocker(crashing)
        == "pod app-1: container app is CrashLoopBackOff (5 restarts)"
    )


def test_pod_blocker_ready_pod() -> None:
    """A ready pod has no blocker."""
    ready = pod([], [{"name": "app", "ready": True, "state": {"running": {}}}])
    assert pod_blocker(ready) is None


def test_pod_blocker_quotes_config_error() -> None:
    """CreateContainerConfigError's message, which names a key, is quoted."""
    waiting = {
        "reason": "CreateContainerConfigError",
        "message": "couldn't find key password in Secret ns/db",
    }
    config_error = pod([{"name": "wait-for-db", "state": {"waiting": waiting}}], [])
    assert pod_blocker(config_error) == (
        "pod app-1: init container wait-for-db is CreateContainerConfigError: "
        "couldn't find key password in Secret ns/db"
    )


def test_pod_blocker_omits_other_messages() -> None:
    """Other waiting messages may hold a container's arguments and are left out."""
    waiting = {
        "reason": "RunContainerError",
        "message": 'exec: "--password=hunter2": executable file not found',
    }
    failing = pod([], [{"name": "app", "ready": False, "state": {"waiting": waiting}}])
    assert (
        pod_blocker(failing)
        == "pod app-1: container app is RunContainerError (0 restarts)"
    )


def test_pod_blocker_withholds_expanded_subpath() -> None:
    """A CreateContainerConfigError that quotes an expanded subPath is withheld.

    subPathExpr can expand a variable filled from a Secret, and the kubelet
    quotes the result when it is not a valid path.
    """
    waiting = {
        "reason": "CreateContainerConfigError",
        "message": "error SubPath `/s3cr3t-value` must not be an absolute path",
    }
    failing = pod([], [{"name": "app", "ready": False, "state": {"waiting": waiting}}])
    line = pod_blocker(failing)
    assert line is not None
    assert "s3cr3t-value" not in line
    assert line.endswith(
        "CreateContainerConfigError (0 restarts): message not shown: "
        "it can quote other text; see kubectl describe pod"
    )
