"""crds_in_place and `--skip-crds` against the local API server.

The base phase skips helm's apply of an operator chart's crds/ only when that
apply would change nothing. Each test uses a CRD of its own group, so the
operators' CRDs that other tests rely on are never touched.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
import yaml

from activities.crds import crds_in_place
from activities.helm import Helm
from activities.kubeapi import JsonObject, KubeClient, well_known
from deployer.inputs import ChartRef
from testbed.cluster import LocalCluster, tool_path
from tests.conftest import FIXTURE_CHARTS, REPO_ROOT

CRD_TYPE = well_known("apiextensions.k8s.io/v1", "CustomResourceDefinition")


def widget_crd(group: str, description: str = "a test widget") -> JsonObject:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def write_chart(chart_root: Path, name: str, crd: JsonObject) -> ChartRef:
    """Write a chart under chart_root with crd in crds/ and one ConfigMap."""
    root = chart_root / name
    (root / "crds").mkdir(parents=True, exist_ok=True)
    (root / "templates").mkdir(exist_ok=True)
    (root / "Chart.yaml").write_text("apiVersion: v2\nname: widgets\nversion: 0.1.0\n")
    (root / "crds" / "widget.yaml").write_text(yaml.safe_dump(crd))
    (root / "templates" / "config.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\n"
        "metadata: {name: {{ .Release.Name }}-config}\ndata: {a: b}\n"
    )
    return ChartRef(path=name)


@pytest_asyncio.fixture
async def group(kube: KubeClient) -> AsyncIterator[str]:
    """A CRD group of this test alone; its CRD is deleted after the test."""
    name = f"t{uuid.uuid4().hex[:8]}.test.ventros.io"
    yield name
    await kube.delete(CRD_TYPE, f"widgets.{name}")


def helm_for(cluster: LocalCluster, root: Path) -> Helm:
    return Helm(str(tool_path("helm")), str(cluster.kubeconfig), None, root)


async def live_crd(kube: KubeClient, group: str) -> dict[str, Any]:
    crd = await kube.get(CRD_TYPE, f"widgets.{group}")
    assert crd is not None
    return crd


async def test_missing_crd_not_in_place(kube: KubeClient, group: str) -> None:
    """A CRD the cluster does not have yet is not in place, and the check
    creates nothing."""
    assert not await crds_in_place(kube, [widget_crd(group)])
    assert await kube.get(CRD_TYPE, f"widgets.{group}") is None


async def test_crd_helm_installed_is_in_place(
    cluster: LocalCluster, kube: KubeClient, namespace: str, group: str, tmp_path: Path
) -> None:
    """After helm installed the chart's CRD, the same CRD is in place; an edited
    one is not, and the check leaves the cluster's CRD as it was."""
    helm = helm_for(cluster, tmp_path)
    crd = widget_crd(group)
    chart = write_chart(tmp_path, "chart", crd)
    await helm.upgrade_install("widgets", namespace, chart, {})
    assert await helm.crds(chart) == [crd]
    assert await crds_in_place(kube, [copy.deepcopy(crd)])

    before = await live_crd(kube, group)
    assert not await crds_in_place(kube, [widget_crd(group, "a newer widget")])
    labelled = copy.deepcopy(crd)
    labelled["metadata"]["labels"] = {"release": "new"}
    assert not await crds_in_place(kube, [labelled])
    # Both checks were dry runs.
    assert await live_crd(kube, group) == before
    # One CRD out of place is enough.
    other = widget_crd(f"other-{group}")
    assert not await crds_in_place(kube, [copy.deepcopy(crd), other])


async def test_crd_of_another_manager_not_in_place(
    cluster: LocalCluster, kube: KubeClient, namespace: str, group: str, tmp_path: Path
) -> None:
    """When another manager took a field of the CRD with another value, helm's
    apply without force would conflict, so the CRD is not in place."""
    helm = helm_for(cluster, tmp_path)
    crd = widget_crd(group)
    await helm.upgrade_install(
        "widgets", namespace, write_chart(tmp_path, "chart", crd), {}
    )
    await kube.apply(widget_crd(group, "changed by hand"), field_manager="someone")
    assert not await crds_in_place(kube, [copy.deepcopy(crd)])
    assert (await live_crd(kube, group))["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"
    ]["description"] == "changed by hand"


async def test_no_crds_not_in_place(kube: KubeClient) -> None:
    """A chart without CRDs has nothing to skip."""
    assert not await crds_in_place(kube, [])


async def test_skip_crds_leaves_crd_alone(
    cluster: LocalCluster, kube: KubeClient, namespace: str, group: str, tmp_path: Path
) -> None:
    """A first install with skip_crds does not apply the chart's CRD; one
    without it does."""
    helm = helm_for(cluster, tmp_path)
    await helm.upgrade_install(
        "widgets", namespace, write_chart(tmp_path, "old", widget_crd(group)), {}
    )
    newer = write_chart(tmp_path, "new", widget_crd(group, "a newer widget"))

    def description(crd: dict[str, Any]) -> str:
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        return str(schema["description"])

    await helm.upgrade_install("skipped", namespace, newer, {}, skip_crds=True)
    assert description(await live_crd(kube, group)) == "a test widget"
    assert await helm.status("skipped", namespace) == "deployed"
    await helm.upgrade_install("applied", namespace, newer, {})
    assert description(await live_crd(kube, group)) == "a newer widget"


async def test_operator_crds_in_place(
    cluster: LocalCluster, kube: KubeClient, namespace: str
) -> None:
    """Once an operator chart is installed, its CRDs (large schemas that the
    API server defaults) are in place for the next install."""
    helm = helm_for(cluster, REPO_ROOT)
    for name in ("postgres-operator", "rabbitmq-cluster-operator"):
        chart = ChartRef(path=f"{FIXTURE_CHARTS}/{name}")
        await helm.upgrade_install(name, namespace, chart, {})
        crds = await helm.crds(chart)
        assert len(crds) == 1
        assert await crds_in_place(kube, crds)
