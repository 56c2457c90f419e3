"""Cluster checks that validate runs before a deploy applies anything.

Each finds a state that helm would either reject halfway through the base
phase or take over without a word: a helm release of another chart under a
name this deploy upgrades, and operators that another release installed.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from temporalio.exceptions import ApplicationError

from activities.kubeapi import ForbiddenError, JsonObject, KubeClient, well_known
from deployer import contracts

log = structlog.get_logger()

SECRET = well_known("v1", "Secret")
DEPLOYMENT = well_known("apps/v1", "Deployment")
NAMESPACE = well_known("v1", "Namespace")
CLUSTER_ROLE = well_known("rbac.authorization.k8s.io/v1", "ClusterRole")
CLUSTER_ROLE_BINDING = well_known("rbac.authorization.k8s.io/v1", "ClusterRoleBinding")

# The operator release of each operator app is <release>-<suffix>.
OPERATOR_SUFFIXES = {
    "postgres-operator": "postgres-operator",
    "rabbitmq-cluster-operator": "rabbitmq-operator",
}
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
# The Zalando manifest (not its chart) labels the operator this way only.
ZALANDO_MANIFEST_LABEL = "application"
# The Zalando and RabbitMQ charts and the RabbitMQ manifest set NAME_LABEL on
# the operator's Deployment and cluster roles; so do the test bed's stand-ins.
OPERATOR_SELECTOR = f"{NAME_LABEL} in ({','.join(OPERATOR_SUFFIXES)})"
MANIFEST_SELECTOR = f"{ZALANDO_MANIFEST_LABEL}=postgres-operator"
RELEASE_NAME_ANNOTATION = "meta.helm.sh/release-name"
# helm v4.3.2 stores a release as pending-install before it creates its objects
# (Releases.Create before performInstall, pkg/action/install.go).
PENDING_INSTALL_SELECTOR = "owner=helm,status=pending-install"
RELEASE_NAMESPACE_ANNOTATION = "meta.helm.sh/release-namespace"


def _non_retryable(kind: str, message: str) -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=True)


def release_chart(record: JsonObject) -> str | None:
    """Return the chart name in one of helm's release Secrets, or None.

    helm stores the release as base64 of gzipped JSON, inside the Secret's
    own base64. The record also holds the release's values, so nothing from
    it but the chart name leaves this function.
    """
    try:
        stored = base64.b64decode((record.get("data") or {}).get("release", ""))
        release = json.loads(gzip.decompress(base64.b64decode(stored)))
        return str(release["chart"]["metadata"]["name"])
    except (binascii.Error, OSError, ValueError, KeyError, TypeError):
        return None


async def release_charts(
    kube: KubeClient, namespace: str, names: set[str]
) -> dict[str, str]:
    """Return the chart of the newest revision of each named helm release."""
    listing = await kube.list(SECRET, namespace, label_selector="owner=helm")
    newest: dict[str, tuple[int, JsonObject]] = {}
    for item in listing.get("items", []):
        labels = item["metadata"].get("labels") or {}
        name = labels.get("name")
        try:
            version = int(labels.get("version", "0"))
        except ValueError:
            continue
        if name in names and version > newest.get(name, (-1, {}))[0]:
            newest[name] = (version, item)
    charts = {}
    for name, (_, record) in newest.items():
        chart = release_chart(record)
        if chart is not None:
            charts[name] = chart
    return charts


async def check_release_names(
    kube: KubeClient, namespace: str, expected: dict[str, str]
) -> None:
    """Reject a deploy whose helm releases exist with another chart.

    expected maps each release name the deploy upgrades to the chart it
    installs there. helm upgrades a release with any chart, so a release
    named like another release's operator or Temporal would replace it.
    """
    try:
        charts = await release_charts(kube, namespace, set(expected))
    except ForbiddenError:
        return  # helm itself needs these Secrets, so the apply reports it.
    clashes = [
        f"{name} (chart {charts[name]}; this deploy would install {chart})"
        for name, chart in expected.items()
        if name in charts and charts[name] != chart
    ]
    if clashes:
        raise _non_retryable(
            contracts.RELEASE_NAME_TAKEN,
            f"helm releases in namespace {namespace} already use names this "
            f"deploy needs, for other charts: {'; '.join(clashes)}. The deploy "
            "would replace them. Choose another release name or namespace",
        )


@dataclass(frozen=True)
class Owner:
    """The helm release that an object belongs to, from its annotations."""

    release: str | None
    namespace: str | None

    @classmethod
    def of(cls, item: JsonObject) -> Owner:
        annotations = item["metadata"].get("annotations") or {}
        return cls(
            annotations.get(RELEASE_NAME_ANNOTATION),
            annotations.get(RELEASE_NAMESPACE_ANNOTATION),
        )


def operator_app(item: JsonObject) -> str:
    labels = item["metadata"].get("labels") or {}
    app = labels.get(NAME_LABEL) or labels.get(ZALANDO_MANIFEST_LABEL)
    return str(app)


async def check_no_other_operators(
    kube: KubeClient, release: str, namespace: str
) -> None:
    """Reject installing the operators when another release's are in the way.

    A running operator Deployment of another release (or one installed
    without helm) means that a second copy would manage the same objects.
    So does another release's operator chart that helm is installing
    (pending-install), whose Deployment may not exist yet.
    A cluster role with a fixed name, left by another release (even one in a
    namespace being deleted), makes helm reject the install after the other
    operator went in. Without permission to list these, the check is skipped.
    """
    try:
        namespaces = await kube.list(NAMESPACE)
        deployments = [
            item
            for selector in (OPERATOR_SELECTOR, MANIFEST_SELECTOR)
            for item in (await kube.list(DEPLOYMENT, label_selector=selector))["items"]
        ]
        roles = [
            (rtype.kind, item)
            for rtype in (CLUSTER_ROLE, CLUSTER_ROLE_BINDING)
            for item in (await kube.list(rtype, label_selector=OPERATOR_SELECTOR))[
                "items"
            ]
        ]
    except ForbiddenError:
        # The operator charts' cluster roles need more rights than listing
        # these, so their install reports Forbidden.
        return
    try:
        pending = (await kube.list(SECRET, label_selector=PENDING_INSTALL_SELECTOR))[
            "items"
        ]
    except ForbiddenError:
        # An identity that may read Secrets in some namespaces only still
        # gets the checks above.
        log.warning(
            "cannot list helm's release records in all namespaces, so operator "
            "installs in progress elsewhere are not checked"
        )
        pending = []
    phases = {
        item["metadata"]["name"]: (item.get("status") or {}).get("phase", "Active")
        for item in namespaces.get("items", [])
    }
    found = _running_operators(deployments, release, namespace, phases)
    found += _installing_operators(pending, release, namespace, phases)
    found += _fixed_name_roles(roles, release, namespace, phases)
    if found:
        raise _non_retryable(
            contracts.OPERATORS_INSTALLED,
            "install_operators is true, but the cluster already has "
            + "; ".join(found)
            + ". Deploy with install_operators: false (ventros-deploy start "
            "--no-operators) to use the installed operators. Delete what a "
            "release in a namespace being deleted, or gone, left behind",
        )


def _running_operators(
    deployments: list[JsonObject],
    release: str,
    namespace: str,
    phases: dict[str, str],
) -> list[str]:
    found: dict[str, str] = {}
    for item in deployments:
        metadata = item["metadata"]
        where = metadata.get("namespace", "")
        app = operator_app(item)
        instance = (metadata.get("labels") or {}).get(INSTANCE_LABEL)
        own = f"{release}-{OPERATOR_SUFFIXES.get(app, app)}"
        if metadata.get("deletionTimestamp") or phases.get(where) == "Terminating":
            continue  # It goes with its namespace or is going already.
        if where == namespace and instance == own:
            continue
        installer = f"helm release {instance}" if instance else "not installed by helm"
        found[f"{where}/{metadata['name']}"] = (
            f"{app} (deployment/{metadata['name']} in namespace {where}, {installer})"
        )
    return list(found.values())


def _installing_operators(
    records: list[JsonObject],
    release: str,
    namespace: str,
    phases: dict[str, str],
) -> list[str]:
    """Describe the operator charts that another helm release is installing.

    A record counts by its chart's name or, for a chart renamed in a fork, by
    the release name this deployer gives operator releases. A helm stopped
    halfway leaves its record pending-install, so each description gives the
    record's age and the command that removes a record no install is behind.
    """
    found = []
    for record in records:
        metadata = record["metadata"]
        where = metadata.get("namespace", "")
        labels = metadata.get("labels") or {}
        name = labels.get("name", "")
        app = release_chart(record)
        if app not in OPERATOR_SUFFIXES:
            app = next(
                (
                    chart
                    for chart, suffix in OPERATOR_SUFFIXES.items()
                    if name.endswith(f"-{suffix}")
                ),
                None,
            )
        if app is None or phases.get(where) == "Terminating":
            continue
        if where == namespace and name == f"{release}-{OPERATOR_SUFFIXES[app]}":
            continue
        found.append(
            f"{app} (helm release {name} in namespace {where}, being installed: "
            f"pending-install{_since(labels.get('createdAt'))}; if no helm runs "
            f"there any more, `helm uninstall {name} --namespace {where}` "
            "removes what it left)"
        )
    return found


def _since(created_at: str | None) -> str:
    """Describe helm's createdAt label (Unix seconds), or nothing if unreadable."""
    try:
        moment = datetime.fromtimestamp(int(created_at or ""), tz=UTC)
    except (ValueError, OverflowError, OSError):
        return ""
    return f" since {moment.strftime('%Y-%m-%dT%H:%M:%SZ')}"


