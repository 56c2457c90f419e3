"""The deploy request: one JSON object, the same from our client and the CLI.

The workflow receives the raw JSON and validates it with ``parse_request``, so
a malformed request from ``temporal workflow start --input`` fails the
workflow at once with a non-retryable error that names each field, instead of
failing its workflow task forever. Nothing here does I/O; checks that need
the file system or the cluster run in the ``validate_request`` activity.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from deployer.phases import Phase

# Every pattern is applied with fullmatch: with match, "$" also accepts a
# trailing newline, which would pass "ventros-crm\n" on to helm and the API.
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# The chart derives names such as <release>-rabbitmq-server (at most 52
# characters for the RabbitMQ operator), which caps release names at 35.
RELEASE_MAX = 35
# An OCI image tag: the app version becomes the image tag and the Job name.
APP_VERSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
CHART_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CHART_VERSION = re.compile(r"^v?[0-9]+(\.[0-9]+){0,2}([-+][0-9A-Za-z.-]+)?$")
# A chart repository: an https:// or oci:// URL, without options or spaces.
REPOSITORY_URL = re.compile(
    r"^(https://|oci://)[A-Za-z0-9.-]+(:[0-9]+)?(/[A-Za-z0-9._~/-]*)?$"
)
# The user and password part of a URL, such as https://user:pw@host.
# A typed password may contain "@", "/" or a space, so the match runs to the
# last "@" of the text. It also hides the host and path of a URL with "@" in
# its path (oci://host/chart@sha256:...), which an error message can omit.
URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://).*@")
# The maximum length of a field value, in its JSON form, that an error message
# quotes.
MAX_ECHOED_CHARS = 1024
KUBE_CONTEXT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@:/-]{0,252}$")
MAX_VALUES_BYTES = 256 * 1024
# Helm values nest a few levels; far deeper JSON makes recursive encoders and
# decoders fail (the default recursion limit is 1000) in the worker.
MAX_VALUES_DEPTH = 64
# Kubernetes keeps namespace names with this prefix for itself.
RESERVED_NAMESPACE_PREFIX = "kube-"
# Namespaces the API server never deletes (its NamespaceLifecycle admission).
UNDELETABLE_NAMESPACES = ("default", "kube-system", "kube-public")
TIMEOUT_MIN_S = 10
TIMEOUT_MAX_S = 3600
DEFAULT_TIMEOUT_S = 300
# Fields whose values may be secret: error messages never echo their input.
SECRET_FIELDS = ("values",)


def check_release(value: str) -> str:
    """Return a valid release name; raise ValueError saying what is allowed."""
    if len(value) > RELEASE_MAX or not DNS1123_LABEL.fullmatch(value):
        raise ValueError(
            f"must be a DNS-1123 label of at most {RELEASE_MAX} characters: "
            "lowercase letters, digits and '-', starting and ending with a "
            "letter or digit"
        )
    return value


def check_namespace(value: str) -> str:
    """Return a valid namespace name; raise ValueError saying what is allowed."""
    if len(value) > 63 or not DNS1123_LABEL.fullmatch(value):
        raise ValueError(
            "must be a DNS-1123 label of at most 63 characters: "
            "lowercase letters, digits and '-', starting and ending with a "
            "letter or digit"
        )
    return value


def cluster_namespace(value: str) -> bool:
    """Whether a namespace belongs to the cluster, so a destroy must not delete it."""
    return value in UNDELETABLE_NAMESPACES or value.startswith(
        RESERVED_NAMESPACE_PREFIX
    )


def check_kube_context(value: str | None) -> str | None:
    """Return a kube context name that cannot pass as a kubectl or helm option."""
    if value is not None and not KUBE_CONTEXT.fullmatch(value):
        raise ValueError(
            "must be the name of a context in the worker's kubeconfig "
            "(letters, digits, '_', '.', '@', ':', '/', '-'; not starting with '-')"
        )
    return value


class ChartRef(BaseModel):
    """A chart: a path inside the worker's chart root, or a repository reference."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = None
    repository: str | None = None
    name: str | None = None
    version: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ChartRef:
        if self.path is not None:
            if self.repository or self.name or self.version:
                raise ValueError(
                    "give either path, or repository with name and version, not both"
                )
            _check_chart_path(self.path)
            return self
        if not (self.repository and self.name and self.version):
            raise ValueError("give path, or all of repository, name and version")
        if not REPOSITORY_URL.fullmatch(self.repository) or dot_segments(
            self.repository
        ):
            raise ValueError(
                "repository must be an https:// or oci:// URL without spaces, "
                "options, or '.' and '..' path parts"
            )
        if not CHART_NAME.fullmatch(self.name):
            raise ValueError(
                "name must be a chart name: lowercase letters, digits and '-'"
            )
        if not CHART_VERSION.fullmatch(self.version):
            raise ValueError("version must be a chart version such as 1.14.0")
        return self


