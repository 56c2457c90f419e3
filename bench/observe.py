"""Measurements taken beside a deploy, without touching the deployer.

- ReadinessRecorder watches one namespace and stores, per object, when it was
  first seen and when it first became ready.
- RssSampler samples one process's resident memory every 100 ms.
- AuditLog counts the deployer's requests in the API server's audit log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # psutil ships no type hints

from activities import readiness
from activities.kubeapi import (
    GoneError,
    JsonObject,
    KubeApiError,
    KubeClient,
    NoKindMatchError,
    ResourceType,
    WatchStalledError,
)

READY_AT = "sim.ventros.io/ready-at"
PHASE_LABEL = "deploy.ventros.io/phase"
# The kinds whose readiness a deploy waits for, in either way.
WATCHED = (
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("batch/v1", "Job"),
    ("acid.zalan.do/v1", "postgresql"),
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"),
    ("v1", "Pod"),
)
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
# The identity of the cluster's deployer kubeconfig, which the benchmark's
# worker and helm use. The audit policy logs every request of this user.
DEPLOYER_USER = "ventros-deployer"
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")


@dataclass
class ObjectTimes:
    """When the recorder saw one object appear and become ready (Unix seconds)."""

    kind: str
    name: str
    phase: str
    first_seen: float
    ready: float | None = None
    ready_source: str = ""


def phase_of(kind: str, name: str, labels: dict[str, str]) -> str:
    """Return the deploy phase an object belongs to, for both ways of deploying."""
    if PHASE_LABEL in labels:
        return labels[PHASE_LABEL]
    if "temporal" in name:
        return "temporal"
    if name.endswith("-operator"):
        return "base"
    if name.endswith("-rabbitmq-server"):
        return "messaging"
    if kind == "StatefulSet" and name.endswith("-db"):
        return "data"
    return "unknown"


@dataclass
class ReadinessRecorder:
    """Watches the WATCHED kinds in one namespace until stopped."""

    kube: KubeClient
    namespace: str
    objects: dict[tuple[str, str], ObjectTimes] = field(default_factory=dict)
    # Job name -> names of its pods seen Succeeded, and its spec.completions.
    job_pods_done: dict[str, set[str]] = field(default_factory=dict)
    job_completions: dict[str, int] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _listed: list[asyncio.Event] = field(default_factory=list)

    async def start(self, timeout_s: float = 20.0) -> None:
        """Start one watch per kind and return once each has listed."""
        for api_version, kind in WATCHED:
            listed = asyncio.Event()
            self._listed.append(listed)
            task = asyncio.create_task(self._watch(api_version, kind, listed))
            self._tasks.append(task)
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(event.wait() for event in self._listed))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def observe(self, obj: JsonObject, now: float) -> None:
        metadata = obj["metadata"]
        if obj["kind"] == "Pod":
            self._observe_job_pod(obj, now)
            return
        if obj["kind"] == "Job":
            spec = obj.get("spec") or {}
            self.job_completions[metadata["name"]] = int(spec.get("completions") or 1)
        key = (obj["kind"], metadata["name"])
        times = self.objects.get(key)
        if times is None:
            labels = metadata.get("labels") or {}
            phase = phase_of(obj["kind"], metadata["name"], labels)
            times = ObjectTimes(obj["kind"], metadata["name"], phase, now)
            self.objects[key] = times
        if times.ready is not None or not readiness.evaluate(obj).ready:
            return
        # The simulator stamps the moment it made a custom resource ready;
        # for the rest, the moment this watch delivered the ready object.
        stamp = (metadata.get("annotations") or {}).get(READY_AT)
        if stamp:
            times.ready, times.ready_source = int(stamp) / 1000.0, "ready-at"
        else:
            times.ready, times.ready_source = now, "watch"

    def _observe_job_pod(self, pod: JsonObject, now: float) -> None:
        """Mark a Job ready when its pods have succeeded, before its condition.

        The Job controller writes Complete up to 1 s after the pods end, and
        the deployer's wait ends on the pods, so the work being done is the
        moment that counts for detection.
        """
        job = (pod["metadata"].get("labels") or {}).get(JOB_NAME_LABEL)
        if not job or (pod.get("status") or {}).get("phase") != "Succeeded":
            return
        done = self.job_pods_done.setdefault(job, set())
        done.add(pod["metadata"]["name"])
        times = self.objects.get(("Job", job))
        if times is None or times.ready is not None:
            return
        if len(done) >= self.job_completions.get(job, 1):
            times.ready, times.ready_source = now, "pods"

    async def _watch(self, api_version: str, kind: str, listed: asyncio.Event) -> None:
        while True:
            try:
                rtype = await self.kube.resource_type(api_version, kind)
                listing = await self.kube.list(rtype, self.namespace)
                now = time.time()
                for item in listing.get("items", []):
                    item.setdefault("kind", kind)
                    self.observe(item, now)
                listed.set()
                version = listing["metadata"]["resourceVersion"]
                await self._follow(rtype, version)
            except (GoneError, WatchStalledError):
                continue
            except (NoKindMatchError, KubeApiError, OSError, TimeoutError):
                # The CRD may not be installed yet; the deploy installs it.
                self.kube.forget_discovery(api_version)
                listed.set()
                await asyncio.sleep(0.2)

    async def _follow(self, rtype: ResourceType, version: str) -> None:
        while True:
            async for event in self.kube.watch(
                rtype, self.namespace, resource_version=version, timeout_s=120
            ):
                obj = event["object"]
                version = obj["metadata"]["resourceVersion"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    self.observe(obj, time.time())


class RssSampler:
    """Samples a process's resident set size every interval in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self._process = psutil.Process(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._peak = 0
        self._window_peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    @property
    def peak_mb(self) -> float:
        return self._peak / 2**20

    def take_window_mb(self) -> float:
        """Return the peak since the last call, in MiB, and start a new window."""
        with self._lock:
            peak, self._window_peak = self._window_peak, 0
        return peak / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                rss = self._process.memory_info().rss
            except psutil.Error:
                return
            with self._lock:
                self._peak = max(self._peak, rss)
                self._window_peak = max(self._window_peak, rss)


