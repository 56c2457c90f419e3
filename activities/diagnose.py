"""Explain why a workload is not ready: which pods, and what blocks each.

This replaces the old chart's manual recipe (describe the pod, find the
`wait-for-<service>` init container that never finishes, or the container in
CrashLoopBackOff) with one line per pod in the phase's error.
"""

from __future__ import annotations

from typing import Any

from activities.kubeapi import KubeClient, well_known

MAX_PODS = 5


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
        return f"pod {name}: init container {init['name']} is {reason}"
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
                f" ({restarts} restarts)"
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


async def describe_blocked_pods(
    kube: KubeClient, namespace: str, selector: dict[str, str]
) -> list[str]:
    """Return one line per pod (at most MAX_PODS) that is not ready."""
    label_selector = ",".join(
        f"{key}={value}" for key, value in sorted(selector.items())
    )
    pods = await kube.list(
        well_known("v1", "Pod"), namespace, label_selector=label_selector
    )
    lines = [line for pod in pods.get("items", []) if (line := pod_blocker(pod))]
    extra = len(lines) - MAX_PODS
    return lines[:MAX_PODS] + ([f"... and {extra} more pods"] if extra > 0 else [])
