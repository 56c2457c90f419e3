"""Malformed and hostile deploy requests: a clear error, and nothing applied.

Two layers. A property test feeds generated hostile strings and wrong types
to ``parse_request``, which must raise InvalidRequestError naming the field.
A table of requests then runs through the real VentrosDeploy workflow on the
real dev server and the shared cluster: each must fail with a non-retryable
ApplicationError whose message names the field and the fix, and the target
namespace must hold no object that the deploy would create.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowFailureError
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.kubeapi import (
    InvalidError,
    KubeClient,
    NotFoundError,
    ResourceType,
    well_known,
)
from deployer import contracts
from deployer.inputs import (
    DeployRequest,
    InvalidRequestError,
    parse_request,
    workflow_id_for,
)
from deployer.settings import WorkerSettings
from testbed.cluster import LocalCluster, tool_path
from testbed.leftovers import remove_namespace
from tests.conftest import FIXTURE_CHARTS, REPO_ROOT, deploy_request, running_worker

# -- layer 1: parse_request -----------------------------------------------------

# Characters a shell would interpret; none may reach helm in a name or path.
SHELL_METACHARACTERS = list(";|&$`()<>*?!{}[]'\"\\ \t\n\r\x00#~=%^,")
SAFE_TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", max_size=12)
OPTION_NAMES = st.sampled_from(
    ["kubeconfig", "kube-context", "namespace", "post-renderer", "set", "values"]
)

OPTION_LIKE = st.one_of(
    st.builds(lambda name, value: f"--{name}={value}", OPTION_NAMES, SAFE_TEXT),
    st.builds(lambda name: f"--{name}", OPTION_NAMES),
    st.builds(lambda text: f"-{text}", SAFE_TEXT),
)
WITH_METACHARACTER = st.builds(
    lambda head, char, tail: f"{head}{char}{tail}",
    SAFE_TEXT,
    st.sampled_from(SHELL_METACHARACTERS),
    SAFE_TEXT,
)
SHELL_COMMANDS = st.sampled_from(
    ["; rm -rf /", "$(id)", "`id`", "a && curl x", "a | sh", "${HOME}", "a\nid"]
)
TRAILING_NEWLINE = st.builds(lambda text: f"a{text}\n", SAFE_TEXT)
TRAVERSAL = st.builds(
    lambda depth, tail: "../" * depth + (tail or "etc"),
    st.integers(min_value=1, max_value=6),
    SAFE_TEXT,
)
ABSOLUTE = st.builds(lambda tail: f"/{tail}", SAFE_TEXT)
OVERSIZED = st.integers(min_value=300, max_value=20_000).map(lambda n: "a" * n)

# Hostile strings that every name-like field rejects.
HOSTILE_NAMES = st.one_of(
    OPTION_LIKE,
    WITH_METACHARACTER,
    SHELL_COMMANDS,
    TRAILING_NEWLINE,
    TRAVERSAL,
    ABSOLUTE,
    OVERSIZED,
    st.just(""),
)
# A chart path also rejects traversal inside the path and empty parts.
HOSTILE_PATHS = st.one_of(
    HOSTILE_NAMES,
    st.builds(lambda head, tail: f"{head or 'a'}/../{tail}", SAFE_TEXT, TRAVERSAL),
    st.builds(lambda head: f"{head or 'a'}//chart", SAFE_TEXT),
)
# Values that are not strings, for string fields.
NOT_STRINGS = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(SAFE_TEXT, max_size=3),
    st.dictionaries(SAFE_TEXT, SAFE_TEXT, max_size=3),
)
# Values that are not JSON integers, for the timeout fields: "30" and 30.0
# too, which a lax parser would take as 30.
NOT_INTEGERS = st.one_of(
    st.text(alphabet="abcxyz -", min_size=1, max_size=8),
    st.integers(min_value=10, max_value=3600).map(str),
    st.integers(min_value=10, max_value=3600).map(float),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(SAFE_TEXT, st.integers(), max_size=3),
)
TIMEOUT_OUT_OF_BOUNDS = st.one_of(st.integers(max_value=9), st.integers(min_value=3601))
PHASES = ("base", "data", "messaging", "cache", "temporal", "migration", "app")
KNOWN_FIELDS = set(DeployRequest.model_fields)

# Where each string field sits in the request.
NAME_FIELDS = ("release", "namespace", "app_version", "kube_context")
PATH_FIELDS = (
    ("chart", "path"),
    ("operator_charts", "postgres_operator", "path"),
    ("operator_charts", "temporal", "path"),
)

PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def set_field(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """Return a valid request with the field at path set to value."""
    request = deploy_request("ventros-crm")
    node = request
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return request


def rejection(raw: Any) -> str:
    """Return the InvalidRequestError message for raw; fail if it is accepted."""
    try:
        parse_request(raw)
    except InvalidRequestError as error:
        return str(error)
    raise AssertionError(f"parse_request accepted {json.dumps(raw)[:300]}")


def names_field(message: str, path: tuple[str, ...]) -> bool:
    """Tell whether message names the field, in either form pydantic reports it.

    A field check reports "chart.path: ...", while the chart reference's own
    check reports "chart: path ...".
    """
    dotted = ".".join(path)
    parent, leaf = ".".join(path[:-1]), path[-1]
    return f"{dotted}: " in message or (
        bool(parent) and f"{parent}: {leaf} " in message
    )


@PROPERTY_SETTINGS
@given(field=st.sampled_from(NAME_FIELDS), value=HOSTILE_NAMES)
def test_parse_rejects_hostile_names(field: str, value: str) -> None:
    """Option-like, shell, traversal, oversized and empty names fail by field."""
    message = rejection(set_field((field,), value))
    assert names_field(message, (field,)), message


@PROPERTY_SETTINGS
@given(path=st.sampled_from(PATH_FIELDS), value=HOSTILE_PATHS)
def test_parse_rejects_hostile_chart_paths(path: tuple[str, ...], value: str) -> None:
    """Chart paths that leave the chart root or look like options are rejected."""
    message = rejection(set_field(path, value))
    assert names_field(message, path), message


@PROPERTY_SETTINGS
@given(
    field=st.sampled_from([("repository",), ("name",), ("version",)]),
    value=st.one_of(OPTION_LIKE, WITH_METACHARACTER, SHELL_COMMANDS, TRAILING_NEWLINE),
)
def test_parse_rejects_hostile_chart_refs(field: tuple[str, ...], value: str) -> None:
    """A repository chart reference with a hostile part fails, naming the part."""
    chart = {
        "repository": "https://charts.example.com",
        "name": "a",
        "version": "1.0.0",
    }
    chart[field[0]] = value
    message = rejection(set_field(("chart",), chart))
    assert names_field(message, ("chart", field[0])), message


@PROPERTY_SETTINGS
@given(
    path=st.sampled_from([(f,) for f in NAME_FIELDS] + list(PATH_FIELDS)),
    value=NOT_STRINGS,
)
def test_parse_rejects_non_strings(path: tuple[str, ...], value: Any) -> None:
    """A number, list or mapping in a string field is rejected, naming the field."""
    message = rejection(set_field(path, value))
    assert names_field(message, path), message


@PROPERTY_SETTINGS
@given(
    path=st.sampled_from(
        [("timeouts", p) for p in PHASES] + [("migration_wait_for_postgres_s",)]
    ),
    value=st.one_of(NOT_INTEGERS, TIMEOUT_OUT_OF_BOUNDS),
)
def test_parse_rejects_bad_timeouts(path: tuple[str, ...], value: Any) -> None:
    """Timeouts that are not whole seconds within 10..3600 are rejected by field."""
    message = rejection(set_field(path, value))
    assert names_field(message, path), message


@pytest.mark.parametrize("value", ["yes", "off", "true", 0, 1, None])
def test_parse_rejects_non_boolean_install_operators(value: Any) -> None:
    """install_operators takes only true or false, not text or numbers that a
    lax parser would turn into one."""
    message = rejection(set_field(("install_operators",), value))
    assert names_field(message, ("install_operators",)), message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_parse_rejects_non_finite_values(value: float) -> None:
    """NaN and Infinity in values have no JSON form, so they are rejected,
    naming where they are."""
    message = rejection(set_field(("values",), {"app": {"weight": [1, value]}}))
    assert "values.app.weight[1]: must be a finite number" in message, message


@PROPERTY_SETTINGS
@given(
    name=st.text(
        alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=20
    ).filter(lambda n: n not in KNOWN_FIELDS),
    value=st.one_of(SAFE_TEXT, st.integers()),
)
def test_parse_rejects_unknown_fields(name: str, value: Any) -> None:
    """An unknown top-level field is rejected by name, with the spelling hint."""
    request = deploy_request("ventros-crm")
    request[name] = value
    message = rejection(request)
    assert f"{name}: unknown field" in message, message


@PROPERTY_SETTINGS
@given(
    raw=st.one_of(
        st.text(max_size=40).filter(lambda t: not _is_json_object(t)),
        st.integers(),
        st.lists(st.integers(), max_size=3),
        st.none(),
    )
)
def test_parse_rejects_non_objects(raw: Any) -> None:
    """Text that is not one JSON object, and non-object JSON, are rejected."""
    message = rejection(raw)
    assert "JSON object" in message, message


@PROPERTY_SETTINGS
@given(
    value=st.one_of(
        st.lists(st.integers(), max_size=3),
        st.text(max_size=10),
        st.integers(),
        st.dictionaries(
            st.just("deployer"), st.dictionaries(SAFE_TEXT, SAFE_TEXT), min_size=1
        ),
    )
)
def test_parse_rejects_bad_values(value: Any) -> None:
    """values must be a mapping and must not set the deployer's own key."""
    message = rejection(set_field(("values",), value))
    assert "values: " in message, message


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def test_parse_rejects_oversized_values() -> None:
    """values of more than 256 KiB of JSON are rejected with the size and the limit."""
    message = rejection(set_field(("values",), {"config": {"blob": "x" * 300_000}}))
    assert "values: is at least 300024 bytes of JSON" in message
    assert "the limit is 262144" in message


