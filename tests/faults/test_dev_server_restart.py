"""Restart of the bootstrap Temporal: SIGKILL the dev server mid-deploy.

The test runs its own `temporal server start-dev` with an SQLite file, so the
workflow survives the kill. It starts one worker process and never restarts
it. After the server comes back on the same port and file, that worker must
reconnect by itself and finish the deploy with one attempt per phase.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from deployer.phases import PhaseState
from testbed.cluster import LocalCluster
from tests.conftest import deploy_request, temporal_cli
from tests.faults.conftest import WorkerFactory
from tests.faults.harness import (
    DevServer,
    connect_client,
    final_status,
    start_deploy,
    wait_for_activity,
)


@pytest_asyncio.fixture
async def dev_server(tmp_path: Path) -> AsyncIterator[DevServer]:
    """A dev server for this test only, killed at the end if it still runs."""
    server = DevServer(temporal_cli(), tmp_path)
    await server.start()
    yield server
    if server.process is not None:
        server.kill()


async def restart_during(
    dev_server: DevServer,
    cluster: LocalCluster,
    namespace: str,
    worker_factory: WorkerFactory,
    step: str,
    outage_s: float,
    record_property: Any,
) -> None:
    """Kill the server while step runs, keep it down outage_s, start it, finish."""
    client = await connect_client(dev_server.address)
    worker = worker_factory(dev_server.address, cluster.kubeconfig)
    await worker.start()
    request = deploy_request(namespace)
    handle = await start_deploy(client, request, worker.task_queue)
    await wait_for_activity(handle, step, worker.pid)
    dev_server.kill()
    await asyncio.sleep(outage_s)
    await dev_server.start()
    restarted = time.monotonic()

    status = await final_status(handle, timeout_s=300)
    record_property("server down during", f"{step} for {outage_s:.0f} s")
    record_property(
        "deploy done after restart", f"{time.monotonic() - restarted:.1f} s"
    )
    assert status.state == "succeeded", status.model_dump_json(indent=1)
    for record in status.phases:
        assert record.state is PhaseState.SUCCEEDED, record
        assert record.attempts == 1, record
    # The worker reconnected by itself: it is the first and only worker process.
    assert worker.starts == 1
    assert worker.process is not None
    assert worker.process.poll() is None


async def test_dev_server_restart_quick(
    dev_server: DevServer,
    cluster: LocalCluster,
    slow_namespace: str,
    worker_factory: WorkerFactory,
    record_property: Any,
) -> None:
    """A deploy finishes after a dev server kill and restart during the data wait."""
    await restart_during(
        dev_server,
        cluster,
        slow_namespace,
        worker_factory,
        "data: wait",
        3.0,
        record_property,
    )


@pytest.mark.faults
@pytest.mark.parametrize(
    ("step", "outage_s"), [("base: apply", 10.0), ("migration: wait", 20.0)]
)
async def test_dev_server_restart(
    dev_server: DevServer,
    cluster: LocalCluster,
    slow_namespace: str,
    worker_factory: WorkerFactory,
    record_property: Any,
    step: str,
    outage_s: float,
) -> None:
    """A deploy finishes after the dev server was down during an apply or a wait."""
    await restart_during(
        dev_server,
        cluster,
        slow_namespace,
        worker_factory,
        step,
        outage_s,
        record_property,
    )
