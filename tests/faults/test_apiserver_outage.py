"""Kubernetes API outage: stop kube-apiserver during a wait, start it again.

This runs on a separate local cluster that the test starts and removes, on
its own state folder and ports, because stopping the API server of the
shared cluster would break everyone else's tests. The worker is a separate
process on that cluster's kubeconfig.

PostgreSQL is steered to stay Creating for 20 s longer than the outage, so
the outage falls inside the data wait. The simulated operator then finishes
only after the API server is back, because the simulator does not retry a
reconcile that an outage cut off.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.kubeapi import KubeClient, well_known
from activities.waits import TRANSIENT_ERRORS
from deployer.phases import PhaseState
from testbed.cluster import ClusterConfig, LocalCluster
from testbed.leftovers import delete_release_leftovers
from tests.conftest import deploy_request, free_ports
from tests.faults.conftest import WorkerFactory, dev_server_address
from tests.faults.harness import (
    deploy_status,
    final_status,
    free_port,
    start_deploy,
    wait_for_activity,
)

NAMESPACE = well_known("v1", "Namespace")
PHASE_TIMEOUT_S = 240
# Covers the deploy's first seconds, stopping the API server (up to 10 s) and
# starting it again (about 2 s here).
POSTGRES_DELAY_MARGIN_S = 25
POSTGRESQL = well_known("acid.zalan.do/v1", "postgresql")


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A second local cluster for this module only, removed at the end."""
    state = tmp_path_factory.mktemp("outage-cluster") / "state"
    # The simulator's RabbitMQ management stand-in gets a port of its own too,
    # so that it does not take the shared cluster's.
    # Ports the kernel picks as free: a fixed port in the ephemeral range can
    # be taken as the source port of some client connection.
    etcd_port, apiserver_port = free_ports()
    config = ClusterConfig(
        state_dir=state,
        etcd_port=etcd_port,
        apiserver_port=apiserver_port,
        nodes=3,
        rabbitmq_management_port=free_port(),
    )
    local = LocalCluster(config)
    try:
        local.up()
        yield local
    finally:
        local.down(quiet=True)


@pytest_asyncio.fixture
async def own_namespace(
    own_cluster: LocalCluster,
) -> AsyncIterator[tuple[KubeClient, str]]:
    """A fresh namespace in the separate cluster, and a client for it."""
    kube = await KubeClient.connect(str(own_cluster.kubeconfig))
    name = f"t-{uuid.uuid4().hex[:10]}"
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    await kube.create(NAMESPACE, namespace)
    yield kube, name
    await kube.delete(NAMESPACE, name)
    await delete_release_leftovers(kube, name)
    await kube.close()


async def wait_until_only_data_waits(handle: WorkflowHandle[Any, Any]) -> None:
    """Wait until messaging and cache succeeded: the outage must hit the data wait."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = {r.phase.value: r.state for r in (await deploy_status(handle)).phases}
        if (
            states["messaging"] is PhaseState.SUCCEEDED
            and states["cache"] is PhaseState.SUCCEEDED
        ):
            return
        await asyncio.sleep(0.3)
    raise AssertionError("messaging and cache did not succeed within 120 s")


async def get_after_restart(kube: KubeClient, namespace: str) -> dict[str, Any]:
    """Get the postgresql, retrying while pooled connections from before fail."""
    for _ in range(10):
        try:
            database = await kube.get(POSTGRESQL, "ventros-crm-db", namespace)
        except TRANSIENT_ERRORS:
            await asyncio.sleep(0.5)
            continue
        assert database is not None
        return database
    raise AssertionError("10 GETs in a row failed after the API server restart")


async def heartbeats_during(
    handle: WorkflowHandle[Any, Any], seconds: float
) -> list[str]:
    """Collect the data wait's heartbeat details, once a second, for seconds."""
    details: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        description = await handle.describe()
        for info in description.raw_description.pending_activities:
            for payload in info.heartbeat_details.payloads:
                value = pydantic_data_converter.payload_converter.from_payload(payload)
                details.append(json.dumps(value))
        await asyncio.sleep(1)
    return details


async def outage_during_data_wait(
    temporal_env: WorkflowEnvironment,
    own_cluster: LocalCluster,
    kube: KubeClient,
    namespace: str,
    worker_factory: WorkerFactory,
    outage_s: float,
    record_property: Any,
) -> None:
    """Stop the API server during the data wait for outage_s; the deploy must finish."""
    delay = str(outage_s + POSTGRES_DELAY_MARGIN_S)
    steer = {
        "sim.ventros.io/postgres-delay": delay,
        "sim.ventros.io/ready-delay": "0.5",
    }
    await kube.merge_patch(NAMESPACE, namespace, {"metadata": {"annotations": steer}})
    timeouts = {
        phase: PHASE_TIMEOUT_S for phase in deploy_request(namespace)["timeouts"]
    }
    request = deploy_request(namespace, timeouts=timeouts)
    worker = worker_factory(dev_server_address(temporal_env), own_cluster.kubeconfig)
    await worker.start()
    handle = await start_deploy(temporal_env.client, request, worker.task_queue)
    await wait_for_activity(handle, "data: wait", worker.pid)
    await wait_until_only_data_waits(handle)

    stopping = time.monotonic()
    await asyncio.to_thread(own_cluster.stop_apiserver)
    stopped = time.monotonic()
    details = await heartbeats_during(handle, outage_s)
    starting = time.monotonic()
    await asyncio.to_thread(own_cluster.start_apiserver)
    started = time.monotonic()
    # The outage must end before the simulated operator acts, or its status
    # update is lost and the data wait times out for a reason in the test bed.
    database = await get_after_restart(kube, namespace)
    assert database["status"]["PostgresClusterStatus"] == "Creating", (
        "the outage outlasted the simulated operator's delay; "
        "raise POSTGRES_DELAY_MARGIN_S"
    )

    status = await final_status(handle, timeout_s=PHASE_TIMEOUT_S * 2)
    record_property(
        "API server down",
        f"{started - stopping:.1f} s: stopping {stopped - stopping:.1f} s, "
        f"stopped {starting - stopped:.1f} s, starting {started - starting:.1f} s",
    )
    # The wait reported the outage in its heartbeat details and kept going.
    assert any("API server unreachable" in text for text in details), details[-3:]
    assert status.state == "succeeded", status.model_dump_json(indent=1)
    for record in status.phases:
        assert record.state is PhaseState.SUCCEEDED, record
        assert record.attempts == 1, record
    assert worker.starts == 1


async def test_apiserver_outage_quick(
    temporal_env: WorkflowEnvironment,
    own_cluster: LocalCluster,
    own_namespace: tuple[KubeClient, str],
    worker_factory: WorkerFactory,
    record_property: Any,
) -> None:
    """A 10 s API server outage during the data wait fails no phase and retries none."""
    kube, namespace = own_namespace
    await outage_during_data_wait(
        temporal_env,
        own_cluster,
        kube,
        namespace,
        worker_factory,
        10.0,
        record_property,
    )


@pytest.mark.faults
async def test_apiserver_outage_30s(
    temporal_env: WorkflowEnvironment,
    own_cluster: LocalCluster,
    own_namespace: tuple[KubeClient, str],
    worker_factory: WorkerFactory,
    record_property: Any,
) -> None:
    """A 30 s API server outage during the data wait fails no phase and retries none."""
    kube, namespace = own_namespace
    await outage_during_data_wait(
        temporal_env,
        own_cluster,
        kube,
        namespace,
        worker_factory,
        30.0,
        record_property,
    )
