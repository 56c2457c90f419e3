"""The app version that the base release records: read from Chart.yaml, and
given to helm only when it differs from the chart's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from activities.deploy import DeployActivities
from activities.helm import Helm, chart_app_version
from deployer.inputs import ChartRef
from deployer.settings import WorkerSettings
from testbed.cluster import tool_path


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("appVersion: 1.10\n", "1.1"),
        ('appVersion: "1.10"\n', "1.10"),
        ("appVersion:\n  2.0.0\n", "2.0.0"),
        ("name: c\n", None),
        ("appVersion: [\n", None),
        ("- a\n", None),
    ],
)
def test_chart_app_version(text: str, version: str | None) -> None:
    """Return the chart's app version as YAML reads it; None without one or
    when the file is not a mapping."""
    assert chart_app_version(text) == version


@pytest.mark.parametrize(
    ("requested", "recorded"),
    [(None, None), ("1.0.0", None), ("1.1.0", "1.1.0"), ("1.0", "1.0")],
)
async def test_recorded_version_only_when_different(
    tmp_path: Path, requested: str | None, recorded: str | None
) -> None:
    """The base release gets a packaged chart only for a version other than
    the chart's appVersion: the same version needs no package."""
    chart = tmp_path / "chart"
    chart.mkdir()
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: c\nversion: 0.1.0\nappVersion:\n  1.0.0\n"
    )
    deploy = DeployActivities(
        WorkerSettings(helm=str(tool_path("helm")), chart_root=tmp_path)
    )
    helm = Helm(str(tool_path("helm")), None, None, tmp_path)
    result = await deploy._recorded_version(helm, ChartRef(path="chart"), requested)
    assert result == recorded
