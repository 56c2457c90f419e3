"""Helm.upgrade_install against the local cluster: the objects it returns.

The base and temporal phases wait on the objects that upgrade_install returns
with manifest=True, in place of a separate `helm get manifest` call, so these
tests pin that the list is the release's manifest, on install and on upgrade.
"""

from __future__ import annotations

from activities.helm import Helm
from deployer.inputs import ChartRef
from testbed.cluster import LocalCluster, tool_path
from tests.conftest import FIXTURE_CHARTS, REPO_ROOT

RELEASE = "ventros-crm-postgres-operator"
CHART = ChartRef(path=f"{FIXTURE_CHARTS}/postgres-operator")


def helm_for(cluster: LocalCluster) -> Helm:
    return Helm(str(tool_path("helm")), str(cluster.kubeconfig), None, REPO_ROOT)


def kinds_and_names(objects: list[dict[str, object]]) -> set[tuple[object, object]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objects}  # type: ignore[index]


async def test_upgrade_manifest_on_install(
    cluster: LocalCluster, namespace: str
) -> None:
    """A first install with manifest=True returns the release's objects."""
    helm = helm_for(cluster)
    objects = await helm.upgrade_install(RELEASE, namespace, CHART, {}, manifest=True)
    expected = {("ServiceAccount", RELEASE), ("Deployment", RELEASE)}
    assert kinds_and_names(objects) == expected


async def test_upgrade_manifest_matches_get_manifest(
    cluster: LocalCluster, namespace: str
) -> None:
    """An upgrade with manifest=True returns what `helm get manifest` returns."""
    helm = helm_for(cluster)
    await helm.upgrade_install(RELEASE, namespace, CHART, {})
    objects = await helm.upgrade_install(RELEASE, namespace, CHART, {}, manifest=True)
    assert objects == await helm.manifest(RELEASE, namespace)


async def test_upgrade_without_manifest_empty(
    cluster: LocalCluster, namespace: str
) -> None:
    """Without manifest, upgrade_install installs the release and returns nothing."""
    helm = helm_for(cluster)
    objects = await helm.upgrade_install(RELEASE, namespace, CHART, {})
    assert objects == []
    assert await helm.status(RELEASE, namespace) == "deployed"