def dot_segments(url: str) -> bool:
    """Tell whether the URL's path has a '.' or '..' part, which a client
    resolves, so that a URL under an allowed path could leave it."""
    path = url.split("://", 1)[-1].partition("/")[2]
    return any(part in (".", "..") for part in path.split("/"))


def repository_allowed(repository: str, allowed: Iterable[str]) -> bool:
    """Tell whether repository is one of allowed, or lies under one of them.

    "Under" goes by whole path parts, so https://charts.example.com allows
    https://charts.example.com/stable but not https://charts.example.com.evil.
    """
    normalized = repository.rstrip("/")
    return any(
        normalized == base or normalized.startswith(base + "/")
        for base in (entry.rstrip("/") for entry in allowed)
    )


def _check_chart_path(path: str) -> None:
    if not path or path.startswith(("-", "/")) or "\\" in path:
        raise ValueError(
            "path must be relative to the worker's chart root and must not start "
            "with '-' or '/'"
        )
    if any(part in ("..", "") for part in path.split("/")) and path != ".":
        raise ValueError(
            "path must not contain '..' or empty parts: charts must stay inside "
            "the chart root"
        )
    if not re.fullmatch(r"^[A-Za-z0-9_./-]+$", path) or len(path) > 255:
        raise ValueError(
            "path may contain only letters, digits, '_', '.', '/' and '-' (at most 255)"
        )


class OperatorCharts(BaseModel):
    """Charts installed next to ours; None means the reference in the chart's values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    postgres_operator: ChartRef | None = None
    rabbitmq_operator: ChartRef | None = None
    temporal: ChartRef | None = None


# The validation context key under which the workflows of runs recorded before
# the strict JSON types parse their input as those runs did: "30" as 30, "yes"
# as true. Replay must take the same input the same way.
LAX = "lax"


def _lax(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get(LAX))


def json_int(value: Any, info: ValidationInfo) -> Any:
    if _lax(info) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError("must be a JSON integer of seconds, such as 300 (no quotes)")


def _json_bool(value: Any, info: ValidationInfo) -> Any:
    if _lax(info) or isinstance(value, bool):
        return value
    raise ValueError("must be true or false (a JSON boolean, no quotes)")


# Seconds a phase may take: a JSON integer, never a string or a float.
PhaseTimeoutS = Annotated[
    int, BeforeValidator(json_int), Field(ge=TIMEOUT_MIN_S, le=TIMEOUT_MAX_S)
]
# A flag of a request: a JSON boolean, never "yes" or 0.
JsonBool = Annotated[bool, BeforeValidator(_json_bool)]


class PhaseTimeouts(BaseModel):
    """Seconds each phase may take before it fails with its last observed status."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: PhaseTimeoutS = DEFAULT_TIMEOUT_S
    data: PhaseTimeoutS = DEFAULT_TIMEOUT_S
    messaging: PhaseTimeoutS = DEFAULT_TIMEOUT_S
    cache: PhaseTimeoutS = DEFAULT_TIMEOUT_S
    temporal: PhaseTimeoutS = DEFAULT_TIMEOUT_S
    migration: PhaseTimeoutS = DEFAULT_TIMEOUT_S
    app: PhaseTimeoutS = DEFAULT_TIMEOUT_S

    def for_phase(self, phase: Phase) -> int:
        return int(getattr(self, phase.value))


