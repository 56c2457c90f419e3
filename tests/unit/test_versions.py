"""The order of app versions that the check against an implicit downgrade
uses (deployer/versions.py)."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from activities.deploy import PHASE_LABEL, check_not_older
from activities.kubeapi import JsonObject
from deployer import contracts
from deployer.inputs import parse_request, values_image_tag
from deployer.versions import is_older, version_key


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.0.0", "1.1.0"),
        ("1.9.0", "1.10.0"),
        ("v1.2.0", "1.3"),
        ("2.0.0-rc.1", "2.0.0"),
        ("2.0.0-rc.2", "2.0.0-rc.10"),
        ("2.0.0-alpha", "2.0.0-alpha.1"),
        ("2.0.0-9", "2.0.0-alpha"),
        ("2024.6.1", "2024.12.1"),
    ],
)
def test_numeric_versions_ordered(older: str, newer: str) -> None:
    assert is_older(older, newer, {})
    assert not is_older(newer, older, {})


@pytest.mark.parametrize(("left", "right"), [("1.2", "1.2.0"), ("1.2.0+b1", "1.2.0")])
def test_equal_numeric_versions(left: str, right: str) -> None:
    assert version_key(left) == version_key(right)
    assert not is_older(left, right, {})
    assert not is_older(right, left, {})


@pytest.mark.parametrize(
    "tag", ["stable", "abc1234", "8675309", "20240601", "1.2.x", "", "1..2", "v"]
)
def test_tag_without_numbers_has_no_key(tag: str) -> None:
    assert version_key(tag) is None


def test_tags_ordered_by_migrations() -> None:
    migrated = {"abc1234": "2026-01-01T10:00:00Z", "def5678": "2026-02-01T10:00:00Z"}
    assert is_older("abc1234", "def5678", migrated)
    assert not is_older("def5678", "abc1234", migrated)


def test_unknown_order_is_not_older() -> None:
    migrated = {"abc1234": "2026-01-01T10:00:00Z"}
    assert not is_older("abc1234", "def5678", migrated)
    assert not is_older("stable", "1.0.0", migrated)
    assert not is_older("1.0.0", "stable", {})


def test_numbers_win_over_migration_order() -> None:
    """A hotfix of an old line migrated last is still older by its number."""
    migrated = {"1.0.1": "2026-03-01T10:00:00Z", "2.0.0": "2026-02-01T10:00:00Z"}
    assert is_older("1.0.1", "2.0.0", migrated)


@pytest.mark.parametrize(
    ("values", "tag"),
    [
        ({}, None),
        ({"image": {"tag": ""}}, None),
        ({"image": {"repository": "r"}}, None),
        ({"image": "r:1"}, None),
        ({"image": {"tag": "1.0.0"}}, "1.0.0"),
    ],
)
def test_values_image_tag(values: dict[str, object], tag: str | None) -> None:
    assert values_image_tag(values) == tag


def app_deployment(tag: str) -> JsonObject:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "crm", "labels": {PHASE_LABEL: "app"}},
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "app", "image": f"r:5000/crm:{tag}"}]}
            }
        },
    }


def check_numeric(running: str, **fields: Any) -> None:
    """Run validate's check for a render of 1.0.0 over a Deployment that runs
    running, with no migrations on record."""
    request = parse_request({"release": "crm", "namespace": "shop", **fields})
    existing = {("apps/v1", "Deployment", "crm"): app_deployment(running)}
    check_not_older(request, [app_deployment("1.0.0")], existing, {})


def test_plain_deploy_back_rejected() -> None:
    with pytest.raises(ApplicationError) as raised:
        check_numeric("1.1.0")
    message = raised.value.message
    assert raised.value.type == contracts.INVALID_REQUEST
    assert raised.value.non_retryable
    assert "would replace app version 1.1.0, which Deployment crm" in message
    assert "with 1.0.0, the chart's default, which is older" in message
    assert "(--app-version 1.1.0)" in message


@pytest.mark.parametrize(
    ("running", "fields"),
    [
        ("1.1.0", {"app_version": "1.0.0"}),
        ("1.1.0", {"values": {"image": {"tag": "1.0.0"}}}),
        ("0.9.0", {}),
        ("1.0.0", {}),
        ("1.0.0-rc.1", {}),
    ],
)
def test_named_or_newer_version_passes(running: str, fields: dict[str, Any]) -> None:
    check_numeric(running, **fields)
