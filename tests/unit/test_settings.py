"""Worker settings and the client's --set parsing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from client.cli import CliError, parse_set
from deployer.settings import TemporalSettings, WorkerSettings, normalize_address
from tests.conftest import REPO_ROOT, UnreadableFile


@pytest.mark.parametrize(
    ("app", "bootstrap"),
    [
        ("127.0.0.1:7233", "127.0.0.1:7233"),
        ("localhost:7233", "127.0.0.1:7233"),
        ("LOCALHOST", "127.0.0.1:7233"),
    ],
)
def test_settings_reject_app_temporal_as_bootstrap(app: str, bootstrap: str) -> None:
    """The app's Temporal address may not be the bootstrap Temporal's address."""
    with pytest.raises(ValidationError, match="must run on its own Temporal"):
        WorkerSettings(temporal_address=bootstrap, app_temporal_address=app)


def test_settings_accept_distinct_app_temporal() -> None:
    """An in-cluster app Temporal next to a loopback bootstrap is accepted."""
    settings = WorkerSettings(
        temporal_address="127.0.0.1:7233",
        app_temporal_address="ventros-crm-temporal-frontend.ventros-crm:7233",
    )
    assert settings.app_temporal_address is not None


def test_settings_read_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every setting comes from a VENTROS_DEPLOY_ variable."""
    monkeypatch.setenv("VENTROS_DEPLOY_TEMPORAL_ADDRESS", "temporal.internal:7233")
    monkeypatch.setenv("VENTROS_DEPLOY_TASK_QUEUE", "deploys")
    settings = TemporalSettings()
    assert settings.temporal_address == "temporal.internal:7233"
    assert settings.task_queue == "deploys"


def run_status(
    settings: dict[str, str], preexec_fn: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the client's status command with settings added to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "client", "status", "deploy-x-y"],
        env={**os.environ, **settings},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=preexec_fn,
    )


def test_client_names_invalid_setting(tmp_path: Path) -> None:
    """The client exits 2 for a TLS file that does not exist, naming the
    variable and without a pydantic link."""
    missing = tmp_path / "ca.pem"
    result = run_status({"VENTROS_DEPLOY_TEMPORAL_TLS_CA": str(missing)})
    assert result.returncode == 2, result.stderr
    assert f"VENTROS_DEPLOY_TEMPORAL_TLS_CA={missing}" in result.stderr
    assert "point it to an existing file" in result.stderr
    assert "errors.pydantic.dev" not in result.stderr


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:99999",
        "127.0.0.1:-1",
        "127.0.0.1:",
        "127.0.0.1:0",
        "x",
        "[1.2.3.4]:7233",
        "[:]:7233",
        "::1:7233",
    ],
)
def test_client_names_invalid_address(address: str) -> None:
    """A Temporal address without a port from 1 to 65535 exits 2 with one line
    that names the variable, before anything connects."""
    result = run_status({"VENTROS_DEPLOY_TEMPORAL_ADDRESS": address})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"VENTROS_DEPLOY_TEMPORAL_ADDRESS={address}: must be host:port" in (
        result.stderr
    )


def test_address_with_spaces_named() -> None:
    """Spaces around the address are named as the problem, since the value
    would otherwise look like the example."""
    with pytest.raises(ValidationError, match="has spaces around it"):
        TemporalSettings(temporal_address="127.0.0.1:7233 ")


@pytest.mark.parametrize(
    "address", ["127.0.0.1:7233", "[::1]:7233", "temporal.internal:443"]
)
def test_settings_accept_address(address: str) -> None:
    """Names, IPv4 and bracketed IPv6 hosts with a port are accepted."""
    assert TemporalSettings(temporal_address=address).temporal_address == address


def test_client_names_unreadable_tls_file(unreadable_file: UnreadableFile) -> None:
    """The client exits 2 for a TLS file that exists but cannot be read,
    naming the variable and the file, before it connects."""
    settings = {
        "VENTROS_DEPLOY_TEMPORAL_TLS_CA": str(unreadable_file.path),
        "VENTROS_DEPLOY_TEMPORAL_ADDRESS": "127.0.0.1:9",
    }
    result = run_status(settings, unreadable_file.preexec_fn)

    assert result.returncode == 2, result.stderr
    assert (
        f"VENTROS_DEPLOY_TEMPORAL_TLS_CA={unreadable_file.path}: cannot be read "
        "(Permission denied)" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_normalize_address_default_port() -> None:
    """An address without a port means Temporal's default 7233."""
    assert normalize_address("localhost") == "127.0.0.1:7233"


@pytest.mark.parametrize(
    "spelling",
    [
        "127.0.0.1:47233",
        "127.1:47233",
        "localhost.:47233",
        "LOCALHOST:47233",
        "[::ffff:127.0.0.1]:47233",
        "[::1]:47233",
        "0.0.0.0:47233",
        "127.0.0.1:047233",
        " 127.0.0.1:47233 ",
    ],
)
def test_normalize_address_loopback_spellings(spelling: str) -> None:
    """Every spelling of this machine and the same port is one address, so the
    bootstrap Temporal cannot be given as the app's in another spelling."""
    assert normalize_address(spelling) == "127.0.0.1:47233"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("127.0.0.1:47233", "127.0.0.1:7233"),
        ("temporal.example.test:7233", "127.0.0.1:7233"),
        ("[2001:db8::1]:7233", "127.0.0.1:7233"),
        ("10.0.0.1:7233", "10.0.0.2:7233"),
    ],
)
def test_normalize_address_keeps_others_apart(first: str, second: str) -> None:
    assert normalize_address(first) != normalize_address(second)


def test_normalize_address_names() -> None:
    """Names compare without case or a trailing dot; an IPv6 host keeps
    brackets."""
    assert normalize_address("Temporal.Example.Test.:7233") == (
        "temporal.example.test:7233"
    )
    assert normalize_address("[2001:DB8::1]:7233") == "[2001:db8::1]:7233"


def test_parse_set_nested_and_typed() -> None:
    """Dotted keys nest, and values are read as YAML scalars."""
    parsed = parse_set(["app.replicas=3", "image.tag=1.4.2", "config.logLevel=debug"])
    assert parsed == {
        "app": {"replicas": 3},
        "image": {"tag": "1.4.2"},
        "config": {"logLevel": "debug"},
    }


@pytest.mark.parametrize("pair", ["app.replicas", "=3", "a..b=1"])
def test_parse_set_rejects_malformed(pair: str) -> None:
    """A --set without KEY=VALUE is a usage error naming the expected form."""
    with pytest.raises(CliError, match="expected KEY=VALUE"):
        parse_set([pair])


@pytest.mark.parametrize("pair", ["app.replicas[0]=1", "app.args]=x"])
def test_parse_set_rejects_index(pair: str) -> None:
    """A --set key with a list index, which helm reads, fails with exit 2 and
    the ways to set a list, instead of reaching the chart as a bracketed key."""
    with pytest.raises(CliError, match="list indexes are not supported") as error:
        parse_set([pair])
    assert error.value.code == 2
    assert "--values file" in str(error.value)
