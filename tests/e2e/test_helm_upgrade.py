"""Helm.upgrade_install against the local cluster: the objects it returns.

The base and temporal phases wait on the objects that upgrade_install returns
with manifest=True, in place of a separate `helm get manifest` call, so these
tests pin that the list is the release's manifest, on install and on upgrade.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from activities.helm import Helm, HelmError
from activities.kubeapi import KubeClient
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
    expected = {
        ("ServiceAccount", RELEASE),
        ("Deployment", RELEASE),
        ("ClusterRole", RELEASE),
        ("ClusterRoleBinding", RELEASE),
        ("ClusterRole", "postgres-pod"),
    }
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


FIRST_OBJECT = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: first}
data: {a: b}
"""
UNKNOWN_FIELD = """\
apiVersion: v1
kind: ServiceAccount
metadata: {name: second}
automountToken: false
"""
WRONG_TYPE = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: second}
spec:
  replicas: "two"
  selector: {matchLabels: {app: second}}
  template:
    metadata: {labels: {app: second}}
    spec: {containers: [{name: main, image: example.invalid/app:1}]}
"""


@pytest.mark.parametrize(
    ("bad_object", "error"),
    [
        (UNKNOWN_FIELD, ".automountToken: field not declared in schema"),
        (WRONG_TYPE, ".spec.replicas: expected numeric"),
    ],
    ids=["unknown-field", "wrong-type"],
)
@pytest.mark.parametrize("openapi_validation", [True, False])
async def test_invalid_object_rejected_by_server(
    cluster: LocalCluster,
    namespace: str,
    kube: KubeClient,
    tmp_path: Path,
    openapi_validation: bool,
    bad_object: str,
    error: str,
) -> None:
    """The API server, not helm's OpenAPI pass, rejects an invalid object.

    upgrade_install turns helm's client-side OpenAPI validation off. For an
    unknown field or a wrong type in an object of its own, that loses nothing:
    with the pass on, helm v4 still applies the objects before the bad one,
    and the server names the field either way. Should a helm version start
    rejecting these before applying anything, the case with the pass on fails
    here, and the flag must be reconsidered. What the pass did reject first (a
    List with a bad item, a document without apiVersion) validate_request
    rejects instead (tests/security/test_bad_input.py).
    """
    chart = tmp_path / "bad"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: bad\nversion: 0.1.0\n")
    (chart / "templates" / "objects.yaml").write_text(
        f"{FIRST_OBJECT}---\n{bad_object}"
    )
    helm = Helm(str(tool_path("helm")), str(cluster.kubeconfig), None, tmp_path)
    with pytest.raises(HelmError) as caught:
        if openapi_validation:
            await helm.run(["upgrade", "bad", str(chart), "--install", "-n", namespace])
        else:
            await helm.upgrade_install("bad", namespace, ChartRef(path="bad"), {})
    assert error in caught.value.stderr
    configmaps = await kube.resource_type("v1", "ConfigMap")
    first = await kube.get(configmaps, "first", namespace)
    assert first is not None, "helm applied nothing before the bad object"
    assert await helm.status("bad", namespace) == "failed"
