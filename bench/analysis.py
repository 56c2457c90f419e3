"""Numbers derived from the raw measurements: latencies, timelines, statistics."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench.observe import ObjectTimes
from bench.ours import OursRun


@dataclass
class Detection:
    """How long after its last object became ready a phase's wait completed."""

    phase: str
    latency_ms: float
    # The wait's own share: from the later of (last ready, wait started).
    in_wait_ms: float
    last_object: str
    source: str


def detections(
    run: OursRun, objects: dict[tuple[str, str], ObjectTimes]
) -> list[Detection]:
    """Return one Detection per completed wait whose objects the recorder saw.

    Cluster-scoped references (the operators' CRDs) are left out: they were
    Established before the deploy, so they never decide when a wait ends.
    """
    found: list[Detection] = []
    for span in run.spans:
        if span.step != "wait" or span.completed is None:
            continue
        readies = []
        for ref in span.refs:
            if not ref.get("namespace"):
                continue
            times = objects.get((ref["kind"], ref["name"]))
            if times is not None and times.ready is not None:
                readies.append(times)
        if not readies:
            continue
        last = max(readies, key=lambda t: t.ready or 0.0)
        assert last.ready is not None
        began = max(last.ready, span.started or span.scheduled)
        found.append(
            Detection(
                phase=span.phase,
                latency_ms=(span.completed - last.ready) * 1000,
                in_wait_ms=(span.completed - began) * 1000,
                last_object=f"{last.kind.lower()}/{last.name}",
                source=last.ready_source,
            )
        )
    return found


def object_windows(
    objects: dict[tuple[str, str], ObjectTimes], started: float
) -> dict[str, tuple[float, float | None]]:
    """Return per phase: first object seen, last object ready (s from start)."""
    windows: dict[str, tuple[float, float | None]] = {}
    for times in objects.values():
        first = times.first_seen - started
        ready = None if times.ready is None else times.ready - started
        if times.phase in windows:
            old_first, old_ready = windows[times.phase]
            first = min(first, old_first)
            if ready is None or old_ready is None:
                ready = None
            else:
                ready = max(ready, old_ready)
        windows[times.phase] = (first, ready)
    return windows


def all_ready_s(objects: dict[tuple[str, str], ObjectTimes], started: float) -> float:
    """Return when the last watched object became ready, in s from start."""
    readies = [t.ready for t in objects.values()]
    if not readies or any(ready is None for ready in readies):
        missing = [f"{t.kind}/{t.name}" for t in objects.values() if t.ready is None]
        raise ValueError(f"objects never became ready: {', '.join(missing) or 'none'}")
    return max(r for r in readies if r is not None) - started


def percentile(values: list[float], fraction: float) -> float:
    """Return the fraction-quantile by linear interpolation (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Spread:
    """Median, minimum and maximum of repeated measurements."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        return cls(statistics.median(values), min(values), max(values), len(values))

    def show(self, unit: str = "", digits: int = 2) -> str:
        if self.count == 0:
            return "n/a"
        if self.count == 1:
            return f"{self.median:.{digits}f}{unit}"
        return (
            f"{self.median:.{digits}f}{unit} "
            f"(min {self.low:.{digits}f}, max {self.high:.{digits}f}, n={self.count})"
        )
