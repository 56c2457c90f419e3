"""A small JSON client for the Kubernetes API on top of kubernetes_asyncio.

The deployer handles objects of any kind (custom resources included) as plain
dicts, so this module works on raw JSON: discovery maps apiVersion and kind to
a resource path, and requests return decoded JSON. kubernetes_asyncio supplies
the kubeconfig loading, TLS and token refresh.

Errors are typed by HTTP status (see ``KubeApiError`` and its subclasses). The
server's message is kept, with the values it quotes hidden and capped, so a
rejected object or value is never echoed back (it may hold secret values).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

MESSAGE_CAP = 400
FIELD_MANAGER = "ventros-deploy"

JsonObject = dict[str, Any]


# The labels after which a field error of the API server quotes the value it
# rejected, as apimachinery's field.Error writes them ("spec.x: Invalid value:
# "v": detail"), and "got " before a value that a typed conversion rejected.
VALUE_LABEL = re.compile(
    r"\b(?:Invalid value|Unsupported value|Duplicate value|Not found"
    r"|Type mismatch): |\bgot (?=&)"
)
HIDDEN = "(value not shown)"
# Values that stay: numbers, booleans and null, as in "Invalid value: -1".
PLAIN_VALUE = re.compile(r"-?\d+(?:\.\d+)?|true|false|null")


def hide_values(message: str) -> str:
    """Replace each value that message quotes after a VALUE_LABEL with HIDDEN,
    except numbers, booleans and null.

    A string value is Go-quoted. Any other value (a number, or a struct or map
    in Go syntax) runs to the next ": ", ", ", "]" or line break outside
    brackets and quotes, or to the end of the message.
    """
    parts = []
    position = 0
    for label in VALUE_LABEL.finditer(message):
        if label.start() < position:
            continue  # The label was inside a value already hidden.
        end = _value_end(message, label.end())
        value = message[label.end() : end]
        replacement = value if PLAIN_VALUE.fullmatch(value) else HIDDEN
        parts.append(message[position : label.end()] + replacement)
        position = end
    parts.append(message[position:])
    return "".join(parts)


def _value_end(message: str, start: int) -> int:
    """Return the index just past the value that starts at start."""
    if message.startswith('"', start):
        return _quoted_end(message, start)
    depth = 0
    index = start
    while index < len(message):
        char = message[index]
        if char == '"':
            index = _quoted_end(message, index)
            continue
        if char in "{[(":
            depth += 1
        elif char in "}])":
            if depth == 0:
                return index
            depth -= 1
        elif depth == 0 and message.startswith((": ", ", ", "\n"), index):
            return index
        index += 1
    return index


def _quoted_end(message: str, start: int) -> int:
    """Return the index just past the Go-quoted string that starts at start."""
    index = start + 1
    while index < len(message):
        if message[index] == "\\":
            index += 2
            continue
        if message[index] == '"':
            return index + 1
        if message[index] == "\n":
            return index  # Go never puts a line break in a quoted string.
        index += 1
    return index


class KubeApiError(Exception):
    """A request to the Kubernetes API failed; ``status`` is the HTTP status."""

    # The object fields that the Status's causes name, as in
    # "spec.template.annotations"; empty when it names none.
    fields: tuple[str, ...] = ()

    def __init__(self, status: int, reason: str, message: str, what: str) -> None:
        self.status = status
        self.reason = reason
        self.message = capped(hide_values(message))
        self.what = what
        super().__init__(f"{what}: HTTP {status} {reason}: {self.message}")


def capped(message: str) -> str:
    """Cut message to MESSAGE_CAP characters at a word's end, marking the cut."""
    if len(message) <= MESSAGE_CAP:
        return message
    cut = message[:MESSAGE_CAP].rsplit(" ", 1)[0]
    return f"{cut} [cut]"


class ApiUnreachableError(aiohttp.ClientConnectionError):
    """No connection to the API server; the message names the server and where
    its address came from (kubeconfig file and context, or in-cluster)."""


class NotFoundError(KubeApiError):
    """HTTP 404."""


class ConflictError(KubeApiError):
    """HTTP 409."""


class GoneError(KubeApiError):
    """HTTP 410: the resourceVersion is too old; list again."""


class UnauthorizedError(KubeApiError):
    """HTTP 401: the credentials were rejected."""


