"""Explain why a workload is not ready: which pods, and what blocks each.

This replaces the old chart's manual recipe (describe the pod, find the
`wait-for-<service>` init container that never finishes, or the container in
CrashLoopBackOff) with one line per pod in the phase's error.
"""

from __future__ import annotations

from typing import Any

from activities.kubeapi import KubeApiError, KubeClient, well_known
from activities.waits import TRANSIENT_ERRORS

MAX_PODS = 5
# Maximum characters quoted from one kubelet or scheduler message.
MAX_DETAIL = 300
# Waiting reasons whose message the kubelet builds only from the names of the
# Secret or ConfigMap and the key it could not find, never from their data.
QUOTED_WAITING = ("CreateContainerConfigError",)
# Warning events quoted for a blocked pod. Their messages name volumes,
# Secrets, claims and nodes. Events that can carry a container's output, such
# as a failed probe's (Unhealthy), are left out: it may hold a secret.
QUOTED_EVENTS = ("FailedMount", "FailedAttachVolume", "FailedScheduling")


def _quoted(waiting: dict[str, Any]) -> str:
    """Return ": <message>" for a waiting state whose message is safe to show."""
    message = waiting.get("message")
    if waiting.get("reason") in QUOTED_WAITING and message:
        return f": {message[:MAX_DETAIL]}"
    return ""


def pod_blocker(pod: dict[str, Any]) -> str | None:
    """Return what keeps one pod from being ready, or None when it is ready."""
    status = pod.get("status") or {}
    name = pod["metadata"]["name"]
    for init in status.get("initContainerStatuses") or []:
        state = init.get("state") or {}
        if "terminated" in state and state["terminated"].get("exitCode") == 0:
            continue
        if "running" in state:
            return (
                f"pod {name}: init container {init['name']} is still running "
                "(waiting for its service)"
            )
        waiting = state.get("waiting") or {}
        terminated = state.get("terminated") or {}
        reason = waiting.get("reason") or terminated.get("reason") or "not started"
        return (
            f"pod {name}: init container {init['name']} is {reason}{_quoted(waiting)}"
        )
    for container in status.get("containerStatuses") or []:
        if container.get("ready"):
            continue
        state = container.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting:
            restarts = container.get("restartCount", 0)
            return (
                f"pod {name}: container {container['name']} is "
                f"{waiting.get('reason', 'waiting')}"
                f" ({restarts} restarts){_quoted(waiting)}"
            )
        if "running" in state:
            return (
                f"pod {name}: container {container['name']} is running but not "
                "ready (readiness probe)"
            )
        return f"pod {name}: container {container['name']} is not ready"
    if status.get("phase") == "Pending" and not pod["spec"].get("nodeName"):
        return f"pod {name}: not scheduled yet"
    return None


async def latest_warning(kube: KubeClient, pod: dict[str, Any]) -> str | None:
    """Return the pod's newest quotable Warning event as "reason: message".

    A kubelet reports a volume it cannot mount only as an event, so the pod's
    status shows only ContainerCreating. None when there is no such
    event or the events cannot be read.
    """
    metadata = pod["metadata"]
    selector = f"involvedObject.uid={metadata['uid']},type=Warning"
    try:
        events = await kube.list(
            well_known("v1", "Event"), metadata["namespace"], field_selector=selector
        )
    except (KubeApiError, *TRANSIENT_ERRORS):
        return None
    quoted = [e for e in events.get("items", []) if e.get("reason") in QUOTED_EVENTS]
    if not quoted:
        return None

    def moment(event: dict[str, Any]) -> str:
        return str(
            event.get("lastTimestamp")
            or event.get("eventTime")
            or event["metadata"].get("creationTimestamp")
            or ""
        )

    newest = max(quoted, key=moment)
    message = str(newest.get("message") or "")[:MAX_DETAIL]
    return f"{newest['reason']}: {message}"


async def describe_blocked_pods(
    kube: KubeClient, namespace: str, selector: dict[str, str]
) -> list[str]:
    """Return one line per pod (at most MAX_PODS) that is not ready.

    Each line ends with the pod's newest quotable Warning event, if it has one.
    """
    label_selector = ",".join(
        f"{key}={value}" for key, value in sorted(selector.items())
    )
    pods = await kube.list(
        well_known("v1", "Pod"), namespace, label_selector=label_selector
    )
    blocked = [
        (pod, line) for pod in pods.get("items", []) if (line := pod_blocker(pod))
    ]
    lines: list[str] = []
    for pod, line in blocked[:MAX_PODS]:
        warning = await latest_warning(kube, pod)
        lines.append(f"{line} ({warning})" if warning else line)
    extra = len(blocked) - MAX_PODS
    return lines + ([f"... and {extra} more pods"] if extra > 0 else [])
