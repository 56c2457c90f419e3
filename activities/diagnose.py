"""Explain why a workload is not ready: which pods, and what blocks each.

This replaces the old chart's manual recipe (describe the pod, find the
`wait-for-<service>` init container that never finishes, or the container in
CrashLoopBackOff) with one line per pod in the phase's error.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from activities.kubeapi import KubeApiError, KubeClient, well_known
from activities.waits import TRANSIENT_ERRORS

MAX_PODS = 5
# Maximum characters quoted from one kubelet or scheduler message.
MAX_DETAIL = 300
# Messages that the kubelet or the scheduler builds from names and counts
# only. A message is quoted only when it matches one of these whole: the same
# reasons can carry text that contains a secret, such as a subPath expanded from
# a Secret-filled variable, or a storage driver's output.
SAFE_MESSAGES = tuple(
    re.compile(pattern)
    for pattern in (
        r"couldn't find key \S+ in (Secret|ConfigMap) \S+",
        r'(secret|configmap) "[^"]+" not found',
        r'MountVolume\.SetUp failed for volume "[^"]+" : '
        r'((secret|configmap) "[^"]+" not found'
        r"|references non-existent (secret|config) key: \S+)",
        r"\d+/\d+ nodes are available: [\w ,.:/(){}='-]+",
    )
)
# Waiting reasons whose message may be quoted, if it is safe.
QUOTED_WAITING = ("CreateContainerConfigError",)
# Warning events quoted for a blocked pod, with the component that writes
# each. Events that carry a container's output, such as a failed probe's
# (Unhealthy), are never quoted.
QUOTED_EVENTS = {
    "FailedMount": "kubelet",
    "FailedAttachVolume": "attachdetach-controller",
    "FailedScheduling": "default-scheduler",
}
WITHHELD = "message not shown: it can quote other text; see kubectl describe pod"


def safe_message(message: str) -> str:
    """Return message when it is made of names only, else a note that it is withheld."""
    if any(pattern.fullmatch(message) for pattern in SAFE_MESSAGES):
        return message[:MAX_DETAIL]
    return WITHHELD


def _quoted(waiting: dict[str, Any]) -> str:
    """Return ": <message>" for a waiting state whose message may be shown."""
    message = waiting.get("message")
    if waiting.get("reason") in QUOTED_WAITING and message:
        return f": {safe_message(str(message))}"
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
    quoted = [e for e in events.get("items", []) if _from_its_writer(e)]
    if not quoted:
        return None
    newest = max(quoted, key=_moment)
    return f"{newest['reason']}: {safe_message(str(newest.get('message') or ''))}"


def _from_its_writer(event: dict[str, Any]) -> bool:
    """Tell whether event has a quoted reason and comes from the component that
    writes it: anyone allowed to create events could write the rest."""
    writer = QUOTED_EVENTS.get(str(event.get("reason")))
    source = (event.get("source") or {}).get("component")
    return writer is not None and writer in (source, event.get("reportingComponent"))


def _moment(event: dict[str, Any]) -> datetime.datetime:
    """Return when event last happened; a recurring one has a series."""
    stamps = (
        (event.get("series") or {}).get("lastObservedTime"),
        event.get("lastTimestamp"),
        event.get("eventTime"),
        event["metadata"].get("creationTimestamp"),
    )
    for stamp in stamps:
        if stamp:
            return datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    return datetime.datetime.min.replace(tzinfo=datetime.UTC)


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