def test_parse_rejects_deep_values() -> None:
    """values nested deeper than 64 levels are rejected with the depth."""
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(100):
        inner["a"] = {}
        inner = inner["a"]
    message = rejection(set_field(("values",), {"config": deep}))
    assert "values: are nested 102 levels deep; the limit is 64" in message


@pytest.mark.parametrize("workflow_type", ["VentrosDeploy", "VentrosDestroy"])
async def test_workflow_rejects_undecodable_input(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    workflow_type: str,
) -> None:
    """Input nested past the JSON decoder's recursion limit ends the run as
    InvalidRequest, where the task used to fail until someone terminated it."""
    depth = 5000
    data = '{"release": "deep", "namespace": "deep-ns", "values": ' + '{"a": ' * depth
    data += "{}" + "}" * depth + "}"
    payload = Payload(metadata={"encoding": b"json/plain"}, data=data.encode())
    async with running_worker(temporal_env.client, worker_settings):
        handle = await temporal_env.client.start_workflow(
            workflow_type,
            RawValue(payload),
            id=f"deep-{uuid.uuid4().hex[:8]}",
            task_queue=worker_settings.task_queue,
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), timeout=30)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == contracts.INVALID_REQUEST
    assert "the request cannot be decoded" in cause.message
    assert "nest at most 64 levels deep" in cause.message


