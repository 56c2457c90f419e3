"""The pure parts of the validate-time cluster checks: reading helm's release
records and telling which operator cluster roles clash."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import pytest

from activities.preflight import (
    _fixed_name_roles,
    _installing_operators,
    _running_operators,
    release_chart,
)


def record(release: Any) -> dict[str, Any]:
    """Return a Secret as helm stores a release, for the release object given."""
    inner = base64.b64encode(gzip.compress(json.dumps(release).encode()))
    return {"data": {"release": base64.b64encode(inner).decode()}}


def test_release_chart_reads_name() -> None:
    release = {"chart": {"metadata": {"name": "temporal"}}, "config": {"pw": "x"}}
    assert release_chart(record(release)) == "temporal"


@pytest.mark.parametrize(
    "secret",
    [
        {},
        {"data": {"release": "not base64!"}},
        {"data": {"release": base64.b64encode(b"plain text").decode()}},
        record({"chart": None}),
        record(["a list"]),
    ],
    ids=["no data", "bad base64", "not gzip", "no chart", "not an object"],
)
def test_release_chart_unreadable(secret: dict[str, Any]) -> None:
    assert release_chart(secret) is None


def role(name: str, app: str, release: str | None, namespace: str | None) -> Any:
    annotations = {}
    if release is not None:
        annotations["meta.helm.sh/release-name"] = release
        annotations["meta.helm.sh/release-namespace"] = namespace
    return (
        "ClusterRole",
        {
            "metadata": {
                "name": name,
                "labels": {"app.kubernetes.io/name": app},
                "annotations": annotations,
            }
        },
    )


@pytest.mark.parametrize(
    ("owner", "namespace_phase", "expected"),
    [
        (("crm-postgres-operator", "shop"), "Active", None),
        (
            ("other-postgres-operator", "shop"),
            "Active",
            "ClusterRole postgres-pod (of helm release other-postgres-operator in "
            "namespace shop)",
        ),
        (
            ("crm-postgres-operator", "old"),
            "Terminating",
            "ClusterRole postgres-pod (of helm release crm-postgres-operator in "
            "namespace old, a namespace being deleted)",
        ),
        (
            ("crm-postgres-operator", "gone"),
            None,
            "ClusterRole postgres-pod (of helm release crm-postgres-operator in "
            "namespace gone, a namespace that no longer exists)",
        ),
        ((None, None), None, "ClusterRole postgres-pod (not installed by helm)"),
    ],
    ids=["own", "other release", "terminating", "gone", "no helm"],
)
def test_fixed_name_role_clashes(
    owner: tuple[str | None, str | None],
    namespace_phase: str | None,
    expected: str | None,
) -> None:
    """postgres-pod clashes unless it is this release's, in this namespace."""
    release, namespace = owner
    phases = {"shop": "Active"}
    if namespace and namespace_phase:
        phases[namespace] = namespace_phase
    found = _fixed_name_roles(
        [role("postgres-pod", "postgres-operator", release, namespace)],
        "crm",
        "shop",
        phases,
    )
    assert found == ([expected] if expected else [])


def test_release_named_role_never_clashes() -> None:
    """A cluster role named after its own release is unique to that install."""
    name = "other-postgres-operator"
    roles = [role(name, "postgres-operator", name, "b")]
    assert _fixed_name_roles(roles, "crm", "shop", {"b": "Active"}) == []


def deployment(namespace: str, app_labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "op", "namespace": namespace, "labels": app_labels}}


