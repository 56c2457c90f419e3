"""The worker's cache of helm renders: sharing, copies, expiry, failures, keys."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from activities.helm import Helm, RenderCache
from deployer.inputs import ChartRef


class Maker:
    """Counts its runs; each run waits for release, then returns or raises."""

    def __init__(self, error: Exception | None = None) -> None:
        self.runs = 0
        self.release = asyncio.Event()
        self.error = error

    async def __call__(self) -> list[dict[str, Any]]:
        self.runs += 1
        await self.release.wait()
        if self.error:
            raise self.error
        return [{"kind": "ConfigMap", "data": {"run": str(self.runs)}}]


async def test_concurrent_callers_share_one_run() -> None:
    cache, make = RenderCache(), Maker()
    calls = [asyncio.create_task(cache.get("k", make)) for _ in range(3)]
    await asyncio.sleep(0.01)
    make.release.set()
    first, second, third = await asyncio.gather(*calls)
    assert make.runs == 1
    assert cache.misses == 1
    first[0]["data"]["run"] = "changed by a caller"
    assert second[0]["data"]["run"] == "1"
    assert third[0]["data"]["run"] == "1"
    again = await cache.get("k", make)
    assert again[0]["data"]["run"] == "1"
    assert make.runs == 1


async def test_entries_expire() -> None:
    cache, make = RenderCache(ttl_s=0.05), Maker()
    make.release.set()
    await cache.get("k", make)
    await asyncio.sleep(0.1)
    value = await cache.get("k", make)
    assert make.runs == 2
    assert value[0]["data"]["run"] == "2"


async def test_oldest_entry_goes_first() -> None:
    cache, make = RenderCache(max_entries=2), Maker()
    make.release.set()
    for key in ("a", "b", "c"):
        await cache.get(key, make)
    await cache.get("c", make)
    await cache.get("b", make)
    assert make.runs == 3
    await cache.get("a", make)
    assert make.runs == 4


async def test_failure_reaches_every_caller_and_is_not_kept() -> None:
    cache, failing = RenderCache(), Maker(RuntimeError("helm template failed"))
    calls = [asyncio.create_task(cache.get("k", failing)) for _ in range(2)]
    await asyncio.sleep(0.01)
    failing.release.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert [str(r) for r in results] == ["helm template failed"] * 2
    assert failing.runs == 1
    working = Maker()
    working.release.set()
    assert (await cache.get("k", working))[0]["data"]["run"] == "1"


async def test_waiter_runs_after_cancel() -> None:
    cache, make = RenderCache(), Maker()
    first = asyncio.create_task(cache.get("k", make))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(cache.get("k", make))
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    make.release.set()
    value = await second
    assert make.runs == 2
    assert value[0]["data"]["run"] == "2"


def write_chart(root: Path, version: str) -> None:
    chart = root / "app"
    (chart / "templates").mkdir(parents=True, exist_ok=True)
    (chart / "Chart.yaml").write_text(
        f"apiVersion: v2\nname: app\nversion: {version}\n"
    )
    (chart / "templates" / "cm.yaml").write_text("kind: ConfigMap\n")


def test_key_follows_chart_files_and_values(tmp_path: Path) -> None:
    write_chart(tmp_path, "1.0.0")
    helm = Helm("helm", None, None, tmp_path)
    chart = ChartRef(path="app")
    key = helm.cache_key("template", {"replicas": 1}, chart=chart)
    assert helm.cache_key("template", {"replicas": 1}, chart=chart) == key
    assert helm.cache_key("template", {"replicas": 2}, chart=chart) != key
    assert helm.cache_key("show values", chart=chart) != key
    other_context = Helm("helm", None, "prod", tmp_path)
    assert other_context.cache_key("template", {"replicas": 1}, chart=chart) != key
    (tmp_path / "app" / "templates" / "cm.yaml").write_text("kind: Secret\n")
    edited = helm.cache_key("template", {"replicas": 1}, chart=chart)
    assert edited != key
    (tmp_path / "app" / "templates" / "extra.yaml").write_text("kind: Secret\n")
    assert helm.cache_key("template", {"replicas": 1}, chart=chart) != edited


def test_key_of_repository_chart_follows_its_version(tmp_path: Path) -> None:
    helm = Helm("helm", None, None, tmp_path)
    old = ChartRef(repository="https://charts.example.org", name="app", version="1")
    new = ChartRef(repository="https://charts.example.org", name="app", version="2")
    assert helm.cache_key("template", chart=old) == helm.cache_key(
        "template", chart=old
    )
    assert helm.cache_key("template", chart=old) != helm.cache_key(
        "template", chart=new
    )
