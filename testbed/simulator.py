"""Simulated nodes, kubelets and operators for the local control plane.

This is test tooling, not part of the deployer. It plays the parts a real
cluster has and this machine cannot run: kubelets (pods become Running and
Ready), a volume provisioner, the Zalando postgres-operator and the RabbitMQ
cluster operator. Everything else (Deployments, ReplicaSets, StatefulSets,
Jobs, garbage collection, scheduling) is done by the real controllers.

Behaviour is steered per object through annotations, listed in STEERING and
in docs/simulator.md. An annotation on a pod (or pod template) wins over the
same annotation on the object's namespace, so a test can steer every pod of a
namespace, then remove the annotation to "fix the cause".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from activities.kubeapi import (
    ConflictError,
    GoneError,
    JsonObject,
    KubeApiError,
    KubeClient,
    NotFoundError,
    ResourceType,
    WatchStalledError,
    well_known,
)
from testbed.rabbitmq_management import ManagementApi

log = logging.getLogger("simulator")

PREFIX = "sim.ventros.io/"
# Every steering annotation, with its meaning. docs/simulator.md repeats this.
STEERING = {
    "ready-delay": "seconds before a pod becomes Running and Ready (default 0.3)",
    "hold-init": "comma-separated init container names that keep waiting",
    "crashloop": "comma-separated container names put in CrashLoopBackOff",
    "job-duration": "seconds a Job pod runs before it ends (default 0.3)",
    "job-outcome": "'fail' makes a Job pod exit 1 (on the pod template)",
    "fail-jobs": "regular expression: Job pods whose Job name matches exit 1",
    "postgres-delay": "seconds a postgresql stays Creating (default 1)",
    "postgres-outcome": (
        "running (default), create-failed, sync-failed, creating, update-failed"
    ),
    "rabbitmq-delay": (
        "seconds before a RabbitmqCluster's conditions turn True (default 1)"
    ),
    "rabbitmq-outcome": "ready (default) or reconcile-failed",
    "rabbitmq-messages": "messages its management API reports as queued (default 0)",
    "rabbitmq-finalizer": (
        "remove (default): the operator's finalizer goes once the cluster is "
        "deleted; keep: it stays, as when the operator is gone"
    ),
    "ready-at": "set by the simulator: Unix time in ms when it made the object ready",
}
NODE_CAPACITY = {
    "cpu": "16",
    "memory": "64Gi",
    "pods": "250",
    "ephemeral-storage": "500Gi",
}
KUBE_VERSION = "v1.36.3"

POD = well_known("v1", "Pod")
NAMESPACE = well_known("v1", "Namespace")
NODE = well_known("v1", "Node")
SECRET = well_known("v1", "Secret")
EVENT = well_known("v1", "Event")
SERVICE = well_known("v1", "Service")
PV = well_known("v1", "PersistentVolume")
PVC = well_known("v1", "PersistentVolumeClaim")
STATEFULSET = well_known("apps/v1", "StatefulSet")
POSTGRESQL = well_known("acid.zalan.do/v1", "postgresql")
RABBITMQ = well_known("rabbitmq.com/v1beta1", "RabbitmqCluster")
# The RabbitMQ cluster operator puts this finalizer on every RabbitmqCluster
# and removes it after a deletion, once it has cleaned up.
RABBITMQ_FINALIZER = "deletion.finalizers.rabbitmqclusters.rabbitmq.com"
ENDPOINT_SLICE = ResourceType(
    "discovery.k8s.io/v1", "EndpointSlice", "endpointslices", True
)
# How often a kubelet tries again to start a container whose Secret is missing.
SECRET_RETRY_S = 1.0
# The chart's wait-for-<service> script sleeps 2 s between its `nc -z` tries.
WAIT_POLL_S = 2.0
# How often the simulated operators look for their CRDs until the API serves them.
CRD_POLL_S = 0.1


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ago(seconds: int) -> str:
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _millis() -> str:
    return str(int(time.time() * 1000))


class Simulator:
    """Watches the cluster and plays kubelets and operators."""

    def __init__(self, kube: KubeClient, node_count: int) -> None:
        self.kube = kube
        self.node_count = node_count
        self.namespaces: dict[str, dict[str, str]] = {}
        self.handled_pods: dict[str, str] = {}  # uid -> state key last written
        self.pod_tasks: dict[str, asyncio.Task[None]] = {}
        self.cr_generations: dict[str, int] = {}
        self.cr_tasks: dict[str, asyncio.Task[None]] = {}

    # -- steering ---------------------------------------------------------

    def steer(self, obj: JsonObject, key: str, default: str = "") -> str:
        annotations = obj.get("metadata", {}).get("annotations") or {}
        if PREFIX + key in annotations:
            return str(annotations[PREFIX + key])
        namespace = obj.get("metadata", {}).get("namespace", "")
        return self.namespaces.get(namespace, {}).get(PREFIX + key, default)

    def steer_seconds(self, obj: JsonObject, key: str, default: float) -> float:
        raw = self.steer(obj, key, str(default))
        try:
            return max(0.0, float(raw))
        except ValueError:
            log.warning("ignoring %s%s=%r: not a number of seconds", PREFIX, key, raw)
            return default

    # -- nodes ------------------------------------------------------------

    async def register_nodes(self) -> None:
        for index in range(self.node_count):
            name = f"sim-node-{index}"
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "sim.ventros.io/node": "true",
                    },
                },
            }
            with contextlib.suppress(ConflictError):
                await self.kube.create(NODE, node)
            status = {
                "status": {
                    "capacity": NODE_CAPACITY,
                    "allocatable": NODE_CAPACITY,
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "simulated kubelet is posting ready status",
                            "lastHeartbeatTime": _now(),
                            "lastTransitionTime": _now(),
                        }
                    ],
                    # A loopback address: kubectl logs, exec and port-forward
                    # make the API server dial the node, and no kubelet runs.
                    "addresses": [
                        {"type": "InternalIP", "address": f"127.0.1.{index + 10}"},
                        {"type": "Hostname", "address": name},
                    ],
                    "nodeInfo": {
                        "kubeletVersion": KUBE_VERSION,
                        "kubeProxyVersion": KUBE_VERSION,
                        "operatingSystem": "linux",
                        "architecture": "amd64",
                        "containerRuntimeVersion": "simulated://1.0",
                        "kernelVersion": "simulated",
                        "osImage": "simulated",
                        "machineID": name,
                        "systemUUID": name,
                        "bootID": name,
                    },
                }
            }
            await self.kube.merge_patch(NODE, name, status, subresource="status")
            # The NodeTaint admission plugin adds a not-ready taint to new nodes;
            # the node lifecycle controller, off here, would lift it once Ready.
            await self.kube.merge_patch(NODE, name, {"spec": {"taints": None}})

    # -- watch plumbing ---------------------------------------------------

    async def run_watch(
        self,
        rtype: ResourceType,
        handler: Callable[[str, JsonObject], Awaitable[None]],
    ) -> None:
        """List, then watch rtype in every namespace forever, calling handler."""
        while True:
            try:
                listing = await self.kube.list(rtype)
                for item in listing.get("items", []):
                    await self._safe(handler, "ADDED", item)
                version = listing["metadata"]["resourceVersion"]
                while True:
                    async for event in self.kube.watch(
                        rtype, resource_version=version, timeout_s=120
                    ):
                        obj = event["object"]
                        version = obj["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            await self._safe(handler, event["type"], obj)
            except (GoneError, WatchStalledError):
                continue
            except (TimeoutError, KubeApiError, OSError, aiohttp.ClientError) as error:
                # aiohttp.ClientError: a stream cut off when the API server stops.
                log.warning("watch %s failed: %s; retrying in 1 s", rtype.plural, error)
                await asyncio.sleep(1)

    async def _safe(
        self,
        handler: Callable[[str, JsonObject], Awaitable[None]],
        kind: str,
        obj: JsonObject,
    ) -> None:
        try:
            await handler(kind, obj)
        except (KubeApiError, OSError) as error:
            log.warning(
                "handling %s %s failed: %s", kind, obj["metadata"].get("name"), error
            )

    # -- namespaces -------------------------------------------------------

    async def on_namespace(self, kind: str, ns: JsonObject) -> None:
        name = ns["metadata"]["name"]
        if kind == "DELETED":
            self.namespaces.pop(name, None)
            return
        annotations = {
            k: v
            for k, v in (ns["metadata"].get("annotations") or {}).items()
            if k.startswith(PREFIX)
        }
        changed = self.namespaces.get(name) != annotations
        self.namespaces[name] = annotations
        if changed and kind == "MODIFIED":
            # Steering changed: look at this namespace's pods and resources again.
            for rtype, handler in (
                (POD, self.on_pod),
                (POSTGRESQL, self.on_postgresql),
                (RABBITMQ, self.on_rabbitmq),
            ):
                try:
                    listing = await self.kube.list(rtype, name)
                except (NotFoundError, KubeApiError):
                    continue
                for item in listing.get("items", []):
                    if rtype is not POD:
                        self.cr_generations.pop(item["metadata"]["uid"], None)
                    await self._safe(handler, "MODIFIED", item)

    # -- pods -------------------------------------------------------------

    async def on_pod(self, kind: str, pod: JsonObject) -> None:
        metadata = pod["metadata"]
        uid = metadata["uid"]
        if kind == "DELETED":
            self.handled_pods.pop(uid, None)
            task = self.pod_tasks.pop(uid, None)
            if task:
                task.cancel()
            return
        if metadata.get("deletionTimestamp"):
            # No kubelet confirms the deletion, so do it here, at once.
            await self.kube.delete(
                POD, metadata["name"], metadata["namespace"], grace_period_s=0
            )
            return
        if not pod["spec"].get("nodeName"):
            return
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return
        plan = self._pod_plan(pod)
        if self.handled_pods.get(uid) == plan:
            return
        self.handled_pods[uid] = plan
        old = self.pod_tasks.pop(uid, None)
        if old:
            old.cancel()
        self.pod_tasks[uid] = asyncio.create_task(self._play_pod(pod, plan))

    def _pod_plan(self, pod: JsonObject) -> str:
        init_names = [c["name"] for c in pod["spec"].get("initContainers", [])]
        names = [c["name"] for c in pod["spec"]["containers"]]
        held = [n for n in self.steer(pod, "hold-init").split(",") if n in init_names]
        if held:
            return "hold:" + held[0]
        crashing = [n for n in self.steer(pod, "crashloop").split(",") if n in names]
        if crashing:
            return "crash:" + ",".join(crashing)
        if self._job_name(pod):
            return "job:" + ("fail" if self._job_fails(pod) else "succeed")
        return "ready"

    @staticmethod
    def _job_name(pod: JsonObject) -> str:
        for owner in pod["metadata"].get("ownerReferences", []):
            if owner.get("kind") == "Job":
                return str(owner["name"])
        return ""

    def _job_fails(self, pod: JsonObject) -> bool:
        if self.steer(pod, "job-outcome") == "fail":
            annotations = pod["metadata"].get("annotations") or {}
            if PREFIX + "job-outcome" in annotations:
                return True
        pattern = self.steer(pod, "fail-jobs")
        if pattern:
            try:
                return re.search(pattern, self._job_name(pod)) is not None
            except re.error:
                log.warning(
                    "ignoring %sfail-jobs=%r: invalid regular expression",
                    PREFIX,
                    pattern,
                )
        return False

    async def _play_pod(self, pod: JsonObject, plan: str) -> None:
        metadata = pod["metadata"]
        name, namespace = metadata["name"], metadata["namespace"]
        try:
            if not plan.startswith("hold:") and not await self._start_conditions(pod):
                return
            if plan.startswith("hold:"):
                await self._write_pod_status(pod, self._held_status(pod, plan[5:]))
            elif plan.startswith("crash:"):
                await asyncio.sleep(self.steer_seconds(pod, "ready-delay", 0.3))
                await self._write_pod_status(
                    pod, self._crash_status(pod, plan[6:].split(","))
                )
            elif plan.startswith("job:"):
                await self._write_pod_status(pod, self._running_status(pod, ready=True))
                await asyncio.sleep(self.steer_seconds(pod, "job-duration", 0.3))
                await self._write_pod_status(
                    pod, self._finished_status(pod, plan == "job:succeed")
                )
            else:
                await asyncio.sleep(self.steer_seconds(pod, "ready-delay", 0.3))
                await self._write_pod_status(pod, self._running_status(pod, ready=True))
        except NotFoundError:
            pass
        except asyncio.CancelledError:
            raise
        except (KubeApiError, OSError, aiohttp.ClientError) as error:
            log.warning("pod %s/%s: status update failed: %s", namespace, name, error)
            self.handled_pods.pop(metadata["uid"], None)
            if self.pod_tasks.get(metadata["uid"]) is asyncio.current_task():
                del self.pod_tasks[metadata["uid"]]  # So on_pod cannot cancel it.
            # Nothing else replays the pod before its next event, which may
            # never come while it waits for a Secret or a Service.
            await asyncio.sleep(1.0)
            fresh = await self._get_pod_quietly(name, namespace)
            if fresh is not None:
                await self.on_pod("MODIFIED", fresh)

    async def _get_pod_quietly(self, name: str, namespace: str) -> JsonObject | None:
        try:
            return await self.kube.get(POD, name, namespace)
        except (KubeApiError, OSError, aiohttp.ClientError) as error:
            log.warning("pod %s/%s: read failed: %s", namespace, name, error)
            return None

    # A kubelet starts no container before every Secret the pod reads exists,
    # and the chart's wait-for-<service> init containers loop on `nc -z` until
    # their Service accepts connections. On a real cluster both hold back pods
    # that start too early, and hook-ordered installs depend on that.

    async def _start_conditions(self, pod: JsonObject) -> bool:
        """Wait until a real node would start the pod; return False if it failed."""
        namespace = pod["metadata"]["namespace"]
        reported: SecretHold | None = None
        while hold := await self._secret_hold(pod):
            if hold != reported:
                log.info("pod %s/%s: %s", namespace, pod["metadata"]["name"], hold)
                await self._write_pod_status(pod, self._secret_hold_status(pod, hold))
                if hold.event:
                    await self._write_warning(pod, "FailedMount", hold.event)
                reported = hold
            await asyncio.sleep(SECRET_RETRY_S)
        for container in pod["spec"].get("initContainers", []):
            target = _wait_target(container)
            if target is None:
                continue
            host, port, limit = target
            deadline = time.monotonic() + limit
            held_reported = False
            while not await self._accepts_connections(namespace, host, port):
                if not held_reported:
                    await self._write_pod_status(
                        pod, self._held_status(pod, container["name"])
                    )
                    held_reported = True
                if time.monotonic() >= deadline:
                    if pod["spec"].get("restartPolicy") == "Never":
                        await self._write_pod_status(
                            pod, self._init_failed_status(pod, container["name"])
                        )
                        return False
                    # The kubelet restarts the init container, which waits again.
                    deadline = time.monotonic() + limit
                await asyncio.sleep(WAIT_POLL_S)
        return True

    async def _secret_hold(self, pod: JsonObject) -> SecretHold | None:
        """Return why a kubelet would not start the pod yet, or None.

        Volumes come first: a kubelet mounts them before it creates any
        container, so a volume problem shows as ContainerCreating. Then each
        container's environment, checked when the kubelet creates it.
        """
        namespace = pod["metadata"]["namespace"]
        found: dict[str, JsonObject | None] = {}
        uses = sorted(_secret_uses(pod), key=lambda use: not use.volume)
        for use in uses:
            if use.name not in found:
                found[use.name] = await self.kube.get(SECRET, use.name, namespace)
            hold = use.hold(found[use.name], namespace)
            if hold is not None:
                return hold
        return None

    async def _accepts_connections(self, namespace: str, host: str, port: int) -> bool:
        """Tell whether `nc -z host port` would connect from a pod in namespace."""
        name = _cluster_service(host, namespace, set(self.namespaces))
        if name is None:
            return True  # Not a cluster name: outside the simulation.
        service_name, namespace = name
        service = await self.kube.get(SERVICE, service_name, namespace)
        if service is None:
            return False
        spec = service.get("spec") or {}
        if spec.get("type") == "ExternalName":
            return True
        if not any(p.get("port") == port for p in spec.get("ports") or []):
            return False
        slices = await self.kube.list(
            ENDPOINT_SLICE,
            namespace,
            label_selector=f"kubernetes.io/service-name={service_name}",
        )
        return any(
            (endpoint.get("conditions") or {}).get("ready", True)
            for item in slices.get("items", [])
            for endpoint in item.get("endpoints") or []
        )

    async def _write_warning(self, pod: JsonObject, reason: str, message: str) -> None:
        """Record a Warning event about pod, as its node's kubelet would.

        A kubelet repeats such an event with a growing count while the cause
        lasts; the simulator writes it once each time the cause changes.
        """
        metadata = pod["metadata"]
        node = pod["spec"].get("nodeName", "")
        now = _now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{metadata['name']}.",
                "namespace": metadata["namespace"],
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "uid": metadata["uid"],
            },
            "type": "Warning",
            "reason": reason,
            "message": message,
            "source": {"component": "kubelet", "host": node},
            "reportingComponent": "kubelet",
            "reportingInstance": node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.kube.create(EVENT, event, metadata["namespace"])
        except (KubeApiError, OSError, aiohttp.ClientError) as error:
            log.warning(
                "pod %s: writing event %s failed: %s", metadata["name"], reason, error
            )

    async def _write_pod_status(self, pod: JsonObject, status: JsonObject) -> None:
        metadata = pod["metadata"]
        await self.kube.merge_patch(
            POD,
            metadata["name"],
            {"status": status},
            metadata["namespace"],
            subresource="status",
        )

    def _base_status(self, pod: JsonObject) -> JsonObject:
        index = abs(hash(pod["metadata"]["uid"])) % 60000
        return {
            "hostIP": "10.250.0.10",
            "podIP": f"10.244.{index // 250}.{index % 250 + 2}",
            "startTime": pod["metadata"].get("creationTimestamp", _now()),
            "qosClass": "BestEffort",
        }

    @staticmethod
    def _condition(kind: str, ready: bool, reason: str = "") -> JsonObject:
        condition = {
            "type": kind,
            "status": "True" if ready else "False",
            "lastTransitionTime": _now(),
        }
        if reason:
            condition["reason"] = reason
        return condition

    def _running_status(self, pod: JsonObject, ready: bool) -> JsonObject:
        status = self._base_status(pod)
        status["phase"] = "Running"
        status["conditions"] = [
            self._condition("PodScheduled", True),
            self._condition("Initialized", True),
            self._condition("ContainersReady", ready),
            self._condition("Ready", ready),
        ]
        status["initContainerStatuses"] = [
            self._terminated(c, 0, "Completed")
            for c in pod["spec"].get("initContainers", [])
        ]
        status["containerStatuses"] = [
            {
                "name": c["name"],
                "image": c["image"],
                "imageID": "",
                "ready": ready,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": _now()}},
            }
            for c in pod["spec"]["containers"]
        ]
        return status

    @staticmethod
    def _terminated(
        container: JsonObject, code: int, reason: str, finished: str | None = None
    ) -> JsonObject:
        return {
            "name": container["name"],
            "image": container["image"],
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "state": {
                "terminated": {
                    "exitCode": code,
                    "reason": reason,
                    "startedAt": _now(),
                    "finishedAt": finished or _now(),
                }
            },
        }

    def _finished_status(self, pod: JsonObject, succeeded: bool) -> JsonObject:
        status = self._base_status(pod)
        status["phase"] = "Succeeded" if succeeded else "Failed"
        # A failed pod reports a finish time 15 minutes back: the Job
        # controller counts its 10 s, 20 s, 40 s ... retry backoff from that
        # time, so the simulated Job reaches its backoff limit without waiting.
        finished = _now() if succeeded else _ago(900)
        status["conditions"] = [
            self._condition("PodScheduled", True),
            self._condition("Initialized", True),
            self._condition(
                "ContainersReady", False, "PodCompleted" if succeeded else "PodFailed"
            ),
            self._condition(
                "Ready", False, "PodCompleted" if succeeded else "PodFailed"
            ),
        ]
        status["initContainerStatuses"] = [
            self._terminated(c, 0, "Completed")
            for c in pod["spec"].get("initContainers", [])
        ]
        status["containerStatuses"] = [
            self._terminated(
                c,
                0 if succeeded else 1,
                "Completed" if succeeded else "Error",
                finished,
            )
            for c in pod["spec"]["containers"]
        ]
        return status

    def _held_status(self, pod: JsonObject, held: str) -> JsonObject:
        status = self._base_status(pod)
        status["phase"] = "Pending"
        status["conditions"] = [
            self._condition("PodScheduled", True),
            self._condition("Initialized", False, "ContainersNotInitialized"),
            self._condition("ContainersReady", False, "ContainersNotReady"),
            self._condition("Ready", False, "ContainersNotReady"),
        ]
        init_statuses: list[JsonObject] = []
        reached = False
        for container in pod["spec"].get("initContainers", []):
            if container["name"] == held:
                reached = True
                init_statuses.append(
                    {
                        "name": held,
                        "image": container["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": _now()}},
                    }
                )
            elif reached:
                init_statuses.append(
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"waiting": {"reason": "PodInitializing"}},
                    }
                )
            else:
                init_statuses.append(self._terminated(container, 0, "Completed"))
        status["initContainerStatuses"] = init_statuses
        status["containerStatuses"] = [
            {
                "name": c["name"],
                "image": c["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "PodInitializing"}},
            }
            for c in pod["spec"]["containers"]
        ]
        return status

    def _secret_hold_status(self, pod: JsonObject, hold: SecretHold) -> JsonObject:
        init_names = [c["name"] for c in pod["spec"].get("initContainers", [])]
        status = self._held_status(pod, init_names[0] if init_names else "")
        waiting: JsonObject = {"reason": hold.reason}
        if hold.message:
            waiting["message"] = hold.message
        if init_names:
            # With a volume that cannot be mounted, no init container starts,
            # so they wait as PodInitializing, like the containers. NOTE: not
            # checked against a real kubelet here, which may word it differently.
            state = waiting if hold.volume is None else {"reason": "PodInitializing"}
            status["initContainerStatuses"][0]["state"] = {"waiting": state}
        else:
            for container_status in status["containerStatuses"]:
                container_status["state"] = {"waiting": waiting}
        return status

    def _init_failed_status(self, pod: JsonObject, failed: str) -> JsonObject:
        status = self._held_status(pod, failed)
        status["phase"] = "Failed"
        for init_status in status["initContainerStatuses"]:
            if init_status["name"] == failed:
                init_status["state"] = {
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "startedAt": _now(),
                        "finishedAt": _ago(900),
                    }
                }
        return status

    def _crash_status(self, pod: JsonObject, crashing: list[str]) -> JsonObject:
        status = self._running_status(pod, ready=False)
        for container_status in status["containerStatuses"]:
            if container_status["name"] in crashing:
                container_status["ready"] = False
                container_status["started"] = False
                container_status["restartCount"] = 5
                container_status["state"] = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": "back-off 2m40s restarting failed "
                        f"container={container_status['name']}",
                    }
                }
                container_status["lastState"] = {
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "finishedAt": _now(),
                    }
                }
        return status

    # -- volumes ----------------------------------------------------------

    async def on_pvc(self, kind: str, pvc: JsonObject) -> None:
        if kind == "DELETED" or pvc["spec"].get("volumeName"):
            return
        if pvc.get("status", {}).get("phase") != "Pending":
            return
        metadata = pvc["metadata"]
        name = f"sim-pv-{metadata['uid'][:18]}"
        size = (
            pvc["spec"].get("resources", {}).get("requests", {}).get("storage", "1Gi")
        )
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": name,
                "labels": {"sim.ventros.io/provisioned": "true"},
            },
            "spec": {
                "capacity": {"storage": size},
                "accessModes": pvc["spec"].get("accessModes", ["ReadWriteOnce"]),
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": pvc["spec"].get("storageClassName") or "",
                "hostPath": {"path": f"/var/lib/simulated/{name}"},
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": metadata["namespace"],
                    "name": metadata["name"],
                    "uid": metadata["uid"],
                },
            },
        }
        with contextlib.suppress(ConflictError):
            await self.kube.create(PV, volume)

    async def on_pv(self, kind: str, volume: JsonObject) -> None:
        # The simulated provisioner also deletes what it made once released.
        labels = volume["metadata"].get("labels") or {}
        released = volume.get("status", {}).get("phase") in ("Released", "Failed")
        provisioned = labels.get("sim.ventros.io/provisioned") == "true"
        if kind != "DELETED" and provisioned and released:
            await self.kube.delete(PV, volume["metadata"]["name"])

    # -- operators --------------------------------------------------------

    def _needs_reconcile(self, obj: JsonObject) -> bool:
        metadata = obj["metadata"]
        if metadata.get("deletionTimestamp"):
            return False
        generation = int(metadata.get("generation", 1))
        if self.cr_generations.get(metadata["uid"]) == generation:
            return False
        self.cr_generations[metadata["uid"]] = generation
        return True

    def _start_reconcile(self, obj: JsonObject, work: Awaitable[None]) -> None:
        uid = obj["metadata"]["uid"]
        old = self.cr_tasks.pop(uid, None)
        if old:
            old.cancel()
        task = asyncio.ensure_future(work)
        self.cr_tasks[uid] = task
        task.add_done_callback(
            lambda _: (
                self.cr_tasks.pop(uid, None) if self.cr_tasks.get(uid) is task else None
            )
        )

    async def on_postgresql(self, kind: str, cluster: JsonObject) -> None:
        if kind == "DELETED":
            self.cr_generations.pop(cluster["metadata"]["uid"], None)
            return
        if self._needs_reconcile(cluster):
            self._start_reconcile(cluster, self._reconcile_postgresql(cluster))

    async def _set_pg_status(self, cluster: JsonObject, value: str) -> None:
        metadata = cluster["metadata"]
        patch: JsonObject = {"status": {"PostgresClusterStatus": value}}
        if value == "Running":
            patch["metadata"] = {"annotations": {PREFIX + "ready-at": _millis()}}
            await self.kube.merge_patch(
                POSTGRESQL,
                metadata["name"],
                {"metadata": patch.pop("metadata")},
                metadata["namespace"],
            )
        await self.kube.merge_patch(
            POSTGRESQL,
            metadata["name"],
            patch,
            metadata["namespace"],
            subresource="status",
        )

    async def _reconcile_postgresql(self, cluster: JsonObject) -> None:
        metadata = cluster["metadata"]
        name, namespace = metadata["name"], metadata["namespace"]
        outcome = self.steer(cluster, "postgres-outcome", "running")
        first = not (cluster.get("status") or {}).get("PostgresClusterStatus")
        try:
            await self._set_pg_status(cluster, "Creating" if first else "Updating")
            await asyncio.sleep(self.steer_seconds(cluster, "postgres-delay", 1.0))
            if outcome == "creating":
                return
            if outcome == "create-failed":
                await self._set_pg_status(cluster, "CreateFailed")
                return
            if outcome == "update-failed" and not first:
                await self._set_pg_status(cluster, "UpdateFailed")
                return
            await self._ensure_postgres_objects(cluster)
            if outcome == "sync-failed":
                await self._set_pg_status(cluster, "SyncFailed")
                return
            await self._set_pg_status(cluster, "Running")
        except NotFoundError:
            log.info("postgresql %s/%s vanished during reconcile", namespace, name)

    async def _ensure_postgres_objects(self, cluster: JsonObject) -> None:
        metadata = cluster["metadata"]
        name, namespace = metadata["name"], metadata["namespace"]
        spec = cluster["spec"]
        owner = _owner(cluster)
        labels = {
            "application": "spilo",
            "cluster-name": name,
            "team": str(spec.get("teamId", "")),
        }
        await self._apply_owned(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": labels,
                    "ownerReferences": [owner],
                },
                "spec": {
                    "selector": {**labels, "spilo-role": "master"},
                    "ports": [{"name": "postgresql", "port": 5432, "targetPort": 5432}],
                },
            }
        )
        users = dict(spec.get("users") or {})
        users.setdefault("postgres", [])
        for user in users:
            secret_name = (
                f"{user.replace('_', '-')}.{name}.credentials.postgresql.acid.zalan.do"
            )
            await self._create_secret(
                namespace,
                secret_name,
                {"username": user, "password": secrets.token_urlsafe(24)},
                labels,
                owner,
            )
        replicas = int(spec.get("numberOfInstances", 1))
        database = _statefulset(
            name,
            namespace,
            replicas,
            labels,
            owner,
            "ghcr.io/zalando/spilo-16:simulated",
            5432,
        )
        # Patroni labels the leader pod. Every simulated pod plays the leader,
        # so the Service above gets an endpoint once a pod is ready.
        database["spec"]["template"]["metadata"]["labels"] = {
            **labels,
            "spilo-role": "master",
        }
        await self._apply_owned(database)

    async def on_rabbitmq(self, kind: str, cluster: JsonObject) -> None:
        metadata = cluster["metadata"]
        if kind == "DELETED":
            self.cr_generations.pop(metadata["uid"], None)
            return
        finalizers = list(metadata.get("finalizers") or [])
        if metadata.get("deletionTimestamp"):
            task = self.cr_tasks.pop(metadata["uid"], None)
            if task:
                task.cancel()
            keep = self.steer(cluster, "rabbitmq-finalizer", "remove") == "keep"
            if RABBITMQ_FINALIZER in finalizers and not keep:
                finalizers.remove(RABBITMQ_FINALIZER)
                await self._set_finalizers(cluster, finalizers)
            return
        if RABBITMQ_FINALIZER not in finalizers:
            await self._set_finalizers(cluster, [*finalizers, RABBITMQ_FINALIZER])
        if self._needs_reconcile(cluster):
            self._start_reconcile(cluster, self._reconcile_rabbitmq(cluster))

    async def _set_finalizers(self, obj: JsonObject, finalizers: list[str]) -> None:
        """Replace the finalizers of a RabbitmqCluster, unless it changed since.

        A conflict or a deletion leaves it alone: the watch event that follows
        brings the newer object.
        """
        metadata = obj["metadata"]
        patch = {
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": metadata["resourceVersion"],
            }
        }
        with contextlib.suppress(ConflictError, NotFoundError):
            await self.kube.merge_patch(
                RABBITMQ, metadata["name"], patch, metadata["namespace"]
            )

    async def _reconcile_rabbitmq(self, cluster: JsonObject) -> None:
        metadata = cluster["metadata"]
        name, namespace = metadata["name"], metadata["namespace"]
        generation = int(metadata.get("generation", 1))
        owner = _owner(cluster)
        labels = {
            "app.kubernetes.io/name": name,
            "app.kubernetes.io/component": "rabbitmq",
        }
        replicas = int(cluster["spec"].get("replicas", 1))
        try:
            await self._set_rabbitmq_conditions(
                cluster, generation, False, "Reconciling", ""
            )
            await self._apply_owned(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {
                        "name": name,
                        "namespace": namespace,
                        "labels": labels,
                        "ownerReferences": [owner],
                    },
                    "spec": {
                        "selector": labels,
                        "ports": [
                            {"name": "amqp", "port": 5672, "targetPort": 5672},
                            {"name": "management", "port": 15672, "targetPort": 15672},
                        ],
                    },
                }
            )
            await self._create_secret(
                namespace,
                f"{name}-default-user",
                {
                    "username": "default_user_" + secrets.token_hex(4),
                    "password": secrets.token_urlsafe(24),
                },
                labels,
                owner,
            )
            await self._apply_owned(
                _statefulset(
                    f"{name}-server",
                    namespace,
                    replicas,
                    labels,
                    owner,
                    "rabbitmq:4.1-management",
                    5672,
                )
            )
            await asyncio.sleep(self.steer_seconds(cluster, "rabbitmq-delay", 1.0))
            if self.steer(cluster, "rabbitmq-outcome", "ready") == "reconcile-failed":
                await self._set_rabbitmq_conditions(
                    cluster,
                    generation,
                    False,
                    "FailedReconcile",
                    "simulated failure: the operator could not reconcile the cluster",
                )
                return
            await self._set_rabbitmq_conditions(
                cluster, generation, True, "Success", ""
            )
        except NotFoundError:
            log.info("rabbitmqcluster %s/%s vanished during reconcile", namespace, name)

    async def _set_rabbitmq_conditions(
        self,
        cluster: JsonObject,
        generation: int,
        ready: bool,
        reason: str,
        message: str,
    ) -> None:
        metadata = cluster["metadata"]
        state = "True" if ready else "False"
        conditions = [
            {
                "type": "AllReplicasReady",
                "status": state,
                "reason": "AllPodsAreReady" if ready else "NotAllPodsReady",
                "lastTransitionTime": _now(),
            },
            {
                "type": "ClusterAvailable",
                "status": state,
                "reason": "AtLeastOneEndpointAvailable"
                if ready
                else "NoEndpointsAvailable",
                "lastTransitionTime": _now(),
            },
            {
                "type": "NoWarnings",
                "status": "True",
                "reason": "NoWarnings",
                "lastTransitionTime": _now(),
            },
            {
                "type": "ReconcileSuccess",
                "status": "True"
                if reason == "Success"
                else ("False" if reason == "FailedReconcile" else "Unknown"),
                "reason": reason,
                "message": message,
                "lastTransitionTime": _now(),
            },
        ]
        if ready:
            await self.kube.merge_patch(
                RABBITMQ,
                metadata["name"],
                {"metadata": {"annotations": {PREFIX + "ready-at": _millis()}}},
                metadata["namespace"],
            )
        await self.kube.merge_patch(
            RABBITMQ,
            metadata["name"],
            {"status": {"conditions": conditions, "observedGeneration": generation}},
            metadata["namespace"],
            subresource="status",
        )

    async def _apply_owned(self, obj: JsonObject) -> None:
        await self.kube.apply(obj, field_manager="ventros-simulator")

    async def _create_secret(
        self,
        namespace: str,
        name: str,
        data: dict[str, str],
        labels: dict[str, str],
        owner: JsonObject,
    ) -> None:
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "ownerReferences": [owner],
            },
            "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
        # Real operators keep generated passwords; so does this one.
        with contextlib.suppress(ConflictError):
            await self.kube.create(SECRET, secret, namespace)

    # -- main -------------------------------------------------------------

    async def run(self) -> None:
        await self.register_nodes()
        log.info("registered %d simulated nodes", self.node_count)
        watches = [
            self.run_watch(NAMESPACE, self.on_namespace),
            self.run_watch(POD, self.on_pod),
            self.run_watch(PVC, self.on_pvc),
            self.run_watch(PV, self.on_pv),
            self._run_custom(POSTGRESQL, self.on_postgresql),
            self._run_custom(RABBITMQ, self.on_rabbitmq),
        ]
        await asyncio.gather(*watches)

    async def _run_custom(
        self, rtype: ResourceType, handler: Callable[[str, JsonObject], Awaitable[None]]
    ) -> None:
        # The CRDs arrive with the operators' charts, so wait until they are served.
        # A real operator's informer starts at once. A 1 s poll here started the
        # first deploy's custom resources 0.5 s late (measured once).
        while True:
            try:
                await self.kube.list(rtype)
                break
            except (NotFoundError, KubeApiError):
                await asyncio.sleep(CRD_POLL_S)
        await self.run_watch(rtype, handler)


@dataclass(frozen=True)
class SecretHold:
    """The reason a kubelet keeps a pod from starting for a Secret."""

    reason: str
    message: str | None
    volume: str | None  # The volume that cannot be mounted, if that is the cause.
    # The kubelet's FailedMount event message for that volume.
    event: str | None = None

    def __str__(self) -> str:
        where = f"volume {self.volume}: " if self.volume else ""
        return f"{self.reason}: {where}{self.message or 'waiting for its Secret'}"


@dataclass(frozen=True)
class SecretUse:
    """A Secret that a pod needs, the keys it reads, and the volume, if mounted."""

    name: str
    keys: tuple[str, ...]
    volume: str | None

    def hold(self, secret: JsonObject | None, namespace: str) -> SecretHold | None:
        """Return the hold this use causes with secret as it is now, or None."""
        if self.volume is not None:
            # The kubelet reports a failed mount only as an event (FailedMount),
            # so the container status has the reason and no message.
            failed = f'MountVolume.SetUp failed for volume "{self.volume}" : '
            if secret is None:
                event = f'{failed}secret "{self.name}" not found'
            elif key := self._missing_key(secret):
                event = f"{failed}references non-existent secret key: {key}"
            else:
                return None
            return SecretHold("ContainerCreating", None, self.volume, event)
        if secret is None:
            return SecretHold(
                "CreateContainerConfigError", f'secret "{self.name}" not found', None
            )
        key = self._missing_key(secret)
        if key:
            return SecretHold(
                "CreateContainerConfigError",
                f"couldn't find key {key} in Secret {namespace}/{self.name}",
                None,
            )
        return None

    def _missing_key(self, secret: JsonObject) -> str:
        present = {*(secret.get("data") or {}), *(secret.get("stringData") or {})}
        return next((key for key in self.keys if key not in present), "")


def _secret_uses(pod: JsonObject) -> list[SecretUse]:
    """Return the Secrets a kubelet needs before it starts the pod's containers.

    Optional references are left out: the kubelet starts the pod without them.
    """
    spec = pod["spec"]
    uses: list[SecretUse] = []
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref and not ref.get("optional"):
                uses.append(SecretUse(ref["name"], (ref["key"],), None))
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef")
            if ref and not ref.get("optional"):
                uses.append(SecretUse(ref["name"], (), None))
    for volume in spec.get("volumes") or []:
        sources = [volume["secret"]] if volume.get("secret") else []
        sources += [
            source["secret"]
            for source in (volume.get("projected") or {}).get("sources") or []
            if source.get("secret")
        ]
        for ref in sources:
            if ref.get("optional"):
                continue
            keys = tuple(item["key"] for item in ref.get("items") or [])
            # A secret volume names its Secret secretName, a projected one name.
            name = ref.get("secretName") or ref["name"]
            uses.append(SecretUse(name, keys, volume["name"]))
    return uses


def _cluster_service(
    host: str, namespace: str, namespaces: set[str]
) -> tuple[str, str] | None:
    """Return the Service and namespace that host names in the cluster, if any.

    Forms: name, name.ns, name.ns.svc..., and pod.name.ns.svc... (a
    StatefulSet pod's own name, judged by its Service). An IP address, another
    domain, or a namespace that does not exist is outside the cluster.
    """
    host = host.rstrip(".")
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host.strip("[]"))
        return None
    parts = host.split(".")
    if len(parts) == 1:
        return parts[0], namespace
    if "svc" in parts[2:]:
        index = parts.index("svc", 2)
        service, namespace = parts[index - 2], parts[index - 1]
    elif len(parts) == 2:
        service, namespace = parts
    else:
        return None
    return (service, namespace) if namespace in namespaces else None


def _wait_target(container: JsonObject) -> tuple[str, int, float] | None:
    """Return the host, port and time limit of a wait-for-<service> container."""
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    host, port = env.get("WAIT_HOST"), env.get("WAIT_PORT")
    if not host or not port:
        return None
    try:
        return host, int(port), float(env.get("WAIT_SECONDS") or 300)
    except ValueError:
        return None


def _owner(obj: JsonObject) -> JsonObject:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": False,
    }


def _statefulset(
    name: str,
    namespace: str,
    replicas: int,
    labels: dict[str, str],
    owner: JsonObject,
    image: str,
    port: int,
) -> JsonObject:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner],
        },
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": image,
                            "ports": [{"containerPort": port}],
                        }
                    ]
                },
            },
        },
    }


async def _main(kubeconfig: str, nodes: int, management_port: int) -> None:
    kube = await KubeClient.connect(kubeconfig)
    management = ManagementApi(kube)
    try:
        if management_port:
            try:
                await management.start(management_port)
            except OSError as error:
                # The nodes and operators matter more than queue depths.
                log.warning(
                    "RabbitMQ management stand-in not started on port %d: %s",
                    management_port,
                    error,
                )
        await Simulator(kube, nodes).run()
    finally:
        await management.stop()
        await kube.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Simulated kubelets and operators (test tooling)."
    )
    parser.add_argument(
        "--kubeconfig", required=True, help="kubeconfig of the simulator identity"
    )
    parser.add_argument(
        "--nodes", type=int, default=3, help="number of Ready nodes to register"
    )
    parser.add_argument(
        "--management-port",
        type=int,
        default=0,
        help="loopback port of the RabbitMQ management stand-in; 0 turns it off",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(_main(args.kubeconfig, args.nodes, args.management_port))


if __name__ == "__main__":
    main()
