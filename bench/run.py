"""`make bench`: our deploy against the Helm-hooks deploy on the same cluster.

    python -m bench.run [--quick] [--repeats N] [--scale N] [--out DIR]

Both ways deploy the same chart with the same simulated readiness delays
(DELAYS_S below, the only place they are set) into fresh namespaces of the
shared local cluster, alternating, and the namespaces are deleted after.
The last line printed is the summary that .ci/run and people read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from activities.helm import Helm
from activities.kubeapi import KubeClient, well_known
from bench import scenario
from bench.analysis import (
    Spread,
    all_ready_s,
    detections,
    object_windows,
    percentile,
)
from bench.legacy_helm import prepare_chart, run_install
from bench.observe import (
    DEPLOYER_USER,
    AuditLog,
    MachineCpu,
    ReadinessRecorder,
    RssSampler,
    cluster_ips,
    cpu_seconds,
    service_ip_range,
)
from bench.ours import phase_windows, run_deploy
from bench.report import print_report, write_plot
from bench.services import BenchError, Services
from deployer.connect import connect
from deployer.settings import TemporalSettings
from testbed.cluster import REPO_ROOT, ClusterError, LocalCluster, tool_path
from testbed.leftovers import (
    delete_release_leftovers,
    owned_cluster_roles,
    owned_message,
)
from testbed.operators import install_shared_operators, uninstall_shared_operators
from testbed.processes import alive

# Simulated readiness delays in seconds, applied to both ways of deploying as
# namespace and pod-template annotations (see bench.scenario.DELAY_KEYS).
DELAYS_S: dict[str, float] = {
    "postgres": 4.0,
    "rabbitmq": 4.0,
    "redis": 3.0,
    "temporal": 3.0,
    "migration": 2.0,
    "app": 2.0,
    "pods": 0.3,
}
DEPLOY_TIMEOUT_S = 300.0
SCALE_TIMEOUT_S = 900.0
# Single deploys beside the shared operators, the scale run's one-release base.
SCALE_SINGLE_RUNS = 3
# How long after `helm install` returns the stack may take to become ready.
SETTLE_TIMEOUT_S = 120.0
NAMESPACE_GONE_TIMEOUT_S = 90.0
CLUSTER_HEALTH_WAIT_S = 60.0
NAMESPACE = well_known("v1", "Namespace")


class Bench:
    """Everything one benchmark run shares: clients, processes, results."""

    def __init__(self, state: Path, cluster: LocalCluster) -> None:
        self.state = state
        self.cluster = cluster
        self.token = uuid.uuid4().hex[:6]
        self.services = Services(state)
        self.audit = AuditLog(cluster.config.log_dir / "audit.log")
        self.kube: KubeClient | None = None
        self.client: Any = None
        self.sampler: RssSampler | None = None
        self.chart: Path | None = None
        self.values_file = state / "legacy-values.yaml"
        self.results: dict[str, Any] = {"ours": [], "helm": [], "scale": None}

    async def start(self) -> None:
        self.chart = prepare_chart(self.state)
        self.values_file.write_text(yaml.safe_dump(scenario.legacy_values(DELAYS_S)))
        self.services.start()
        assert self.services.worker is not None
        self.sampler = RssSampler(self.services.worker.pid)
        self.sampler.start()
        settings = TemporalSettings(
            temporal_address=self.services.address,
            task_queue=self.services.task_queue,
            codec_keys_file=self.services.keys_file,
        )
        self.client = await connect(settings)
        await self.services.wait_for_worker(self.client)
        self.kube = await KubeClient.connect(str(self.cluster.kubeconfig))
        owned = await owned_cluster_roles(self.kube)
        if owned:
            raise BenchError(owned_message(owned, "The benchmark's deploys"))

    async def close(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        self.services.stop()
        if self.kube is not None:
            await self.kube.close()

    def process_ids(self) -> dict[str, int]:
        """Return the processes whose CPU time the scale run reports."""
        pids = dict(self.cluster.processes.pids())
        for name, process in (
            ("worker", self.services.worker),
            ("temporal dev server", self.services.temporal),
        ):
            if process is not None:
                pids[name] = process.pid
        return pids

    # -- namespaces -------------------------------------------------------

    async def create_namespace(self, name: str) -> None:
        assert self.kube is not None
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {"bench.ventros.io/run": self.token},
                "annotations": scenario.namespace_annotations(DELAYS_S),
            },
        }
        await self.kube.create(NAMESPACE, body)

    async def delete_namespaces(self, names: list[str]) -> None:
        """Delete the namespaces and wait (bounded) until they are gone."""
        assert self.kube is not None
        kube = self.kube
        await asyncio.gather(*(kube.delete(NAMESPACE, name) for name in names))
        for name in names:
            await delete_release_leftovers(kube, name)
        deadline = time.monotonic() + NAMESPACE_GONE_TIMEOUT_S
        for name in names:
            while time.monotonic() < deadline:
                if await kube.get(NAMESPACE, name) is None:
                    break
                await asyncio.sleep(0.5)

    # -- one deploy each way ----------------------------------------------

    async def measure_ours(self, index: int) -> dict[str, Any]:
        assert self.kube is not None and self.sampler is not None
        namespace = f"bench-ours-{self.token}-{index}"
        await self.create_namespace(namespace)
        recorder = ReadinessRecorder(self.kube, namespace)
        try:
            await recorder.start()
            offset = self.audit.offset()
            self.sampler.take_window_mb()
            request = scenario.deploy_request(namespace, DELAYS_S)
            task_queue = self.services.task_queue
            run = await run_deploy(self.client, task_queue, request, DEPLOY_TIMEOUT_S)
            writes = self.audit.count_writes(namespace, offset)
            requests = self.audit.count_requests(offset)
            again = await run_deploy(self.client, task_queue, request, DEPLOY_TIMEOUT_S)
            await asyncio.sleep(0.3)  # Let the recorder see the last events.
            service_ips = await cluster_ips(self.kube, namespace)
            found = detections(run, recorder.objects)
            return {
                "namespace": namespace,
                "wall_s": run.wall_s,
                "all_ready_s": _all_ready_or_none(recorder, run.started),
                "redeploy_s": again.wall_s,
                "first_task_s": run.first_task_s,
                "task_queue_wait_s": sum(run.task_queue_waits_s),
                "task_queue_waits": len(run.task_queue_waits_s),
                "service_ips": service_ips,
                "history_events": run.history_events,
                "redeploy_history_events": again.history_events,
                "largest_payload_bytes": run.largest_payload_bytes,
                "api_writes": writes,
                "api_requests": requests,
                "rss_mb": self.sampler.take_window_mb(),
                "phases": phase_windows(run),
                "redeploy_phases": phase_windows(again),
                "objects": object_windows(recorder.objects, run.started),
                "detections": [vars(d) for d in found],
            }
        finally:
            await recorder.stop()
            await self.delete_namespaces([namespace])

    async def measure_helm(self, index: int) -> dict[str, Any]:
        assert self.kube is not None and self.chart is not None
        namespace = f"bench-helm-{self.token}-{index}"
        await self.create_namespace(namespace)
        recorder = ReadinessRecorder(self.kube, namespace)
        try:
            await recorder.start()
            offset = self.audit.offset()
            run = await run_install(
                self.chart,
                namespace,
                self.values_file,
                self.cluster.config.deployer_kubeconfig,
                scenario.RELEASE,
            )
            requests = self.audit.count_requests(offset)
            ready = await _settled(recorder, run.started)
            return {
                "namespace": namespace,
                "wall_s": run.wall_s,
                "all_ready_s": ready,
                "api_writes": self.audit.count_writes(namespace, offset),
                "api_requests": requests,
                "helm_waits": [
                    {
                        "label": wait.label,
                        "start": wait.started - run.started,
                        "end": None if wait.ended is None else wait.ended - run.started,
                    }
                    for wait in run.waits
                ],
                "objects": object_windows(recorder.objects, run.started),
            }
        finally:
            await recorder.stop()
            await self.delete_namespaces([namespace])

    # -- scale ------------------------------------------------------------

    async def check_service_ips(self, count: int) -> None:
        """Raise BenchError unless count more releases fit the Service IP range.

        A full range fails every Service creation in the cluster, other
        people's included, so the scale run does not start at all then.
        """
        assert self.kube is not None
        per_release = max(run["service_ips"] for run in self.results["ours"])
        size, cidrs = await service_ip_range(self.kube)
        free = size - await cluster_ips(self.kube)
        if per_release * count > free:
            raise BenchError(
                f"{count} releases need {per_release * count} Service IPs "
                f"({per_release} each, as measured), but only {free} of {size} in "
                f"{cidrs} are free. Widen --service-cluster-ip-range in "
                f"testbed/cluster.py, or pass --scale {free // per_release} or less"
            )

    async def measure_scale(self, count: int) -> dict[str, Any]:
        """Deploy count releases at once beside one shared copy of the operators.

        The upstream operator charts create ClusterRoles named after their
        release. On a real cluster only one release can install them, and the
        others deploy with install_operators false, as here. The one-release
        time to compare with is measured the same way, first.
        """
        assert self.sampler is not None
        await self.check_service_ips(count + SCALE_SINGLE_RUNS)
        prefix = f"bench-scale-{self.token}"
        operators = f"{prefix}-operators"
        singles = [f"{prefix}-one-{i}" for i in range(SCALE_SINGLE_RUNS)]
        names = [f"{prefix}-{i}" for i in range(count)]
        helm = Helm(
            str(tool_path("helm")), str(self.cluster.kubeconfig), None, REPO_ROOT
        )
        try:
            await self.create_namespace(operators)
            await install_shared_operators(helm, operators)
            single_s = []
            for name in singles:
                await self.create_namespace(name)
                run = await run_deploy(
                    self.client,
                    self.services.task_queue,
                    scenario.deploy_request(name, DELAYS_S, install_operators=False),
                    DEPLOY_TIMEOUT_S,
                )
                single_s.append(run.wall_s)
            await asyncio.gather(*(self.create_namespace(name) for name in names))
            self.sampler.take_window_mb()
            cpu_before = cpu_seconds(self.process_ids())
            started = time.time()
            with MachineCpu() as machine:
                outcomes = await asyncio.gather(
                    *(
                        run_deploy(
                            self.client,
                            self.services.task_queue,
                            scenario.deploy_request(
                                name, DELAYS_S, install_operators=False
                            ),
                            SCALE_TIMEOUT_S,
                        )
                        for name in names
                    ),
                    return_exceptions=True,
                )
            ended = time.time()
            cpu_after = cpu_seconds(self.process_ids())
            runs = [o for o in outcomes if not isinstance(o, BaseException)]
            errors = [str(o) for o in outcomes if isinstance(o, BaseException)]
            return {
                "releases": count,
                "operators": "shared",
                "single_s": Spread.of(single_s).__dict__,
                "makespan_s": (max(r.ended for r in runs) - started) if runs else None,
                "wall_s": Spread.of([r.wall_s for r in runs]).__dict__,
                "task_retries": sum(r.task_retries for r in runs),
                "failures": len(errors),
                "errors": errors[:5],
                "rss_mb": self.sampler.take_window_mb(),
                "cpu_s": {
                    name: cpu_after[name] - cpu_before[name]
                    for name in cpu_after
                    if name in cpu_before
                },
                "elapsed_s": ended - started,
                "machine_cpu": machine.usage,
            }
        finally:
            try:
                await self.delete_namespaces(names + singles)
                await uninstall_shared_operators(helm, operators)
            finally:
                await self.delete_namespaces([operators])


def _all_ready_or_none(recorder: ReadinessRecorder, started: float) -> float | None:
    try:
        return all_ready_s(recorder.objects, started)
    except ValueError:
        return None


async def _settled(recorder: ReadinessRecorder, started: float) -> float:
    """Wait until every watched object in the namespace is ready; return when.

    The simulated postgres-operator creates the database StatefulSet only
    once the postgresql is past its delay, so a postgresql without its
    StatefulSet does not count as settled.
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        objects = recorder.objects
        clusters = [name for kind, name in objects if kind == "postgresql"]
        complete = all(("StatefulSet", name) in objects for name in clusters)
        if clusters and complete:
            try:
                return all_ready_s(objects, started)
            except ValueError:
                pass
        await asyncio.sleep(0.1)
    raise BenchError(
        f"the helm deploy in {recorder.namespace} did not become ready within "
        f"{SETTLE_TIMEOUT_S:.0f} s after `helm install` returned"
    )


