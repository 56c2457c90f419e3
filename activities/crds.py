"""Whether an operator chart's CRDs are in the cluster already, as the chart has them.

On a first install, helm applies the CRDs of a chart's crds/ folder, waits
until the API server serves them, and reads the cluster's API groups again
before it applies the release. When the CRDs are there already (another
namespace's release or an earlier install brought them), that apply changes
nothing, and in an audit-log trace of the base phase the wait and the second
read held the operator's Deployment back by about 0.09 s. The base phase
passes `--skip-crds` when crds_in_place says that helm's apply would change
nothing; otherwise helm applies them as it always does.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from activities.kubeapi import JsonObject, KubeApiError, KubeClient, well_known

log = structlog.get_logger("ventros.crds")

CRD_API_VERSION = "apiextensions.k8s.io/v1"
# The field manager and the options of helm v4's apply of crds/ (as the audit
# log shows it): another manager's field with another value is a conflict.
HELM_FIELD_MANAGER = "helm"


async def crds_in_place(kube: KubeClient, crds: list[JsonObject]) -> bool:
    """Tell whether applying crds as helm does would change nothing.

    Each CRD is read and applied as a server-side dry run with helm's field
    manager, without force, and with strict field validation. Any CRD that is
    missing, that the dry run would change, or that the dry run rejects
    (a conflict, a forbidden request, an unknown field) makes it False, and
    helm then applies them itself, so an error reaches the user as helm's.
    A chart without CRDs gives False too: there is nothing to skip.
    """
    if not crds:
        return False
    verdicts = await asyncio.gather(*(_unchanged(kube, crd) for crd in crds))
    return all(verdicts)


async def _unchanged(kube: KubeClient, crd: JsonObject) -> bool:
    metadata = crd.get("metadata")
    if (
        crd.get("apiVersion") != CRD_API_VERSION
        or crd.get("kind") != "CustomResourceDefinition"
        or not isinstance(metadata, dict)
        or not isinstance(metadata.get("name"), str)
    ):
        return False
    name = metadata["name"]
    crd_type = well_known(CRD_API_VERSION, "CustomResourceDefinition")
    try:
        live = await kube.get(crd_type, name)
        if live is None:
            return False
        applied = await kube.apply(
            crd,
            field_manager=HELM_FIELD_MANAGER,
            dry_run=True,
            force=False,
            field_validation="Strict",
        )
    except KubeApiError as error:
        log.info("crd check left to helm", crd=name, reason=type(error).__name__)
        return False
    return comparable(applied) == comparable(live)


def comparable(crd: JsonObject) -> dict[str, Any]:
    """Return what an apply may change in crd: its spec and its metadata.

    The resource version and the times in managedFields are left out: a dry
    run keeps the former, and the latter say when, not what.
    """
    metadata = dict(crd.get("metadata") or {})
    metadata.pop("resourceVersion", None)
    metadata["managedFields"] = [
        {key: value for key, value in entry.items() if key != "time"}
        for entry in metadata.get("managedFields") or []
    ]
    return {"metadata": metadata, "spec": crd.get("spec")}
