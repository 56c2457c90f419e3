"""A kubeconfig whose server accepts no connections: the error names the server,
the kubeconfig and the context, and stays a transient error that waits retry."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from activities.kubeapi import ApiUnreachableError, KubeClient
from activities.waits import TRANSIENT_ERRORS


def closed_loopback_port() -> int:
    """Return a loopback port that nothing listens on (bound, then freed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def write_kubeconfig(path: Path, server: str) -> None:
    def context(name: str) -> dict[str, object]:
        return {"name": name, "context": {"cluster": "dead", "user": "someone"}}

    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "dead", "cluster": {"server": server}}],
                "users": [{"name": "someone", "user": {"token": "tOkEn-5521"}}],
                "contexts": [context("first"), context("second")],
                "current-context": "first",
            }
        )
    )


@pytest.mark.parametrize(
    ("context", "named"), [(None, "its current context"), ("second", "context second")]
)
async def test_unreachable_server_named(
    tmp_path: Path, context: str | None, named: str
) -> None:
    server = f"http://127.0.0.1:{closed_loopback_port()}"
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, server)
    kube = await KubeClient.connect(str(kubeconfig), context)
    try:
        with pytest.raises(ApiUnreachableError) as raised:
            await kube.request("GET", "/api/v1/namespaces")
    finally:
        await kube.close()
    message = str(raised.value)
    assert message.startswith(f"API server unreachable at {server} (")
    assert f"the address from kubeconfig {kubeconfig}, {named}" in message
    assert "tOkEn-5521" not in message
    assert isinstance(raised.value, TRANSIENT_ERRORS)