def test_parse_hides_values_input() -> None:
    """A rejected values field never echoes its input, which may be secret."""
    secret = uuid.uuid4().hex
    message = rejection(set_field(("values",), {"deployer": {}, "password": secret}))
    assert secret not in message


# -- no shell anywhere in the product ---------------------------------------------

PRODUCT_PACKAGES = ("deployer", "activities", "workflows", "worker", "client")
SHELL_CALLS = (
    "shell=True",
    "create_subprocess_shell",
    "os.system",
    "os.popen",
    "getoutput",
    "getstatusoutput",
)


def test_product_never_uses_shell() -> None:
    """helm and kubectl run from argument lists: no product module starts a shell."""
    sources = [p for pkg in PRODUCT_PACKAGES for p in (REPO_ROOT / pkg).rglob("*.py")]
    assert len(sources) >= len(PRODUCT_PACKAGES)
    found = [
        f"{path.relative_to(REPO_ROOT)}: {call}"
        for path in sources
        for call in SHELL_CALLS
        if call in path.read_text()
    ]
    assert found == []


def test_helm_runs_from_argument_list() -> None:
    """The helm runner starts helm with create_subprocess_exec."""
    source = (REPO_ROOT / "activities" / "helm.py").read_text()
    assert "create_subprocess_exec(" in source


# -- layer 2: the workflow, end to end ----------------------------------------------


RequestBuilder = Callable[[str], dict[str, Any]]


@dataclass(frozen=True)
class BadCase:
    """One malformed request and the text its failure message must contain."""

    id: str
    # The workflow input: a function of the test namespace.
    build: Callable[[str], Any]
    error_type: str
    # Substrings of the failure message: the field, then the fix.
    field: str
    fix: str


def with_request(**overrides: Any) -> RequestBuilder:
    def build(ns: str) -> dict[str, Any]:
        request = deploy_request(ns)
        request.update(overrides)
        return request

    return build


def with_values(values: dict[str, Any]) -> RequestBuilder:
    return lambda ns: deploy_request(ns, values={"rabbitmq": {"replicas": 1}, **values})


