"""Worker settings and the client's --set parsing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from client.cli import CliError, parse_set
from deployer.settings import TemporalSettings, WorkerSettings, normalize_address


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


def test_normalize_address_default_port() -> None:
    """An address without a port means Temporal's default 7233."""
    assert normalize_address("localhost") == "127.0.0.1:7233"


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