@pytest.mark.parametrize(
    ("item", "phases", "reported"),
    [
        (
            deployment(
                "shop",
                {
                    "app.kubernetes.io/name": "rabbitmq-cluster-operator",
                    "app.kubernetes.io/instance": "crm-rabbitmq-operator",
                },
            ),
            {"shop": "Active"},
            False,
        ),
        (
            deployment(
                "b",
                {
                    "app.kubernetes.io/name": "rabbitmq-cluster-operator",
                    "app.kubernetes.io/instance": "crm-rabbitmq-operator",
                },
            ),
            {"b": "Active"},
            True,
        ),
        (
            deployment("b", {"application": "postgres-operator"}),
            {"b": "Active"},
            True,
        ),
        (
            deployment("b", {"app.kubernetes.io/name": "postgres-operator"}),
            {"b": "Terminating"},
            False,
        ),
    ],
    ids=["own", "same release elsewhere", "manifest install", "terminating"],
)
def test_running_operator_table(
    item: dict[str, Any], phases: dict[str, str], reported: bool
) -> None:
    assert bool(_running_operators([item], "crm", "shop", phases)) is reported


@pytest.mark.parametrize(
    ("name", "clashes"),
    [("crm-postgres-operator", True), ("crm-postgres-operator-old", False)],
    ids=["release name only", "with namespace"],
)
def test_same_release_other_namespace(name: str, clashes: bool) -> None:
    """The same operator release name in another namespace clashes when the
    role's name is the release name alone, not when it carries the namespace."""
    roles = [role(name, "postgres-operator", "crm-postgres-operator", "old")]
    found = _fixed_name_roles(roles, "crm", "shop", {"old": "Active"})
    assert bool(found) is clashes


def pending(namespace: str, name: str, chart: str) -> dict[str, Any]:
    """Return helm's record of a release that is being installed."""
    secret = record({"chart": {"metadata": {"name": chart}}})
    secret["metadata"] = {
        "namespace": namespace,
        "labels": {"name": name, "owner": "helm", "status": "pending-install"},
    }
    return secret


@pytest.mark.parametrize(
    ("item", "phases", "reported"),
    [
        (pending("other", "x-postgres-operator", "postgres-operator"), {}, True),
        (
            pending("other", "x-rabbitmq-operator", "rabbitmq-cluster-operator"),
            {},
            True,
        ),
        (pending("shop", "crm-postgres-operator", "postgres-operator"), {}, False),
        (pending("shop", "other-postgres-operator", "postgres-operator"), {}, True),
        (pending("other", "x-temporal", "temporal"), {}, False),
        (pending("other", "x-postgres-operator", "zalando-fork"), {}, True),
        (pending("other", "x-rabbitmq-operator", ""), {}, True),
        (
            pending("gone", "x-postgres-operator", "postgres-operator"),
            {"gone": "Terminating"},
            False,
        ),
    ],
    ids=[
        "postgres elsewhere",
        "rabbitmq elsewhere",
        "own",
        "other release same namespace",
        "not an operator",
        "renamed chart",
        "empty chart name",
        "terminating",
    ],
)
def test_installing_operator_table(
    item: dict[str, Any], phases: dict[str, str], reported: bool
) -> None:
    """An operator chart that another helm release is installing counts as
    installed, before its Deployment exists."""
    found = _installing_operators([item], "crm", "shop", phases)
    assert bool(found) is reported
    if reported:
        name = item["metadata"]["labels"]["name"]
        where = item["metadata"]["namespace"]
        assert found[0].startswith(
            f"{'rabbitmq-cluster' if 'rabbitmq' in name else 'postgres'}-operator "
            f"(helm release {name} in namespace {where}, being installed: "
            "pending-install; "
        )
        assert f"`helm uninstall {name} --namespace {where}`" in found[0]


def test_installing_operator_since() -> None:
    """The description gives when helm created the record, from its label."""
    item = pending("other", "x-postgres-operator", "postgres-operator")
    item["metadata"]["labels"]["createdAt"] = "1796428800"
    (found,) = _installing_operators([item], "crm", "shop", {})
    assert "pending-install since 2026-12-05T00:00:00Z; if no helm" in found
    item["metadata"]["labels"]["createdAt"] = "soon"
    (found,) = _installing_operators([item], "crm", "shop", {})
    assert "pending-install; if no helm" in found
