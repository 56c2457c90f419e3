"""Remove the cluster-scoped objects that helm releases of a namespace left.

Deleting a namespace deletes the helm release records in it, but not the
ClusterRoles and ClusterRoleBindings that those releases created, such as
the operator charts'. helm then rejects an install of a chart that renders the
same names in another namespace. The tests and the benchmark deploy into
fresh namespaces and delete them after, so they clear these objects too.
"""

from __future__ import annotations

from activities.kubeapi import KubeClient, ResourceType, well_known

CLUSTER_ROLE = ResourceType(
    "rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", False
)
CLUSTER_ROLE_BINDING = ResourceType(
    "rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", False
)
# helm writes these annotations on every object of a release.
RELEASE_NAMESPACE = "meta.helm.sh/release-namespace"


async def delete_release_leftovers(kube: KubeClient, namespace: str) -> list[str]:
    """Delete the cluster-scoped RBAC objects of helm releases in namespace.

    Return "Kind/name" of each object deleted.
    """
    deleted: list[str] = []
    for rtype in (CLUSTER_ROLE_BINDING, CLUSTER_ROLE):
        listing = await kube.list(rtype)
        for obj in listing.get("items", []):
            metadata = obj["metadata"]
            annotations = metadata.get("annotations") or {}
            if annotations.get(RELEASE_NAMESPACE) != namespace:
                continue
            if await kube.delete(rtype, metadata["name"]):
                deleted.append(f"{rtype.kind}/{metadata['name']}")
    return deleted


async def delete_orphaned_leftovers(kube: KubeClient) -> list[str]:
    """Delete the cluster-scoped RBAC objects of helm releases whose namespace
    no longer exists, such as those of a run that was killed before its
    cleanup. Return "Kind/name" of each object deleted."""
    listing = await kube.list(well_known("v1", "Namespace"))
    existing = {item["metadata"]["name"] for item in listing.get("items", [])}
    deleted: list[str] = []
    for rtype in (CLUSTER_ROLE_BINDING, CLUSTER_ROLE):
        objects = await kube.list(rtype)
        for obj in objects.get("items", []):
            metadata = obj["metadata"]
            owner = (metadata.get("annotations") or {}).get(RELEASE_NAMESPACE)
            if not owner or owner in existing:
                continue
            if await kube.delete(rtype, metadata["name"]):
                deleted.append(f"{rtype.kind}/{metadata['name']}")
    return deleted


async def remove_namespace(kube: KubeClient, namespace: str) -> None:
    """Delete namespace, then the cluster-scoped objects its releases left,
    even when the first step fails."""
    try:
        await kube.delete(well_known("v1", "Namespace"), namespace)
    finally:
        await delete_release_leftovers(kube, namespace)
