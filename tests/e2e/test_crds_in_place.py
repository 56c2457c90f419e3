"""crds_in_place and `--skip-crds` against the local API server.

The base phase skips helm's apply of an operator chart's crds/ only when that
apply would change nothing. Each test uses a CRD of its own group, so the
operators' CRDs that other tests rely on are never touched.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
import yaml
from temporalio.testing import ActivityEnvironment

from activities.crds import crds_in_place
from activities.deploy import DeployActivities
from activities.helm import Helm
from activities.kubeapi import JsonObject, KubeClient, well_known
from deployer.contracts import ApplyRequest
from deployer.inputs import ChartRef, parse_request
from deployer.phases import Phase
from deployer.settings import WorkerSettings
from testbed.cluster import LocalCluster, tool_path
from tests.conftest import FIXTURE_CHARTS, REPO_ROOT, deploy_request

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
    """After helm installed the chart's CRD, the same CRD is in place. An edited
    one is not, and the check leaves the cluster's CRD as it was."""
    helm = helm_for(cluster, tmp_path)
    crd = widget_crd(group)
    chart = write_chart(tmp_path, "chart", crd)
    await helm.upgrade_install("widgets", namespace, chart, {})
    assert await helm.crds(chart) == [crd]
    assert await crds_in_place(kube, [copy.deepcopy(crd)])
    # A file that ends in `---` adds an empty document.
    assert await crds_in_place(kube, [copy.deepcopy(crd), None])
    assert not await crds_in_place(kube, [None])

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


async def condition(
    kube: KubeClient, name: str, kind: str, expected: str = "True"
) -> str | None:
    """Poll the CRD name for up to 10 s until its condition of type kind has
    the status expected. Return the status last seen, or None if it had none."""
    seen = None
    for _ in range(100):
        crd = await kube.get(CRD_TYPE, name)
        for found in ((crd or {}).get("status") or {}).get("conditions") or []:
            if found["type"] == kind:
                seen = str(found["status"])
        if seen == expected:
            return seen
        await asyncio.sleep(0.1)
    return seen


async def test_unserved_crd_not_in_place(kube: KubeClient, group: str) -> None:
    """A CRD whose kind another CRD of its group has is never Established, and
    a CRD that is being deleted will be gone: neither is in place, though
    helm's apply would change neither."""
    with_finalizer = widget_crd(group)
    with_finalizer["metadata"]["finalizers"] = ["test.ventros.io/hold"]
    await kube.apply(with_finalizer, field_manager="helm")
    clash = widget_crd(group)
    clash["metadata"]["name"] = f"gizmos.{group}"
    clash["spec"]["names"].update(plural="gizmos", singular="gizmo")
    await kube.apply(clash, field_manager="helm")
    try:
        assert await condition(kube, f"widgets.{group}", "Established") == "True"
        clashed = await condition(kube, f"gizmos.{group}", "NamesAccepted", "False")
        assert clashed == "False"
        unserved = await condition(kube, f"gizmos.{group}", "Established", "False")
        assert unserved == "False"
        assert not await crds_in_place(kube, [copy.deepcopy(clash)])
        assert await crds_in_place(kube, [copy.deepcopy(with_finalizer)])

        await kube.delete(CRD_TYPE, f"widgets.{group}")
        assert (await live_crd(kube, group))["metadata"].get("deletionTimestamp")
        assert not await crds_in_place(kube, [copy.deepcopy(with_finalizer)])
    finally:
        await kube.delete(CRD_TYPE, f"gizmos.{group}")
        # Without the finalizer, the delete above can finish.
        await kube.apply(widget_crd(group), field_manager="helm")


def crd_patches(audit_log: Path, since: float) -> list[tuple[str, bool]]:
    """Return (user agent, dry run) of each CRD patch in the audit log since
    the Unix time since."""
    found = []
    for line in audit_log.read_text().splitlines():
        entry = json.loads(line)
        received = datetime.datetime.fromisoformat(entry["requestReceivedTimestamp"])
        ref = entry.get("objectRef") or {}
        if (
            received.timestamp() >= since
            and entry["verb"] == "patch"
            and ref.get("resource") == "customresourcedefinitions"
        ):
            agent = entry.get("userAgent", "").split("/")[0]
            found.append((agent, "dryRun=All" in entry["requestURI"]))
    return found


async def test_base_phase_skips_crds_in_place(
    cluster: LocalCluster,
    kube: KubeClient,
    worker_settings: WorkerSettings,
    namespace: str,
) -> None:
    """With the operators' CRDs in place as helm applied them, the base phase
    checks them with dry runs and installs the operators without helm's own
    CRD apply."""
    helm = helm_for(cluster, REPO_ROOT)
    for name in ("postgres-operator", "rabbitmq-cluster-operator"):
        for crd in await helm.crds(ChartRef(path=f"{FIXTURE_CHARTS}/{name}")):
            await kube.apply(crd, field_manager="helm", force=False)
            established = await condition(kube, crd["metadata"]["name"], "Established")
            assert established == "True"
    activities = DeployActivities(worker_settings)
    request = parse_request(deploy_request(namespace))
    since = time.time()
    try:
        applied = await ActivityEnvironment().run(
            activities.apply_phase, ApplyRequest(request=request, phase=Phase.BASE)
        )
    finally:
        await activities.close()

    assert applied.applied == 3
    patches = crd_patches(cluster.config.log_dir / "audit.log", since)
    assert [dry for _, dry in patches].count(True) == 2, patches
    assert [agent for agent, dry in patches if not dry] == [], patches