class DeployRequest(BaseModel):
    """The workflow input. It names a kube context, never credentials."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    release: str = "ventros-crm"
    namespace: str = "ventros-crm"
    chart: ChartRef = ChartRef(path="chart")
    values: dict[str, Any] = Field(default_factory=dict)
    app_version: str | None = None
    timeouts: PhaseTimeouts = PhaseTimeouts()
    migration_wait_for_postgres_s: PhaseTimeoutS = 300
    kube_context: str | None = None
    install_operators: JsonBool = True
    operator_charts: OperatorCharts = OperatorCharts()

    @field_validator("release")
    @classmethod
    def _release(cls, value: str) -> str:
        return check_release(value)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return check_namespace(value)

    @field_validator("app_version")
    @classmethod
    def _app_version(cls, value: str | None) -> str | None:
        if value is not None and not APP_VERSION.fullmatch(value):
            raise ValueError(
                "must be an image tag: letters, digits, '_', '.' and '-', "
                "at most 128 characters, not starting with '.' or '-'"
            )
        return value

    @field_validator("kube_context")
    @classmethod
    def _kube_context(cls, value: str | None) -> str | None:
        return check_kube_context(value)

    @field_validator("values")
    @classmethod
    def _values(cls, value: dict[str, Any]) -> dict[str, Any]:
        depth, floor = values_shape(value, MAX_VALUES_BYTES)
        if floor > MAX_VALUES_BYTES:
            # The walk stopped early: YAML aliases can make a small file
            # expand to gigabytes, which json.dumps would build in memory.
            raise ValueError(
                f"is at least {floor} bytes of JSON; the limit is "
                f"{MAX_VALUES_BYTES}. Keep large configuration in the chart or in "
                "ConfigMaps"
            )
        if depth > MAX_VALUES_DEPTH:
            raise ValueError(
                f"are nested {depth} levels deep; the limit is {MAX_VALUES_DEPTH}"
            )
        size = len(json.dumps(value, default=str))
        if size > MAX_VALUES_BYTES:
            raise ValueError(
                f"is {size} bytes of JSON; the limit is {MAX_VALUES_BYTES}. "
                "Keep large configuration in the chart or in ConfigMaps"
            )
        if "deployer" in value:
            raise ValueError(
                "must not set 'deployer': the deployer sets deployer.phases itself; "
                "for the old hook-ordered chart use plain `helm install`"
            )
        return value

    @property
    def workflow_id(self) -> str:
        return workflow_id_for(self.namespace, self.release)


def values_image_tag(values: dict[str, Any]) -> str | None:
    """Return the image tag that a request's values set, or None when they
    leave it to the chart (no tag, or an empty one)."""
    image = values.get("image")
    tag = image.get("tag") if isinstance(image, dict) else None
    return str(tag) if tag not in (None, "") else None


def check_image_tag(request: DeployRequest) -> None:
    """Raise InvalidRequestError when app_version and the image.tag value set
    different image tags. The deployer would use app_version and drop the
    value without a word."""
    tag = values_image_tag(request.values)
    if request.app_version is None or tag is None or tag == request.app_version:
        return
    image = request.values["image"]
    typed = ""
    if not isinstance(image["tag"], str):
        # YAML and JSON read an unquoted 1.10 as the number 1.1.
        typed = (
            f" The image.tag value is {json_type_name(image['tag'])}, which "
            "may have lost digits as typed (1.10 reads as 1.1): quote it."
        )
    raise InvalidRequestError(
        "invalid deploy request: app_version and values.image.tag set different "
        "image tags (the value is not shown). Set the version once: with "
        "app_version (--app-version), or with the image.tag value alone." + typed
    )


def values_shape(value: Any, max_bytes: int) -> tuple[int, int]:
    """Return how deep lists and dicts nest in value, and a lower bound of its
    size as JSON; stop walking once that bound passes max_bytes.

    Each reference is counted each time it appears, as json.dumps would write
    it, so the walk visits at most about max_bytes nodes. Runs without
    recursion.
    """
    deepest, floor = 0, 0
    stack = [(value, 1)]
    while stack and floor <= max_bytes:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            floor += 2 + sum(len(str(key)) + 4 for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            floor += 2 + len(item)
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            floor += len(item) + 2
        else:
            floor += len(str(item))
    return deepest, floor


def workflow_id_for(namespace: str, release: str) -> str:
    """Return the workflow id of a release: one deploy per release at a time.

    A dot joins the two names because neither may hold one (both are DNS-1123
    labels), so no two releases share an id. With a dash, namespace a-b and
    release c shared deploy-a-b-c with namespace a and release b-c.
    """
    return f"deploy-{namespace}.{release}"


class InvalidRequestError(ValueError):
    """The request is invalid; the message names each field, its value and the fix."""


def json_type_name(value: Any) -> str:
    """Return the JSON name of value's type with its article: "an array"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str | bytes):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def not_an_object(kind: str, raw: Any) -> InvalidRequestError:
    """Return the error for a kind of request that is not a JSON object."""
    return InvalidRequestError(
        f"the {kind} request must be a JSON object, got {json_type_name(raw)}; "
        'pass for example {"release": "ventros-crm", "namespace": "ventros-crm"}'
    )