SERVICE = ResourceType("v1", "Service", "services", namespaced=True)
SERVICE_CIDR = ResourceType(
    "networking.k8s.io/v1", "ServiceCIDR", "servicecidrs", namespaced=False
)


async def cluster_ips(kube: KubeClient, namespace: str | None = None) -> int:
    """Return how many Services (in namespace, or in all) hold a cluster IP."""
    listing = await kube.list(SERVICE, namespace)
    return sum(
        1
        for item in listing.get("items", [])
        if (item.get("spec") or {}).get("clusterIP") not in (None, "", "None")
    )


async def service_ip_range(kube: KubeClient) -> tuple[int, str]:
    """Return how many Service IPs the cluster can allocate, and its CIDRs."""
    listing = await kube.list(SERVICE_CIDR)
    cidrs = [c for item in listing.get("items", []) for c in item["spec"]["cidrs"]]
    # The network and broadcast addresses of each range are never allocated.
    size = sum(ipaddress.ip_network(c).num_addresses - 2 for c in cidrs)
    return size, ", ".join(cidrs)


class MachineCpu:
    """A sampler of how busy the whole machine is, read each second in a thread.

    Per-process CPU seconds leave out the benchmark itself, short-lived
    processes other than the worker's helm runs, and the kernel. The whole
    machine's counters show whether a run used every core.
    """

    BUSY = ("user", "nice", "system", "irq", "softirq")
    SATURATED = 0.9

    def __init__(self, interval_s: float = 1.0) -> None:
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._fractions: list[float] = []
        self.usage: dict[str, float] = {}
        self._first = psutil.cpu_times()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MachineCpu:
        self._first = psutil.cpu_times()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.usage = self._usage(self._first, psutil.cpu_times())
        fractions = self._fractions or [0.0]
        self.usage["saturated_share"] = sum(
            f >= self.SATURATED for f in fractions
        ) / len(fractions)

    def _run(self) -> None:
        last = psutil.cpu_times()
        while not self._stop.wait(self._interval_s):
            now = psutil.cpu_times()
            usage = self._usage(last, now)
            total = usage["busy_s"] + usage["idle_s"] + usage["steal_s"]
            self._fractions.append(usage["busy_s"] / total if total else 0.0)
            last = now

    @classmethod
    def _usage(cls, before: Any, after: Any) -> dict[str, float]:
        def spent(*fields: str) -> float:
            return sum(getattr(after, f, 0.0) - getattr(before, f, 0.0) for f in fields)

        return {
            "busy_s": spent(*cls.BUSY),
            "idle_s": spent("idle", "iowait"),
            "steal_s": spent("steal"),
        }


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """Return the CPU seconds (user and system) each named process has used.

    The CPU time of a process's reaped children is listed under
    "<name> children": for the worker, that is its helm runs.
    """
    used: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        used[name] = times.user + times.system
        used[f"{name} children"] = times.children_user + times.children_system
    return used


class AuditLog:
    """Counts audited write requests per namespace from a byte offset on."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def offset(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def count_requests(self, since: int) -> dict[str, dict[str, int]]:
        """Return the deployer's requests since the offset, by verb and user agent.

        Every request of DEPLOYER_USER counts once (by audit ID), reads, lists,
        watches and discovery included, so no other deploy may run meanwhile.
        """
        seen: dict[str, tuple[str, str]] = {}
        for entry in self._entries(since):
            if entry.get("user", {}).get("username") != DEPLOYER_USER:
                continue
            agent = str(entry.get("userAgent", "")).split("/")[0] or "unknown"
            seen[str(entry.get("auditID"))] = (str(entry.get("verb")), agent)
        verbs: dict[str, int] = {}
        agents: dict[str, int] = {}
        for verb, agent in seen.values():
            verbs[verb] = verbs.get(verb, 0) + 1
            agents[agent] = agents.get(agent, 0) + 1
        return {"verbs": verbs, "agents": agents}

    def _entries(self, since: int) -> Iterator[JsonObject]:
        if not self.path.exists():
            return
        start = since if self.path.stat().st_size >= since else 0
        with self.path.open("rb") as handle:
            handle.seek(start)
            for line in handle:
                entry = _audit_entry(line)
                if entry is not None:
                    yield entry

    def count_writes(self, namespace: str, since: int) -> dict[str, int]:
        """Return the deployer's writes in namespace since the offset, by user agent.

        Namespace objects themselves are left out: the benchmark creates and
        deletes them. A log rotated since the offset is read from its start.
        """
        counts: dict[str, int] = {}
        for entry in self._entries(since):
            if entry.get("user", {}).get("username") != DEPLOYER_USER:
                continue
            if entry.get("verb") not in WRITE_VERBS:
                continue
            ref = entry.get("objectRef") or {}
            if ref.get("namespace") != namespace or ref.get("resource") == (
                "namespaces"
            ):
                continue
            agent = str(entry.get("userAgent", "")).split("/")[0] or "unknown"
            counts[agent] = counts.get(agent, 0) + 1
        return counts


def _audit_entry(line: bytes) -> JsonObject | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None  # A line cut off by a concurrent write.
    return entry if isinstance(entry, dict) else None
