"""Remove the cluster-scoped objects that helm releases of a namespace left.

Deleting a namespace deletes the helm release records in it, but not the
ClusterRoles and ClusterRoleBindings that those releases created, such as
the operator charts'. helm then refuses to install a chart that renders the
same names in another namespace. The tests and the benchmark deploy into
fresh namespaces and delete them after, so they clear these objects too.
"""

from __future__ import annotations

from activities.kubeapi import KubeClient, ResourceType

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
