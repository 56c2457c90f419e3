"""Worker and client settings: environment variables with one prefix.

Every setting is ``VENTROS_DEPLOY_<NAME>``, for example
``VENTROS_DEPLOY_TEMPORAL_ADDRESS``. The bootstrap Temporal configured here
runs the deployer. It must never be the Temporal the deployer installs for
the app, so the settings reject a configuration where the two are the same.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from string import Formatter

from pydantic import (
    DirectoryPath,
    Field,
    FilePath,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from deployer.inputs import REPOSITORY_URL, dot_segments

DEFAULT_TASK_QUEUE = "ventros-deploy"
ENV_PREFIX = "VENTROS_DEPLOY_"
# host:port of the bootstrap Temporal's frontend: a DNS name or IPv4 address,
# or an IPv6 address in brackets.
TEMPORAL_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})")
# The fix for a setting's value, by pydantic error type.
SETTING_FIXES = {
    "path_not_file": "point it to an existing file",
    "path_not_directory": "point it to an existing folder",
}


def normalize_address(address: str) -> str:
    """Return host:port in a form in which two spellings of one address match.

    The host is lowercased and loses a trailing dot. Every loopback or
    unspecified address becomes 127.0.0.1: localhost, 127.0.0.0/8 in any IPv4
    spelling such as 127.1, ::1, ::ffff:127.0.0.1 and 0.0.0.0. The port loses
    leading zeros, and no port means Temporal's default, 7233. Names are not
    resolved, so two DNS names for one server still differ.
    """
    text = address.strip().lower()
    if text.endswith("]") or text.count(":") != 1:
        host, port = text, ""
        if text.startswith("[") and "]:" in text:
            host, _, port = text.rpartition(":")
    else:
        host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]").rstrip(".")
    if _is_local(host):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    number = port.lstrip("0") or ("0" if port else "7233")
    return f"{host}:{number}"


def _is_local(host: str) -> bool:
    """Tell whether host names this machine: loopback or unspecified."""
    if host == "localhost":
        return True
    try:
        # inet_aton reads the short IPv4 forms (127.1) that clients accept.
        packed = socket.inet_aton(host)
    except OSError:
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
                host
            )
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    else:
        ip = ipaddress.IPv4Address(packed)
    return ip.is_loopback or ip.is_unspecified


def _bracketed_ipv6(host: str) -> bool:
    """Tell whether a host is not in brackets, or contains an IPv6 address in them."""
    if not host.startswith("["):
        return True
    try:
        ipaddress.IPv6Address(host[1:-1])
    except ValueError:
        return False
    return True


class TemporalSettings(BaseSettings):
    """How to reach the bootstrap Temporal (used by the worker and the client)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    task_queue: str = DEFAULT_TASK_QUEUE
    temporal_tls_ca: FilePath | None = None
    temporal_tls_cert: FilePath | None = None
    temporal_tls_key: FilePath | None = None
    temporal_tls_server_name: str | None = None
    codec_keys_file: Path | None = None
    # OpenTelemetry spans for workflows and activities: off, console (stderr)
    # or a file path; needs the optional `tracing` extra (opentelemetry-sdk).
    tracing: str = "off"
    # Set VentrosRelease/VentrosNamespace/VentrosPhase search attributes; they
    # must be registered on the server (make demo registers them).
    search_attributes: bool = False
    # The app's in-cluster Temporal address, when it is set for every deploy.
    app_temporal_address: str | None = None

    @field_validator("temporal_address")
    @classmethod
    def _temporal_address(cls, value: str) -> str:
        # The SDK raises a ValueError with a traceback for a port out of range,
        # and reads "host:" as port 80.
        if value != value.strip():
            raise ValueError("has spaces around it; remove them")
        match = TEMPORAL_ADDRESS.fullmatch(value)
        if (
            match is None
            or not 1 <= int(match[2]) <= 65535
            or not _bracketed_ipv6(match[1])
        ):
            raise ValueError(
                "must be host:port with a port from 1 to 65535, such as "
                "127.0.0.1:7233 or [::1]:7233"
            )
        return value

    @model_validator(mode="after")
    def _not_the_app_temporal(self) -> TemporalSettings:
        app = self.app_temporal_address
        if app and normalize_address(app) == normalize_address(self.temporal_address):
            raise ValueError(
                f"VENTROS_DEPLOY_APP_TEMPORAL_ADDRESS={app} is the bootstrap Temporal "
                f"(VENTROS_DEPLOY_TEMPORAL_ADDRESS={self.temporal_address}). "
                "The deployer "
                "must run on its own Temporal: point one of them elsewhere"
            )
        if bool(self.temporal_tls_cert) != bool(self.temporal_tls_key):
            raise ValueError(
                "set both VENTROS_DEPLOY_TEMPORAL_TLS_CERT and "
                "VENTROS_DEPLOY_TEMPORAL_TLS_KEY "
                "for mutual TLS, or neither"
            )
        return self


