"""Clearing what helm releases leave outside a deleted namespace."""

from __future__ import annotations

import uuid

from activities.kubeapi import KubeClient
from testbed.leftovers import (
    CLUSTER_ROLE,
    RELEASE_NAMESPACE,
    delete_orphaned_leftovers,
    delete_release_leftovers,
    owned_cluster_roles,
    owned_message,
)


def cluster_role(name: str, release_namespace: str) -> dict[str, object]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": name,
            "annotations": {RELEASE_NAMESPACE: release_namespace},
        },
        "rules": [],
    }


async def test_orphans_deleted_live_kept(kube: KubeClient, namespace: str) -> None:
    """Only ClusterRoles of releases whose namespace is gone are deleted."""
    deleted_namespace = f"t-gone-{uuid.uuid4().hex[:8]}"
    orphan = f"{deleted_namespace}-role"
    live = f"{namespace}-role"
    await kube.create(CLUSTER_ROLE, cluster_role(orphan, deleted_namespace))
    await kube.create(CLUSTER_ROLE, cluster_role(live, namespace))

    deleted = await delete_orphaned_leftovers(kube)

    assert f"ClusterRole/{orphan}" in deleted
    assert await kube.get(CLUSTER_ROLE, orphan) is None
    assert await kube.get(CLUSTER_ROLE, live) is not None
    assert await delete_release_leftovers(kube, namespace) == [f"ClusterRole/{live}"]
    assert await kube.get(CLUSTER_ROLE, live) is None


async def test_owned_roles_live_namespaces_only(
    kube: KubeClient, namespace: str
) -> None:
    """A ClusterRole of a release whose namespace exists is reported with that
    namespace; one whose namespace is gone, or a name that does not exist, is
    not. The message names the role, the namespace and the way out."""
    gone_namespace = f"t-gone-{uuid.uuid4().hex[:8]}"
    live = f"{namespace}-live"
    orphan = f"{gone_namespace}-orphan"
    absent = f"{namespace}-absent"
    await kube.create(CLUSTER_ROLE, cluster_role(live, namespace))
    await kube.create(CLUSTER_ROLE, cluster_role(orphan, gone_namespace))
    try:
        found = await owned_cluster_roles(kube, (live, orphan, absent))
    finally:
        await kube.delete(CLUSTER_ROLE, orphan)

    assert found == {live: namespace}
    message = owned_message(found, "The tests")
    assert f"ClusterRole {live} (namespace {namespace})" in message
    assert "VENTROS_CLUSTER_APISERVER_PORT" in message