async def run_bench(args: argparse.Namespace, cluster: LocalCluster) -> dict[str, Any]:
    scenario.check_delays(DELAYS_S)
    state = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    state.mkdir(parents=True, exist_ok=True)
    bench = Bench(state, cluster)
    try:
        await bench.start()
        for index in range(args.repeats):
            # Alternate which way goes first, so neither always gets a quieter cluster.
            order = ("ours", "helm") if index % 2 == 0 else ("helm", "ours")
            for way in order:
                print(f"bench: run {index + 1}/{args.repeats}: {way}", flush=True)
                measure = bench.measure_ours if way == "ours" else bench.measure_helm
                bench.results[way].append(await measure(index))
        if args.scale:
            print(f"bench: {args.scale} releases at once", flush=True)
            try:
                bench.results["scale"] = await bench.measure_scale(args.scale)
            except BenchError as error:
                # Keep the single-deploy results: they are complete.
                bench.results["scale"] = {"releases": args.scale, "error": str(error)}
    finally:
        await bench.close()
    assert bench.sampler is not None
    bench.results["worker_peak_rss_mb"] = bench.sampler.peak_mb
    bench.results["delays_s"] = DELAYS_S
    bench.results["cpu_count"] = os.cpu_count()
    total, path = scenario.critical_path(DELAYS_S)
    with_jobs, _ = scenario.critical_path(DELAYS_S, scenario.JOB_SYNC_S)
    bench.results["critical_path"] = {
        "seconds": total,
        "phases": path,
        "with_job_sync_s": with_jobs,
    }
    (state / "results.json").write_text(json.dumps(bench.results, indent=2))
    write_plot(bench.results, state / "timeline.png")
    print(f"bench: raw results in {state / 'results.json'}")
    return bench.results


