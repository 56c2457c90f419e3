"""Decide from one observed object whether it is ready, still going, or failed.

Pure functions of the object's JSON, one per kind, so they are tested with
tables of realistic objects. ``status`` is one short line that people see in
the UI and in errors: it never contains spec or data fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JsonObject = dict[str, Any]

# postgresql states the Zalando operator reports. CreateFailed and
# UpdateFailed need a change to the manifest; SyncFailed often clears by itself.
PG_TERMINAL = ("CreateFailed", "UpdateFailed")
PG_SYNC_FAILED = "SyncFailed"
RABBITMQ_CONDITIONS = ("AllReplicasReady", "ClusterAvailable", "ReconcileSuccess")


@dataclass(frozen=True)
class Readiness:
    """One verdict: ready, a terminal failure (with its reason), or still waiting."""

    ready: bool
    status: str
    failure: str | None = None
    # A failure that may clear by itself within a bounded grace period.
    soft_failure: bool = False


def _conditions(obj: JsonObject) -> dict[str, JsonObject]:
    return {
        c.get("type", ""): c for c in (obj.get("status") or {}).get("conditions") or []
    }


def _generation_caught_up(obj: JsonObject) -> bool:
    observed = (obj.get("status") or {}).get("observedGeneration")
    return observed is not None and int(observed) >= int(
        obj["metadata"].get("generation", 0)
    )


def deployment(obj: JsonObject) -> Readiness:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    desired = int(spec.get("replicas", 1))
    updated = int(status.get("updatedReplicas", 0))
    available = int(status.get("availableReplicas", 0))
    total = int(status.get("replicas", 0))
    line = f"{available}/{desired} available, {updated} updated, {total} total"
    progressing = _conditions(obj).get("Progressing", {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return Readiness(
            False,
            line,
            "rollout stalled: "
            + progressing.get("message", "ProgressDeadlineExceeded"),
        )
    if not _generation_caught_up(obj):
        return Readiness(
            False,
            f"{line}; controller has not seen generation "
            f"{obj['metadata'].get('generation')}",
        )
    ready = updated == desired and available == desired and total == desired
    return Readiness(ready, line)


def statefulset(obj: JsonObject) -> Readiness:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    desired = int(spec.get("replicas", 1))
    ready_count = int(status.get("readyReplicas", 0))
    updated = int(status.get("updatedReplicas", 0))
    line = f"{ready_count}/{desired} ready, {updated} updated"
    if not _generation_caught_up(obj):
        return Readiness(False, f"{line}; controller has not seen the new generation")
    revision_done = status.get("currentRevision") == status.get("updateRevision")
    ready = ready_count == desired and updated == desired and revision_done
    return Readiness(ready, line)


def job(obj: JsonObject) -> Readiness:
    status = obj.get("status") or {}
    conditions = _conditions(obj)
    line = (
        f"{status.get('succeeded', 0)} succeeded, {status.get('failed', 0)} failed, "
        f"{status.get('active', 0)} active"
    )
    failed = conditions.get("Failed", {})
    if failed.get("status") == "True":
        return Readiness(
            False,
            f"Failed ({failed.get('reason', '')}): {line}",
            f"Job failed: {failed.get('reason', 'Failed')}: "
            f"{failed.get('message', '')}",
        )
    complete = conditions.get("Complete", {})
    if complete.get("status") == "True":
        return Readiness(True, f"Complete: {line}")
    return Readiness(False, line)


def postgresql(obj: JsonObject) -> Readiness:
    state = (obj.get("status") or {}).get("PostgresClusterStatus") or "no status yet"
    line = f"PostgresClusterStatus={state}"
    if state in PG_TERMINAL:
        return Readiness(
            False,
            line,
            f"the operator reports {state}; check the operator's log and the manifest",
        )
    if state == PG_SYNC_FAILED:
        return Readiness(
            False, line, "the operator reports SyncFailed", soft_failure=True
        )
    return Readiness(state == "Running", line)


def rabbitmq_cluster(obj: JsonObject) -> Readiness:
    conditions = _conditions(obj)
    observed = (obj.get("status") or {}).get("observedGeneration")
    generation = obj["metadata"].get("generation")
    parts = [
        f"{name}={conditions.get(name, {}).get('status', 'missing')}"
        for name in RABBITMQ_CONDITIONS
    ]
    line = ", ".join(parts) + f", observedGeneration={observed}/{generation}"
    reconcile = conditions.get("ReconcileSuccess", {})
    current = observed is not None and int(observed) >= int(generation or 0)
    if current and reconcile.get("status") == "False":
        return Readiness(
            False,
            line,
            "ReconcileSuccess is False: "
            f"{reconcile.get('reason', '')} {reconcile.get('message', '')}".strip(),
        )
    ready = current and all(
        conditions.get(name, {}).get("status") == "True" for name in RABBITMQ_CONDITIONS
    )
    return Readiness(ready, line)


def crd(obj: JsonObject) -> Readiness:
    established = _conditions(obj).get("Established", {}).get("status")
    return Readiness(established == "True", f"Established={established or 'missing'}")


def exists(obj: JsonObject) -> Readiness:
    return Readiness(True, "exists")


CHECKS = {
    "Deployment": deployment,
    "StatefulSet": statefulset,
    "Job": job,
    "postgresql": postgresql,
    "RabbitmqCluster": rabbitmq_cluster,
    "CustomResourceDefinition": crd,
}
# Kinds a phase waits on; other objects only have to exist once applied.
WAITED_KINDS = frozenset(CHECKS) - {"CustomResourceDefinition"}


def evaluate(obj: JsonObject) -> Readiness:
    return CHECKS.get(obj.get("kind", ""), exists)(obj)