class WorkerSettings(TemporalSettings):
    """Everything the worker process needs, on top of the Temporal connection."""

    kubeconfig: Path | None = None
    helm: str = "helm"
    chart_root: DirectoryPath = Field(default_factory=Path.cwd)
    max_concurrent_activities: int = Field(100, ge=1, le=1000)
    graceful_shutdown_s: float = Field(20.0, ge=0, le=600)
    metrics_port: int | None = Field(None, ge=1, le=65535)
    log_format: str = Field("auto", pattern="^(auto|json|console)$")
    # Base URL of a RabbitMQ cluster's management API, with {name} and
    # {namespace} of the RabbitmqCluster; a destroy reads its queue depths there.
    rabbitmq_management_url: str = "http://{name}.{namespace}.svc:15672"
    # Chart repositories that requests may name, comma-separated. The chart's
    # own dependency defaults are allowed without being listed.
    chart_repositories: str = ""

    @field_validator("chart_repositories")
    @classmethod
    def _repositories(cls, value: str) -> str:
        for entry in _split_list(value):
            if not REPOSITORY_URL.fullmatch(entry) or dot_segments(entry):
                raise ValueError(
                    f"{entry!r} is not an https:// or oci:// repository URL "
                    "without '.' and '..' path parts; separate entries with commas"
                )
        return value

    @property
    def allowed_repositories(self) -> tuple[str, ...]:
        """The entries of chart_repositories."""
        return tuple(_split_list(self.chart_repositories))

    @field_validator("rabbitmq_management_url")
    @classmethod
    def _management_url(cls, value: str) -> str:
        parsed = Formatter().parse(value)
        fields = {name for _, name, _, _ in parsed if name is not None}
        scheme_ok = value.startswith(("http://", "https://"))
        if not scheme_ok or not fields <= {"name", "namespace"}:
            raise ValueError(
                f"{value!r} must be an http:// or https:// URL whose only "
                "placeholders are {name} and {namespace}"
            )
        return value


def _split_list(value: str) -> list[str]:
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def describe_settings_error(error: ValidationError) -> str:
    """Describe each invalid setting by its variable, its problem and the fix.

    Unlike str(error), the text names VENTROS_DEPLOY_* variables rather than
    the Python fields, and has no link to the pydantic documentation.
    """
    problems = []
    for item in error.errors(include_url=False):
        message = str(item["msg"]).removeprefix("Value error, ")
        if not item["loc"]:
            # A check across settings, whose message names the variables.
            problems.append(message)
            continue
        variable = ENV_PREFIX + str(item["loc"][0]).upper()
        fix = SETTING_FIXES.get(
            item["type"], "set a valid value, or unset it for the default"
        )
        problems.append(f"{variable}={item['input']!s}: {message}; {fix}")
    return ". ".join(problems)
