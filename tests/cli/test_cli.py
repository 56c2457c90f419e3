"""The ventros-deploy command line, run as a user runs it: a subprocess, once
in a pseudo-terminal for the live table, against a real dev server, a real
worker and the local cluster."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from client.cli import build_parser, build_request
from deployer.phases import DeployStatus
from deployer.settings import WorkerSettings
from tests.conftest import CLIENT_KEY_RING, REPO_ROOT, deploy_request, running_worker

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PHASES = ("base", "data", "messaging", "cache", "temporal", "migration", "app")


def cli_env(env: WorkflowEnvironment, settings: WorkerSettings) -> dict[str, str]:
    variables = dict(os.environ)
    variables.update(
        {
            "VENTROS_DEPLOY_TEMPORAL_ADDRESS": (
                env.client.service_client.config.target_host
            ),
            "VENTROS_DEPLOY_TASK_QUEUE": settings.task_queue,
            "VENTROS_DEPLOY_CODEC_KEYS": CLIENT_KEY_RING.to_json(),
            "COLUMNS": "140",
            "LINES": "40",
            "TERM": "xterm-256color",
        }
    )
    variables.pop("NO_COLOR", None)
    variables.pop("VENTROS_DEPLOY_CODEC_KEYS_FILE", None)
    return variables


async def run_cli(
    args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "client",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO_ROOT,
    )
    out, err = await asyncio.wait_for(process.communicate(), 180)
    return subprocess.CompletedProcess(
        args, process.returncode or 0, out.decode(), err.decode()
    )


async def run_in_pty(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the CLI in a pseudo-terminal; return its exit code and screen text."""
    controller, terminal = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "client",
        *args,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        cwd=REPO_ROOT,
    )
    os.close(terminal)
    chunks: list[bytes] = []
    loop = asyncio.get_running_loop()

    def read() -> bytes:
        try:
            return os.read(controller, 65536)
        except OSError:
            return b""

    while True:
        chunk = await loop.run_in_executor(None, read)
        if not chunk:
            break
        chunks.append(chunk)
    code = await asyncio.wait_for(process.wait(), 180)
    os.close(controller)
    return code, ANSI.sub("", b"".join(chunks).decode(errors="replace"))


def write_request(tmp_path: Path, namespace: str, **overrides: Any) -> str:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(deploy_request(namespace, **overrides)))
    return str(path)


async def test_cli_follow_shows_live_table(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    namespace: str,
    tmp_path: Path,
) -> None:
    """start --follow in a terminal draws the live table, ending all succeeded.
    Once the worker has stopped, status --json shows the deploy's phases from
    its result."""
    env = cli_env(temporal_env, worker_settings)
    async with running_worker(temporal_env.client, worker_settings):
        code, screen = await run_in_pty(
            ["start", "--request", write_request(tmp_path, namespace), "--follow"], env
        )
    offline = await run_cli(
        ["status", f"deploy-{namespace}.ventros-crm", "--json"], env
    )

    assert offline.returncode == 0, offline.stderr
    shown = DeployStatus.model_validate_json(offline.stdout)
    assert shown.state == "succeeded"
    assert [r.state.value for r in shown.phases] == ["succeeded"] * len(PHASES)
    assert code == 0, screen[-2000:]
    assert f"started deploy-{namespace}.ventros-crm" in screen
    for phase in PHASES:
        assert re.search(rf"{phase}\s+.\s*succeeded", screen) or re.search(
            rf"{phase}\s+succeeded", screen
        ), phase
    # The table was redrawn while phases were still running or pending.
    assert "running" in screen or "pending" in screen
    assert "succeeded after" in screen


async def test_cli_json_outputs_parse(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    namespace: str,
    tmp_path: Path,
) -> None:
    """--json prints one parseable JSON document for start, follow and status."""
    env = cli_env(temporal_env, worker_settings)
    request = write_request(tmp_path, namespace)
    async with running_worker(temporal_env.client, worker_settings):
        started = await run_cli(["start", "--request", request, "--json"], env)
        assert started.returncode == 0, started.stderr
        workflow_id = json.loads(started.stdout)["workflow_id"]
        followed = await run_cli(["watch", workflow_id, "--json"], env)
        status = await run_cli(
            ["status", "--release", "ventros-crm", "--namespace", namespace, "--json"],
            env,
        )
    assert workflow_id == f"deploy-{namespace}.ventros-crm"
    assert followed.returncode == 0, followed.stderr
    assert json.loads(followed.stdout)["state"] == "succeeded"
    phases = json.loads(status.stdout)["phases"]
    assert [p["phase"] for p in phases] == list(PHASES)
    assert {p["state"] for p in phases} == {"succeeded"}