def parse_request(
    raw: Any, lax: bool = False, cluster_namespaces: bool = False
) -> DeployRequest:
    """Validate raw JSON (a dict, or a JSON string) into a DeployRequest.

    lax takes the types the way runs recorded before the strict JSON types
    took them (see LAX), and cluster_namespaces takes a kube- namespace as runs
    recorded before that check did, for the replay of those runs only. The
    model itself takes both, so that activities of such runs can still read
    their input.
    """
    if isinstance(raw, str | bytes):
        try:
            raw = json.loads(raw)
        except ValueError as error:
            # Only the error's type and position: its message can quote the input.
            raise InvalidRequestError(
                "the deploy request must be a JSON object, got a string that is "
                f"not valid JSON ({error.__class__.__name__} at position "
                f"{getattr(error, 'pos', '?')}); pass one JSON object, for example "
                '{"release": "ventros-crm", "namespace": "ventros-crm"}'
            ) from None
    if not isinstance(raw, dict):
        raise not_an_object("deploy", raw)
    try:
        request = DeployRequest.model_validate(raw, context={LAX: lax})
    except ValidationError as error:
        raise InvalidRequestError(describe_validation_error(error)) from None
    if not cluster_namespaces and request.namespace.startswith(
        RESERVED_NAMESPACE_PREFIX
    ):
        raise InvalidRequestError(
            f"invalid deploy request: namespace: starts with "
            f"'{RESERVED_NAMESPACE_PREFIX}', which Kubernetes keeps for its own "
            "namespaces (kube-system, kube-public, kube-node-lease): deploy into "
            "a namespace of the release's own, such as ventros-crm "
            f'(got "{request.namespace}")'
        )
    if not lax:
        # After the model's checks, which bound the values' size: an alias bomb
        # would make this walk take exponential time.
        check_finite(request.values, "values")
    return request


def check_finite(value: Any, where: str) -> None:
    """Raise InvalidRequestError naming the first NaN or Infinity in value.

    JSON has no form for them, so helm would get text it cannot read.
    """
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise InvalidRequestError(
                f"invalid deploy request: {path}: must be a finite number; NaN "
                "and Infinity have no JSON form. Give a number, or quote the text"
            )
        if isinstance(item, dict):
            stack.extend((child, f"{path}.{key}") for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))


def describe_validation_error(error: ValidationError) -> str:
    """Render pydantic errors as one line per field, never echoing secret input."""
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(request)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; remove it or check its spelling"
        object_expected = item["type"] in ("dict_type", "model_type")
        if object_expected:
            # The type only, which is safe to show for a secret field too.
            message = f"must be a JSON object, got {json_type_name(item.get('input'))}"
        # A check of the whole request or of an object (a chart's fields)
        # names its fields itself, and the object may hold a secret.
        field_input = item.get("input")
        echo = (
            bool(item["loc"])
            and not object_expected
            and not isinstance(field_input, dict | list)
            and item["type"] != "extra_forbidden"
            and not location.startswith(SECRET_FIELDS)
        )
        shown = ""
        if echo:
            text = json.dumps(field_input, default=str)
            if len(text) > MAX_ECHOED_CHARS:
                # Not shown in part: a cut could drop the "@" that ends a
                # URL's credentials, and the match takes quadratic time.
                shown = f" (got {len(text)} characters)"
            else:
                text = URL_CREDENTIALS.sub(r"\1(credentials not shown)@", text)
                shown = f" (got {text[:80]}{'...' if len(text) > 80 else ''})"
        if (
            item["type"] == "string_type"
            and json_type_name(field_input) == "a number"
            and str(item["loc"][-1]).endswith("version")
        ):
            # A version typed as 1.10 in JSON or YAML arrives as the number 1.1.
            shown += (
                ". Quote it: JSON and YAML read an unquoted version as a number "
                "(1.10 as 1.1)"
            )
        lines.append(f"{location}: {message}{shown}")
    return "invalid deploy request: " + "; ".join(lines)