def with_operator_chart(key: str, path: str) -> RequestBuilder:
    def build(ns: str) -> dict[str, Any]:
        request = deploy_request(ns)
        request["operator_charts"][key] = {"path": path}
        return request

    return build


def with_timeout(phase: str, value: Any) -> RequestBuilder:
    def build(ns: str) -> dict[str, Any]:
        request = deploy_request(ns)
        request["timeouts"][phase] = value
        return request

    return build


INVALID = contracts.INVALID_REQUEST
REJECTED = contracts.VALUES_REJECTED
DNS_LABEL_FIX = "must be a DNS-1123 label"
IMAGE_TAG_FIX = "must be an image tag"
CONTEXT_FIX = "must be the name of a context"
PATH_FIX = "path must"
UNKNOWN_FIX = "remove it or check its spelling"
BOUNDS_FIX = "Input should be"
SCHEMA_FIX = "Fix the named value"
CHART_FIX = "pass a folder that holds a chart"

BAD_CASES = [
    BadCase(
        "json-truncated",
        lambda ns: '{"release": "x"',
        INVALID,
        "not valid JSON",
        "pass one JSON object",
    ),
    BadCase(
        "json-empty-string",
        lambda ns: "",
        INVALID,
        "not valid JSON",
        "pass one JSON object",
    ),
    BadCase(
        "json-array",
        lambda ns: [1, 2],
        INVALID,
        "must be a JSON object",
        'pass for example {"release"',
    ),
    BadCase(
        "json-number",
        lambda ns: 42,
        INVALID,
        "must be a JSON object",
        'pass for example {"release"',
    ),
    BadCase(
        "json-string-wrong-type",
        lambda ns: json.dumps({"release": 5}),
        INVALID,
        "release: ",
        "valid string",
    ),
    BadCase(
        "release-int", with_request(release=5), INVALID, "release: ", "valid string"
    ),
    BadCase(
        "namespace-list",
        with_request(namespace=["a"]),
        INVALID,
        "namespace: ",
        "valid string",
    ),
    BadCase(
        "values-list",
        with_request(values=["a"]),
        INVALID,
        "values: ",
        "must be a JSON object, got an array",
    ),
    BadCase(
        "chart-string",
        with_request(chart="chart"),
        INVALID,
        "chart: ",
        "must be a JSON object, got a string",
    ),
    BadCase(
        "install-operators-text",
        with_request(install_operators="maybe"),
        INVALID,
        "install_operators: ",
        "must be true or false (a JSON boolean, no quotes)",
    ),
    BadCase(
        "timeout-text",
        with_timeout("base", "fast"),
        INVALID,
        "timeouts.base: ",
        "must be a JSON integer of seconds, such as 300",
    ),
    BadCase(
        "timeout-zero",
        with_timeout("app", 0),
        INVALID,
        "timeouts.app: ",
        "greater than or equal to 10",
    ),
    BadCase(
        "timeout-huge",
        with_timeout("data", 100_000),
        INVALID,
        "timeouts.data: ",
        "less than or equal to 3600",
    ),
    BadCase(
        "migration-wait-negative",
        with_request(migration_wait_for_postgres_s=-1),
        INVALID,
        "migration_wait_for_postgres_s: ",
        BOUNDS_FIX,
    ),
    BadCase(
        "release-option",
        with_request(release="--kubeconfig=/etc/x"),
        INVALID,
        "release: ",
        DNS_LABEL_FIX,
    ),
    BadCase(
        "namespace-option",
        with_request(namespace="--namespace=kube-system"),
        INVALID,
        "namespace: ",
        DNS_LABEL_FIX,
    ),
    BadCase(
        "namespace-of-the-cluster",
        with_request(namespace="kube-system"),
        INVALID,
        "namespace: starts with 'kube-'",
        "such as ventros-crm",
    ),
    BadCase(
        "app-version-option",
        with_request(app_version="--post-renderer=/bin/sh"),
        INVALID,
        "app_version: ",
        IMAGE_TAG_FIX,
    ),
    BadCase(
        "kube-context-option",
        with_request(kube_context="--kubeconfig=/etc/x"),
        INVALID,
        "kube_context: ",
        CONTEXT_FIX,
    ),
    BadCase(
        "chart-path-option",
        with_request(chart={"path": "--kubeconfig=/etc/x"}),
        INVALID,
        "chart: path",
        PATH_FIX,
    ),
    BadCase(
        "release-shell",
        with_request(release="x; rm -rf /"),
        INVALID,
        "release: ",
        DNS_LABEL_FIX,
    ),
    BadCase(
        "namespace-subshell",
        with_request(namespace="$(id)"),
        INVALID,
        "namespace: ",
        DNS_LABEL_FIX,
    ),
    BadCase(
        "app-version-backticks",
        with_request(app_version="`id`"),
        INVALID,
        "app_version: ",
        IMAGE_TAG_FIX,
    ),
    BadCase(
        "app-version-newline",
        with_request(app_version="1.0.0\n"),
        INVALID,
        "app_version: ",
        IMAGE_TAG_FIX,
    ),
    BadCase(
        "kube-context-shell",
        with_request(kube_context="ctx;id"),
        INVALID,
        "kube_context: ",
        CONTEXT_FIX,
    ),
    BadCase(
        "chart-path-shell",
        with_request(chart={"path": "chart;rm -rf /"}),
        INVALID,
        "chart: path",
        PATH_FIX,
    ),
    BadCase(
        "chart-path-traversal",
        with_request(chart={"path": "../../etc"}),
        INVALID,
        "chart: path",
        PATH_FIX,
    ),
    BadCase(
        "chart-path-absolute",
        with_request(chart={"path": "/etc/passwd"}),
        INVALID,
        "chart: path",
        PATH_FIX,
    ),
    BadCase(
        "operator-path-traversal",
        with_operator_chart("temporal", "tests/../../../etc"),
        INVALID,
        "operator_charts.temporal: path",
        PATH_FIX,
    ),
    BadCase(
        "chart-repository-option",
        with_request(
            chart={
                "repository": "https://x.io --kubeconfig=/etc/x",
                "name": "a",
                "version": "1.0.0",
            }
        ),
        INVALID,
        "chart: repository",
        "https:// or oci:// URL",
    ),
    BadCase(
        "release-10k",
        with_request(release="a" * 10_000),
        INVALID,
        "release: ",
        DNS_LABEL_FIX,
    ),
    BadCase(
        "namespace-10k",
        with_request(namespace="n" * 10_000),
        INVALID,
        "namespace: ",
        DNS_LABEL_FIX,
    ),
    BadCase(
        "values-oversized",
        with_values({"config": {"blob": "x" * 300_000}}),
        INVALID,
        "values: ",
        "the limit is 262144",
    ),
    BadCase(
        "unknown-field", with_request(shell="sh -c id"), INVALID, "shell: ", UNKNOWN_FIX
    ),
    BadCase(
        "unknown-chart-field",
        with_request(chart={"path": "chart", "ref": "x"}),
        INVALID,
        "chart.ref: ",
        UNKNOWN_FIX,
    ),
    BadCase(
        "values-deployer-key",
        with_values({"deployer": {"phases": []}}),
        INVALID,
        "values: ",
        "must not set 'deployer'",
    ),
    # The rest pass parse_request and fail in the validate_request activity.
    BadCase(
        "schema-negative-replicas",
        with_values({"app": {"replicas": -1}}),
        REJECTED,
        "/app/replicas",
        SCHEMA_FIX,
    ),
    BadCase(
        "schema-empty-image",
        with_values({"image": {"repository": ""}}),
        REJECTED,
        "/image/repository",
        SCHEMA_FIX,
    ),
    BadCase(
        "schema-unknown-key", with_values({"bogus": 1}), REJECTED, "bogus", SCHEMA_FIX
    ),
    BadCase(
        "object-bad-annotation",
        with_values({"app": {"podAnnotations": {"bad key!": "x"}}}),
        contracts.OBJECT_INVALID,
        "spec.template.annotations",
        "Fix the value in the request that sets this field",
    ),
    BadCase(
        "object-request-over-limit",
        with_values(
            {"app": {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}}
        ),
        contracts.OBJECT_INVALID,
        "must be less than or equal to cpu limit",
        "Fix the value in the request that sets this field",
    ),
    BadCase(
        "schema-temporal-not-object",
        with_values({"temporal": "oops"}),
        REJECTED,
        "/temporal",
        SCHEMA_FIX,
    ),
    BadCase(
        "schema-temporal-namespace",
        with_values({"temporal": {"namespace": "Ventros_CRM"}}),
        REJECTED,
        "/temporal/namespace",
        SCHEMA_FIX,
    ),
    BadCase(
        "schema-temporal-system-namespace",
        with_values({"temporal": {"namespace": "temporal-system"}}),
        REJECTED,
        "/temporal/namespace",
        "may not be temporal-system, the Temporal server's own namespace",
    ),
    BadCase(
        "schema-retention-hours",
        with_values({"temporal": {"namespaceRetention": "72h"}}),
        REJECTED,
        "/temporal/namespaceRetention",
        SCHEMA_FIX,
    ),
    BadCase(
        "schema-password-type",
        with_values({"secrets": {"redisPassword": 7}}),
        REJECTED,
        "/secrets/redisPassword",
        SCHEMA_FIX,
    ),
    BadCase(
        "template-team-id",
        with_values({"postgresql": {"teamId": "other"}}),
        REJECTED,
        "postgresql.teamId",
        "Set postgresql.teamId",
    ),
    BadCase(
        "kube-context-unknown",
        with_request(kube_context="prod-cluster"),
        contracts.KUBE_CONTEXT_NOT_FOUND,
        "kube_context 'prod-cluster'",
        "it has: ",
    ),
    BadCase(
        "chart-without-chart-yaml",
        with_request(chart={"path": "tests"}),
        contracts.CHART_NOT_FOUND,
        "chart path 'tests'",
        CHART_FIX,
    ),
    BadCase(
        "chart-missing",
        with_request(chart={"path": "no/such/chart"}),
        contracts.CHART_NOT_FOUND,
        "chart path 'no/such/chart'",
        CHART_FIX,
    ),
    BadCase(
        "operator-chart-without-chart-yaml",
        with_operator_chart("postgres_operator", "tests/fixtures"),
        contracts.CHART_NOT_FOUND,
        "chart path 'tests/fixtures'",
        CHART_FIX,
    ),
    BadCase(
        "app-temporal-is-bootstrap",
        with_values({"temporal": {"address": "127.0.0.1:7233"}}),
        INVALID,
        "values.temporal.address",
        "the app needs its own Temporal",
    ),
]

