"""Server messages kept in KubeApiError: the values they quote hidden, capped
at a word's end, cut marked."""

from __future__ import annotations

import json

import pytest

from activities.kubeapi import HIDDEN, MESSAGE_CAP, api_error, capped, hide_values


def test_short_message_kept() -> None:
    assert capped("spec.replicas: Invalid value: -1") == (
        "spec.replicas: Invalid value: -1"
    )


def test_long_message_cut_at_word() -> None:
    words = " ".join(f"word{i}" for i in range(200))
    cut = capped(words)
    assert len(cut) <= MESSAGE_CAP + len(" [cut]")
    assert cut.endswith(" [cut]")
    remaining = cut.removesuffix(" [cut]").split(" ")
    assert remaining == words.split(" ")[: len(remaining)]


def test_api_error_caps_message() -> None:
    error = api_error(422, "x " * 400, "PATCH /apis/apps/v1/x")
    assert error.message.endswith(" [cut]")
    assert len(error.message) <= MESSAGE_CAP + len(" [cut]")


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        (
            'StatefulSet.apps "r-redis" is invalid: spec.volumeClaimTemplates[0]'
            '.spec.storageClassName: Invalid value: "Pw_SEKRET": a lowercase RFC '
            "1123 subdomain must consist of",
            'StatefulSet.apps "r-redis" is invalid: spec.volumeClaimTemplates[0]'
            ".spec.storageClassName: Invalid value: (value not shown): a "
            "lowercase RFC 1123 subdomain must consist of",
        ),
        (
            'Deployment.apps "x" is invalid: [spec.replicas: Invalid value: -1: '
            "must be greater than or equal to 0, spec.template.spec.containers[0]"
            '.imagePullPolicy: Unsupported value: "SEKRET\\" \\"x": supported '
            'values: "Always", "Never"]',
            'Deployment.apps "x" is invalid: [spec.replicas: Invalid value: -1: '
            "must be greater than or equal to 0, spec.template.spec.containers[0]"
            ".imagePullPolicy: Unsupported value: (value not shown): supported "
            'values: "Always", "Never"]',
        ),
        (
            '.spec.template.spec.containers[name="redis"].image: expected '
            "string, got &value.valueUnstructured{Value:map[string]interface {}"
            '{"SEKRET:x":interface {}(nil)}}',
            '.spec.template.spec.containers[name="redis"].image: expected '
            "string, got (value not shown)",
        ),
        (
            'spec.x: Invalid value: map[string]interface {}{"a: b":"SEKRET"}: '
            "must be a string",
            "spec.x: Invalid value: (value not shown): must be a string",
        ),
        ('spec.x: Not found: "SEKRET"', "spec.x: Not found: (value not shown)"),
        (
            "metadata.name: Required value: name or generateName is required",
            "metadata.name: Required value: name or generateName is required",
        ),
        ('namespaces "SEKRET" not found', 'namespaces "SEKRET" not found'),
    ],
)
def test_hide_values_table(message: str, shown: str) -> None:
    """The values that field errors and typed conversions quote are hidden;
    numbers and the object names before "is invalid" stay."""
    assert hide_values(message) == shown


def test_api_error_hides_value() -> None:
    body = json.dumps(
        {
            "kind": "Status",
            "reason": "Invalid",
            "message": 'ConfigMap "c" is invalid: data: Invalid value: "SEKRET"',
        }
    )
    error = api_error(422, body, "PATCH /api/v1/namespaces/n/configmaps/c")
    assert "SEKRET" not in str(error)
    assert error.message == 'ConfigMap "c" is invalid: data: Invalid value: ' + HIDDEN
