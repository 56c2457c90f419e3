"""status queries a running run again until one query is sent after the
server's sticky window, because a killed worker's sticky queue takes the
queries sent inside it."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.service import RPCError, RPCStatusCode

from client import cli
from deployer.phases import DeployStatus


class FlakyHandle:
    """A handle whose status query fails a number of times, then returns."""

    def __init__(self, failures: int, status: RPCStatusCode) -> None:
        self.failures = failures
        self.status = status
        self.queries = 0

    async def query(self, name: str, **kwargs: Any) -> str:
        self.queries += 1
        if self.queries <= self.failures:
            raise RPCError("h2 protocol error: http2 error", self.status, b"")
        return "answered"


@pytest.fixture(autouse=True)
def short_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "STICKY_WINDOW_S", 2.5)


async def test_running_run_queried_again() -> None:
    handle = FlakyHandle(2, RPCStatusCode.UNAVAILABLE)
    result = await cli.query_status(handle, DeployStatus, running=True)  # type: ignore[arg-type]
    assert result == "answered"
    assert handle.queries == 3


async def test_gives_up_after_the_window() -> None:
    """Queries sent once a second: the last one sent after 2.5 s fails too."""
    handle = FlakyHandle(100, RPCStatusCode.UNAVAILABLE)
    with pytest.raises(RPCError):
        await cli.query_status(handle, DeployStatus, running=True)  # type: ignore[arg-type]
    assert handle.queries == 4


@pytest.mark.parametrize(
    ("running", "status"),
    [(False, RPCStatusCode.UNAVAILABLE), (True, RPCStatusCode.NOT_FOUND)],
)
async def test_not_queried_again(running: bool, status: RPCStatusCode) -> None:
    """An ended run's query, or a run that is gone, fails at once."""
    handle = FlakyHandle(1, status)
    with pytest.raises(RPCError):
        await cli.query_status(handle, DeployStatus, running=running)  # type: ignore[arg-type]
    assert handle.queries == 1