def summary_line(results: dict[str, Any]) -> str:
    ours = Spread.of([r["wall_s"] for r in results["ours"]]).median
    helm = Spread.of([r["wall_s"] for r in results["helm"]]).median
    critical = results["critical_path"]["seconds"]
    latencies = [d["latency_ms"] for r in results["ours"] for d in r["detections"]]
    redeploy = Spread.of([r["redeploy_s"] for r in results["ours"]]).median
    scale = results.get("scale") or {}
    releases = scale.get("releases", 50)
    makespan = scale.get("makespan_s")
    # Results saved before the scale run measured its own one-release time
    # fall back to the first part's median.
    single = (scale.get("single_s") or {}).get("median") or ours
    complete = makespan is not None and not scale.get("failures")
    ratio = f"{makespan / single:.2f}" if complete and makespan else "n/a"
    return (
        f"bench: ours/helm={ours / helm:.2f} ours/critical={ours / critical:.2f} "
        f"detect_p50_ms={percentile(latencies, 0.5):.0f} "
        f"detect_p99_ms={percentile(latencies, 0.99):.0f} "
        f"redeploy_s={redeploy:.2f} scale{releases}_makespan_ratio={ratio} "
        f"rss_mb={results['worker_peak_rss_mb']:.0f}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="one repetition and no scale run"
    )
    parser.add_argument(
        "--repeats", type=int, help="repetitions of each way (default 5, quick 1)"
    )
    parser.add_argument(
        "--scale", type=int, help="releases deployed at once (default 50, quick 0)"
    )
    parser.add_argument(
        "--out",
        default=str(REPO_ROOT / ".local" / "bench"),
        help="folder for results.json, timeline.png and process logs",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.scale is None:
        args.scale = 0 if args.quick else 50
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def check_audited_identity(cluster: LocalCluster) -> None:
    """Raise BenchError unless the cluster audits every deployer request."""
    policy = cluster.config.cluster_dir / "audit-policy.yaml"
    if not cluster.config.deployer_kubeconfig.exists() or DEPLOYER_USER not in (
        policy.read_text() if policy.exists() else ""
    ):
        raise BenchError(
            f"the local cluster has no audited {DEPLOYER_USER} identity "
            f"({cluster.config.deployer_kubeconfig}): it was started by an older "
            "version of testbed/cluster.py. Restart it with `make cluster-down "
            "cluster-up` when nobody else uses it"
        )


def ensure_cluster(cluster: LocalCluster) -> bool:
    """Make sure the shared cluster runs; return True when this call started it.

    LocalCluster.up() rebuilds a cluster whose /readyz fails, which wipes a
    shared cluster that is only slow or restarting its API server. So this
    waits for a live cluster to become ready, and starts one only when none
    of its processes runs.
    """
    deadline = time.monotonic() + CLUSTER_HEALTH_WAIT_S
    while time.monotonic() < deadline:
        if cluster.is_healthy():
            return False
        if not any(alive(pid) for pid in cluster.processes.pids().values()):
            cluster.up()
            return True
        time.sleep(1.0)
    raise BenchError(
        f"the local cluster's processes run but its API server has not been ready "
        f"for {CLUSTER_HEALTH_WAIT_S:.0f} s; see {cluster.config.log_dir}. The "
        "benchmark does not restart a cluster that others may be using"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cluster = LocalCluster()
    started_cluster = False
    try:
        started_cluster = ensure_cluster(cluster)
        check_audited_identity(cluster)
        results = asyncio.run(run_bench(args, cluster))
    except (BenchError, ClusterError) as error:
        print(f"bench: failed: {error}", file=sys.stderr)
        return 1
    finally:
        if started_cluster:
            cluster.down(quiet=True)
    print_report(results)
    scale = results.get("scale") or {}
    print(summary_line(results))
    if scale.get("error"):
        print(f"bench: failed: scale run: {scale['error']}", file=sys.stderr)
        return 1
    if scale.get("failures"):
        print(
            f"bench: failed: {scale['failures']} of {scale['releases']} scale "
            f"deploys failed, first: {scale['errors'][0]}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
