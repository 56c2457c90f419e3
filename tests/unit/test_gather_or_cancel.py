"""gather_or_cancel, which runs the base phase's helm installs side by side:
when one fails, the others are stopped and finished before the error goes
on, so the operator claim is not given back while one of them still runs."""

from __future__ import annotations

import asyncio

import pytest

from activities.deploy import gather_or_cancel


async def test_failure_stops_siblings_first() -> None:
    events: list[str] = []

    async def fails() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("helm failed")

    async def long_install() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.05)  # helm is killed and reaped here.
            events.append("sibling finished")

    with pytest.raises(RuntimeError, match="helm failed"):
        await gather_or_cancel(fails(), long_install())
    events.append("error raised")
    assert events == ["sibling finished", "error raised"]


async def test_results_in_order() -> None:
    async def value(number: int) -> int:
        await asyncio.sleep(0.01 * (3 - number))
        return number

    assert await gather_or_cancel(value(1), value(2), value(3)) == [1, 2, 3]
