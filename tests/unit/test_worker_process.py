"""The worker as a process: Prometheus metrics on loopback, SIGTERM, and its
check for the helm binary at start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from tests.conftest import REPO_ROOT, UnreadableFile, temporal_cli


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=2) as response:
        return str(response.read().decode())


async def start_worker(
    env: dict[str, str], preexec_fn: Callable[[], None] | None = None
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        env=env,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=preexec_fn,
    )


def stand_in_helm(tmp_path: Path) -> Path:
    """A file the worker finds as its helm; these tests never run it."""
    helm = tmp_path / "helm"
    helm.write_text("#!/bin/sh\nexit 1\n")
    helm.chmod(0o755)
    return helm


async def test_worker_metrics_and_sigterm(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """With a metrics port set the worker serves SDK metrics on loopback, and on
    SIGTERM it logs its stop and exits 0."""
    port = free_port()
    env = dict(
        os.environ,
        VENTROS_DEPLOY_HELM=str(stand_in_helm(tmp_path)),
        VENTROS_DEPLOY_TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        VENTROS_DEPLOY_TASK_QUEUE=f"tq-{uuid.uuid4().hex[:8]}",
        VENTROS_DEPLOY_METRICS_PORT=str(port),
        VENTROS_DEPLOY_LOG_FORMAT="json",
        VENTROS_DEPLOY_GRACEFUL_SHUTDOWN_S="1",
    )
    process = await start_worker(env)
    metrics = ""
    for _ in range(100):
        try:
            metrics = await asyncio.to_thread(scrape, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        if "temporal_" in metrics:
            break
        await asyncio.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    logs = err.decode()
    assert "temporal_" in metrics
    assert process.returncode == 0, logs[-2000:]
    assert '"event": "worker stopping"' in logs
    assert '"event": "worker stopped"' in logs
    assert "payload encryption is off" in logs


async def test_worker_without_helm_exits(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """A worker whose helm is missing exits 2 at start, naming the setting,
    instead of failing every deploy's first phase later."""
    missing = tmp_path / "no-such-helm"
    env = dict(
        os.environ,
        VENTROS_DEPLOY_TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        VENTROS_DEPLOY_HELM=str(missing),
    )
    process = await start_worker(env)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert f"helm binary '{missing}' not found" in err.decode()
    assert "VENTROS_DEPLOY_HELM" in err.decode()


async def test_worker_rejects_bad_kubeconfig(tmp_path: Path) -> None:
    """A kubeconfig set for the worker that is missing or not YAML stops it at
    start with exit code 2, naming the setting and the file, and without
    quoting the file's content."""
    garbage = tmp_path / "garbage"
    garbage.write_text("token: sEcReT-7781\n{[}: nope\n")
    for path, expected in (
        (tmp_path / "missing", "does not exist"),
        (garbage, "is not YAML"),
    ):
        env = dict(
            os.environ,
            VENTROS_DEPLOY_HELM=str(stand_in_helm(tmp_path)),
            VENTROS_DEPLOY_KUBECONFIG=str(path),
        )
        process = await start_worker(env)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        message = stderr.decode()
        assert process.returncode == 2, message
        assert f"VENTROS_DEPLOY_KUBECONFIG: kubeconfig {path} {expected}" in message
        assert "sEcReT-7781" not in message


