"""A request that is not a JSON object, or whose object fields are not
objects, is named by its JSON type, never by its content."""

from __future__ import annotations

from typing import Any

import pytest

from deployer.inputs import InvalidRequestError, check_image_tag, parse_request
from deployer.lifecycle import parse_destroy_request, parse_rollback_request


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (None, "got null"),
        ([1], "got an array"),
        (3, "got a number"),
        (True, "got a boolean"),
    ],
)
def test_non_object_named_by_type(raw: Any, shown: str) -> None:
    for parse in (parse_request, parse_destroy_request, parse_rollback_request):
        with pytest.raises(InvalidRequestError) as raised:
            parse(raw)
        assert f"must be a JSON object, {shown};" in str(raised.value)
        assert "NoneType" not in str(raised.value)


@pytest.mark.parametrize("raw", ["just a string", '{"release": "x"'])
def test_string_input_message(raw: str) -> None:
    """A string, as the temporal CLI sends for --input '"text"', is a string
    whose text is not valid JSON, and the text is not shown."""
    with pytest.raises(InvalidRequestError) as raised:
        parse_request(raw)
    message = str(raised.value)
    assert message.startswith(
        "the deploy request must be a JSON object, got a string that is not valid "
        "JSON (JSONDecodeError at position"
    )
    assert raw not in message


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [("values", [], "got an array"), ("chart", "chart", "got a string")],
)
def test_object_field_named_by_type(field: str, value: Any, shown: str) -> None:
    raw = {"release": "crm", "namespace": "shop", field: value}
    with pytest.raises(InvalidRequestError) as raised:
        parse_request(raw)
    assert f"{field}: must be a JSON object, {shown}" in str(raised.value)


def test_request_check_not_echoed() -> None:
    """A check of the whole destroy request names the fields, and the request
    itself is not repeated."""
    raw = {"release": "crm", "namespace": "shop", "delete_namespace": True}
    with pytest.raises(InvalidRequestError) as raised:
        parse_destroy_request(raw)
    message = str(raised.value)
    assert "set delete_data too" in message
    assert "(got" not in message


@pytest.mark.parametrize("field", ["chart", "operator_charts.temporal"])
def test_chart_check_not_echoed(field: str) -> None:
    """A chart's check names its fields and does not repeat the chart, whose
    repository URL may carry credentials."""
    chart = {
        "repository": "https://deploybot:SEKRET1@charts.example.com/temporal",
        "name": "temporal",
        "version": "1.0.0",
    }
    raw: dict[str, Any] = {"release": "crm", "namespace": "shop"}
    if field == "chart":
        raw["chart"] = chart
    else:
        raw["operator_charts"] = {"temporal": chart}
    with pytest.raises(InvalidRequestError) as raised:
        parse_request(raw)
    message = str(raised.value)
    assert f"{field}: repository must be an https:// or oci:// URL" in message
    assert "SEKRET1" not in message
    assert "(got" not in message


@pytest.mark.parametrize(
    "password", ["SEKRET2", "SEK@RET2", "SEK/RET2", "SEK RET2", "SE/K@R ET2"]
)
def test_url_credentials_not_echoed(password: str) -> None:
    """A URL with credentials typed into a text field is shown without them,
    also when the password contains "@", "/" or a space."""
    raw = {
        "release": "crm",
        "namespace": "shop",
        "app_version": f"https://u:{password}@h",
    }
    with pytest.raises(InvalidRequestError) as raised:
        parse_request(raw)
    message = str(raised.value)
    assert '(got "https://(credentials not shown)@h")' in message
    assert "RET2" not in message


def test_long_value_not_echoed() -> None:
    """A value too long to quote is named by its length only: a part of it
    could show a URL's credentials without the "@" that ends them."""
    value = "https://u:SEKRET3" + "x" * 2000 + "@h"
    raw = {"release": "crm", "namespace": "shop", "app_version": value}
    with pytest.raises(InvalidRequestError) as raised:
        parse_request(raw)
    message = str(raised.value)
    assert f"(got {len(value) + 2} characters)" in message
    assert "SEKRET3" not in message