class ForbiddenError(KubeApiError):
    """HTTP 403: RBAC denies the request."""


class InvalidError(KubeApiError):
    """HTTP 422: the object is invalid; retrying the same object cannot help."""


class KubeconfigError(Exception):
    """The kubeconfig cannot be read or used; the message names the file."""


class NoKindMatchError(Exception):
    """The API server does not serve this apiVersion and kind (yet)."""

    def __init__(self, api_version: str, kind: str) -> None:
        self.api_version = api_version
        self.kind = kind
        super().__init__(
            f'no matches for kind "{kind}" in version "{api_version}": '
            "its CustomResourceDefinition is missing or not yet Established"
        )


_ERRORS_BY_STATUS: dict[int, type[KubeApiError]] = {
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    422: InvalidError,
}


def api_error(status: int, body: str, what: str) -> KubeApiError:
    """Build the typed error for an HTTP status and a Kubernetes Status body."""
    reason, message = "", body
    fields: tuple[str, ...] = ()
    try:
        decoded = json.loads(body)
        reason = str(decoded.get("reason", ""))
        message = str(decoded.get("message", body))
        causes = (decoded.get("details") or {}).get("causes") or []
        fields = tuple(str(c["field"]) for c in causes if c.get("field"))
    except (ValueError, AttributeError, TypeError):
        pass
    error = _ERRORS_BY_STATUS.get(status, KubeApiError)(status, reason, message, what)
    error.fields = fields
    return error


