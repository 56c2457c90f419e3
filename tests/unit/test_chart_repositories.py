"""The allow-list of chart repositories that requests may name.

The checks run the real helm on chart folders (`helm show values` reads the
chart's dependency defaults) and need no cluster: they end before any
Kubernetes call.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.deploy import DeployActivities
from activities.rollback import RollbackActivities
from deployer import contracts
from deployer.inputs import InvalidRequestError, parse_request, repository_allowed
from deployer.lifecycle import RollbackRequest
from deployer.settings import WorkerSettings, describe_settings_error
from testbed.cluster import tool_path

TRUSTED = "https://127.0.0.1:9/trusted"


@pytest.mark.parametrize(
    ("repository", "allowed", "expected"),
    [
        ("https://charts.example.com", ["https://charts.example.com"], True),
        ("https://charts.example.com/", ["https://charts.example.com"], True),
        ("https://charts.example.com", ["https://charts.example.com/"], True),
        ("https://charts.example.com/stable", ["https://charts.example.com"], True),
        ("https://charts.example.com.evil", ["https://charts.example.com"], False),
        ("https://charts.example.com:8443", ["https://charts.example.com"], False),
        ("https://charts.example.comx/a", ["https://charts.example.com"], False),
        ("https://charts.example.com", ["https://charts.example.com/stable"], False),
        ("oci://r.io/team/charts", ["oci://r.io/team"], True),
        ("https://charts.example.com", [], False),
    ],
)
def test_repository_allowed_cases(
    repository: str, allowed: list[str], expected: bool
) -> None:
    assert repository_allowed(repository, allowed) is expected


def test_setting_splits_entries() -> None:
    settings = WorkerSettings(
        chart_repositories=" https://a.example.com/charts , oci://r.io/team,"
    )
    assert settings.allowed_repositories == (
        "https://a.example.com/charts",
        "oci://r.io/team",
    )


def test_setting_rejects_plain_http() -> None:
    with pytest.raises(ValidationError) as error:
        WorkerSettings(chart_repositories="https://a.example.com,http://b.example.com")
    message = describe_settings_error(error.value)
    assert message.startswith("VENTROS_DEPLOY_CHART_REPOSITORIES=")
    assert "'http://b.example.com' is not an https:// or oci:// repository URL" in (
        message
    )


@pytest.mark.parametrize(
    "repository",
    [
        "https://charts.example.com/stable/../other",
        "https://charts.example.com/stable/..",
        "https://charts.example.com/./stable",
        "oci://r.io/team/../other",
    ],
)
def test_dot_path_parts_rejected(repository: str) -> None:
    """A URL under an allowed path could leave it through '..', once the
    client resolves it, so such URLs fail in the request and in the setting."""
    with pytest.raises(InvalidRequestError, match=re.escape("'.' and '..' path parts")):
        request_with(temporal=chart_from(repository))
    with pytest.raises(ValidationError):
        WorkerSettings(chart_repositories=repository)


def test_dots_inside_names_pass() -> None:
    request = request_with(temporal=chart_from("https://charts.example.com/v1.2/x"))
    assert request.operator_charts.temporal is not None


def chart_root(tmp_path: Path) -> Path:
    """A chart root with one chart whose dependency defaults name TRUSTED."""
    chart = tmp_path / "chart"
    chart.mkdir()
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: stand-in\nversion: 1.0.0\n"
    )
    (chart / "values.yaml").write_text(
        "dependencies:\n"
        "  temporal:\n"
        f"    repository: {TRUSTED}\n"
        "    name: temporal\n"
        "    version: 0.65.0\n"
    )
    return tmp_path


def activities(tmp_path: Path, listed: str = "") -> DeployActivities:
    return DeployActivities(
        WorkerSettings(
            helm=str(tool_path("helm")),
            chart_root=chart_root(tmp_path),
            chart_repositories=listed,
        )
    )


def request_with(**operator_charts: Any) -> Any:
    return parse_request(
        {
            "release": "ventros-crm",
            "namespace": "ventros-crm",
            "chart": {"path": "chart"},
            "operator_charts": operator_charts,
        }
    )


def chart_from(repository: str) -> dict[str, str]:
    return {"repository": repository, "name": "rabbitmq-operator", "version": "1.0.0"}


async def test_unlisted_operator_repository_rejected(tmp_path: Path) -> None:
    deploy = activities(tmp_path, listed="https://charts.example.com")
    request = request_with(rabbitmq_operator=chart_from("https://127.0.0.1:9/other"))
    with pytest.raises(ApplicationError) as error:
        await deploy._check_repositories(request)
    assert error.value.type == contracts.INVALID_REQUEST
    assert error.value.non_retryable
    message = error.value.message
    assert message.startswith(
        "operator_charts.rabbitmq_operator: chart repository "
        "https://127.0.0.1:9/other is not allowed."
    )
    assert f"(now: https://charts.example.com, {TRUSTED})" in message
    assert "VENTROS_DEPLOY_CHART_REPOSITORIES" in message


async def test_listed_operator_repository_passes(tmp_path: Path) -> None:
    deploy = activities(tmp_path, listed="https://127.0.0.1:9")
    request = request_with(rabbitmq_operator=chart_from("https://127.0.0.1:9/other"))
    await deploy._check_repositories(request)


async def test_chart_default_repository_passes(tmp_path: Path) -> None:
    """A repository that the chart's own dependency defaults name needs no
    listing, for example to pick another version from it."""
    deploy = activities(tmp_path)
    request = request_with(temporal=chart_from(f"{TRUSTED}/sub"))
    await deploy._check_repositories(request)


async def test_bare_default_entry_trusts_nothing(tmp_path: Path) -> None:
    """A dependency default that a request could not name, such as
    "https://", allows no host."""
    (chart_root(tmp_path) / "chart" / "values.yaml").write_text(
        "dependencies:\n  temporal:\n    repository: https://\n"
    )
    deploy = DeployActivities(
        WorkerSettings(helm=str(tool_path("helm")), chart_root=tmp_path)
    )
    request = request_with(temporal=chart_from("https://evil.example.com/x"))
    with pytest.raises(ApplicationError) as error:
        await deploy._check_repositories(request)
    assert "(now: none)" in error.value.message


async def test_unlisted_chart_repository_rejected(tmp_path: Path) -> None:
    """The request's own chart from a repository must be listed: its
    defaults cannot vouch for it, since reading them contacts it."""
    deploy = activities(tmp_path)
    request = parse_request(
        {
            "release": "ventros-crm",
            "namespace": "ventros-crm",
            "chart": chart_from(TRUSTED),
        }
    )
    with pytest.raises(ApplicationError) as error:
        await deploy._check_repositories(request)
    assert error.value.type == contracts.INVALID_REQUEST
    assert error.value.message.startswith(
        f"chart: chart repository {TRUSTED} is not allowed."
    )
    assert (
        "only from the repositories in VENTROS_DEPLOY_CHART_REPOSITORIES (now: none)"
        in error.value.message
    )
    assert "dependencies" not in error.value.message


async def test_rollback_rejects_unlisted_repository(tmp_path: Path) -> None:
    """A rollback's chart from an unlisted repository fails its plan step
    before any helm or Kubernetes call."""
    rollback = RollbackActivities(activities(tmp_path))
    request = RollbackRequest(
        release="ventros-crm",
        namespace="ventros-crm",
        chart=chart_from("https://127.0.0.1:9/other"),
    )
    with pytest.raises(ApplicationError) as error:
        await ActivityEnvironment().run(rollback.plan_rollback, request)
    assert error.value.type == contracts.INVALID_REQUEST
    assert "https://127.0.0.1:9/other is not allowed" in error.value.message