# Created by Kubernetes itself in every namespace, not by a deploy.
SYSTEM_OBJECTS = {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")}
NAMESPACED_KINDS = [
    well_known("v1", "Secret"),
    ResourceType("v1", "ConfigMap", "configmaps", True),
    ResourceType("v1", "ServiceAccount", "serviceaccounts", True),
    well_known("v1", "Service"),
    well_known("apps/v1", "Deployment"),
    well_known("apps/v1", "StatefulSet"),
    well_known("batch/v1", "Job"),
    well_known("acid.zalan.do/v1", "postgresql"),
    well_known("rabbitmq.com/v1beta1", "RabbitmqCluster"),
]


@dataclass(frozen=True)
class Outcome:
    """How one bad request's workflow ended."""

    error: BaseException | None
    # The highest attempt of any activity, from the workflow history.
    activity_attempts: int


@dataclass(frozen=True)
class TableRun:
    """Every bad request's outcome, and what the namespace held afterwards."""

    outcomes: dict[str, Outcome]
    leftovers: list[str]


def parsed_id(case: BadCase, namespace: str) -> str | None:
    """Return the release's workflow id when the case's input parses, else None.

    A deploy that gets past parsing must run under that id (validate rejects
    any other), so two such cases cannot run at the same time.
    """
    try:
        return parse_request(case.build(namespace)).workflow_id
    except InvalidRequestError:
        return None


async def run_bad_case(
    env: WorkflowEnvironment, task_queue: str, namespace: str, case: BadCase
) -> Outcome:
    handle = await env.client.start_workflow(
        "VentrosDeploy",
        case.build(namespace),
        id=parsed_id(case, namespace) or f"bad-{namespace}-{case.id}",
        task_queue=task_queue,
    )
    error: BaseException | None = None
    try:
        await asyncio.wait_for(handle.result(), timeout=120)
    except WorkflowFailureError as failure:
        error = failure.cause
    except TimeoutError as timeout:
        await handle.terminate("the bad-input test timed out")
        error = timeout
    history = await handle.fetch_history()
    attempts = [
        event.activity_task_started_event_attributes.attempt
        for event in history.events
        if event.HasField("activity_task_started_event_attributes")
    ]
    return Outcome(error=error, activity_attempts=max(attempts, default=0))


async def namespace_objects(kube: KubeClient, namespace: str) -> list[str]:
    """Return kind/name of every object in the namespace that a deploy creates."""
    found = []
    for rtype in NAMESPACED_KINDS:
        try:
            listing = await kube.list(rtype, namespace)
        except NotFoundError:
            # The operators' CRDs are not installed yet: no such objects exist.
            continue
        for item in listing.get("items", []):
            name = item["metadata"]["name"]
            if (rtype.kind, name) not in SYSTEM_OBJECTS:
                found.append(f"{rtype.kind}/{name}")
    return found


@pytest_asyncio.fixture(scope="module")
async def table_run(
    temporal_env: WorkflowEnvironment, cluster: LocalCluster, kube: KubeClient
) -> AsyncIterator[TableRun]:
    """Run every bad request on one worker, into one fresh namespace: those
    that fail parsing at once, the others one after another."""
    namespace = f"t-bad-{uuid.uuid4().hex[:8]}"
    ns_type = well_known("v1", "Namespace")
    await kube.create(
        ns_type,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
    )
    settings = WorkerSettings(
        kubeconfig=cluster.kubeconfig,
        helm=str(tool_path("helm")),
        chart_root=REPO_ROOT,
        task_queue=f"tq-bad-{uuid.uuid4().hex[:8]}",
        graceful_shutdown_s=2,
    )
    try:
        parsed = [case for case in BAD_CASES if parsed_id(case, namespace)]
        async with running_worker(temporal_env.client, settings):
            results = await asyncio.gather(
                *(
                    run_bad_case(temporal_env, settings.task_queue, namespace, case)
                    for case in BAD_CASES
                    if case not in parsed
                )
            )
            outcomes = {
                case.id: outcome
                for case, outcome in zip(
                    [c for c in BAD_CASES if c not in parsed], results, strict=True
                )
            }
            for case in parsed:
                outcomes[case.id] = await run_bad_case(
                    temporal_env, settings.task_queue, namespace, case
                )
        leftovers = await namespace_objects(kube, namespace)
        yield TableRun(outcomes=outcomes, leftovers=leftovers)
    finally:
        await kube.delete(ns_type, namespace)


def test_bad_case_table_size() -> None:
    """The end-to-end table covers at least 30 distinct malformed requests."""
    assert len({case.id for case in BAD_CASES}) >= 30


@pytest.mark.parametrize("case", BAD_CASES, ids=[case.id for case in BAD_CASES])
async def test_workflow_rejects_bad_request(table_run: TableRun, case: BadCase) -> None:
    """The workflow fails with a non-retryable typed error naming the field and fix."""
    outcome = table_run.outcomes[case.id]
    error = outcome.error
    assert isinstance(error, ApplicationError), repr(error)
    assert error.type == case.error_type, error.message
    assert error.non_retryable
    assert case.field in error.message, error.message
    assert case.fix in error.message, error.message


@pytest.mark.parametrize("case", BAD_CASES, ids=[case.id for case in BAD_CASES])
async def test_workflow_bad_request_not_retried(
    table_run: TableRun, case: BadCase
) -> None:
    """A bad request runs the validate activity once: retrying cannot fix it."""
    assert table_run.outcomes[case.id].activity_attempts <= 1


async def test_bad_requests_apply_nothing(table_run: TableRun) -> None:
    """After every bad request failed, the namespace contains no deploy object."""
    assert table_run.leftovers == []


async def test_bad_requests_leave_no_helm_release(table_run: TableRun) -> None:
    """No helm release record (a sh.helm.release.* Secret) was written."""
    releases = [
        o for o in table_run.leftovers if re.match(r"Secret/sh\.helm\.release\.", o)
    ]
    assert releases == []


def test_fixture_charts_exist() -> None:
    """The chart paths the table treats as valid really hold charts."""
    for path in ("chart", "tests/fixtures/charts/temporal"):
        assert (REPO_ROOT / path / "Chart.yaml").is_file(), path
    for path in ("tests", "tests/fixtures"):
        assert not (REPO_ROOT / path / "Chart.yaml").exists(), path


# Documents that helm's OpenAPI pass rejected before applying anything, and
# that helm without it (as upgrade_install runs it) applies partly.
BAD_TEMPLATES = {
    "list-with-bad-item": """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ServiceAccount
  metadata: {name: extra}
  automountToken: false
""",
    "no-api-version": "kind: ConfigMap\nmetadata: {name: extra}\ndata: {a: b}\n",
}


@pytest.mark.parametrize("template", sorted(BAD_TEMPLATES))
async def test_bad_render_rejected_before_apply(
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
    tmp_path: Path,
    template: str,
) -> None:
    """A chart that renders a List, or an object without apiVersion, fails in
    validate_request with the template's name, and nothing is applied."""
    shutil.copytree(REPO_ROOT / "chart", tmp_path / "chart")
    shutil.copytree(REPO_ROOT / FIXTURE_CHARTS, tmp_path / FIXTURE_CHARTS)
    bad = tmp_path / "chart" / "templates" / "zz-bad.yaml"
    bad.write_text(BAD_TEMPLATES[template])
    settings = worker_settings.model_copy(update={"chart_root": tmp_path})
    case = BadCase(template, deploy_request, REJECTED, "zz-bad.yaml", "Fix the")
    async with running_worker(temporal_env.client, settings):
        outcome = await run_bad_case(temporal_env, settings.task_queue, namespace, case)

    error = outcome.error
    assert isinstance(error, ApplicationError), repr(error)
    assert error.type == REJECTED
    assert error.non_retryable
    assert "ventros-crm/templates/zz-bad.yaml: renders " in error.message
    assert "Fix the template, or the value it renders from" in error.message
    assert outcome.activity_attempts == 1
    assert await namespace_objects(kube, namespace) == []


async def test_invalid_object_rejected_before_namespace_exists(
    temporal_env: WorkflowEnvironment, worker_settings: WorkerSettings, kube: KubeClient
) -> None:
    """Values that pass the chart's schema but make an object the API server
    rejects fail validate also on a first deploy, whose namespace does not
    exist yet: the namespace is still missing afterwards, and no phase ran."""
    namespace = f"t-new-{uuid.uuid4().hex[:8]}"
    case = BadCase(
        "new-namespace-bad-annotation",
        with_values({"app": {"podAnnotations": {"bad key!": "x"}}}),
        contracts.OBJECT_INVALID,
        "spec.template.annotations",
        "Fix the value",
    )
    async with running_worker(temporal_env.client, worker_settings):
        outcome = await run_bad_case(
            temporal_env, worker_settings.task_queue, namespace, case
        )
    error = outcome.error
    assert isinstance(error, ApplicationError), repr(error)
    assert error.type == contracts.OBJECT_INVALID, error.message
    assert error.non_retryable
    assert f"in namespace {namespace}" in error.message
    assert case.field in error.message
    assert await kube.get(well_known("v1", "Namespace"), namespace) is None


VAP = ResourceType(
    "admissionregistration.k8s.io/v1",
    "ValidatingAdmissionPolicy",
    "validatingadmissionpolicies",
    False,
)
VAP_BINDING = ResourceType(
    "admissionregistration.k8s.io/v1",
    "ValidatingAdmissionPolicyBinding",
    "validatingadmissionpolicybindings",
    False,
)


async def deny_workloads_in_default(kube: KubeClient, name: str) -> None:
    """Deny creating Deployments and StatefulSets in namespace default, as
    hardened clusters do, with reason Invalid (HTTP 422), and wait until the
    API server enforces it."""
    await kube.create(
        VAP,
        {
            "apiVersion": VAP.api_version,
            "kind": VAP.kind,
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["apps"],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["deployments", "statefulsets"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "false",
                        "message": "workloads may not be created in default",
                        "reason": "Invalid",
                    }
                ],
            },
        },
    )
    await kube.create(
        VAP_BINDING,
        {
            "apiVersion": VAP_BINDING.api_version,
            "kind": VAP_BINDING.kind,
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "default"}
                    }
                },
            },
        },
    )
    probe = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{name}-probe", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "example.test/x:1"}]},
            },
        },
    }
    for _ in range(100):
        try:
            await kube.create(
                well_known("apps/v1", "Deployment"), probe, "default", dry_run=True
            )
        except InvalidError:
            return
        await asyncio.sleep(0.1)
    pytest.fail("the ValidatingAdmissionPolicy was not enforced within 10 s")


async def test_default_namespace_policy_ignored(
    temporal_env: WorkflowEnvironment, worker_settings: WorkerSettings, kube: KubeClient
) -> None:
    """On a first deploy, validate checks each object in namespace default. A
    policy there that denies workloads is the cluster's rule for default, not a
    fault of the request, so the deploy goes on and succeeds."""
    namespace = f"t-new-{uuid.uuid4().hex[:8]}"
    policy = f"t-deny-{uuid.uuid4().hex[:6]}"
    await deny_workloads_in_default(kube, policy)
    try:
        async with running_worker(temporal_env.client, worker_settings):
            handle = await temporal_env.client.start_workflow(
                "VentrosDeploy",
                deploy_request(namespace),
                id=workflow_id_for(namespace, "ventros-crm"),
                task_queue=worker_settings.task_queue,
            )
            result = await asyncio.wait_for(handle.result(), timeout=180)
    finally:
        await kube.delete(VAP_BINDING, policy)
        await kube.delete(VAP, policy)
        await remove_namespace(kube, namespace)
    assert result["state"] == "succeeded"
