"""Whether an operator chart's CRDs are in the cluster already, as the chart has them.

On a first install, helm applies the CRDs of a chart's crds/ folder, waits
until the API server serves them, and reads the cluster's API groups again
before it applies the release. When the CRDs are there already (another
namespace's release or an earlier install brought them), that apply changes
nothing, and in an audit-log trace of the base phase the wait and the second
read held the operator's Deployment back by about 0.09 s. The base phase
passes `--skip-crds` when crds_in_place finds that helm's apply would change
nothing. Otherwise helm applies them as it always does.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import structlog

from activities.kubeapi import (
    JsonObject,
    KubeApiError,
    KubeClient,
    NoKindMatchError,
    well_known,
)

log = structlog.get_logger("ventros.crds")

CRD_API_VERSION = "apiextensions.k8s.io/v1"
# The field manager of helm v4's apply of crds/, which the audit log shows with
# force=false, so another manager's field with another value is a conflict.
HELM_FIELD_MANAGER = "helm"


async def crds_in_place(kube: KubeClient, crds: list[Any]) -> bool:
    """Tell whether applying crds as helm does would change nothing.

    Each CRD is read and applied as a server-side dry run with helm's field
    manager, without force, and with strict field validation. One CRD that
    is missing, not Established, being deleted, changed by the dry run, or
    rejected by it (a conflict, a forbidden request, an unknown field) makes
    it False. helm then applies them itself, so an error reaches the user as
    helm's. A chart without CRDs gives False too: there is nothing to skip.
    """
    # An empty document (a file that ends in `---`) is no resource. NOTE: a
    # crds/ file with no resource at all fails helm's install ("resources are
    # empty"), but it gives the same None here, so such a chart is skipped.
    resources = [crd for crd in crds if crd is not None]
    if not resources:
        return False
    verdicts = await asyncio.gather(*(_unchanged(kube, crd) for crd in resources))
    return all(verdicts)


async def _unchanged(kube: KubeClient, crd: Any) -> bool:
    if not isinstance(crd, dict):
        return False
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
        if live is None or not _served(live):
            return False
        applied = await kube.apply(
            crd,
            field_manager=HELM_FIELD_MANAGER,
            dry_run=True,
            force=False,
            field_validation="Strict",
        )
    except (KubeApiError, NoKindMatchError, OSError, aiohttp.ClientError) as error:
        # OSError includes TimeoutError, and aiohttp.ClientError covers an API
        # server that cannot be reached.
        log.info("crd check left to helm", crd=name, error_type=type(error).__name__)
        return False
    return comparable(applied) == comparable(live)


def _served(crd: JsonObject) -> bool:
    """Tell whether crd is Established and not being deleted.

    helm waits for Established after its apply, and fails after 60 s when the
    CRD never gets there, so a CRD that is not served is left to helm.
    """
    if (crd.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(
        c.get("type") == "Established" and c.get("status") == "True" for c in conditions
    )


def comparable(crd: JsonObject) -> dict[str, Any]:
    """Return what an apply may change in crd: its spec and its metadata.

    The resource version and the times in managedFields are left out,
    because a dry run keeps the former and the latter only record when.
    """
    metadata = dict(crd.get("metadata") or {})
    metadata.pop("resourceVersion", None)
    metadata["managedFields"] = [
        {key: value for key, value in entry.items() if key != "time"}
        for entry in metadata.get("managedFields") or []
    ]
    return {"metadata": metadata, "spec": crd.get("spec")}
