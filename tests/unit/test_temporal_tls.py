"""TLS and mutual TLS from the worker and client to the bootstrap Temporal.

`temporal server start-dev` has no TLS options, so a small TLS terminator on
loopback runs in front of the dev server: it requires a client certificate
signed by the test CA, speaks HTTP/2 (ALPN h2) and forwards the decrypted
gRPC stream to the dev server. The client side under test is the project's
own connect() with certificate files from settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from deployer.connect import connect
from deployer.settings import TemporalSettings
from testbed import certs
from tests.workflow.standins import StandIns
from workflows.deploy import VentrosDeploy


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError):
        writer.close()


@contextlib.asynccontextmanager
async def tls_terminator(pki: Path, upstream: str) -> AsyncIterator[str]:
    """Serve mutual TLS on a free loopback port, forwarding to upstream host:port."""
    context = ssl.create_default_context(
        ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt")
    )
    context.load_cert_chain(str(pki / "apiserver.crt"), str(pki / "apiserver.key"))
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    host, port = upstream.rsplit(":", 1)

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    address = server.sockets[0].getsockname()
    try:
        yield f"127.0.0.1:{address[1]}"
    finally:
        server.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    certs.generate(folder)  # The serving certificate covers 127.0.0.1.
    return folder


async def test_tls_mutual_deploy_completes(
    temporal_env: WorkflowEnvironment, pki: Path
) -> None:
    """With CA, client certificate and key set, worker and client deploy over mTLS."""
    upstream = temporal_env.client.service_client.config.target_host
    async with tls_terminator(pki, upstream) as address:
        settings = TemporalSettings(
            temporal_address=address,
            temporal_tls_ca=pki / "ca.crt",
            temporal_tls_cert=pki / "admin.crt",
            temporal_tls_key=pki / "admin.key",
        )
        client = await connect(settings)
        queue = f"tq-{uuid.uuid4().hex[:8]}"
        async with Worker(
            client,
            task_queue=queue,
            workflows=[VentrosDeploy],
            activities=StandIns().activities(),
        ):
            result = await client.execute_workflow(
                "VentrosDeploy",
                {"namespace": "tls"},
                id=f"wf-{uuid.uuid4().hex[:8]}",
                task_queue=queue,
            )
    assert result["state"] == "succeeded"


async def test_tls_without_client_cert_rejected(
    temporal_env: WorkflowEnvironment, pki: Path
) -> None:
    """Without a client certificate the mTLS handshake rejects the connection."""
    upstream = temporal_env.client.service_client.config.target_host
    async with tls_terminator(pki, upstream) as address:
        settings = TemporalSettings(
            temporal_address=address, temporal_tls_ca=pki / "ca.crt"
        )
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(connect(settings), 30)


async def test_tls_untrusted_server_rejected(
    temporal_env: WorkflowEnvironment, pki: Path, tmp_path: Path
) -> None:
    """A server certificate from another CA is rejected by the client."""
    other = tmp_path / "other"
    certs.generate(other)
    upstream = temporal_env.client.service_client.config.target_host
    async with tls_terminator(pki, upstream) as address:
        settings = TemporalSettings(
            temporal_address=address,
            temporal_tls_ca=other / "ca.crt",
            temporal_tls_cert=pki / "admin.crt",
            temporal_tls_key=pki / "admin.key",
        )
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(connect(settings), 30)


def test_tls_cert_without_key_rejected(pki: Path) -> None:
    """A certificate without its key is a settings error naming both variables."""
    with pytest.raises(ValueError, match="VENTROS_DEPLOY_TEMPORAL_TLS_KEY"):
        TemporalSettings(temporal_tls_cert=pki / "admin.crt")