def _fixed_name_roles(
    roles: list[tuple[str, JsonObject]],
    release: str,
    namespace: str,
    phases: dict[str, str],
) -> list[str]:
    """Describe the cluster roles of other installs that this one would clash with.

    A chart names most cluster-wide objects after its release. A name that
    does not start with its release's name (the Zalando chart's ClusterRole
    postgres-pod) is the same for every install.
    """
    found = []
    for kind, item in roles:
        name = item["metadata"]["name"]
        owner = Owner.of(item)
        app = operator_app(item)
        own = f"{release}-{OPERATOR_SUFFIXES.get(app, app)}"
        if owner == Owner(own, namespace):
            continue
        # A role named after another release never clashes. One named after
        # this release, from another namespace, clashes unless the name
        # carries that namespace too.
        named_after_owner = bool(owner.release) and name.startswith(owner.release or "")
        if named_after_owner and (
            owner.release != own or (owner.namespace or "") in name
        ):
            continue
        if owner.release is None:
            found.append(f"{kind} {name} (not installed by helm)")
            continue
        state = phases.get(owner.namespace or "")
        left = (
            ", a namespace being deleted"
            if state == "Terminating"
            else ", a namespace that no longer exists"
            if state is None
            else ""
        )
        found.append(
            f"{kind} {name} (of helm release {owner.release} in namespace "
            f"{owner.namespace}{left})"
        )
    return found
