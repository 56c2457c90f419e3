"""The shell file `make demo` leaves for its user: sourced in bash, it points
the client, kubectl and helm at the demo's bootstrap Temporal and cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from testbed import demo


def test_env_file_sets_kubectl_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "STATE", tmp_path)
    demo._write_env_file()
    lines = subprocess.run(
        [
            "bash",
            "-c",
            f"source {tmp_path / 'env.sh'} && echo $KUBECONFIG && "
            "command -v kubectl helm ventros-deploy && "
            "echo $VENTROS_DEPLOY_TEMPORAL_ADDRESS",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert lines[0] == str(demo.demo_cluster().config.kubeconfig)
    assert lines[1].endswith("/kubectl")
    assert lines[2].endswith("/helm")
    assert lines[3].endswith("/ventros-deploy")
    assert lines[4] == f"127.0.0.1:{demo.TEMPORAL_PORT}"


def test_env_file_sets_temporal_cli_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporal CLI reaches the demo's Temporal and encrypts through its
    codec server, with the token read from its file, not copied into env.sh."""
    monkeypatch.setattr(demo, "STATE", tmp_path)
    (tmp_path / "codec-token").write_text("token-7f3a")
    demo._write_env_file()
    lines = subprocess.run(
        [
            "bash",
            "-c",
            f"source {tmp_path / 'env.sh'} && echo $TEMPORAL_ADDRESS && "
            "echo $TEMPORAL_CODEC_ENDPOINT && echo $TEMPORAL_CODEC_AUTH",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert lines == [
        f"127.0.0.1:{demo.TEMPORAL_PORT}",
        f"http://127.0.0.1:{demo.CODEC_PORT}",
        "Bearer token-7f3a",
    ]
    assert "token-7f3a" not in (tmp_path / "env.sh").read_text()
