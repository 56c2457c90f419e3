"""Waits on Jobs against the real API server and Job controller.

A wait ends when the Job's pods have succeeded, before the Job controller
writes the Complete condition (it syncs at most once a second). Jobs that the
pods cannot judge, and failed Jobs, still go by the Job's own status.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from activities import waits
from activities.kubeapi import JsonObject, KubeClient, ResourceType, well_known
from activities.waits import TerminalFailure, wait_object_ready
from deployer.phases import ObjectRef

JOB = well_known("batch/v1", "Job")
SERVICE_ACCOUNT = ResourceType("v1", "ServiceAccount", "serviceaccounts", True)
STEER = "sim.ventros.io/"
IMAGE = "registry.example.test/migrate:1.0"
WAIT_S = 60.0


def job_manifest(
    name: str, spec: dict[str, Any], annotations: dict[str, str]
) -> JsonObject:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            **spec,
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": IMAGE}],
                },
            },
        },
    }


async def wait_default_service_account(kube: KubeClient, namespace: str) -> None:
    # Pod admission rejects the Job's pods until the namespace has this account.
    for _ in range(100):
        if await kube.get(SERVICE_ACCOUNT, "default", namespace):
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"namespace {namespace} got no default ServiceAccount in 10 s")


def condition_true(job: JsonObject | None, kind: str) -> bool:
    conditions = ((job or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == kind and c["status"] == "True" for c in conditions)


async def run_job(
    kube: KubeClient,
    namespace: str,
    spec: dict[str, Any],
    annotations: dict[str, str],
) -> tuple[str, list[str]]:
    """Create a Job, wait for it; return the wait's line and the statuses seen."""
    await wait_default_service_account(kube, namespace)
    name = f"job-{uuid.uuid4().hex[:6]}"
    await kube.create(JOB, job_manifest(name, spec, annotations), namespace)
    ref = ObjectRef(api_version="batch/v1", kind="Job", name=name, namespace=namespace)
    seen: list[str] = []
    line = await wait_object_ready(
        kube, ref, time.monotonic() + WAIT_S, lambda _, status: seen.append(status)
    )
    return line, seen


async def test_job_wait_ends_on_pods(kube: KubeClient, namespace: str) -> None:
    line, seen = await run_job(kube, namespace, {}, {STEER + "job-duration": "1.5"})
    assert line.startswith("Complete: 1 of 1 pods succeeded")
    assert seen[-1] == line
    [job] = (await kube.list(JOB, namespace))["items"]
    assert not condition_true(job, "Complete")
    for _ in range(30):
        await asyncio.sleep(0.1)
        job = await kube.get(JOB, job["metadata"]["name"], namespace)
        if condition_true(job, "Complete"):
            break
    assert condition_true(job, "Complete")


async def test_job_wait_counts_completions(kube: KubeClient, namespace: str) -> None:
    line, _ = await run_job(
        kube,
        namespace,
        {"completions": 3, "parallelism": 2},
        {STEER + "job-duration": "0.5"},
    )
    assert line.startswith("Complete: 3 of 3 pods succeeded")


@pytest.mark.parametrize(
    "spec",
    [
        {"activeDeadlineSeconds": 600},
        {"completionMode": "Indexed", "completions": 1},
        {"parallelism": 2},
    ],
    ids=["deadline", "indexed", "work-queue"],
)
async def test_job_wait_uses_condition(
    kube: KubeClient, namespace: str, spec: dict[str, Any]
) -> None:
    line, _ = await run_job(kube, namespace, spec, {STEER + "job-duration": "0.5"})
    # The Job's own status line, not the one the pods give.
    assert line.startswith("Complete: ")
    assert "succeeded, 0 failed" in line
    assert "pods succeeded" not in line


async def test_failed_job_still_fails(kube: KubeClient, namespace: str) -> None:
    with pytest.raises(TerminalFailure) as failure:
        await run_job(kube, namespace, {}, {STEER + "job-outcome": "fail"})
    assert "BackoffLimitExceeded" in failure.value.reason


async def test_pod_watch_failure_falls_back(
    kube: KubeClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken pod watch leaves the wait to the Job's own condition."""

    async def broken(kube: KubeClient, ref: ObjectRef) -> str | None:
        raise ValueError("malformed pod list")

    monkeypatch.setattr(waits, "job_pods_succeeded", broken)
    line, _ = await run_job(kube, namespace, {}, {STEER + "job-duration": "0.5"})
    assert line.startswith("Complete: 1 succeeded, 0 failed")


async def test_deleted_object_is_reported_as_deleted(
    kube: KubeClient, namespace: str
) -> None:
    """An object deleted by someone else during its wait shows as deleted, not
    as not found yet, and the timeout names that last status."""
    await wait_default_service_account(kube, namespace)
    name = f"job-{uuid.uuid4().hex[:6]}"
    manifest = job_manifest(name, {}, {STEER + "job-duration": "60"})
    await kube.create(JOB, manifest, namespace)
    ref = ObjectRef(api_version="batch/v1", kind="Job", name=name, namespace=namespace)
    seen: list[str] = []
    observed = asyncio.Event()

    def on_status(_: ObjectRef, status: str) -> None:
        seen.append(status)
        observed.set()

    async def delete_once_seen() -> None:
        await observed.wait()
        await kube.delete(JOB, name, namespace, propagation="Background")

    deleting = asyncio.create_task(delete_once_seen())
    with pytest.raises(waits.WaitTimeout) as timeout:
        await wait_object_ready(kube, ref, time.monotonic() + 4.0, on_status)
    await deleting
    assert seen[-1] == "deleted after it was seen"
    assert "deleted after it was seen" in str(timeout.value)