async def test_worker_rejects_bad_settings(tmp_path: Path) -> None:
    """Each invalid setting stops the worker at start with exit code 2 and
    one line that names the variable, without a traceback or a pydantic
    link."""
    missing = str(tmp_path / "missing")
    cases = [
        ({"VENTROS_DEPLOY_CODEC_KEYS_FILE": missing}, "file not found"),
        ({"VENTROS_DEPLOY_CODEC_KEYS": "{bad"}, "VENTROS_DEPLOY_CODEC_KEYS"),
        ({"VENTROS_DEPLOY_GRACEFUL_SHUTDOWN_S": "-5"}, "greater than or equal"),
        ({"VENTROS_DEPLOY_LOG_FORMAT": "xml"}, "=xml:"),
        ({"VENTROS_DEPLOY_CHART_ROOT": missing}, "existing folder"),
        ({"VENTROS_DEPLOY_TEMPORAL_TLS_CA": missing}, "existing file"),
    ]
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("VENTROS_DEPLOY_")
    }
    # A closed port: a worker that got past its checks would fail to connect.
    base["VENTROS_DEPLOY_TEMPORAL_ADDRESS"] = "127.0.0.1:9"
    base["VENTROS_DEPLOY_HELM"] = str(stand_in_helm(tmp_path))
    for setting, expected in cases:
        process = await start_worker({**base, **setting})
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        message = stderr.decode()
        (variable,) = setting
        assert process.returncode == 2, message
        assert variable in message
        assert expected in message
        assert "Traceback" not in message
        assert "errors.pydantic.dev" not in message
        assert len(message.strip().splitlines()) == 1, message


async def test_worker_rejects_unreadable_tls_file(
    unreadable_file: UnreadableFile,
) -> None:
    """A TLS file that exists but cannot be read stops the worker at start
    with exit code 2 and one line naming the variable and the file."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("VENTROS_DEPLOY_")
    }
    env["VENTROS_DEPLOY_TEMPORAL_ADDRESS"] = "127.0.0.1:9"
    env["VENTROS_DEPLOY_HELM"] = str(stand_in_helm(unreadable_file.folder))
    env["VENTROS_DEPLOY_TEMPORAL_TLS_CA"] = str(unreadable_file.path)
    process = await start_worker(env, preexec_fn=unreadable_file.preexec_fn)
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    message = stderr.decode()

    assert process.returncode == 2, message
    assert (
        f"VENTROS_DEPLOY_TEMPORAL_TLS_CA={unreadable_file.path}: cannot be read "
        "(Permission denied)" in message
    )
    assert "Make it readable" in message
    assert "Traceback" not in message
    assert len(message.strip().splitlines()) == 1, message


async def start_dev_server(port: int) -> asyncio.subprocess.Process:
    """Start a dev server of its own, which the test stops while a worker polls."""
    return await asyncio.create_subprocess_exec(
        temporal_cli(),
        "server",
        "start-dev",
        "--headless",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--http-port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
        "--log-level",
        "error",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def test_worker_json_log_without_server(tmp_path: Path) -> None:
    """With VENTROS_DEPLOY_LOG_FORMAT=json, the SDK core's warnings about a
    bootstrap Temporal that went away are JSON lines too, without colors, and
    so is a failure at stop."""
    port = free_port()
    server = await start_dev_server(port)
    env = dict(
        os.environ,
        VENTROS_DEPLOY_HELM=str(stand_in_helm(tmp_path)),
        VENTROS_DEPLOY_TEMPORAL_ADDRESS=f"127.0.0.1:{port}",
        VENTROS_DEPLOY_TASK_QUEUE=f"tq-{uuid.uuid4().hex[:8]}",
        VENTROS_DEPLOY_LOG_FORMAT="json",
        VENTROS_DEPLOY_GRACEFUL_SHUTDOWN_S="1",
    )
    worker: asyncio.subprocess.Process | None = None

    try:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                await asyncio.sleep(0.2)
        worker = await start_worker(env)
        assert worker.stderr is not None
        started = await asyncio.wait_for(worker.stderr.readline(), 30)
        assert b"worker started" in started, started
        server.kill()
        await server.wait()
        # The core warns once a gRPC call has been retried a few times.
        await asyncio.sleep(15)
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
    assert worker is not None
    if worker.returncode is None:
        worker.send_signal(signal.SIGTERM)

    # Without forwarding, the core writes its lines to stdout.
    out, err = await asyncio.wait_for(worker.communicate(), 60)
    lines = [started, *err.splitlines(), *out.splitlines()]

    text = b"\n".join(lines).decode(errors="replace")
    assert "\x1b[" not in text
    for line in lines:
        assert line.startswith(b"{"), line
        json.loads(line)
    assert any(b"temporalio" in line and b"retried" in line for line in lines), text
