"""Remove the cluster-scoped objects that helm releases of a namespace left.

Deleting a namespace deletes the helm release records in it, but not the
ClusterRoles and ClusterRoleBindings that those releases created, such as
the operator charts'. helm then rejects an install of a chart that renders the
same names in another namespace. The tests and the benchmark deploy into
fresh namespaces and delete them after, so they clear these objects too.
"""

from __future__ import annotations

import asyncio

from activities.kubeapi import KubeApiError, KubeClient, NotFoundError, well_known

RABBITMQ_CLUSTER = well_known("rabbitmq.com/v1beta1", "RabbitmqCluster")
CLUSTER_ROLE = well_known("rbac.authorization.k8s.io/v1", "ClusterRole")
CLUSTER_ROLE_BINDING = well_known("rbac.authorization.k8s.io/v1", "ClusterRoleBinding")
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
    even when an earlier step fails.

    Its RabbitmqClusters go first, and are waited for: they carry the
    operator's finalizer, and the namespace controller took up to half a
    minute to delete them in the test bed. Until then they count as users of
    the operators, so the next test's destroy would keep its operators.
    """
    try:
        await delete_rabbitmq_clusters(kube, namespace)
    finally:
        try:
            await kube.delete(well_known("v1", "Namespace"), namespace)
        finally:
            await delete_release_leftovers(kube, namespace)


async def delete_rabbitmq_clusters(
    kube: KubeClient, namespace: str, timeout_s: float = 20.0
) -> None:
    """Delete the RabbitmqClusters in namespace and wait until they are gone."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            listing = await kube.list(RABBITMQ_CLUSTER, namespace)
            break
        except NotFoundError:
            return  # The CRD is not installed, so there are none.
        except KubeApiError as error:
            # A CRD created moments ago returns 429 while the API server sets
            # up its storage.
            if error.status != 429 or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
    names = [item["metadata"]["name"] for item in listing.get("items", [])]
    for name in names:
        await kube.delete(RABBITMQ_CLUSTER, name, namespace)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while names and asyncio.get_running_loop().time() < deadline:
        names = [
            name
            for name in names
            if await kube.get(RABBITMQ_CLUSTER, name, namespace) is not None
        ]
        if names:
            await asyncio.sleep(0.2)


# The cluster-wide names the operator stand-ins render for release ventros-crm,
# the release every test and the benchmark install the operators under.
OPERATOR_CLUSTER_ROLES = ("postgres-pod", "ventros-crm-postgres-operator")


async def owned_cluster_roles(
    kube: KubeClient, names: tuple[str, ...] = OPERATOR_CLUSTER_ROLES
) -> dict[str, str]:
    """Return the ClusterRoles among names that belong to a helm release in a
    namespace that still exists, each with that namespace.

    A release there installed the operators, so another install of them under
    the same names fails until that release is destroyed.
    """
    listing = await kube.list(well_known("v1", "Namespace"))
    existing = {item["metadata"]["name"] for item in listing.get("items", [])}
    owned: dict[str, str] = {}
    for name in names:
        role = await kube.get(CLUSTER_ROLE, name)
        if role is None:
            continue
        owner = (role["metadata"].get("annotations") or {}).get(RELEASE_NAMESPACE)
        if isinstance(owner, str) and owner in existing:
            owned[name] = owner
    return owned


def owned_message(owned: dict[str, str], actor: str) -> str:
    """Return the error for ClusterRoles that a release elsewhere owns."""
    owners = ", ".join(
        f"ClusterRole {name} (namespace {ns})" for name, ns in owned.items()
    )
    namespaces = " ".join(sorted(set(owned.values())))
    return (
        f"a helm release that installed the operator charts owns {owners}. "
        f"{actor} install them again under the same names, and helm would "
        "reject that (OwnedElsewhere). Destroy that release first. If the "
        "namespace is left from an interrupted test run, delete it: `kubectl "
        f"delete namespace {namespaces}`; the next run removes the ClusterRoles. "
        "Or use a cluster of your own: set VENTROS_CLUSTER_ETCD_PORT, "
        "VENTROS_CLUSTER_APISERVER_PORT and VENTROS_CLUSTER_RABBITMQ_MGMT_PORT to "
        "free ports"
    )
