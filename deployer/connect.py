"""Connect to the bootstrap Temporal with the project's data converter.

The worker and the client both use this, so both encrypt payloads with the
same key ring (when one is configured) and both speak TLS or mutual TLS when
the settings name certificate files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from temporalio.api.common.v1 import Payload
from temporalio.client import Client, Interceptor, TLSConfig
from temporalio.converter import DataConverter

from deployer import codec
from deployer.settings import ENV_PREFIX, TemporalSettings


def key_ring_configured(settings: TemporalSettings) -> bool:
    """Tell whether a key ring file or the key ring variable is set."""
    return settings.codec_keys_file is not None or codec.KEYS_ENV_VAR in os.environ


def data_converter(
    settings: TemporalSettings,
    on_plaintext: Callable[[Payload], None] | None = None,
) -> DataConverter:
    """Return the pydantic converter, with payload encryption when keys are set.

    With keys, on_plaintext is called with each payload that arrives
    unencrypted. Raises codec.KeyRingError when the configured key ring is
    missing, unsafe or invalid.
    """
    if not key_ring_configured(settings):
        return codec.plaintext_data_converter()
    path = str(settings.codec_keys_file) if settings.codec_keys_file else None
    return codec.data_converter(codec.load_key_ring(path), on_plaintext)


class TlsFileError(Exception):
    """A TLS file that the settings name exists but cannot be read."""


def _read_tls_file(variable: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsFileError(
            f"{ENV_PREFIX}{variable}={path}: cannot be read ({error.strerror}). "
            "Make it readable by the user that runs this process, or point the "
            "variable at a readable copy"
        ) from None


def tls_config(settings: TemporalSettings) -> TLSConfig | bool:
    """Return the TLS settings of the connection; raise TlsFileError when a
    named file cannot be read."""
    if not (settings.temporal_tls_ca or settings.temporal_tls_cert):
        return False
    return TLSConfig(
        server_root_ca_cert=_read_tls_file("TEMPORAL_TLS_CA", settings.temporal_tls_ca),
        client_cert=_read_tls_file("TEMPORAL_TLS_CERT", settings.temporal_tls_cert),
        client_private_key=_read_tls_file(
            "TEMPORAL_TLS_KEY", settings.temporal_tls_key
        ),
        domain=settings.temporal_tls_server_name,
    )


def interceptors(settings: TemporalSettings) -> list[Interceptor]:
    """Return the tracing interceptor when tracing is on; the worker shares it."""
    if settings.tracing == "off":
        return []
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
        )
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError as error:
        raise RuntimeError(
            f"VENTROS_DEPLOY_TRACING={settings.tracing} needs opentelemetry-sdk: "
            "pip install 'ventros-deploy[tracing]'"
        ) from error
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        if settings.tracing == "console":
            exporter = ConsoleSpanExporter()
        else:
            exporter = ConsoleSpanExporter(out=open(settings.tracing, "a"))  # noqa: SIM115 - lives as long as the process
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    return [TracingInterceptor()]


async def connect(
    settings: TemporalSettings,
    on_plaintext: Callable[[Payload], None] | None = None,
) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings, on_plaintext),
        tls=tls_config(settings),
        interceptors=interceptors(settings),
    )
