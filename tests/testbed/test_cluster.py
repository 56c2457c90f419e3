"""LocalCluster start-up and shut-down.

Only test_up_running_cluster_no_op touches the shared cluster, and only with
``up()``, which leaves a healthy cluster alone. Every other test uses its own
state folder under tmp_path and its own loopback ports.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import psutil
import pytest

from testbed.cluster import (
    COMPONENTS,
    ETCD_PEER_OFFSET,
    ClusterConfig,
    ClusterError,
    LocalCluster,
    port_free,
)
from tests.conftest import free_ports


def read_pids(config: ClusterConfig) -> dict[str, int]:
    return {
        name: int(entry["pid"])
        for name, entry in json.loads(
            (config.cluster_dir / "pids.json").read_text()
        ).items()
    }


def running(pid: int) -> bool:
    """Tell whether pid runs. An exited child not yet reaped counts as stopped."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def assert_logs_dial_loopback(local: LocalCluster) -> None:
    """Check that kubectl logs makes the API server dial a loopback node address.

    No kubelet runs, so the request fails, but it must fail on 127.0.1.x and
    not send a simulated node's host name to the machine's DNS resolver.
    """
    local.kubectl("run", "probe", "--image=registry.example.test/app:1.0")
    local.kubectl("wait", "--for=condition=Ready", "pod/probe", "--timeout=60s")
    logs = local.kubectl("logs", "probe", check=False)
    assert logs.returncode != 0
    assert "127.0.1." in logs.stderr
    assert "lookup" not in logs.stderr


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A socket bound to 127.0.0.1 and listening, as another program would be."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    yield sock
    sock.close()


def test_up_running_cluster_no_op(cluster: LocalCluster) -> None:
    """up() on a running cluster starts nothing new and returns the same kubeconfig."""
    before = read_pids(cluster.config)
    kubeconfig_text = cluster.kubeconfig.read_text()
    started = time.monotonic()
    kubeconfig = cluster.up()
    elapsed = time.monotonic() - started
    after = read_pids(cluster.config)
    assert kubeconfig == cluster.kubeconfig
    assert kubeconfig.read_text() == kubeconfig_text
    for name in COMPONENTS:
        assert after[name] == before[name], name
    assert elapsed < 10, f"up() on a running cluster took {elapsed:.1f} s"


@pytest.mark.parametrize(
    ("busy", "variable"),
    [
        ("etcd", "VENTROS_CLUSTER_ETCD_PORT"),
        ("etcd-peer", "VENTROS_CLUSTER_ETCD_PORT (peer port"),
        ("apiserver", "VENTROS_CLUSTER_APISERVER_PORT"),
    ],
)
def test_up_port_in_use(
    tmp_path: Path, listener: socket.socket, busy: str, variable: str
) -> None:
    """up() raises ClusterError naming a busy port and its environment variable."""
    etcd_port, apiserver_port = free_ports()
    busy_port = {
        "etcd": etcd_port,
        "etcd-peer": etcd_port + ETCD_PEER_OFFSET,
        "apiserver": apiserver_port,
    }[busy]
    listener.bind(("127.0.0.1", busy_port))
    listener.listen()
    config = ClusterConfig(
        state_dir=tmp_path / "state", etcd_port=etcd_port, apiserver_port=apiserver_port
    )
    with pytest.raises(ClusterError) as error:
        LocalCluster(config).up()
    message = str(error.value)
    assert f"127.0.0.1:{busy_port} is already in use" in message
    assert variable in message
    assert not config.cluster_dir.exists()


def test_up_missing_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """up() without built binaries raises ClusterError naming the path and the fix."""
    empty_cache = tmp_path / "tools-cache"
    empty_cache.mkdir()
    monkeypatch.setenv("VENTROS_TOOLS_CACHE", str(empty_cache))
    etcd_port, apiserver_port = free_ports()
    config = ClusterConfig(
        state_dir=tmp_path / "state", etcd_port=etcd_port, apiserver_port=apiserver_port
    )
    with pytest.raises(ClusterError) as error:
        LocalCluster(config).up()
    message = str(error.value)
    assert f"{empty_cache}{os.sep}etcd-" in message
    assert "make tools" in message
    assert not config.cluster_dir.exists()


def test_separate_cluster_up_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second cluster starts with Ready nodes, and down() stops all it started.

    It also checks that kubectl logs stays on loopback, which needs a cluster
    started with the current API server flags.

    Prints the time of up() with warm binaries, as a measurement, not a check.
    """
    etcd_port, apiserver_port = free_ports()
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        management_port = int(probe.getsockname()[1])
    config = ClusterConfig(
        state_dir=tmp_path / "state",
        etcd_port=etcd_port,
        apiserver_port=apiserver_port,
        nodes=3,
        rabbitmq_management_port=management_port,
    )
    local = LocalCluster(config)
    try:
        started = time.monotonic()
        kubeconfig = local.up()
        elapsed = time.monotonic() - started
        with capsys.disabled():
            print(f"\nup() of a separate cluster with built binaries: {elapsed:.1f} s")
        assert kubeconfig == config.kubeconfig
        assert kubeconfig.is_file()
        assert local.is_healthy()
        nodes = json.loads(local.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        assert len(nodes) == 3
        pids = read_pids(config)
        assert sorted(pids) == sorted([*COMPONENTS, "simulator"])
        for name, pid in pids.items():
            assert running(pid), f"{name} (pid {pid}) is not running after up()"
        assert_logs_dial_loopback(local)
    finally:
        local.down(quiet=True)
    for name, pid in pids.items():
        assert not running(pid), f"{name} (pid {pid}) still runs after down()"
    assert not config.cluster_dir.exists()
    assert not config.kubeconfig.exists()
    for port in (etcd_port, apiserver_port):
        assert port_free(port), f"port {port} is still in use after down()"


def test_profiling_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """kube-apiserver serves pprof only with VENTROS_CLUSTER_PROFILING=1."""
    monkeypatch.delenv("VENTROS_CLUSTER_PROFILING", raising=False)
    assert "--profiling=false" in LocalCluster()._apiserver_args()
    monkeypatch.setenv("VENTROS_CLUSTER_PROFILING", "yes")
    assert "--profiling=false" in LocalCluster()._apiserver_args()
    monkeypatch.setenv("VENTROS_CLUSTER_PROFILING", "1")
    assert "--profiling=true" in LocalCluster()._apiserver_args()