@pytest.mark.parametrize(
    ("tag", "rejected"),
    [("SEKRET4", True), ("1.2.0", False), ("", False), (None, False)],
)
def test_app_version_and_tag_value(tag: str | None, rejected: bool) -> None:
    """A request that sets app_version and another image.tag value fails, as
    the validate activity checks it for a `temporal workflow start` too."""
    raw = {
        "release": "crm",
        "namespace": "shop",
        "app_version": "1.2.0",
        "values": {"image": {"tag": tag}},
    }
    request = parse_request(raw)
    if not rejected:
        check_image_tag(request)
        return
    with pytest.raises(InvalidRequestError) as raised:
        check_image_tag(request)
    assert "set different image tags" in str(raised.value)
    assert "SEKRET4" not in str(raised.value)


def test_number_tag_value_hint() -> None:
    """A tag that YAML or JSON read as a number (1.10 as 1.1) differs from
    app_version 1.10, and the error tells the user to quote it."""
    raw = {
        "release": "crm",
        "namespace": "shop",
        "app_version": "1.10",
        "values": {"image": {"tag": 1.1}},
    }
    with pytest.raises(InvalidRequestError) as raised:
        check_image_tag(parse_request(raw))
    message = str(raised.value)
    assert "set different image tags" in message
    assert "The image.tag value is a number" in message
    assert "quote it" in message


@pytest.mark.parametrize(
    ("namespace", "rejected"),
    [
        ("kube-system", True),
        ("kube-public", True),
        ("kube-node-lease", True),
        ("kube-x", True),
        ("default", False),
        ("kubeflow", False),
        ("my-kube-apps", False),
    ],
)
def test_deploy_into_cluster_namespace(namespace: str, rejected: bool) -> None:
    """A deploy into a namespace whose name Kubernetes keeps for itself is
    invalid; other names, default among them, are accepted."""
    raw = {"release": "crm", "namespace": namespace}
    if not rejected:
        assert parse_request(raw).namespace == namespace
        return
    with pytest.raises(InvalidRequestError) as raised:
        parse_request(raw)
    message = str(raised.value)
    assert "namespace: starts with 'kube-'" in message
    assert f'(got "{namespace}")' in message


@pytest.mark.parametrize(
    ("namespace", "rejected"),
    [("default", True), ("kube-system", True), ("kube-x", True), ("shop", False)],
)
def test_destroy_keeps_cluster_namespace(namespace: str, rejected: bool) -> None:
    """A destroy never deletes a namespace of the cluster; without
    delete_namespace it may still remove a release deployed there."""
    raw = {
        "release": "crm",
        "namespace": namespace,
        "delete_data": True,
        "delete_namespace": True,
    }
    assert parse_destroy_request({**raw, "delete_namespace": False})
    if not rejected:
        assert parse_destroy_request(raw).delete_namespace
        return
    with pytest.raises(InvalidRequestError) as raised:
        parse_destroy_request(raw)
    message = str(raised.value)
    assert f"would delete namespace '{namespace}'" in message
    assert "leave delete_namespace out" in message
    without_data = {**raw, "delete_data": False}
    with pytest.raises(InvalidRequestError) as raised:
        parse_destroy_request(without_data)
    assert f"would delete namespace '{namespace}'" in str(raised.value)


@pytest.mark.parametrize(
    ("parse", "field"),
    [(parse_request, "app_version"), (parse_rollback_request, "to_version")],
)
def test_number_version_quote_hint(parse: Any, field: str) -> None:
    """A version that a request file gives as a number gets a hint to quote it; a
    boolean gets no such hint."""
    with pytest.raises(InvalidRequestError) as raised:
        parse({field: 1.1})
    message = str(raised.value)
    assert f"{field}: Input should be a valid string (got 1.1)" in message
    assert "Quote it" in message
    with pytest.raises(InvalidRequestError) as raised:
        parse({field: True})
    assert "Quote it" not in str(raised.value)
    with pytest.raises(InvalidRequestError) as raised:
        parse({"namespace": 42})
    assert "Quote it" not in str(raised.value)
