"""Checks on a rendered manifest before any phase applies it.

upgrade_install runs helm without its OpenAPI pass, which used to reject a
document without apiVersion, or a List with a bad item, before applying
anything. rendered_objects rejects those in validate_request instead.
"""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from activities.deploy import PHASE_LABEL, app_temporal_namespace, rendered_app_version
from activities.helm import HelmError, InvalidRenderError, rendered_objects
from deployer import contracts

GOOD = """\
---
# Source: ventros-crm/templates/configmap.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: first
data:
  a: b
"""


def manifest(document: str, source: str = "ventros-crm/templates/bad.yaml") -> str:
    return f"{GOOD}---\n# Source: {source}\n{document}"


def test_rendered_objects_good_manifest() -> None:
    objects = rendered_objects(GOOD + "---\n# Source: x.yaml\n# only a comment\n")
    assert objects == [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "first"},
            "data": {"a": "b"},
        }
    ]


def test_rendered_objects_several_per_template() -> None:
    """A template that renders two documents gives two objects."""
    second = "kind: ConfigMap\napiVersion: v1\nmetadata: {name: second}\n"
    text = manifest(f"{second}---\n{second.replace('second', 'third')}")
    names = [o["metadata"]["name"] for o in rendered_objects(text)]
    assert names == ["first", "second", "third"]


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (
            "kind: ConfigMap\nmetadata: {name: x}\n",
            "renders an object without apiVersion",
        ),
        ("apiVersion: v1\nmetadata: {name: x}\n", "renders an object without kind"),
        ("apiVersion: v1\nkind: ConfigMap\n", "renders a ConfigMap without metadata"),
        (
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n",
            "renders a List; render each item as a document of its own",
        ),
        ("- a\n- b\n", "renders a YAML list, not an object"),
        ("just text\n", "renders a YAML str, not an object"),
    ],
    ids=["no-api-version", "no-kind", "no-name", "list", "yaml-list", "scalar"],
)
def test_rendered_objects_rejects_document(document: str, problem: str) -> None:
    with pytest.raises(InvalidRenderError) as caught:
        rendered_objects(manifest(document))
    message = str(caught.value)
    assert message.startswith("ventros-crm/templates/bad.yaml: ")
    assert problem in message


def test_rendered_objects_invalid_yaml_hides_content() -> None:
    """A parse error names the template and line, not the text, which may be a
    rendered secret value."""
    document = (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"
        'stringData:\n  password: "s3cret\n\tleak: x\n'
    )
    with pytest.raises(InvalidRenderError) as caught:
        rendered_objects(manifest(document, "ventros-crm/templates/secret.yaml"))
    message = str(caught.value)
    assert message.startswith("ventros-crm/templates/secret.yaml: not valid YAML: ")
    assert "line " in message
    assert "s3cret" not in message
    assert "leak" not in message


def config_map(data: dict[str, str]) -> dict[str, Any]:
    return {"kind": "ConfigMap", "metadata": {"name": "config"}, "data": data}


def test_app_temporal_namespace_from_config_map() -> None:
    """The namespace and retention come from the base ConfigMap's data."""
    base = [
        {"kind": "Secret", "metadata": {"name": "secret"}},
        config_map({"LOG_LEVEL": "info"}),
        config_map({"TEMPORAL_NAMESPACE": "crm", "TEMPORAL_NAMESPACE_RETENTION": "7d"}),
    ]
    assert app_temporal_namespace(base) == ("crm", "7d")


def test_app_temporal_namespace_missing_rejected() -> None:
    """A chart without the retention key fails without retries, naming the key."""
    base = [config_map({"TEMPORAL_NAMESPACE": "crm"})]
    with pytest.raises(ApplicationError) as raised:
        app_temporal_namespace(base)
    assert raised.value.non_retryable
    assert raised.value.type == contracts.VALUES_REJECTED
    assert "TEMPORAL_NAMESPACE_RETENTION" in raised.value.message


@pytest.mark.parametrize(
    ("namespace", "retention", "key"),
    [
        ("Bad_Name", "3d", "temporal.namespace 'Bad_Name'"),
        ("a" * 47, "3d", "temporal.namespace"),
        ("-crm", "3d", "temporal.namespace"),
        ("temporal-system", "3d", "the Temporal server's own namespace"),
        ("crm", "72h", "temporal.namespaceRetention '72h'"),
        ("crm", "0d", "temporal.namespaceRetention"),
    ],
)
def test_app_temporal_namespace_bad_values(
    namespace: str, retention: str, key: str
) -> None:
    """Without the chart's schema, the deployer still rejects what the Temporal
    chart cannot create, naming the value and the rule."""
    base = [
        config_map(
            {"TEMPORAL_NAMESPACE": namespace, "TEMPORAL_NAMESPACE_RETENTION": retention}
        )
    ]
    with pytest.raises(ApplicationError) as raised:
        app_temporal_namespace(base)
    assert raised.value.non_retryable
    assert raised.value.type == contracts.VALUES_REJECTED
    assert key in raised.value.message
    assert " use " in raised.value.message


def test_app_temporal_namespace_longest_name() -> None:
    """A 46-character name fits the 63-character container name."""
    name = "a" * 46
    base = [
        config_map(
            {"TEMPORAL_NAMESPACE": name, "TEMPORAL_NAMESPACE_RETENTION": "9999d"}
        )
    ]
    assert app_temporal_namespace(base) == (name, "9999d")
    assert len(f"create-{name}-namespace") == 63


def test_helm_error_keeps_both_ends() -> None:
    """A long helm error keeps the object's name at the start and the reason at
    the end, and reports how much was cut between them."""
    stderr = (
        'Error: UPGRADE FAILED: cannot patch "crm-schema" '
        + "x" * 5000
        + (" field is immutable")
    )
    error = HelmError("upgrade crm", 1, stderr)
    assert error.stderr.startswith('Error: UPGRADE FAILED: cannot patch "crm-schema"')
    assert error.stderr.endswith("field is immutable")
    assert "characters cut" in error.stderr
    assert len(error.stderr) < 2100


def app_deployment(image: str, phase: str = "app") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "ventros-crm", "labels": {PHASE_LABEL: phase}},
        "spec": {
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/version": "label"}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            }
        },
    }


def test_rendered_app_version_cases() -> None:
    """The app version of a render is the image tag of the app phase's one
    Deployment; without exactly one there is none."""
    app = app_deployment("registry.local:5000/ventros/crm:2.3.1")
    redis = app_deployment("redis:7", phase="cache")
    assert rendered_app_version([redis, app]) == "2.3.1"
    assert rendered_app_version([app_deployment("crm@sha256:abc")]) == "label"
    assert rendered_app_version([redis]) is None
    assert rendered_app_version([app, app_deployment("crm:other")]) is None


def test_rendered_app_version_other_layouts() -> None:
    """A Deployment of another chart's layout gives no version, and no error
    in validate: a first container that is not the app, no containers, no
    pod template metadata."""
    sidecar_first = app_deployment("crm:3.0.0")
    containers = sidecar_first["spec"]["template"]["spec"]["containers"]
    containers[0]["name"] = "envoy"
    assert rendered_app_version([sidecar_first]) is None
    empty = app_deployment("crm:3.0.0")
    empty["spec"]["template"]["spec"]["containers"] = []
    assert rendered_app_version([empty]) is None
    bare = app_deployment("crm:3.0.0")
    del bare["spec"]["template"]["metadata"]
    assert rendered_app_version([bare]) == "3.0.0"
    no_spec = app_deployment("crm:3.0.0")
    del no_spec["spec"]
    assert rendered_app_version([no_spec]) is None
