"""The app version that helm records for our release.

helm takes a release's app version from Chart.yaml, so an upgrade with an
app version runs on the chart packaged with that appVersion. These tests read
it back from `helm history`, for a chart folder and for a chart from an https
repository served on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from activities.helm import Helm, HelmError, _values_root
from deployer.inputs import ChartRef
from testbed.cluster import LocalCluster, tool_path

RELEASE = "versioned"
# The value on its own line: valid YAML that a line-by-line edit would break.
CHART_YAML = """\
apiVersion: v2
name: versioned
version: 0.1.0
# The version the chart deploys when the request names none.
appVersion:
  "1.0.0"
"""
TEMPLATE = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: versioned
data:
  appVersion: {{ .Chart.AppVersion | quote }}
  tag: {{ default .Chart.AppVersion .Values.tag | quote }}
"""


@pytest.fixture
def chart_root(tmp_path: Path) -> Path:
    """A chart root holding one small chart, versioned/."""
    chart = tmp_path / "root" / "versioned"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(CHART_YAML)
    (chart / "templates" / "configmap.yaml").write_text(TEMPLATE)
    return tmp_path / "root"


def helm_in(cluster: LocalCluster, chart_root: Path) -> Helm:
    return Helm(str(tool_path("helm")), str(cluster.kubeconfig), None, chart_root)


async def recorded_versions(helm: Helm, namespace: str) -> list[str]:
    return [entry["app_version"] for entry in await helm.history(RELEASE, namespace)]


def staged_folders() -> list[str]:
    """The chart packages of this process that are still on disk."""
    prefix = f"{os.getpid()}-chart-"
    return [name for name in os.listdir(_values_root()) if name.startswith(prefix)]


async def test_path_chart_records_app_version(
    cluster: LocalCluster, namespace: str, chart_root: Path
) -> None:
    """An upgrade with another app version records it and renders with it.
    The chart's own folder stays as it was, and the package is removed after."""
    helm = helm_in(cluster, chart_root)
    chart = ChartRef(path="versioned")
    await helm.upgrade_install(
        RELEASE, namespace, chart, {"tag": "2.0.0"}, app_version="2.0.0"
    )
    manifest = await helm.manifest(RELEASE, namespace)
    assert manifest[0]["data"] == {"appVersion": "2.0.0", "tag": "2.0.0"}
    await helm.upgrade_install(RELEASE, namespace, chart, {}, app_version="1.0.0")
    await helm.upgrade_install(RELEASE, namespace, chart, {})
    assert await recorded_versions(helm, namespace) == ["2.0.0", "1.0.0", "1.0.0"]
    assert (chart_root / "versioned" / "Chart.yaml").read_text() == CHART_YAML
    assert staged_folders() == []


async def test_failed_upgrade_removes_chart_copy(
    cluster: LocalCluster, namespace: str, chart_root: Path
) -> None:
    """A failing upgrade from a packaged chart leaves no package behind."""
    helm = helm_in(cluster, chart_root)
    (chart_root / "versioned" / "templates" / "bad.yaml").write_text(
        "kind: ConfigMap\nmetadata: {name: bad}\n"
    )
    with pytest.raises(HelmError, match="helm upgrade versioned"):
        await helm.upgrade_install(
            RELEASE, namespace, ChartRef(path="versioned"), {}, app_version="2.0.0"
        )
    assert staged_folders() == []


@pytest.mark.parametrize("delay_s", [0.0, 0.03, 0.08, 0.2])
async def test_canceled_upgrade_removes_package(
    cluster: LocalCluster, namespace: str, chart_root: Path, delay_s: float
) -> None:
    """An upgrade canceled while helm packages or installs the chart leaves no
    package behind: the helm process ends before the folder is removed."""
    helm = helm_in(cluster, chart_root)
    task = asyncio.create_task(
        helm.upgrade_install(
            RELEASE, namespace, ChartRef(path="versioned"), {}, app_version="2.0.0"
        )
    )
    await asyncio.sleep(delay_s)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert staged_folders() == []


@pytest.fixture
def repository(
    cluster: LocalCluster, chart_root: Path, tmp_path: Path
) -> Iterator[str]:
    """An https chart repository on loopback that serves versioned 0.1.0,
    with the cluster's CA trusted by helm."""
    served = tmp_path / "served" / "charts"
    served.mkdir(parents=True)
    helm = str(tool_path("helm"))
    subprocess.run(
        [helm, "package", str(chart_root / "versioned"), f"--destination={served}"],
        check=True,
        capture_output=True,
    )

    pki = cluster.config.pki_dir
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki / "apiserver.crt"), str(pki / "apiserver.key"))
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    url = f"https://127.0.0.1:{server.server_address[1]}/charts"
    subprocess.run(
        [helm, "repo", "index", str(served), f"--url={url}"],
        check=True,
        capture_output=True,
    )

    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    saved = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = str(pki / "ca.crt")
    try:
        yield url
    finally:
        if saved is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = saved
        server.shutdown()
        server.server_close()


async def test_repository_chart_records_app_version(
    cluster: LocalCluster, namespace: str, chart_root: Path, repository: str
) -> None:
    """A repository chart is pulled into a private folder for the upgrade,
    which records the app version; without one, helm installs it as is."""
    helm = helm_in(cluster, chart_root)
    chart = ChartRef(repository=repository, name="versioned", version="0.1.0")
    await helm.upgrade_install(RELEASE, namespace, chart, {}, app_version="3.1.0")
    manifest = await helm.manifest(RELEASE, namespace)
    assert manifest[0]["data"]["appVersion"] == "3.1.0"
    await helm.upgrade_install(RELEASE, namespace, chart, {})
    assert await recorded_versions(helm, namespace) == ["3.1.0", "1.0.0"]
    assert staged_folders() == []
