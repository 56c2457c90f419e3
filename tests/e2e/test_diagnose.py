"""Timeout diagnosis against the local API server and the simulated kubelets.

The pods are held back by what a real kubelet does on a missing Secret: a
volume it cannot mount (reported only as a FailedMount event) and an
environment variable it cannot fill (CreateContainerConfigError).
"""

from __future__ import annotations

import asyncio
from typing import Any

from activities.diagnose import describe_blocked_pods
from activities.kubeapi import KubeClient, well_known

DEPLOYMENT = well_known("apps/v1", "Deployment")
POD = well_known("v1", "Pod")
EVENT = well_known("v1", "Event")


async def write_event(
    kube: KubeClient,
    namespace: str,
    app: str,
    reason: str,
    message: str,
    component: str,
) -> None:
    """Write a Warning event about app's pod, newer than any other, as component."""
    pods = await kube.list(POD, namespace, label_selector=f"app={app}")
    pod = pods["items"][0]["metadata"]
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{pod['name']}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod["name"],
            "namespace": namespace,
            "uid": pod["uid"],
        },
        "type": "Warning",
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "firstTimestamp": "2099-01-01T00:00:00Z",
        "lastTimestamp": "2099-01-01T00:00:00Z",
        "count": 1,
    }
    await kube.create(EVENT, event, namespace)


def deployment(name: str, pod_spec: dict[str, Any]) -> dict[str, Any]:
    labels = {"app": name}
    container = {"name": "main", "image": "registry.invalid/main:1"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container], **pod_spec},
            },
        },
    }


async def blocked_lines(
    kube: KubeClient, namespace: str, app: str, expected: str
) -> list[str]:
    """Return the diagnosis of app's pods once a line contains expected."""
    lines: list[str] = []
    for _ in range(100):
        lines = await describe_blocked_pods(kube, namespace, {"app": app})
        if any(expected in line for line in lines):
            return lines
        await asyncio.sleep(0.1)
    raise AssertionError(f"no line with {expected!r} in {lines}")


async def test_unmountable_secret_names_volume(
    kube: KubeClient, namespace: str
) -> None:
    """A pod held at ContainerCreating gets its FailedMount event quoted."""
    volume = {"name": "certs", "secret": {"secretName": "missing-certs"}}
    spec = deployment("mounter", {"volumes": [volume]})
    spec["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "certs", "mountPath": "/certs"}
    ]
    await kube.create(DEPLOYMENT, spec, namespace)

    lines = await blocked_lines(kube, namespace, "mounter", "FailedMount")
    assert len(lines) == 1
    assert "container main is ContainerCreating" in lines[0]
    assert lines[0].endswith(
        '(FailedMount: MountVolume.SetUp failed for volume "certs" : '
        'secret "missing-certs" not found)'
    )


async def test_missing_secret_key_quoted(kube: KubeClient, namespace: str) -> None:
    """CreateContainerConfigError carries the kubelet's message naming the key."""
    env = [
        {
            "name": "PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "db-login", "key": "password"}},
        }
    ]
    spec = deployment("reader", {})
    spec["spec"]["template"]["spec"]["containers"][0]["env"] = env
    await kube.create(DEPLOYMENT, spec, namespace)

    lines = await blocked_lines(kube, namespace, "reader", "CreateContainerConfigError")
    assert lines[0].endswith(
        'container main is CreateContainerConfigError (0 restarts): secret "db-login" '
        "not found"
    )


async def mount_missing_secret(kube: KubeClient, namespace: str, app: str) -> None:
    """Deploy app with a volume of a missing Secret; return once it is held."""
    volume = {"name": "certs", "secret": {"secretName": "missing-certs"}}
    await kube.create(DEPLOYMENT, deployment(app, {"volumes": [volume]}), namespace)
    await blocked_lines(kube, namespace, app, "FailedMount")


async def test_probe_output_not_quoted(kube: KubeClient, namespace: str) -> None:
    """A Warning event that may carry a container's output stays out of the line.

    A failed readiness probe's event (Unhealthy) quotes what the probe printed.
    The event is written here the way a kubelet writes it.
    """
    await mount_missing_secret(kube, namespace, "prober")
    message = "Readiness probe failed: token=s3cr3t-value rejected"
    await write_event(kube, namespace, "prober", "Unhealthy", message, "kubelet")

    lines = await describe_blocked_pods(kube, namespace, {"app": "prober"})
    assert len(lines) == 1
    assert "s3cr3t-value" not in lines[0]
    assert "(FailedMount: " in lines[0]


async def test_untrusted_mount_events_withheld(
    kube: KubeClient, namespace: str
) -> None:
    """Only the kubelet's FailedMount is quoted, and only when made of names.

    An event from another writer is ignored, however new. A kubelet message
    that quotes a storage driver's text is replaced by a note.
    """
    await mount_missing_secret(kube, namespace, "mounted")
    forged = "written by someone else: run kubectl delete ns"
    await write_event(kube, namespace, "mounted", "FailedMount", forged, "intruder")
    lines = await describe_blocked_pods(kube, namespace, {"app": "mounted"})
    assert forged not in lines[0]
    assert 'secret "missing-certs" not found' in lines[0]

    driver = (
        'MountVolume.SetUp failed for volume "certs" : rpc error: code = Internal '
        "desc = token=s3cr3t-value"
    )
    await write_event(kube, namespace, "mounted", "FailedMount", driver, "kubelet")
    lines = await describe_blocked_pods(kube, namespace, {"app": "mounted"})
    assert "s3cr3t-value" not in lines[0]
    assert lines[0].endswith(
        "(FailedMount: message not shown: it can quote other "
        "text; see kubectl describe pod)"
    )
