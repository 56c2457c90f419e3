"""Connect to the bootstrap Temporal with the project's data converter.

The worker and the client both use this, so both encrypt payloads with the
same key ring (when one is configured) and both speak TLS or mutual TLS when
the settings name certificate files.
"""

from __future__ import annotations

import os

from temporalio.client import Client, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter

from deployer import codec
from deployer.settings import TemporalSettings


def data_converter(settings: TemporalSettings) -> DataConverter:
    """Return the pydantic converter, with payload encryption when keys are set."""
    path = str(settings.codec_keys_file) if settings.codec_keys_file else None
    if path is None and codec.KEYS_ENV_VAR not in os.environ:
        return pydantic_data_converter
    return codec.data_converter(codec.load_key_ring(path))


def tls_config(settings: TemporalSettings) -> TLSConfig | bool:
    if not (settings.temporal_tls_ca or settings.temporal_tls_cert):
        return False
    return TLSConfig(
        server_root_ca_cert=settings.temporal_tls_ca.read_bytes() if settings.temporal_tls_ca else None,
        client_cert=settings.temporal_tls_cert.read_bytes() if settings.temporal_tls_cert else None,
        client_private_key=settings.temporal_tls_key.read_bytes() if settings.temporal_tls_key else None,
        domain=settings.temporal_tls_server_name,
    )


async def connect(settings: TemporalSettings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
        tls=tls_config(settings),
    )
