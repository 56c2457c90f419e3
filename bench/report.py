"""Print the benchmark's results and draw one deploy's phase timeline."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from bench.analysis import Spread, percentile
from bench.observe import MachineCpu
from deployer.phases import PHASE_ORDER

PHASES = [phase.value for phase in PHASE_ORDER]


def _spread(runs: list[dict[str, Any]], key: str) -> Spread:
    return Spread.of([run[key] for run in runs if run.get(key) is not None])


def print_report(results: dict[str, Any]) -> None:
    ours, helm = results["ours"], results["helm"]
    critical = results["critical_path"]
    print()
    delays = ", ".join(f"{k}={v:g}" for k, v in results["delays_s"].items())
    print(f"delays (s): {delays}")
    path = " -> ".join(str(phase) for phase in critical["phases"])
    print(f"critical path: {critical['seconds']:.2f} s ({path})")
    if "with_job_sync_s" in critical:
        print(
            "critical path with the Job controller's 1 s sync: "
            f"{critical['with_job_sync_s']:.2f} s"
        )
    print(f"ours, wall:                 {_spread(ours, 'wall_s').show(' s')}")
    print(f"ours, all objects ready:    {_spread(ours, 'all_ready_s').show(' s')}")
    print(f"helm install, wall:         {_spread(helm, 'wall_s').show(' s')}")
    print(f"helm, all objects ready:    {_spread(helm, 'all_ready_s').show(' s')}")
    _print_ratios(ours, helm, critical)
    print(f"ours, unchanged re-deploy:  {_spread(ours, 'redeploy_s').show(' s')}")
    print(f"ours, first workflow task:  {_spread(ours, 'first_task_s').show(' s')}")
    if any("task_queue_wait_s" in run for run in ours):
        tasks = _spread(ours, "task_queue_waits").show("", 0)
        print(
            "ours, workflow tasks' wait for a poll, summed per deploy: "
            f"{_spread(ours, 'task_queue_wait_s').show(' s')} over {tasks} tasks"
        )
    print(f"history events per deploy:  {_spread(ours, 'history_events').show('', 0)}")
    print(
        "history events, re-deploy:  "
        f"{_spread(ours, 'redeploy_history_events').show('', 0)}"
    )
    print(
        "largest payload (bytes):    "
        f"{_spread(ours, 'largest_payload_bytes').show('', 0)}"
    )
    print(f"worker peak RSS, one deploy: {_spread(ours, 'rss_mb').show(' MiB', 0)}")
    _print_writes(ours, helm)
    _print_requests(ours, helm)
    _print_detections(ours)
    _print_phases(ours)
    _print_helm_waits(helm)
    scale = results.get("scale")
    if scale and scale.get("error"):
        print(f"scale: not measured: {scale['error']}")
    elif scale:
        print(
            f"scale: {scale['releases']} releases, "
            f"makespan {scale['makespan_s']:.1f} s, failures {scale['failures']}, "
            f"worker peak RSS {scale['rss_mb']:.0f} MiB, "
            f"workflow task retries {scale['task_retries']}"
        )
        single = scale.get("single_s")  # Older results lack it.
        if single:
            print(
                f"  beside one shared copy of the operators; one release alone the "
                f"same way: median {single['median']:.2f} s (min {single['low']:.2f},"
                f" max {single['high']:.2f}, {single['count']} runs)"
            )
        cpu = ", ".join(
            f"{name} {seconds:.0f}"
            for name, seconds in sorted(scale["cpu_s"].items(), key=lambda i: -i[1])
            if seconds >= 0.5
        )
        # The machine that ran the benchmark; older results lack it.
        cores = results.get("cpu_count") or os.cpu_count() or 1
        print(f"  CPU seconds in {scale['elapsed_s']:.0f} s on {cores} cores: {cpu}")
        machine = scale.get("machine_cpu")  # Older results lack it.
        if machine:
            capacity = machine["busy_s"] + machine["idle_s"] + machine["steal_s"]
            print(
                f"  whole machine: busy {machine['busy_s']:.0f} of "
                f"{capacity:.0f} CPU-s ({machine['busy_s'] / capacity:.0%}), "
                f"steal {machine['steal_s']:.1f} s; seconds at least "
                f"{MachineCpu.SATURATED:.0%} busy: {machine['saturated_share']:.0%}"
            )


def _print_ratios(
    ours: list[dict[str, Any]], helm: list[dict[str, Any]], critical: dict[str, Any]
) -> None:
    ours_s = _spread(ours, "wall_s").median
    pairs = [
        ("helm install, wall", _spread(helm, "wall_s").median),
        ("helm, all objects ready", _spread(helm, "all_ready_s").median),
        ("critical path", critical["seconds"]),
    ]
    if "with_job_sync_s" in critical:
        pairs.append(("critical path with Job sync", critical["with_job_sync_s"]))
    ratios = ", ".join(f"/ {name} {ours_s / value:.2f}" for name, value in pairs)
    print(f"ours (median wall) {ratios}")


def _print_counts(title: str, counts: list[dict[str, int]]) -> None:
    """Print the spread of per-deploy totals and the mean of each key."""
    if not counts:
        return
    totals = [float(sum(count.values())) for count in counts]
    summed: dict[str, int] = {}
    for count in counts:
        for key, value in count.items():
            summed[key] = summed.get(key, 0) + value
    split = ", ".join(
        f"{key} {value / len(counts):.0f}"
        for key, value in sorted(summed.items(), key=lambda item: -item[1])
    )
    print(f"{title}: {Spread.of(totals).show('', 0)} [{split}]")


def _print_writes(ours: list[dict[str, Any]], helm: list[dict[str, Any]]) -> None:
    for name, runs in (("ours", ours), ("helm", helm)):
        writes = [run["api_writes"] for run in runs]
        _print_counts(f"API writes per deploy, {name}", writes)


def _print_requests(ours: list[dict[str, Any]], helm: list[dict[str, Any]]) -> None:
    for name, runs in (("ours", ours), ("helm", helm)):
        verbs = [run["api_requests"]["verbs"] for run in runs if "api_requests" in run]
        _print_counts(f"API requests per deploy, {name}", verbs)


def _print_detections(ours: list[dict[str, Any]]) -> None:
    found = [d for run in ours for d in run["detections"]]
    latencies = [d["latency_ms"] for d in found]
    in_wait = [d["in_wait_ms"] for d in found]
    print(
        f"readiness detection (ms): p50 {percentile(latencies, 0.5):.0f}, "
        f"p99 {percentile(latencies, 0.99):.0f} over {len(found)} waits; "
        f"inside the wait: p50 {percentile(in_wait, 0.5):.0f}, "
        f"p99 {percentile(in_wait, 0.99):.0f}"
    )
    for phase in PHASES:
        mine = [d for d in found if d["phase"] == phase]
        if mine:
            values = Spread.of([d["latency_ms"] for d in mine])
            last = mine[0]["last_object"]
            print(f"  {phase:<10} {values.show(' ms', 0)} last ready: {last}")


def _print_phases(ours: list[dict[str, Any]]) -> None:
    print(
        "ours, per phase (median s from start): apply start-end | wait start-end"
        " | record start-end (app)"
    )
    for phase in ["validate", *PHASES]:
        rows = [run["phases"][phase] for run in ours if phase in run["phases"]]
        if not rows:
            continue
        cells = []
        for step in ("apply", "wait", "record", "validate"):
            starts = [row[f"{step}_start"] for row in rows if f"{step}_start" in row]
            ends = [row[f"{step}_end"] for row in rows if f"{step}_end" in row]
            if starts:
                start, end = Spread.of(starts).median, Spread.of(ends).median
                cells.append(f"{step} {start:6.2f}-{end:6.2f} ({end - start:.2f})")
        print(f"  {phase:<10} " + " | ".join(cells))


def _print_helm_waits(helm: list[dict[str, Any]]) -> None:
    if not helm:
        return
    print("helm, its waits in the first run (s from start):")
    for wait in helm[0]["helm_waits"]:
        end = wait["end"]
        shown = f"{end:6.2f}" if end is not None else "  (no end)"
        print(f"  {wait['label']:<28} {wait['start']:6.2f}-{shown}")


def write_plot(results: dict[str, Any], path: Path) -> None:
    """Draw the median run of each way as a phase timeline, ours above helm's."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib is missing, so no timeline.png: run `make venv`")
        return
    if not results["ours"] or not results["helm"]:
        return
    ours, helm = _median_run(results["ours"]), _median_run(results["helm"])
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    _plot_ours(top, ours)
    _plot_helm(bottom, helm)
    bottom.set_xlabel("seconds from the start of the deploy")
    bottom.set_xlim(left=0)
    figure.suptitle(
        "One deploy, phase by phase (simulated delays: "
        + ", ".join(f"{k} {v:g} s" for k, v in results["delays_s"].items())
        + ")",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"bench: timeline in {path}")


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the run with the median wall time (the lower one of an even count)."""
    ordered = sorted(runs, key=lambda run: float(run["wall_s"]))
    return ordered[(len(ordered) - 1) // 2]


def _plot_ours(axes: Any, run: dict[str, Any]) -> None:
    rows = ["validate", *PHASES]
    for y, phase in enumerate(rows):
        window = run["phases"].get(phase, {})
        for step, color in (
            ("validate", "tab:gray"),
            ("apply", "tab:blue"),
            ("wait", "tab:orange"),
            ("record", "tab:green"),
        ):
            if f"{step}_start" in window:
                start = window[f"{step}_start"]
                axes.barh(y, window[f"{step}_end"] - start, left=start, color=color)
    axes.axvline(run["wall_s"], color="black", linestyle="--", linewidth=1)
    axes.set_yticks(range(len(rows)), rows)
    axes.invert_yaxis()
    axes.set_title(
        f"ours (VentrosDeploy), done at {run['wall_s']:.1f} s (dashed)\n"
        "blue: apply, orange: wait, green: record revision (history event times)",
        fontsize=9,
    )


def _plot_helm(axes: Any, run: dict[str, Any]) -> None:
    rows = [*PHASES, "helm waits"]
    for y, phase in enumerate(PHASES):
        first, ready = run["objects"].get(phase, (None, None))
        if first is not None and ready is not None:
            axes.barh(y, ready - first, left=first, color="tab:green")
    helm_row = len(PHASES)
    for wait in run["helm_waits"]:
        if wait["end"] is not None:
            width = max(wait["end"] - wait["start"], 0.05)
            axes.barh(helm_row, width, left=wait["start"], color="tab:purple")
    axes.axvline(run["wall_s"], color="black", linestyle="--", linewidth=1)
    axes.axvline(run["all_ready_s"], color="tab:red", linestyle=":", linewidth=1)
    axes.set_yticks(range(len(rows)), rows)
    axes.invert_yaxis()
    axes.set_title(
        f"helm install --wait --wait-for-jobs, returns at {run['wall_s']:.1f} s "
        f"(dashed); all objects ready at {run['all_ready_s']:.1f} s (dotted)\n"
        "green: first object seen to last object ready (watch), "
        "purple: helm's own waits (--debug lines)",
        fontsize=9,
    )


def main(argv: list[str] | None = None) -> None:
    """Print the report and draw the timeline again from a results.json."""
    parser = argparse.ArgumentParser(prog="python -m bench.report")
    parser.add_argument("results", help="results.json written by bench.run")
    parser.add_argument("png", help="where to write the timeline")
    args = parser.parse_args(argv)
    results = json.loads(Path(args.results).read_text())
    print_report(results)
    write_plot(results, Path(args.png))


if __name__ == "__main__":
    main()