async def test_cli_second_start_rejected(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    namespace: str,
    tmp_path: Path,
) -> None:
    """A second start for a running release exits 3 naming the running deploy."""
    env = cli_env(temporal_env, worker_settings)
    request = write_request(tmp_path, namespace)
    async with running_worker(temporal_env.client, worker_settings):
        first = await run_cli(["start", "--request", request], env)
        second = await run_cli(["start", "--request", request], env)
        await run_cli(["watch", f"deploy-{namespace}.ventros-crm", "--json"], env)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 3
    assert f"already running: deploy-{namespace}.ventros-crm" in second.stderr


async def test_cli_invalid_request_exit_2(
    temporal_env: WorkflowEnvironment, worker_settings: WorkerSettings
) -> None:
    """An invalid release name exits 2 naming the field, and starts nothing."""
    env = cli_env(temporal_env, worker_settings)
    result = await run_cli(
        ["start", "--release", "Bad_Release", "--namespace", "ns"], env
    )
    assert result.returncode == 2
    assert "release: must be a DNS-1123 label" in result.stderr
    assert "Bad_Release" in result.stderr
    listed = [
        w
        async for w in temporal_env.client.list_workflows(
            "WorkflowId = 'deploy-ns-Bad_Release'"
        )
    ]
    assert listed == []


async def test_cli_bad_set_exit_2(
    temporal_env: WorkflowEnvironment, worker_settings: WorkerSettings
) -> None:
    """A --set without '=' exits 2 with the expected form."""
    result = await run_cli(
        ["start", "--set", "app.replicas"], cli_env(temporal_env, worker_settings)
    )
    assert result.returncode == 2
    assert "expected KEY=VALUE" in result.stderr


async def test_cli_unreachable_temporal_exit_5(worker_settings: WorkerSettings) -> None:
    """An unreachable bootstrap Temporal gives exit 5 naming the address."""
    env = dict(os.environ, VENTROS_DEPLOY_TEMPORAL_ADDRESS="127.0.0.1:9")
    result = await run_cli(["status", "deploy-x-y"], env)
    assert result.returncode == 5
    assert "127.0.0.1:9" in result.stderr


def test_cli_no_operators_flag(tmp_path: Path) -> None:
    """--no-operators sets install_operators false, over a --request file too."""
    plain = build_request(build_parser().parse_args(["start"]))
    assert "install_operators" not in plain
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps({"install_operators": True, "app_version": "2"}))
    args = ["start", "--request", str(request_file), "--no-operators"]
    request = build_request(build_parser().parse_args(args))
    assert request["install_operators"] is False
    assert request["app_version"] == "2"


# The chart schema's pattern for temporal.namespace, as helm quotes it.
PATTERN = "'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'"


async def test_cli_invalid_values_message_shown(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    namespace: str,
    tmp_path: Path,
) -> None:
    """start --follow and status print why validate rejected the values, with
    square brackets as text: the schema's pattern is not Rich markup. The
    rejected value x[/bold]y is not shown. A rejected request exits 2."""
    env = cli_env(temporal_env, worker_settings)
    values = {"temporal": {"namespace": "x[/bold]y"}}
    request = write_request(tmp_path, namespace, values=values)
    async with running_worker(temporal_env.client, worker_settings):
        followed = await run_cli(["start", "--request", request, "--follow"], env)
        status = await run_cli(["status", f"deploy-{namespace}.ventros-crm"], env)
    assert followed.returncode == 2, followed.stderr
    assert "\ninvalid after" in followed.stdout
    assert "s (ValuesRejected)\n" in followed.stdout
    assert "/temporal/namespace': (value not shown)" in followed.stdout
    assert PATTERN in followed.stdout
    assert "x[/bold]y" not in followed.stdout
    # The worker has stopped: status still prints how the run ended.
    offline = await run_cli(["status", f"deploy-{namespace}.ventros-crm"], env)
    # status exits 2 for a deploy whose request validate rejected.
    assert status.returncode == 2, status.stderr
    assert "Traceback" not in status.stderr
    assert PATTERN in status.stdout
    assert "x[/bold]y" not in status.stdout
    assert "error type: ValuesRejected" in status.stdout
    assert offline.returncode == 2, offline.stderr
    assert "Traceback" not in offline.stderr
    # Without a worker, the phases and the message come from the failure that
    # ended the run.
    assert f"deploy-{namespace}.ventros-crm ({namespace}): invalid" in offline.stdout
    assert "error type: ValuesRejected" in offline.stdout
    assert PATTERN in offline.stdout
    assert "x[/bold]y" not in offline.stdout
    assert "status query" not in offline.stdout


