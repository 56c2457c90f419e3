"""The old way: one `helm install --wait --wait-for-jobs` of the umbrella chart.

The umbrella chart (bench/legacy) contains our chart in hook mode and the
stand-in charts as subcharts. It is copied into the run's output folder, its
file:// dependencies are pointed at this repository and `helm dependency
build` packs them, all offline.

helm's --debug output has no timestamps, so each stderr line is stamped
when it arrives; that gives when helm started and ended each of its waits.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.services import BenchError
from testbed.cluster import REPO_ROOT, tool_path

LEGACY_CHART = REPO_ROOT / "bench" / "legacy"
# Lines of `helm --debug` (helm v4.3) that mark a created object and a wait.
CREATED = re.compile(
    r'msg="Created resource via patch".* name=(\S+) gvk="[^"]*Kind=(\w+)"'
)
WAITING = re.compile(r'msg="waiting for resources" count=(\d+)')
ACHIEVED = re.compile(
    r'msg="all resources achieved desired status" desiredStatus=Current'
)


@dataclass
class HelmWait:
    """One wait of helm: what it waited on and when (Unix seconds)."""

    label: str
    count: int
    started: float
    ended: float | None = None


@dataclass
class LegacyRun:
    """The measurements of one `helm install`."""

    namespace: str
    started: float
    ended: float
    waits: list[HelmWait] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return self.ended - self.started


def prepare_chart(state: Path) -> Path:
    """Copy the umbrella chart, point it at this repository, build its dependencies."""
    target = state / "legacy-chart"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(LEGACY_CHART, target, ignore=shutil.ignore_patterns("charts"))
    chart_file = target / "Chart.yaml"
    chart = yaml.safe_load(chart_file.read_text())
    for dependency in chart["dependencies"]:
        relative = dependency["repository"].removeprefix("file://")
        dependency["repository"] = f"file://{(LEGACY_CHART / relative).resolve()}"
    chart_file.write_text(yaml.safe_dump(chart, sort_keys=False))
    result = subprocess.run(
        [str(tool_path("helm")), "dependency", "build", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"`helm dependency build` failed: {result.stderr.strip()}")
    return target


async def run_install(
    chart: Path, namespace: str, values: Path, kubeconfig: Path, release: str
) -> LegacyRun:
    """Run helm install with --wait and --wait-for-jobs; raise BenchError on failure."""
    argv = [
        str(tool_path("helm")), "install", release, str(chart),
        f"--namespace={namespace}",
        f"--values={values}",
        "--wait", "--wait-for-jobs", "--timeout=5m",
        f"--kubeconfig={kubeconfig}",
        "--debug",
    ]  # fmt: skip
    started = time.time()
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    lines: list[tuple[float, str]] = []
    while line := await process.stderr.readline():
        lines.append((time.time(), line.decode(errors="replace")))
    code = await process.wait()
    ended = time.time()
    if code != 0:
        tail = "".join(text for _, text in lines[-5:]).strip()
        raise BenchError(f"helm install in {namespace} failed ({code}): {tail}")
    return LegacyRun(namespace, started, ended, helm_waits(lines))


def helm_waits(lines: list[tuple[float, str]]) -> list[HelmWait]:
    """Pair helm's "waiting for resources" and "achieved" lines into waits.

    Each wait is labelled with the kinds created just before it: the release
    objects first, then one hook at a time.
    """
    waits: list[HelmWait] = []
    created: list[str] = []
    for when, text in lines:
        if match := CREATED.search(text):
            created.append(match.group(2))
        elif match := WAITING.search(text):
            count = int(match.group(1))
            label = _label(created, count)
            waits.append(HelmWait(label, count, when))
            created = []
        elif ACHIEVED.search(text) and waits and waits[-1].ended is None:
            waits[-1].ended = when
    return [wait for wait in waits if wait.label != "CRDs"]


def _label(kinds: list[str], count: int) -> str:
    if kinds and all(kind == "CustomResourceDefinition" for kind in kinds):
        return "CRDs"
    if count > 1:
        return f"release objects ({count})"
    return f"hook {kinds[-1]}" if kinds else "hook"