@dataclass(frozen=True)
class ResourceType:
    """The API location of one kind: group/version, plural and scope."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(
        self,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        parts = [base]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name:
            parts.append(name)
            if subresource:
                parts.append(subresource)
        return "/".join(parts)

    def describe(self, name: str, namespace: str | None) -> str:
        where = f" in namespace {namespace}" if self.namespaced and namespace else ""
        return f"{self.kind.lower()}/{name}{where}"


# Kinds the deployer and the simulator use all the time; discovery fills the rest.
WELL_KNOWN = {
    ("v1", "Pod"): ResourceType("v1", "Pod", "pods", True),
    ("v1", "Namespace"): ResourceType("v1", "Namespace", "namespaces", False),
    ("v1", "Node"): ResourceType("v1", "Node", "nodes", False),
    ("v1", "Secret"): ResourceType("v1", "Secret", "secrets", True),
    ("v1", "ConfigMap"): ResourceType("v1", "ConfigMap", "configmaps", True),
    ("v1", "Service"): ResourceType("v1", "Service", "services", True),
    ("v1", "Event"): ResourceType("v1", "Event", "events", True),
    ("v1", "PersistentVolume"): ResourceType(
        "v1", "PersistentVolume", "persistentvolumes", False
    ),
    ("v1", "PersistentVolumeClaim"): ResourceType(
        "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True
    ),
    ("apps/v1", "Deployment"): ResourceType(
        "apps/v1", "Deployment", "deployments", True
    ),
    ("apps/v1", "StatefulSet"): ResourceType(
        "apps/v1", "StatefulSet", "statefulsets", True
    ),
    ("apps/v1", "ReplicaSet"): ResourceType(
        "apps/v1", "ReplicaSet", "replicasets", True
    ),
    ("batch/v1", "Job"): ResourceType("batch/v1", "Job", "jobs", True),
    ("coordination.k8s.io/v1", "Lease"): ResourceType(
        "coordination.k8s.io/v1", "Lease", "leases", True
    ),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ResourceType(
        "rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", False
    ),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ResourceType(
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        False,
    ),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): ResourceType(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        False,
    ),
    ("acid.zalan.do/v1", "postgresql"): ResourceType(
        "acid.zalan.do/v1", "postgresql", "postgresqls", True
    ),
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): ResourceType(
        "rabbitmq.com/v1beta1", "RabbitmqCluster", "rabbitmqclusters", True
    ),
}


def well_known(api_version: str, kind: str) -> ResourceType:
    return WELL_KNOWN[(api_version, kind)]


class KubeClient:
    """Raw JSON access to one cluster, from a kubeconfig file and context."""

    def __init__(
        self, api_client: client.ApiClient, kubeconfig: str | None, context: str | None
    ) -> None:
        self._api = api_client
        self._kubeconfig = kubeconfig
        self._context = context
        self._discovery: dict[str, dict[str, ResourceType]] = {}

    @classmethod
    async def connect(
        cls, kubeconfig: str | None = None, context: str | None = None
    ) -> KubeClient:
        """Load the kubeconfig (or the in-cluster service account) and connect."""
        api_client = await _load_api_client(kubeconfig, context)
        return cls(api_client, kubeconfig, context)

    async def close(self) -> None:
        await self._api.close()

    async def reload_credentials(self) -> None:
        """Load the kubeconfig again, for credentials that were rotated on disk."""
        fresh = await _load_api_client(self._kubeconfig, self._context)
        old, self._api = self._api, fresh
        await old.close()

    # -- requests ---------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None,
        body: Any,
        content_type: str,
        timeout: aiohttp.ClientTimeout | float | None,  # noqa: ASYNC109 - HTTP timeout
    ) -> Any:
        url_path = path + ("?" + urlencode(query) if query else "")
        try:
            return await self._api.call_api(
                url_path,
                method,
                header_params={
                    "Content-Type": content_type,
                    "Accept": "application/json",
                },
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )
        except ApiException as error:
            raise api_error(
                error.status or 0, str(error.body or error.reason), f"{method} {path}"
            ) from None
        except aiohttp.ClientConnectorError as error:
            raise ApiUnreachableError(
                f"API server unreachable at {self._api.configuration.host} "
                f"({error.os_error.strerror or error.os_error}), the address from "
                f"{self.origin()}; check that the server runs there"
            ) from error

    def origin(self) -> str:
        """Name where this client's server address and credentials came from."""
        if self._kubeconfig is None and self._context is None and _in_cluster():
            return "the in-cluster service account"
        path = self._kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        context = f"context {self._context}" if self._context else "its current context"
        return f"kubeconfig {path}, {context}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,  # noqa: ASYNC109 - per-request HTTP timeout
    ) -> JsonObject:
        """Send one request and return the decoded JSON body; raise KubeApiError."""
        response = await self._send(method, path, query, body, content_type, timeout)
        try:
            text = await response.text()
            if not 200 <= response.status < 300:
                raise api_error(response.status, text, f"{method} {path}")
            return json.loads(text) if text else {}
        finally:
            response.release()

    async def resource_type(self, api_version: str, kind: str) -> ResourceType:
        """Find where kind is served, through discovery; raise NoKindMatchError."""
        if (api_version, kind) in WELL_KNOWN and api_version in (
            "v1",
            "apps/v1",
            "batch/v1",
        ):
            return WELL_KNOWN[(api_version, kind)]
        kinds = self._discovery.get(api_version)
        if kinds is None or kind not in kinds:
            kinds = await self._discover(api_version)
        if kind not in kinds:
            raise NoKindMatchError(api_version, kind)
        return kinds[kind]

    async def _discover(self, api_version: str) -> dict[str, ResourceType]:
        path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            listing = await self.request("GET", path)
        except NotFoundError:
            self._discovery.pop(api_version, None)
            return {}
        kinds = {
            item["kind"]: ResourceType(
                api_version, item["kind"], item["name"], bool(item["namespaced"])
            )
            for item in listing.get("resources", [])
            if "/" not in item["name"]
        }
        self._discovery[api_version] = kinds
        return kinds

    def forget_discovery(self, api_version: str) -> None:
        self._discovery.pop(api_version, None)

    async def get(
        self, rtype: ResourceType, name: str, namespace: str | None = None
    ) -> JsonObject | None:
        """Return the object, or None when it does not exist."""
        try:
            return await self.request("GET", rtype.path(namespace, name))
        except NotFoundError:
            return None

    async def list(
        self,
        rtype: ResourceType,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> JsonObject:
        query = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        return await self.request("GET", rtype.path(namespace), query=query)

    async def create(
        self,
        rtype: ResourceType,
        obj: JsonObject,
        namespace: str | None = None,
        *,
        dry_run: bool = False,
    ) -> JsonObject:
        query = {"dryRun": "All"} if dry_run else None
        return await self.request("POST", rtype.path(namespace), query=query, body=obj)

    async def merge_patch(
        self,
        rtype: ResourceType,
        name: str,
        patch: JsonObject,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> JsonObject:
        return await self.request(
            "PATCH",
            rtype.path(namespace, name, subresource),
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def apply(
        self,
        obj: JsonObject,
        *,
        field_manager: str = FIELD_MANAGER,
        dry_run: bool = False,
        force: bool = True,
        field_validation: str | None = None,
    ) -> JsonObject:
        """Server-side apply obj; with force, take ownership of conflicting fields.

        Without force, a field that another manager owns with another value
        fails the apply with a ConflictError.
        """
        rtype = await self.resource_type(obj["apiVersion"], obj["kind"])
        metadata = obj["metadata"]
        query = {"fieldManager": field_manager, "force": "true" if force else "false"}
        if dry_run:
            query["dryRun"] = "All"
        if field_validation:
            query["fieldValidation"] = field_validation
        return await self.request(
            "PATCH",
            rtype.path(metadata.get("namespace"), metadata["name"]),
            query=query,
            body=obj,
            content_type="application/apply-patch+yaml",
        )

    async def delete(
        self,
        rtype: ResourceType,
        name: str,
        namespace: str | None = None,
        *,
        propagation: str = "Background",
        grace_period_s: int | None = None,
        resource_version: str | None = None,
    ) -> bool:
        """Delete the object; return False when it was already gone.

        With resource_version, the API server refuses (409) to delete an
        object that changed since that version.
        """
        body: JsonObject = {"propagationPolicy": propagation}
        if grace_period_s is not None:
            body["gracePeriodSeconds"] = grace_period_s
        if resource_version is not None:
            body["preconditions"] = {"resourceVersion": resource_version}
        try:
            await self.request("DELETE", rtype.path(namespace, name), body=body)
        except NotFoundError:
            return False
        return True

    async def watch(
        self,
        rtype: ResourceType,
        namespace: str | None = None,
        *,
        resource_version: str,
        name: str | None = None,
        label_selector: str | None = None,
        timeout_s: int = 60,
        idle_timeout_s: float | None = None,
    ) -> AsyncIterator[JsonObject]:
        """Yield watch events ({type, object}) from resource_version.

        The server closes the stream after timeout_s. idle_timeout_s is the
        client-side watchdog: a stream that sends nothing (not even a bookmark)
        for that long raises WatchStalledError, so a half-open connection cannot
        hang a wait. An ERROR event with code 410 raises GoneError.
        """
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
        }
        if name:
            query["fieldSelector"] = f"metadata.name={name}"
        if label_selector:
            query["labelSelector"] = label_selector
        path = rtype.path(namespace)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        response = await self._send(
            "GET", path, query, None, "application/json", timeout
        )
        idle = idle_timeout_s or timeout_s + 15
        try:
            if not 200 <= response.status < 300:
                raise api_error(response.status, await response.text(), f"watch {path}")
            while True:
                try:
                    line = await asyncio.wait_for(response.content.readline(), idle)
                except TimeoutError:
                    raise WatchStalledError(path, idle) from None
                if not line:
                    return
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    raise api_error(
                        int(status.get("code", 500)),
                        json.dumps(status),
                        f"watch {path}",
                    )
                yield event
        finally:
            response.close()


class WatchStalledError(Exception):
    """A watch stream sent nothing for longer than its watchdog allows."""

    def __init__(self, path: str, idle_s: float) -> None:
        super().__init__(f"watch {path} sent nothing for {idle_s:.0f} s; reconnecting")


async def _load_api_client(
    kubeconfig: str | None, context: str | None
) -> client.ApiClient:
    configuration = client.Configuration()
    if kubeconfig is None and context is None and _in_cluster():
        # kubernetes_asyncio ships no type hints for this function.
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    if _missing(path):
        # The loader would report a missing file as a config without
        # current-context.
        raise KubeconfigError(f"kubeconfig {path} does not exist")
    try:
        await config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    except yaml.YAMLError as error:
        # Only where it broke: the YAML error's own text quotes the file,
        # whose lines can hold credentials.
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise KubeconfigError(
            f"kubeconfig {path} is not YAML: {problem}{where}"
        ) from None
    except (config.ConfigException, OSError, ValueError, TypeError) as error:
        raise KubeconfigError(f"kubeconfig {path} cannot be used: {error}") from None
    return client.ApiClient(configuration)


def _missing(path: str) -> bool:
    """Tell whether the first file of a kubeconfig path list is missing."""
    return not os.path.isfile(os.path.expanduser(path.split(os.pathsep)[0]))


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not os.environ.get(
        "KUBECONFIG"
    )
