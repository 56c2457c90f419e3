"""`make demo` and `make demo-down` with the demo's real bootstrap Temporal
(a dev server with its database file), on free ports and in a temporary
state folder."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from deployer import codec
from testbed import demo


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def demo_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The demo's state folder and ports, apart from a running demo's."""
    monkeypatch.setattr(demo, "STATE", tmp_path)
    monkeypatch.setattr(demo, "TEMPORAL_PORT", free_port())
    monkeypatch.setattr(demo, "UI_PORT", free_port())
    codec.generate_key_ring_file(str(tmp_path / "codec-keys.json"))
    yield tmp_path
    demo.processes().stop_all()


def start_deploy(workflow_id: str) -> None:
    """Start a deploy that no worker runs, then terminate it, as an earlier
    demo deploy that was stopped."""

    async def start() -> None:
        client = await Client.connect(f"127.0.0.1:{demo.TEMPORAL_PORT}")
        handle = await client.start_workflow(
            "VentrosDeploy", {}, id=workflow_id, task_queue="nowhere"
        )
        await handle.terminate("stopped by the test")

    asyncio.run(start())


def deploy_exists(workflow_id: str) -> bool:
    async def describe() -> bool:
        client = await Client.connect(f"127.0.0.1:{demo.TEMPORAL_PORT}")
        try:
            await client.get_workflow_handle(workflow_id).describe()
        except RPCError as error:
            if error.status is RPCStatusCode.NOT_FOUND:
                return False
            raise
        return True

    return asyncio.run(describe())


def test_demo_down_removes_history(
    demo_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After demo-down, a restarted bootstrap Temporal has no deploy of the
    earlier demo, as its cluster has none. demo-down counts what it stopped."""
    workflow_id = f"deploy-demo-{uuid.uuid4().hex[:8]}"
    demo.start_temporal(demo.processes())
    start_deploy(workflow_id)
    kept_before = deploy_exists(workflow_id)

    demo.down()
    printed = capsys.readouterr().out
    leftovers = sorted(path.name for path in demo_state.glob(f"{demo.TEMPORAL_DB}*"))
    demo.start_temporal(demo.processes())
    kept_after = deploy_exists(workflow_id)

    assert kept_before
    assert leftovers == []
    assert not kept_after
    assert "the demo's services (1 process) and its cluster (0 processes)" in (printed)
    assert (demo_state / "codec-keys.json").exists()


def test_demo_restart_after_failed_deploy(
    demo_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A make demo that restarts the demo exits 0 when it shows an earlier
    deploy that did not succeed."""
    workflow_id = f"deploy-demo-{uuid.uuid4().hex[:8]}"
    demo.start_temporal(demo.processes())
    start_deploy(workflow_id)

    code = demo.shown_earlier_deploy(workflow_id)
    output = capsys.readouterr().out

    assert code == 0, output
    assert f"{workflow_id}: terminated" in output
    assert "ran before, so make demo only restarted what had stopped" in output


def test_codec_port_in_use_fails(
    demo_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make demo stops when another process listens on the codec server's port,
    because its printed commands send the codec token there. On a free port
    the codec server starts and stays up."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        monkeypatch.setattr(demo, "CODEC_PORT", holder.getsockname()[1])
        with pytest.raises(demo.ClusterError) as raised:
            demo.start_codec_server(demo.processes())
    assert "is already in use" in str(raised.value)
    assert "VENTROS_DEMO_CODEC_PORT" in str(raised.value)
    assert not demo.processes().running("codec-server")

    monkeypatch.setattr(demo, "CODEC_PORT", free_port())
    demo.start_codec_server(demo.processes())
    assert demo.processes().running("codec-server")


def test_frontend_not_serving_fails(
    demo_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait for the dev server's frontend gives up with the log to read
    when the health check never reports SERVING (here: nothing listens)."""
    monkeypatch.setattr(demo, "TEMPORAL_PORT", free_port())
    log = demo_state / "temporal.log"
    with pytest.raises(demo.ClusterError) as raised:
        demo._wait_frontend(log, timeout_s=1.0)
    assert "to report SERVING" in str(raised.value)
    assert str(log) in str(raised.value)


def test_frontend_check_ignores_user_settings(
    demo_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's own Temporal client settings (an API key, TLS) do not reach
    the health check, which would then talk TLS to the plain dev server and
    never see SERVING."""
    monkeypatch.setenv("TEMPORAL_API_KEY", "not-for-the-demo")
    monkeypatch.setenv("TEMPORAL_TLS", "true")
    demo.start_temporal(demo.processes())
    assert demo.processes().running("temporal")