@pytest.mark.parametrize("source", ["--set", "--values"])
async def test_number_for_string_hint(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    namespace: str,
    tmp_path: Path,
    source: str,
) -> None:
    """A password that YAML reads as a number fails the schema, and start
    --follow prints how to keep it text: --set-string for --set, quotes for a
    --values file."""
    env = cli_env(temporal_env, worker_settings)
    request = write_request(tmp_path, namespace)
    if source == "--set":
        options = ["--set", "secrets.redisPassword=12345"]
    else:
        values = tmp_path / "values.yaml"
        values.write_text("secrets:\n  redisPassword: 12345\n")
        options = ["--values", str(values)]
    async with running_worker(temporal_env.client, worker_settings):
        followed = await run_cli(
            ["start", "--request", request, *options, "--follow"], env
        )
    assert followed.returncode == 2, followed.stderr
    assert "s (ValuesRejected)\n" in followed.stdout
    if source == "--set":
        assert "--set-string KEY=VALUE" in followed.stdout
        assert "quote a value" not in followed.stdout
    else:
        assert f"YAML reads a plain value in {values}" in followed.stdout
        assert "quote a value that must stay text" in followed.stdout
        assert "--set-string" not in followed.stdout


async def test_cli_status_terminated_run(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    namespace: str,
) -> None:
    """A run terminated by hand shows as terminated with its reason, not as
    running, and status exits 1."""
    env = cli_env(temporal_env, worker_settings)
    async with running_worker(temporal_env.client, worker_settings):
        handle = await temporal_env.client.start_workflow(
            "VentrosDeploy",
            deploy_request(namespace),
            id=f"deploy-{namespace}.ventros-crm",
            task_queue=worker_settings.task_queue,
        )
        # A query returns once the run's first workflow task has completed.
        await handle.query("status")
        await handle.terminate(reason="stopped by the on-call engineer")
        status = await run_cli(["status", handle.id], env)
    assert status.returncode == 1, status.stderr
    assert f"{handle.id} ({namespace}): terminated" in status.stdout
    assert "stopped by the on-call engineer" in status.stdout


async def test_cli_status_unparsable_request(
    temporal_env: WorkflowEnvironment, worker_settings: WorkerSettings
) -> None:
    """A run whose input the workflow could not parse shows as invalid with
    the reason, not as validating, and exits 2."""
    env = cli_env(temporal_env, worker_settings)
    async with running_worker(temporal_env.client, worker_settings):
        handle = await temporal_env.client.start_workflow(
            "VentrosDeploy",
            {"release": "Bad_Name", "namespace": "bad"},
            id=f"deploy-bad-{uuid.uuid4().hex[:8]}",
            task_queue=worker_settings.task_queue,
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        status = await run_cli(["status", handle.id, "--json"], env)
    status_json = json.loads(status.stdout)
    assert status.returncode == 2, status.stderr
    assert status_json["state"] == "invalid"
    assert status_json["error_type"] == "InvalidRequest"
    assert "release" in status_json["message"]
    assert "DNS-1123" in status_json["message"]


async def test_cli_status_without_worker(
    temporal_env: WorkflowEnvironment, worker_settings: WorkerSettings
) -> None:
    """A running deploy that no worker polls: status names the task queue
    and exits 5 instead of a traceback."""
    env = cli_env(temporal_env, worker_settings)
    handle = await temporal_env.client.start_workflow(
        "VentrosDeploy",
        deploy_request("nowhere"),
        id=f"deploy-nowhere-{uuid.uuid4().hex[:8]}",
        task_queue=worker_settings.task_queue,
    )
    try:
        status = await run_cli(["status", handle.id], env)
    finally:
        await handle.terminate("the test is done")
    assert status.returncode == 5, status.stderr
    assert "Traceback" not in status.stderr
    assert "the status query of" in status.stderr
    assert worker_settings.task_queue in status.stderr
