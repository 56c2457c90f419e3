"""The deploy activities: validate the request, apply a phase, wait for it.

All I/O of a deploy happens here: helm, the Kubernetes API and the file
system. Errors that retrying cannot fix become non-retryable
ApplicationErrors with a type name from deployer.contracts; transient
failures are raised as retryable so the activity retry policy backs off.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import structlog
import yaml
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.service import RPCError, RPCStatusCode

from activities import preflight, readiness
from activities.claim import MAX_WAIT_S as CLAIM_MAX_WAIT_S
from activities.claim import OperatorClaim, holder_identity
from activities.crds import crds_in_place
from activities.diagnose import describe_blocked_pods
from activities.helm import (
    SAFE_LOADER,
    ChartNotFoundError,
    Helm,
    HelmError,
    InvalidRenderError,
    RenderCache,
    chart_app_version,
    chart_metadata,
)
from activities.kubeapi import (
    ConflictError,
    ForbiddenError,
    InvalidError,
    JsonObject,
    KubeApiError,
    KubeClient,
    KubeconfigError,
    NoKindMatchError,
    NotFoundError,
    UnauthorizedError,
    well_known,
)
from activities.waits import (
    TRANSIENT_ERRORS,
    TerminalFailure,
    WaitTimeout,
    wait_object_ready,
)
from deployer import codec, contracts
from deployer.connect import key_ring_configured
from deployer.contracts import (
    ApplyRequest,
    ApplyResult,
    ValidateResult,
    WaitRequest,
    WaitResult,
)
from deployer.inputs import (
    REPOSITORY_URL,
    ChartRef,
    DeployRequest,
    InvalidRequestError,
    check_image_tag,
    dot_segments,
    parse_request,
    repository_allowed,
    values_image_tag,
)
from deployer.lifecycle import how_to_stop, other_runs
from deployer.phases import ObjectRef, Phase
from deployer.settings import WorkerSettings, normalize_address
from deployer.versions import is_older

log = structlog.get_logger("ventros.activities")

PHASE_LABEL = "deploy.ventros.io/phase"
OPERATOR_CRDS = ("postgresqls.acid.zalan.do", "rabbitmqclusters.rabbitmq.com")
INSTANCE_LABEL = preflight.INSTANCE_LABEL
NO_KIND_RETRY_S = 60.0
MIGRATION_HISTORY = 3
HEARTBEAT_EVERY_S = 5.0

P = ParamSpec("P")
R = TypeVar("R")


async def terminating_namespaces(kube: KubeClient) -> set[str]:
    """Return the namespaces being deleted; none when this identity may not
    list namespaces, so that the objects in them still count."""
    try:
        listing = await kube.list(well_known("v1", "Namespace"))
    except ForbiddenError:
        return set()
    return {
        item["metadata"]["name"]
        for item in listing.get("items", [])
        if (item.get("status") or {}).get("phase") == "Terminating"
    }


async def gather_or_cancel(*steps: Awaitable[Any]) -> list[Any]:
    """Run steps at once; when one fails, cancel the rest before raising."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _non_retryable(kind: str, message: str) -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=True)


# The phases whose objects the deployer applies itself, with force, and the
# kinds of our chart in them, which validate lists beside the render to find
# objects of the same name that belong to something else.
OWN_APPLY_PHASES = frozenset(
    {
        Phase.CACHE.value,
        Phase.APP.value,
        Phase.DATA.value,
        Phase.MESSAGING.value,
        Phase.MIGRATION.value,
    }
)
OWN_APPLY_KINDS = frozenset(
    {
        ("apps/v1", "StatefulSet"),
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("batch/v1", "Job"),
        ("acid.zalan.do/v1", "postgresql"),
        ("rabbitmq.com/v1beta1", "RabbitmqCluster"),
    }
)
ObjectKey = tuple[str, str, str]
# The annotation with which the chart's migration Job names its app version.
APP_VERSION_ANNOTATION = "deploy.ventros.io/app-version"
# The Job that helm's server-side apply names when the API server rejects it.
IMMUTABLE_JOB = re.compile(r'Job\.batch \\?"([a-z0-9][-a-z0-9.]*)\\?" is invalid')
# The API server's words for a change to a field that cannot change: the
# generic check, and the StatefulSet's own list of fields that may.
IMMUTABLE_TEXTS = ("field is immutable", "updates to statefulset spec")
# Hints for terse schema errors of our chart: for a `not` check, helm names
# only the keyword that failed.
SCHEMA_HINTS = (
    (
        "at '/temporal/namespace': 'not' failed",
        "temporal.namespace may not be temporal-system, the Temporal server's own "
        "namespace; use another name, for example ventros-crm",
    ),
)


def check_own_id(kind: str, expected: str, fix: str) -> None:
    """Raise InvalidRequest when this run does not use its release's workflow id.

    Temporal runs one workflow per id at a time, and the checks of
    check_release_idle look up the other runs by their ids. A run of the same
    release under any other id would escape both.
    """
    actual = activity.info().workflow_id
    if actual != expected:
        raise _non_retryable(
            contracts.INVALID_REQUEST,
            f"this {kind} runs as workflow id {actual}, but a {kind} of this "
            f"release must run as {expected}, so that one run at a time changes "
            f"the release. {fix} with --workflow-id {expected}",
        )


async def check_release_idle(
    kind: str, namespace: str, release: str, then: str
) -> None:
    """Raise OtherRunActive when another kind of run of the release runs.

    A deploy, a rollback and a destroy of one release change the same objects.
    kind is the caller's own kind (deploy, rollback or destroy); then is
    what to do once the other run ended.
    """
    await gather_or_cancel(
        *(
            check_not_running(
                workflow_id,
                f"Wait until it ends (`ventros-deploy watch {workflow_id}`) or "
                f"{how_to_stop(other, workflow_id)}, then {then}",
            )
            for other, workflow_id in other_runs(kind, namespace, release).items()
        )
    )


async def check_not_running(workflow_id: str, fix: str) -> None:
    """Raise OtherRunActive when the workflow workflow_id has a running run.

    A deploy and a destroy of one release would undo each other's work. The
    client checks this too, but `temporal workflow start` does not.
    NOTE: each run checks once, at its start, so two runs started in the same
    instant can both pass.
    """
    handle = activity.client().get_workflow_handle(workflow_id)
    try:
        description = await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return
        raise
    if description.status == WorkflowExecutionStatus.RUNNING:
        raise _non_retryable(
            contracts.OTHER_RUN_ACTIVE, f"{workflow_id} is running. {fix}"
        )


def translate_errors(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn known failures into typed ApplicationErrors, chaining the cause."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await func(*args, **kwargs)
        except ApplicationError:
            raise
        except asyncio.CancelledError:
            details = activity.cancellation_details()
            if details is None or not details.not_found:
                raise
            # The server no longer accepts this attempt: its run ended (an
            # abort, for example), or the attempt timed out and a new one
            # started. It discards the result, so a benign error keeps the SDK
            # from logging a traceback, and the warning here keeps it visible.
            info = activity.info()
            log.warning(
                "attempt stopped: the server no longer accepts its result",
                workflow_id=info.workflow_id,
                activity=info.activity_type,
                attempt=info.attempt,
            )
            raise ApplicationError(
                "stopped: the server no longer accepts this attempt's result (its "
                "workflow run ended, or the attempt timed out and was retried)",
                type=contracts.RUN_ENDED,
                non_retryable=True,
                category=ApplicationErrorCategory.BENIGN,
            ) from None
        except InvalidRequestError as error:
            raise _non_retryable(contracts.INVALID_REQUEST, str(error)) from error
        except KubeconfigError as error:
            raise _non_retryable(
                contracts.KUBECONFIG_INVALID,
                f"the worker's {error}. Fix the file, or set "
                "VENTROS_DEPLOY_KUBECONFIG to a working kubeconfig and restart the "
                "worker. Then retry the failed step, or start the run again if it "
                "has ended",
            ) from None
        except ChartNotFoundError as error:
            raise _non_retryable(contracts.CHART_NOT_FOUND, str(error)) from error
        except InvalidRenderError as error:
            raise _non_retryable(
                contracts.VALUES_REJECTED,
                f"the chart rendered a document that cannot be applied: {error}. "
                "Fix the template, or the value it renders from",
            ) from error
        except HelmError as error:
            if error.schema_rejected or "execution error" in error.stderr:
                hints = "".join(
                    f" ({hint})" for text, hint in SCHEMA_HINTS if text in error.stderr
                )
                raise _non_retryable(
                    contracts.VALUES_REJECTED,
                    # HelmError hid the values that the schema check quoted.
                    f"the chart rejected the values: {error.stderr}{hints}. Fix "
                    "the named value and start again",
                ) from None
            if error.owned_elsewhere:
                # helm will not adopt the object however often it tries.
                raise _non_retryable(
                    contracts.OWNED_ELSEWHERE,
                    f"an object of this release already exists outside it: "
                    f"{error.stderr}. Delete or rename that object, or, for the "
                    "operators' cluster-wide objects, deploy with "
                    "install_operators: false",
                ) from error
            if error.forbidden:
                # Retrying cannot grant a permission, so the phase fails at once.
                fix = (
                    "Grant the deployer's identity this verb and resource (see "
                    "deploy/rbac.yaml)"
                )
                if '"clusterroles"' in error.stderr or (
                    '"clusterrolebindings"' in error.stderr
                ):
                    fix = (
                        "The operator charts create ClusterRoles, which "
                        "deploy/rbac.yaml does not allow: install the operators "
                        "once with an administrator's rights and deploy with "
                        "install_operators: false"
                    )
                raise _non_retryable(
                    contracts.FORBIDDEN, f"forbidden: {error}. {fix}"
                ) from error
            raise ApplicationError(str(error), type=contracts.HELM_FAILED) from error
        except InvalidError as error:
            raise _non_retryable(
                contracts.OBJECT_INVALID,
                f"the API server rejected an object as invalid: {error}. Fix the "
                "chart or values",
            ) from error
        except ForbiddenError as error:
            raise _non_retryable(
                contracts.FORBIDDEN,
                f"forbidden: {error.message}. Grant the deployer's identity this "
                "verb and resource "
                "(see deploy/rbac.yaml)",
            ) from error
        except UnauthorizedError as error:
            raise _non_retryable(
                contracts.UNAUTHORIZED,
                "the API server rejected the credentials even after reloading the "
                f"kubeconfig: {error}",
            ) from error
        except TerminalFailure as error:
            raise _non_retryable(contracts.TERMINAL_FAILURE, str(error)) from error
        except WaitTimeout as error:
            raise _non_retryable(contracts.PHASE_TIMEOUT, str(error)) from error
        except (KubeApiError, *TRANSIENT_ERRORS) as error:
            raise ApplicationError(
                f"Kubernetes API request failed: {error}",
                type=contracts.KUBE_API_UNAVAILABLE,
            ) from error

    return wrapper


def heartbeat_while_running(
    func: Callable[P, Awaitable[R]],
) -> Callable[P, Awaitable[R]]:
    """Heartbeat every HEARTBEAT_EVERY_S while func runs.

    The workflow gives these activities a heartbeat timeout, so the server
    retries an attempt whose worker died within that timeout.
    """

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(HEARTBEAT_EVERY_S)

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        beating = asyncio.create_task(beat())
        try:
            return await func(*args, **kwargs)
        finally:
            beating.cancel()

    return wrapper


def bind_log_context(release: str, namespace: str, phase: str) -> None:
    """Bind release, namespace, phase, attempt and workflow id to log lines."""
    info = activity.info()
    structlog.contextvars.bind_contextvars(
        release=release,
        namespace=namespace,
        phase=phase,
        attempt=info.attempt,
        workflow_id=info.workflow_id,
    )


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# Mixed into the key before use, so that the digest key serves nothing else.
DIGEST_KEY_LABEL = b"ventros-deploy secrets digest v1"


def secrets_digest(
    key: bytes, namespace: str, release: str, values: dict[str, Any]
) -> str:
    """Return a keyed digest (16 hex digits) of the secret values given.

    It goes on the app and Redis pod templates, so that changing a secret
    rolls them. Without the key, a reader of those objects cannot test a
    guessed password against it, as the chart's own plain SHA-256 allowed.
    """
    secrets = values.get("secrets")
    if not isinstance(secrets, dict):
        secrets = {}  # The chart's schema rejects it when it renders.
    parts = [
        namespace,
        release,
        *(
            secrets.get(name) or ""
            for name in ("existingSecret", "appSecretKey", "redisPassword")
        ),
    ]
    digest_key = hmac.new(key, DIGEST_KEY_LABEL, hashlib.sha256).digest()
    text = json.dumps(parts, sort_keys=True).encode()
    return hmac.new(digest_key, text, hashlib.sha256).hexdigest()[:16]


def chart_values(
    request: DeployRequest,
    phases: list[Phase] | None,
    digest_key: bytes | None = None,
) -> dict[str, Any]:
    """Return the values for our chart: the request's, plus what the deployer
    sets. With digest_key, the secrets digest is keyed (secrets_digest)."""
    ours: dict[str, Any] = {
        "deployer": {"phases": [p.value for p in phases or []]},
        "migration": {"waitForPostgresSeconds": request.migration_wait_for_postgres_s},
    }
    if digest_key is not None:
        ours["deployer"]["secretsDigest"] = secrets_digest(
            digest_key, request.namespace, request.release, request.values
        )
    if request.app_version:
        ours["image"] = {"tag": request.app_version}
    return deep_merge(request.values, ours)


# Charts that the Temporal chart (0.x) bundles. Its defaults enable Cassandra,
# Elasticsearch, Prometheus and Grafana. The stack keeps both stores, visibility
# included, on its own PostgreSQL, so none of them is installed.
TEMPORAL_BUNDLED = (
    "cassandra",
    "mysql",
    "postgresql",
    "elasticsearch",
    "prometheus",
    "grafana",
)


def temporal_chart_values(
    cluster: str, namespace: str, retention: str
) -> dict[str, Any]:
    """Return the values for the Temporal chart, with both stores on cluster.

    The chart's schema Job also creates the app's Temporal namespace with its
    retention, unless it exists.

    cluster names the postgresql object of the data phase. The postgres-operator
    creates the temporal and temporal_visibility databases, owned by the role
    temporal, and that role's password in a Secret whose name it derives from
    the cluster. So the chart's schema Job must not create the databases: the
    role may not, and they exist. The chart's SQL driver defaults to MySQL,
    and its connections to plain TCP, which Spilo rejects.

    NOTE: these keys follow the upstream chart's 0.x templates, read but not
    installed here. Later versions of that chart moved the stores under
    server.config.persistence.datastores, so a newer chart needs new values.
    """
    secret = f"temporal.{cluster}.credentials.postgresql.acid.zalan.do"

    def store(database: str) -> dict[str, Any]:
        return {
            "driver": "sql",
            "sql": {
                "driver": "postgres12",
                "host": cluster,
                "port": 5432,
                "database": database,
                "user": "temporal",
                "existingSecret": secret,
                "secretKey": "password",
                # Spilo, the operator's PostgreSQL image, rejects connections
                # without TLS from other hosts by default (pg_hba hostnossl
                # reject). Its certificate is self-signed unless the cluster
                # is given one, so the host is not verified.
                "tls": {"enabled": True, "enableHostVerification": False},
            },
        }

    values: dict[str, Any] = {
        "server": {
            "config": {
                "persistence": {
                    "default": store("temporal"),
                    "visibility": store("temporal_visibility"),
                },
                "namespaces": {
                    "create": True,
                    "namespace": [{"name": namespace, "retention": retention}],
                },
            }
        },
        "schema": {"createDatabase": {"enabled": False}},
    }
    for name in TEMPORAL_BUNDLED:
        values[name] = {"enabled": False}
    return values


def owner_of(obj: JsonObject) -> str:
    """Describe what an existing object belongs to, for error messages."""
    metadata = obj.get("metadata", {})
    labels = metadata.get("labels") or {}
    parts = []
    if labels.get(INSTANCE_LABEL):
        parts.append(f"release {labels[INSTANCE_LABEL]}")
    parts += [
        f"owned by {ref.get('kind')} {ref.get('name')}"
        for ref in metadata.get("ownerReferences") or []
    ]
    if labels.get("app.kubernetes.io/managed-by"):
        parts.append(f"managed by {labels['app.kubernetes.io/managed-by']}")
    return ", ".join(parts) or f"no {INSTANCE_LABEL} label"


def object_phase(obj: JsonObject) -> str | None:
    """Return the deploy phase an object of our chart belongs to, from its label."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    phase = labels.get(PHASE_LABEL)
    return phase if isinstance(phase, str) else None


# The Temporal chart names a container create-<namespace>-namespace, which
# must be a DNS-1123 label of at most 63 characters.
TEMPORAL_NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,44}[a-z0-9])?")
TEMPORAL_RETENTION = re.compile(r"[1-9][0-9]{0,3}d")
# SystemLocalNamespace in the Temporal server (common/primitives/namespaces.go).
TEMPORAL_SYSTEM_NAMESPACE = "temporal-system"


def check_temporal_namespace(namespace: str, retention: str) -> None:
    """Raise a non-retryable error for a namespace or retention that the
    Temporal chart cannot create, also when a chart has no values schema."""
    if not TEMPORAL_NAMESPACE_NAME.fullmatch(namespace):
        raise _non_retryable(
            contracts.VALUES_REJECTED,
            f"temporal.namespace {namespace!r} is invalid: the Temporal chart names "
            "a container create-<namespace>-namespace, so use at most 46 lowercase "
            "letters, digits and '-', starting and ending with a letter or digit",
        )
    if namespace == TEMPORAL_SYSTEM_NAMESPACE:
        raise _non_retryable(
            contracts.VALUES_REJECTED,
            f"temporal.namespace {namespace!r} is the Temporal server's own "
            "namespace for its system workflows; use another name, for "
            "example ventros-crm",
        )
    if not TEMPORAL_RETENTION.fullmatch(retention):
        raise _non_retryable(
            contracts.VALUES_REJECTED,
            f"temporal.namespaceRetention {retention!r} is invalid: use a number "
            "of days from 1 to 9999 followed by d, for example 3d",
        )


def app_temporal_namespace(base: list[JsonObject]) -> tuple[str, str]:
    """Return the app's Temporal namespace and its retention from the base
    phase's ConfigMap, which our chart renders from temporal.namespace and
    temporal.namespaceRetention."""
    for obj in base:
        if obj["kind"] != "ConfigMap":
            continue
        data = obj.get("data") or {}
        if "TEMPORAL_NAMESPACE" in data and "TEMPORAL_NAMESPACE_RETENTION" in data:
            namespace = str(data["TEMPORAL_NAMESPACE"])
            retention = str(data["TEMPORAL_NAMESPACE_RETENTION"])
            check_temporal_namespace(namespace, retention)
            return namespace, retention
    raise _non_retryable(
        contracts.VALUES_REJECTED,
        "the chart renders no base ConfigMap with TEMPORAL_NAMESPACE and "
        "TEMPORAL_NAMESPACE_RETENTION, so the app's Temporal namespace is "
        "unknown: use a chart whose base ConfigMap sets both",
    )


def ref_of(obj: JsonObject, namespace: str) -> ObjectRef:
    metadata = obj["metadata"]
    namespaced = obj["kind"] not in (
        "CustomResourceDefinition",
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
    )
    return ObjectRef(
        api_version=obj["apiVersion"],
        kind=obj["kind"],
        name=metadata["name"],
        namespace=(metadata.get("namespace") or namespace) if namespaced else None,
    )


def digest_key_of(settings: WorkerSettings) -> bytes | None:
    """Return the key of the secrets digest: the oldest key of the payload key
    ring, or None without a key ring.

    The oldest key, so that adding a key to the ring does not roll the app
    and Redis pods. Removing that key does, once.
    """
    if not key_ring_configured(settings):
        return None
    path = str(settings.codec_keys_file) if settings.codec_keys_file else None
    return codec.load_key_ring(path).keys[0].key


APP_CONTAINER = "app"


def version_of_job(job: JsonObject) -> str | None:
    """Return the app version a migration Job runs for, from its annotation."""
    annotations = job.get("metadata", {}).get("annotations") or {}
    version = annotations.get(APP_VERSION_ANNOTATION)
    return str(version) if version is not None else None


CONFIG_MAP = well_known("v1", "ConfigMap")
# In the migrations ConfigMap: the app versions whose migration Job completed
# and was then deleted, as a JSON object of version to the completion time.
MIGRATED_KEY = "migrated-versions"
# How many deleted versions the note keeps; the oldest are dropped first.
MIGRATED_KEPT = 200


def history_name(release: str) -> str:
    """Return the name of the release's history ConfigMap, which rollback reads."""
    return f"{release}-deploy-history"


def migrations_name(release: str) -> str:
    """Return the name of the ConfigMap that notes the migrated versions.

    It carries the data phase's label, so a destroy keeps it with the
    database and deletes it only with --delete-data.
    """
    return f"{release}-migrations"


def migrated_versions(record: JsonObject | None) -> dict[str, str]:
    """Return the deleted migrations noted in the migrations ConfigMap: version
    to completion time (RFC 3339). An unreadable note counts as empty."""
    noted = str(((record or {}).get("data") or {}).get(MIGRATED_KEY, "") or "{}")
    try:
        versions = json.loads(noted)
    except ValueError:
        return {}
    if not isinstance(versions, dict):
        return {}
    return {str(k): str(v) for k, v in versions.items()}


def migration_selector(request: DeployRequest) -> str:
    """Return the label selector of the release's migration Jobs."""
    return f"{PHASE_LABEL}=migration,{INSTANCE_LABEL}={request.release}"


def later_migrations(done: dict[str, str], version: str | None) -> list[str]:
    """Return a note naming the migrations that completed after version's,
    which stay applied when that version runs again, or no note."""
    if version not in done:
        return []
    later = sorted(
        (v for v, at in done.items() if at > done[version] and v != version),
        key=lambda v: done[v],
    )
    if not later:
        return []
    return [
        "database migrations are not undone: the migrations of later app "
        f"versions stay applied ({', '.join(later)})"
    ]


def with_completed(noted: dict[str, str], jobs: list[JsonObject]) -> dict[str, str]:
    """Return noted with the version and completion time of each completed Job."""
    merged = dict(noted)
    for job in jobs:
        finished = completed_at(job)
        version = version_of_job(job)
        if finished and version is not None:
            merged[version] = finished
    return merged


async def note_migrated(
    kube: KubeClient, release: str, namespace: str, noted: dict[str, str]
) -> None:
    """Write the deleted migrations' versions to the migrations ConfigMap."""
    newest = sorted(noted.items(), key=lambda item: item[1])[-MIGRATED_KEPT:]
    await kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": migrations_name(release),
                "namespace": namespace,
                "labels": {
                    PHASE_LABEL: Phase.DATA.value,
                    INSTANCE_LABEL: release,
                    "app.kubernetes.io/managed-by": "ventros-deploy",
                },
            },
            "data": {MIGRATED_KEY: json.dumps(dict(newest), sort_keys=True)},
        }
    )


async def note_completed_migrations(
    kube: KubeClient,
    release: str,
    namespace: str,
    jobs: list[JsonObject],
    noted: dict[str, str] | None = None,
) -> dict[str, str]:
    """Note the versions of the completed Jobs among jobs, which are about to be
    deleted, and return the note. noted is the note read before, or None to
    read it here."""
    if noted is None:
        noted = migrated_versions(
            await kube.get(CONFIG_MAP, migrations_name(release), namespace)
        )
    merged = with_completed(noted, jobs)
    if merged != noted:
        await note_migrated(kube, release, namespace, merged)
    return merged


def completed_at(job: JsonObject) -> str | None:
    """Return when a migration Job completed, or None if it did not."""
    if not readiness.job(job).ready:
        return None
    status = job.get("status") or {}
    return str(status.get("completionTime") or job["metadata"]["creationTimestamp"])


def image_tag(deployment: JsonObject) -> str:
    """Return the app version a Deployment runs: its app container's image tag."""
    template = deployment["spec"]["template"]
    containers = template["spec"]["containers"]
    container = next(
        (c for c in containers if c["name"] == APP_CONTAINER), containers[0]
    )
    image = str(container["image"])
    name, _, tag = image.rpartition(":")
    if name and "/" not in tag and "@" not in image:
        return tag
    # A digest or an image without a tag: the chart's version label.
    labels = template["metadata"].get("labels") or {}
    return str(labels.get("app.kubernetes.io/version", image))


def is_migration_of(obj: JsonObject, release: str) -> bool:
    """Return True when obj has the labels of release's migration Jobs."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return bool(
        labels.get(PHASE_LABEL) == Phase.MIGRATION.value
        and labels.get(INSTANCE_LABEL) == release
    )


def older_default_error(target: str, newer: str, origin: str) -> ApplicationError:
    """Return the InvalidRequest error of a deploy that would go back from app
    version newer to target, the chart's default, without naming a version.
    origin is a clause that names where newer was found."""
    return _non_retryable(
        contracts.INVALID_REQUEST,
        f"app_version is not set, so this deploy would replace app version "
        f"{newer}, {origin}, with {target}, the chart's default, which is older. "
        f"Set app_version to {newer} (--app-version {newer}) to keep that "
        f"version, or to {target} to go back to it on purpose. Database "
        "migrations of later versions are not undone",
    )


def check_not_older(
    request: DeployRequest,
    objects: list[JsonObject],
    existing: dict[ObjectKey, JsonObject],
    noted: dict[str, str],
) -> None:
    """Raise InvalidRequest when a request that names no app version would
    replace the running app version with an older one, the chart's default.

    A request that sets app_version or the image.tag value names its version,
    and may go back on purpose. Versions with no known order pass. noted is
    the note of deleted migrations, which with the listed migration Jobs gives
    the order of tags without numbers.
    """
    if request.app_version or values_image_tag(request.values):
        return
    target = rendered_app_version(objects)
    apps = [
        obj
        for obj in objects
        if obj.get("kind") == "Deployment" and object_phase(obj) == Phase.APP.value
    ]
    if target is None or len(apps) != 1:
        return
    name = apps[0]["metadata"]["name"]
    current = existing.get(("apps/v1", "Deployment", name))
    running = None
    if current is not None:
        try:
            running = image_tag(current)
        except (IndexError, KeyError, TypeError):
            running = None  # No app container to read.

    jobs = [
        obj
        for (_, kind, _), obj in existing.items()
        if kind == "Job" and is_migration_of(obj, request.release)
    ]
    migrated = with_completed(noted, jobs)
    if running is not None:
        if is_older(target, running, migrated):
            raise older_default_error(
                target, running, f"which Deployment {name} is set to run"
            )
        return
    # With no app Deployment (a destroy that kept the data), the version
    # whose migration completed last is the one the database is at.
    if migrated:
        newest = max(migrated, key=migrated.__getitem__)
        if is_older(target, newest, migrated):
            raise older_default_error(
                target,
                newest,
                "for which the release's database was migrated last",
            )


def rendered_app_version(objects: list[JsonObject]) -> str | None:
    """Return the app version that rendered objects deploy: the image tag of
    the app container of the app phase's one Deployment.

    Return None when there is not exactly one such Deployment, or when it has
    no container named APP_CONTAINER (another chart's layout).
    """
    apps = [
        obj
        for obj in objects
        if obj.get("kind") == "Deployment" and object_phase(obj) == Phase.APP.value
    ]
    if len(apps) != 1:
        return None
    try:
        containers = apps[0]["spec"]["template"]["spec"]["containers"]
        if not any(c.get("name") == APP_CONTAINER for c in containers):
            return None
        return image_tag(apps[0])
    except (AttributeError, KeyError, TypeError):
        return None


class DeployActivities:
    """Activities bound to the worker's settings and its Kubernetes clients."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self._clients: dict[str | None, KubeClient] = {}
        self._lock = asyncio.Lock()
        # Renders and chart values, shared by the phases of a deploy.
        self.renders = RenderCache()
        self.digest_key = digest_key_of(settings)

    async def close(self) -> None:
        for kube in self._clients.values():
            await kube.close()
        self._clients.clear()

    async def kube(self, context: str | None) -> KubeClient:
        async with self._lock:
            if context not in self._clients:
                # An unknown context fails once, naming the contexts there are,
                # instead of being retried as an unreachable API server.
                self._check_kube_context(context)
                kubeconfig = (
                    str(self.settings.kubeconfig) if self.settings.kubeconfig else None
                )
                self._clients[context] = await KubeClient.connect(kubeconfig, context)
            return self._clients[context]

    def helm(self, context: str | None) -> Helm:
        kubeconfig = str(self.settings.kubeconfig) if self.settings.kubeconfig else None
        return Helm(
            self.settings.helm, kubeconfig, context, Path(self.settings.chart_root)
        )

    def activities(self) -> list[Callable[..., Any]]:
        return [self.validate_request, self.apply_phase, self.wait_ready]

    # -- validate ---------------------------------------------------------

    @activity.defn(name=contracts.VALIDATE_REQUEST)
    @translate_errors
    @heartbeat_while_running
    async def validate_request(self, raw: dict[str, Any]) -> ValidateResult:
        """Check everything that can be checked before anything is applied."""
        # The workflow checked the namespace, and took a kube- one only for a
        # run recorded before that check.
        request = parse_request(raw, cluster_namespaces=True)
        check_image_tag(request)
        check_own_id("deploy", request.workflow_id, "Start it again")
        helm = self.helm(request.kube_context)
        self._check_kube_context(request.kube_context)
        self._check_app_temporal(request)
        for chart in (request.chart, *self._operator_chart_paths(request)):
            if chart.path is not None:
                helm.resolve_path(chart.path)
        await self._check_repositories(request)
        objects, _, existing, _, noted = await gather_or_cancel(
            self._render_all(request),
            self._check_cluster(request),
            self._existing_objects(request),
            check_release_idle(
                "deploy", request.namespace, request.release, "deploy again"
            ),
            self._migrations_note(request),
        )
        phases = {
            obj.get("metadata", {}).get("labels", {}).get(PHASE_LABEL)
            for obj in objects
        }
        missing = {
            p.value for p in (Phase.DATA, Phase.MESSAGING, Phase.MIGRATION, Phase.APP)
        } - phases
        if missing:
            raise _non_retryable(
                contracts.VALUES_REJECTED,
                f"the chart renders no objects for phases {sorted(missing)}; check "
                "the chart "
                f"({request.chart}) and that its objects carry the {PHASE_LABEL} label",
            )
        app_temporal_namespace(
            [o for o in objects if object_phase(o) == Phase.BASE.value]
        )
        if existing is not None:
            await self._check_owners(request, objects, existing)
            check_not_older(request, objects, existing, noted)
        await self._dry_run_objects(
            request, objects, None if existing is None else frozenset(existing)
        )
        return ValidateResult(
            chart=str(request.chart.path or request.chart.name),
            objects=len(objects),
            app_version=request.app_version or rendered_app_version(objects),
        )

    async def _check_cluster(self, request: DeployRequest) -> None:
        """Reject, before anything is applied, what helm would get wrong."""
        kube = await self.kube(request.kube_context)
        helm = self.helm(request.kube_context)
        keys = {f"{request.release}-temporal": "temporal"}
        if request.install_operators:
            keys[f"{request.release}-postgres-operator"] = "postgresOperator"
            keys[f"{request.release}-rabbitmq-operator"] = "rabbitmqOperator"
        expected = {request.release: self._chart_name(helm, request.chart)}
        remote: dict[str, ChartRef] = {}
        for name, key in keys.items():
            chart = await self._dependency_chart(request, key)
            expected[name] = self._chart_name(helm, chart)
            if chart.path is None:
                remote[key] = chart
        checks = [preflight.check_release_names(kube, request.namespace, expected)]
        if request.install_operators:
            checks.append(
                preflight.check_no_other_operators(
                    kube, request.release, request.namespace
                )
            )
        # Both read only, so both run to the end, and when both fail, the
        # release names' error shows, whichever check ended first.
        for outcome in await asyncio.gather(*checks, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        # Only then fetch the operator and Temporal charts, so a request that
        # the cluster rejects does not contact their repositories. The render
        # beside this check still fetches a repository chart named in chart.
        await gather_or_cancel(
            *(self._fetch_chart(helm, key, chart) for key, chart in remote.items())
        )

    async def _existing_objects(
        self, request: DeployRequest
    ) -> dict[ObjectKey, JsonObject] | None:
        """Return the namespace's objects of OWN_APPLY_KINDS by (apiVersion,
        kind, name), listed while the chart renders; None when the identity may
        not list them."""
        kube = await self.kube(request.kube_context)

        async def listed(
            api_version: str, kind: str
        ) -> list[tuple[ObjectKey, JsonObject]]:
            try:
                rtype = await kube.resource_type(api_version, kind)
            except NoKindMatchError:
                return []  # The operator's CRD is not installed yet.
            listing = await kube.list(rtype, request.namespace)
            return [
                ((api_version, kind, item["metadata"]["name"]), item)
                for item in listing.get("items", [])
            ]

        try:
            found = await gather_or_cancel(
                *(listed(*k) for k in sorted(OWN_APPLY_KINDS))
            )
        except ForbiddenError:
            return None  # As in the dry run: the phases report the permission.
        return dict(pair for kind in found for pair in kind)

    async def _check_owners(
        self,
        request: DeployRequest,
        objects: list[JsonObject],
        existing: dict[ObjectKey, JsonObject],
    ) -> None:
        """Raise OwnedElsewhere when an object that the deployer would apply
        exists already and belongs to something other than this release.

        The deployer applies these objects with force, so it would take over,
        for example, another release's database Service when this release's
        name makes the chart render a Service of that name, and this release's
        destroy would then delete it.
        """
        kube = await self.kube(request.kube_context)
        conflicts = []
        for obj in objects:
            if object_phase(obj) not in OWN_APPLY_PHASES:
                continue
            key = (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])
            current = existing.get(key)
            if current is None and key[:2] not in OWN_APPLY_KINDS:
                try:
                    rtype = await kube.resource_type(key[0], key[1])
                except NoKindMatchError:
                    continue  # Not served yet, so no object of it exists.
                current = await kube.get(rtype, key[2], request.namespace)
            if current is None:
                continue
            labels = current.get("metadata", {}).get("labels") or {}
            if labels.get(INSTANCE_LABEL) == request.release:
                continue
            conflicts.append(f"{key[1]} {key[2]} ({owner_of(current)})")
        if conflicts:
            raise _non_retryable(
                contracts.OWNED_ELSEWHERE,
                f"release {request.release} would take over objects in namespace "
                f"{request.namespace} that belong to something else: "
                f"{'; '.join(conflicts)}. The chart names these objects after the "
                "release, so choose another release name, or delete those "
                "objects if nothing uses them",
            )

    async def _migrations_note(self, request: DeployRequest) -> dict[str, str]:
        """Return the deleted migrations noted in the release's migrations
        ConfigMap, or none when the identity may not read it."""
        kube = await self.kube(request.kube_context)
        try:
            record = await kube.get(
                CONFIG_MAP, migrations_name(request.release), request.namespace
            )
        except ForbiddenError:
            return {}
        return migrated_versions(record)

    async def _dry_run_objects(
        self,
        request: DeployRequest,
        objects: list[JsonObject],
        existing: frozenset[ObjectKey] | None,
    ) -> None:
        """Apply every rendered object of our chart as a dry run, so that values
        the API server rejects fail validate before the base phase applies
        anything: an invalid annotation or resource request, or a new value for
        a field that cannot change (a StatefulSet's volume size).

        An object whose kind is not served yet (the operators' CRDs on a first
        deploy) is not checked. In a namespace that does not exist yet, each
        object is checked as a new one in namespace default. An object of the
        same name there, or a missing permission, skips the check. existing is
        None when the identity may not list the namespace, and then no Job is
        checked.
        """
        kube = await self.kube(request.kube_context)
        candidates = [
            o
            for o in objects
            if object_phase(o) is not None
            and not (
                o["kind"] == "Job"
                and (
                    existing is None
                    or (o["apiVersion"], o["kind"], o["metadata"]["name"]) in existing
                )
            )
        ]

        async def check(obj: JsonObject) -> None:
            body = copy.deepcopy(obj)
            body["metadata"]["namespace"] = request.namespace
            in_default = False
            try:
                try:
                    await kube.apply(body, dry_run=True)
                except NotFoundError:
                    # The namespace does not exist yet: the base phase creates it.
                    in_default = True
                    body["metadata"]["namespace"] = "default"
                    await kube.create(
                        await kube.resource_type(obj["apiVersion"], obj["kind"]),
                        body,
                        "default",
                        dry_run=True,
                    )
            except InvalidError as error:
                denied = "denied" in error.message
                if in_default and (denied or not error.fields):
                    # Namespace default may have admission rules of its own, so
                    # only the API server's checks of the object itself count.
                    return
                raise _non_retryable(
                    contracts.OBJECT_INVALID,
                    self._dry_run_message(request, obj, error, in_default, denied),
                ) from error
            except (NoKindMatchError, KubeApiError):
                # A check only: the phase that applies the object reports a
                # missing permission or kind, or another refusal, with its fix.
                return

        await gather_or_cancel(*(check(o) for o in candidates))

    @staticmethod
    def _dry_run_message(
        request: DeployRequest,
        obj: JsonObject,
        error: InvalidError,
        in_default: bool,
        denied: bool,
    ) -> str:
        fix = "Fix the value in the request that sets this field"
        if denied:
            fix = (
                "An admission policy or webhook of the cluster denied it: change "
                "the value that it names, or ask the cluster's administrators"
            )
        elif any(text in error.message for text in IMMUTABLE_TEXTS):
            fix = (
                "Some fields cannot change once the object exists: a "
                "StatefulSet's selector, service name and volume claim templates "
                "(set by nameOverride or redis.persistence.size, for example), a "
                "Service's clusterIP, a Deployment's selector. Keep the installed "
                "value, or delete the object and deploy again (a StatefulSet's "
                "volume claims stay)"
            )
        where = (
            " (checked as a new object in namespace default, because the namespace "
            "does not exist yet)"
            if in_default
            else ""
        )
        return (
            f"{obj['kind']} {obj['metadata']['name']} in namespace "
            f"{request.namespace} cannot take the new values{where}: {error}. {fix}"
        )

    async def _fetch_chart(self, helm: Helm, key: str, chart: ChartRef) -> None:
        """Fetch a chart from its repository once, so that a registry that
        cannot be reached, or a wrong name or version, fails validate before
        the base phase applies anything."""
        try:
            await self._shown_chart(helm, chart)
        except HelmError as error:
            raise ApplicationError(
                f"cannot fetch the {key} chart {chart.name} {chart.version} from "
                f"{chart.repository}: {error.stderr.strip()}. Check the "
                "repository, name and version and that the worker reaches the "
                "repository, or name a chart folder in operator_charts",
                type=contracts.HELM_FAILED,
            ) from error

    @staticmethod
    def _chart_name(helm: Helm, chart: ChartRef) -> str:
        if chart.path is None:
            assert chart.name is not None  # ChartRef's validator ensures it.
            return chart.name
        text = (helm.resolve_path(chart.path) / "Chart.yaml").read_text()
        return str(chart_metadata(text).get("name", ""))

    async def _recorded_version(
        self, helm: Helm, chart: ChartRef, version: str | None
    ) -> str | None:
        """Return the app version that the base release must record apart from
        the chart's appVersion: version, or None when the chart has it already.

        A repository chart's Chart.yaml comes from `helm show chart`, cached
        like the render, so an equal version costs no pull and no package.
        """
        if version is None:
            return None
        if chart.path is not None:
            path = helm.resolve_path(chart.path) / "Chart.yaml"
            text = await asyncio.to_thread(path.read_text)
        else:
            text = await self._shown_chart(helm, chart)
        return None if chart_app_version(text) == version else version

    async def _shown_chart(self, helm: Helm, chart: ChartRef) -> str:
        """Return a repository chart's Chart.yaml, fetched once per cache period."""
        text: str = await self.renders.get(
            helm.cache_key("show chart", chart=chart),
            lambda: helm.run(["show", "chart", *helm.chart_args(chart)]),
        )
        return text

    def _operator_chart_paths(self, request: DeployRequest) -> list[ChartRef]:
        charts = request.operator_charts
        return [
            c
            for c in (
                charts.postgres_operator,
                charts.rabbitmq_operator,
                charts.temporal,
            )
            if c
        ]

    def _check_kube_context(self, context: str | None) -> None:
        """Raise KubeContextNotFound when the worker's kubeconfig lacks context.

        The files are the ones the Kubernetes client loads: the worker's
        setting, else each file of $KUBECONFIG, else ~/.kube/config. With
        none of them present (a worker in the cluster uses its service
        account) there are no contexts, so naming one is the request's error.
        A file that the worker's setting names but that it cannot read is the
        worker's problem: KubeconfigInvalid, as when the client loads it.
        """
        if context is None:
            return
        configured = self.settings.kubeconfig
        if configured:
            paths = [Path(configured).expanduser()]
        else:
            listed = os.environ.get("KUBECONFIG") or "~/.kube/config"
            paths = [Path(p).expanduser() for p in listed.split(os.pathsep) if p]
        present = [path for path in paths if path.exists()]
        if not present and not configured:
            raise _non_retryable(
                contracts.KUBE_CONTEXT_NOT_FOUND,
                f"kube_context {context!r} cannot be used: the worker has no "
                f"kubeconfig ({', '.join(map(str, paths))} missing), so it has no "
                "contexts. Leave kube_context out to use the worker's own "
                "cluster, or give the worker a kubeconfig (VENTROS_DEPLOY_KUBECONFIG)",
            )
        names: list[Any] = []
        for path in present or paths:
            try:
                config = yaml.load(path.read_text(), Loader=SAFE_LOADER) or {}
            except OSError as error:
                raise _non_retryable(
                    contracts.KUBECONFIG_INVALID,
                    f"cannot read the worker's kubeconfig {path}: {error.strerror}. "
                    "Fix the file, or set VENTROS_DEPLOY_KUBECONFIG, and restart the "
                    "worker",
                ) from error
            except yaml.YAMLError:
                # Not the parser's text: it quotes the file, which can contain keys.
                raise _non_retryable(
                    contracts.KUBECONFIG_INVALID,
                    f"the worker's kubeconfig {path} is not valid YAML. Fix the "
                    "file, or set VENTROS_DEPLOY_KUBECONFIG, and restart the worker",
                ) from None
            if isinstance(config, dict):
                names += [c.get("name") for c in config.get("contexts") or []]
        if context not in names:
            where = ", ".join(map(str, present or paths))
            raise _non_retryable(
                contracts.KUBE_CONTEXT_NOT_FOUND,
                f"kube_context {context!r} is not in the worker's kubeconfig {where}; "
                f"it has: {', '.join(map(str, names)) or 'no contexts'}",
            )

    def check_chart_repository(
        self, field: str, chart: ChartRef, trusted: Sequence[str] = ()
    ) -> None:
        """Raise InvalidRequest when chart comes from a repository that neither
        the worker's settings nor trusted (the chart's own defaults) allow.

        The check comes before any helm call that would contact the repository,
        so a request cannot make the worker connect to a host of its choosing.
        """
        listed = self.settings.allowed_repositories
        if chart.repository is None or repository_allowed(
            chart.repository, (*listed, *trusted)
        ):
            return
        allowed = ", ".join((*listed, *trusted)) or "none"
        # The dependencies of our chart vouch for the charts of its subcharts,
        # not for the chart itself.
        sources = (
            "the repositories in VENTROS_DEPLOY_CHART_REPOSITORIES"
            if field == "chart"
            else "the repositories in VENTROS_DEPLOY_CHART_REPOSITORIES and "
            "those that the chart's dependencies name"
        )
        raise _non_retryable(
            contracts.INVALID_REQUEST,
            f"{field}: chart repository {chart.repository} is not allowed. The "
            f"worker fetches this chart only from {sources} (now: {allowed}). "
            "Name a chart folder under the worker's chart root, or add the "
            "repository to that setting on the worker",
        )

    async def _check_repositories(self, request: DeployRequest) -> None:
        """Reject the request's chart repositories that the worker may not use."""
        self.check_chart_repository("chart", request.chart)

        charts = request.operator_charts
        named = {
            f"operator_charts.{field}": chart
            for field in type(charts).model_fields
            if (chart := getattr(charts, field)) is not None
            and chart.repository is not None
        }
        if not named:
            return
        if all(
            repository_allowed(
                str(chart.repository), self.settings.allowed_repositories
            )
            for chart in named.values()
        ):
            return

        # Only now read the chart's defaults: that costs a helm call, and a
        # request without repository charts never needs it.
        dependencies = (await self._chart_defaults(request)).get("dependencies")
        if not isinstance(dependencies, dict):
            dependencies = {}
        # Only entries that a request could name itself count: an entry such
        # as "https://" would otherwise allow every host.
        trusted = [
            repository
            for entry in dependencies.values()
            if isinstance(entry, dict)
            and isinstance(repository := entry.get("repository"), str)
            and REPOSITORY_URL.fullmatch(repository)
            and not dot_segments(repository)
        ]
        for field, chart in named.items():
            self.check_chart_repository(field, chart, trusted)

    def _check_app_temporal(self, request: DeployRequest) -> None:
        temporal = request.values.get("temporal")
        if not isinstance(temporal, dict):
            return  # The chart's schema rejects it, naming the value, at render.
        address = temporal.get("address")
        if address and normalize_address(str(address)) == normalize_address(
            self.settings.temporal_address
        ):
            raise _non_retryable(
                contracts.INVALID_REQUEST,
                f"values.temporal.address {address} is the bootstrap Temporal that "
                "runs the deployer; "
                "the app needs its own Temporal (leave it empty for the "
                "in-cluster one)",
            )

    # -- apply ------------------------------------------------------------

    @activity.defn(name=contracts.APPLY_PHASE)
    @translate_errors
    @heartbeat_while_running
    async def apply_phase(self, job: ApplyRequest) -> ApplyResult:
        """Apply one phase's objects and return what the wait must watch."""
        request, phase = job.request, job.phase
        bind_log_context(request.release, request.namespace, phase.value)
        try:
            if phase is Phase.BASE:
                return await self._apply_base(request)
            if phase is Phase.TEMPORAL:
                return await self._apply_temporal(request)
            if phase is Phase.MIGRATION:
                return await self._apply_migration(request)
            return await self._apply_rendered(request, phase)
        finally:
            structlog.contextvars.clear_contextvars()  # Bound above, per attempt.

    async def _render_all(self, request: DeployRequest) -> list[JsonObject]:
        """Render every phase of the chart, or take the render validation made."""
        helm = self.helm(request.kube_context)
        values = chart_values(
            request,
            None,
            await self.digest_key_for(request.chart, request.kube_context),
        )
        key = helm.cache_key(
            "template", request.release, request.namespace, values, chart=request.chart
        )
        objects: list[JsonObject] = await self.renders.get(
            key,
            lambda: helm.template(
                request.release, request.namespace, request.chart, values
            ),
        )
        return objects

    async def _render_phase(
        self, request: DeployRequest, phase: Phase
    ) -> list[JsonObject]:
        objects = await self._render_all(request)
        return [o for o in objects if object_phase(o) == phase.value]

    async def _apply_objects(
        self, kube: KubeClient, objects: list[JsonObject], namespace: str
    ) -> None:
        for obj in objects:
            obj.setdefault("metadata", {})
            if obj["kind"] not in ("CustomResourceDefinition", "Namespace"):
                obj["metadata"].setdefault("namespace", namespace)
            deadline = time.monotonic() + NO_KIND_RETRY_S
            delay = 0.25
            while True:
                try:
                    await kube.apply(obj)
                    break
                except NoKindMatchError:
                    # The CRD may be created but not yet Established: retry briefly.
                    kube.forget_discovery(obj["apiVersion"])
                    if time.monotonic() + delay > deadline:
                        raise
                    activity.heartbeat(f"waiting for kind {obj['kind']} to be served")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 4.0)

    async def _apply_rendered(
        self, request: DeployRequest, phase: Phase
    ) -> ApplyResult:
        objects = await self._render_phase(request, phase)
        kube = await self.kube(request.kube_context)
        await self._apply_objects(kube, objects, request.namespace)
        waits = [
            ref_of(o, request.namespace)
            for o in objects
            if o["kind"] in readiness.WAITED_KINDS
        ]
        if phase is Phase.DATA:
            # The operator's StatefulSet, named after the cluster, runs the database
            # pods.
            waits += [
                ObjectRef(
                    api_version="apps/v1",
                    kind="StatefulSet",
                    name=ref.name,
                    namespace=ref.namespace,
                )
                for ref in waits
                if ref.kind == "postgresql"
            ]
        log.info("phase applied", objects=len(objects))
        return ApplyResult(phase=phase, applied=len(objects), waits=waits)

    async def _dependency_chart(self, request: DeployRequest, key: str) -> ChartRef:
        configured = {
            "postgresOperator": request.operator_charts.postgres_operator,
            "rabbitmqOperator": request.operator_charts.rabbitmq_operator,
            "temporal": request.operator_charts.temporal,
        }[key]
        if configured:
            return configured
        defaults = await self._chart_defaults(request)
        reference = (defaults.get("dependencies") or {}).get(key) or {}
        return ChartRef.model_validate(reference)

    async def digest_key_for(
        self, chart: ChartRef, kube_context: str | None
    ) -> bytes | None:
        """Return the key of the secrets digest when chart takes the digest in
        deployer.secretsDigest, else None.

        A chart from before that value rejects it (its schema allows no
        unknown keys under deployer), so it keeps its own plain digest.
        """
        if self.digest_key is None:
            return None
        if chart.path is not None:
            # A chart folder's own values.yaml, read without a helm process.
            path = self.helm(kube_context).resolve_path(chart.path) / "values.yaml"
            text = path.read_text() if path.is_file() else ""
            loaded = yaml.load(text, Loader=SAFE_LOADER) or {}
            defaults = loaded if isinstance(loaded, dict) else {}
        else:
            defaults = await self._show_values(chart, kube_context)
        deployer = defaults.get("deployer")
        if isinstance(deployer, dict) and "secretsDigest" in deployer:
            return self.digest_key
        return None

    async def _chart_defaults(self, request: DeployRequest) -> dict[str, Any]:
        """Return the default values of the request's chart."""
        return await self._show_values(request.chart, request.kube_context)

    async def _show_values(
        self, chart: ChartRef, kube_context: str | None
    ) -> dict[str, Any]:
        """Return a chart's default values (`helm show values`, cached)."""
        helm = self.helm(kube_context)
        text: str = await self.renders.get(
            helm.cache_key("show values", chart=chart),
            lambda: helm.run(["show", "values", *helm.chart_args(chart)]),
        )
        loaded = yaml.load(text, Loader=SAFE_LOADER) or {}
        return loaded if isinstance(loaded, dict) else {}

    async def _apply_base(self, request: DeployRequest) -> ApplyResult:
        helm = self.helm(request.kube_context)
        notes: list[str] = []
        releases: list[tuple[str, ChartRef, dict[str, Any]]] = [
            (
                request.release,
                request.chart,
                chart_values(
                    request,
                    [Phase.BASE],
                    await self.digest_key_for(request.chart, request.kube_context),
                ),
            )
        ]
        if request.install_operators:
            for key, suffix in (
                ("postgresOperator", "postgres-operator"),
                ("rabbitmqOperator", "rabbitmq-operator"),
            ):
                releases.append(
                    (
                        f"{request.release}-{suffix}",
                        await self._dependency_chart(request, key),
                        {},
                    )
                )

        recorded_version = await self._recorded_version(
            helm, request.chart, values_image_tag(releases[0][2])
        )

        async def install(
            release: str,
            chart: ChartRef,
            values: dict[str, Any],
            operator: bool,
            skip_crds: bool,
        ) -> list[JsonObject]:
            objects, note = await helm.apply_release(
                release,
                request.namespace,
                chart,
                values,
                manifest=operator,
                skip_crds=skip_crds,
                # helm list and helm history show the app version of our
                # release. The operators' releases keep their charts' own.
                app_version=None if operator else recorded_version,
            )
            if note:
                log.warning("recovered helm release", note=note)
                notes.append(note)
            return objects

        async def install_operator(
            release: str,
            chart: ChartRef,
            values: dict[str, Any],
            crds: Awaitable[list[Any] | None],
        ) -> list[JsonObject]:
            # Inside the claim, so no other deployer changes the operators' CRDs
            # between the check and helm.
            skip_crds = await self._crds_in_place(request, crds)
            return await install(release, chart, values, True, skip_crds)

        async def install_all() -> list[list[JsonObject]]:
            await self._ensure_namespace(request)
            (base_release, base_chart, base_values), *operators = releases
            # The operators and our base objects do not depend on each other, so
            # each release is recovered and upgraded at the same time as the
            # others. When one fails, the others are stopped before the claim
            # is given back.
            return await gather_or_cancel(
                install(base_release, base_chart, base_values, False, False),
                *(
                    install_operator(release, chart, values, crds)
                    for (release, chart, values), crds in zip(
                        operators, crd_reads, strict=True
                    )
                ),
            )

        # The operator charts' CRDs are read (a helm process each when the
        # cache is cold) while the claim below is taken.
        crd_reads = [
            asyncio.ensure_future(self._chart_crds(request, chart))
            for _, chart, _ in releases[1:]
        ]
        try:
            manifests = await self._install_base(request, install_all)
        finally:
            for read in crd_reads:
                read.cancel()
            await asyncio.gather(*crd_reads, return_exceptions=True)
        waits = [
            ObjectRef(
                api_version="apiextensions.k8s.io/v1",
                kind="CustomResourceDefinition",
                name=name,
            )
            for name in OPERATOR_CRDS
        ]
        waits += [
            ref_of(o, request.namespace)
            for objects in manifests
            for o in objects
            if o["kind"] in readiness.WAITED_KINDS
        ]
        return ApplyResult(
            phase=Phase.BASE, applied=len(releases), waits=waits, notes=notes
        )

    async def _install_base(
        self,
        request: DeployRequest,
        install_all: Callable[[], Awaitable[list[list[JsonObject]]]],
    ) -> list[list[JsonObject]]:
        """Run install_all, holding the operator claim when operators are installed."""
        if request.install_operators:
            # Another deploy may have installed the operators since validate
            # checked, so the claim checks again before it is taken.
            kube = await self.kube(request.kube_context)
            info = activity.info()
            claim = OperatorClaim(
                kube,
                holder_identity(request.release, request.namespace),
                attempt=f"{info.workflow_run_id} attempt {info.attempt}",
                max_wait_s=min(request.timeouts.base, CLAIM_MAX_WAIT_S),
            )
            check = functools.partial(
                preflight.check_no_other_operators,
                kube,
                request.release,
                request.namespace,
            )
            async with claim.held(check):
                return await install_all()
        return await install_all()

    async def _chart_crds(
        self, request: DeployRequest, chart: ChartRef
    ) -> list[Any] | None:
        """Return chart's CRDs (`helm show crds`, cached), or None if helm failed."""
        helm = self.helm(request.kube_context)
        try:
            documents: list[Any] = await self.renders.get(
                helm.cache_key("show crds", chart=chart), lambda: helm.crds(chart)
            )
        except Exception as error:
            # The check is only a shortcut: helm's upgrade that follows meets
            # the same chart and reports what is wrong with it.
            log.info("crd check left to helm", error_type=type(error).__name__)
            return None
        return documents

    async def _crds_in_place(
        self,
        request: DeployRequest,
        read: Awaitable[list[Any] | None],
    ) -> bool:
        """Tell whether helm may skip an operator chart's CRDs (activities/crds.py)."""
        documents = await read
        if documents is None:
            return False
        try:
            kube = await self.kube(request.kube_context)
            return await crds_in_place(kube, documents)
        except Exception as error:
            # The check is only a shortcut: without it, helm applies the CRDs.
            log.info("crd check left to helm", error_type=type(error).__name__)
            return False

    async def _ensure_namespace(self, request: DeployRequest) -> None:
        """Create the target namespace when it does not exist yet.

        This replaces helm's --create-namespace, with which each first install
        of the three base releases checked the Namespace against the cluster's
        OpenAPI document before applying it (in an audit-log trace, about
        0.08 s between helm's OpenAPI request and its Namespace patch). An
        existing namespace is only read, so the identity of deploy/rbac.yaml,
        which may not create namespaces, needs only get. Unlike helm, this
        does not add the `name` label to a namespace that exists; the API
        server's kubernetes.io/metadata.name label is on every namespace.
        """
        kube = await self.kube(request.kube_context)
        namespaces = well_known("v1", "Namespace")
        if await kube.get(namespaces, request.namespace) is not None:
            return
        name = request.namespace
        namespace = {
            "apiVersion": "v1",
            "kind": "Namespace",
            # The label helm's --create-namespace set, for selectors that use it.
            "metadata": {"name": name, "labels": {"name": name}},
        }
        try:
            await kube.create(namespaces, namespace)
        except ConflictError:
            return  # Another client created it after the read, so it exists.
        log.info("namespace created", namespace=name)

    async def _apply_temporal(self, request: DeployRequest) -> ApplyResult:
        helm = self.helm(request.kube_context)
        release = f"{request.release}-temporal"
        data, chart = await asyncio.gather(
            self._render_phase(request, Phase.DATA),
            self._dependency_chart(request, "temporal"),
        )
        clusters = [o["metadata"]["name"] for o in data if o["kind"] == "postgresql"]
        if not clusters:
            raise _non_retryable(
                contracts.VALUES_REJECTED,
                "the chart renders no postgresql for Temporal to use",
            )
        namespace, retention = app_temporal_namespace(
            await self._render_phase(request, Phase.BASE)
        )
        values = temporal_chart_values(clusters[0], namespace, retention)
        notes: list[str] = []
        try:
            objects, note = await helm.apply_release(
                release, request.namespace, chart, values, manifest=True
            )
        except HelmError as error:
            replaced = await self._replace_finished_job(request, release, error)
            if replaced is None:
                raise
            notes.append(replaced)
            objects, note = await helm.apply_release(
                release, request.namespace, chart, values, manifest=True
            )
        if note:
            log.warning("recovered helm release", note=note)
            notes.append(note)
        waits = [
            ref_of(o, request.namespace)
            for o in objects
            if o["kind"] in readiness.WAITED_KINDS
        ]
        return ApplyResult(phase=Phase.TEMPORAL, applied=1, waits=waits, notes=notes)

    async def _replace_finished_job(
        self, request: DeployRequest, release: str, error: HelmError
    ) -> str | None:
        """Delete the finished Job of release whose pod template helm could not
        change, and return a note; None when the error is another one.

        A Job's pod template is immutable, so a changed value that reaches a
        schema Job (a new temporal.namespace adds an init container) failed
        every upgrade of the Temporal release. A finished Job can be replaced,
        and the next upgrade creates it again. A running Job is left to finish.
        """
        found = IMMUTABLE_JOB.search(error.stderr)
        if found is None or "field is immutable" not in error.stderr:
            return None
        name = found.group(1)
        kube = await self.kube(request.kube_context)
        job_type = well_known("batch/v1", "Job")
        existing = await kube.get(job_type, name, request.namespace)
        if existing is None:
            return None
        metadata = existing["metadata"]
        owners = {
            (metadata.get("annotations") or {}).get("meta.helm.sh/release-name"),
            (metadata.get("labels") or {}).get(INSTANCE_LABEL),
        }
        if release not in owners:
            return None
        verdict = readiness.job(existing)
        if not (verdict.ready or verdict.failure):
            return None
        await kube.delete(job_type, name, request.namespace, propagation="Foreground")
        await self._wait_gone(kube, job_type, name, request.namespace)
        log.info("replaced finished job whose pod template changed", job=name)
        return f"replaced finished job/{name}, whose pod template changed"

    async def _apply_migration(self, request: DeployRequest) -> ApplyResult:
        objects = await self._render_phase(request, Phase.MIGRATION)
        kube = await self.kube(request.kube_context)
        jobs = [o for o in objects if o["kind"] == "Job"]
        others = [o for o in objects if o["kind"] != "Job"]
        await self._apply_objects(kube, others, request.namespace)
        notes: list[str] = []
        job_type = well_known("batch/v1", "Job")
        listing, record = await asyncio.gather(
            kube.list(
                job_type, request.namespace, label_selector=migration_selector(request)
            ),
            kube.get(CONFIG_MAP, migrations_name(request.release), request.namespace),
        )
        listed = listing.get("items", [])
        pruned = migrated_versions(record)
        # Every migration known to have completed: version to completion time.
        done = with_completed(pruned, listed)
        waits = []
        for job in jobs:
            name = job["metadata"]["name"]
            version = version_of_job(job)
            existing = await kube.get(job_type, name, request.namespace)
            other = version_of_job(existing) if existing else None
            if version in pruned and (existing is None or other != version):
                # Its Job was pruned after it completed: a removed Job does not
                # mean a version that still has to migrate.
                notes.append(
                    f"app version {version} migrated at {pruned[version]}, and "
                    f"job/{name} was removed since; not run again"
                )
                notes += later_migrations(done, version)
                continue
            if existing and other != version_of_job(job):
                # Versions such as 1.0.0 and 1-0-0 give one Job name. The Job
                # ran for the other version, so it is replaced, not counted,
                # but only once it ended: a running migration is not killed.
                ended = readiness.job(existing)
                if not (ended.ready or ended.failure):
                    raise _non_retryable(
                        contracts.MIGRATION_BUSY,
                        f"job/{name} in namespace {request.namespace} still runs the "
                        f"migration of app version {other}, which gives the same Job "
                        f"name as {version_of_job(job)}. Wait until it ends (or "
                        "delete it if it must not finish), then retry",
                    )
                pruned = await note_completed_migrations(
                    kube, request.release, request.namespace, [existing], pruned
                )
                await kube.delete(
                    job_type, name, request.namespace, propagation="Foreground"
                )
                await self._wait_gone(kube, job_type, name, request.namespace)
                notes.append(
                    f"replaced job/{name}, which ran for app version {other}: "
                    f"that version and {version_of_job(job)} give the same Job name"
                )
                existing = None
            verdict = readiness.job(existing) if existing else None
            if verdict and verdict.ready:
                notes.append(
                    f"job/{name} already completed for this app version; not run again"
                )
                notes += later_migrations(done, version)
                waits.append(ref_of(job, request.namespace))
                continue
            if verdict and verdict.failure:
                # A failed Job is replaced, never patched: its pod template is
                # immutable.
                await kube.delete(
                    job_type, name, request.namespace, propagation="Foreground"
                )
                await self._wait_gone(kube, job_type, name, request.namespace)
                notes.append(f"replaced failed job/{name}")
                existing = None
            if existing is None:
                job["metadata"]["namespace"] = request.namespace
                await kube.create(job_type, job, request.namespace)
            waits.append(ref_of(job, request.namespace))
        own_jobs = {ref.name for ref in waits}
        await self._prune_migrations(kube, request, own_jobs, pruned)
        return ApplyResult(
            phase=Phase.MIGRATION, applied=len(jobs), waits=waits, notes=notes
        )

    async def _wait_gone(
        self, kube: KubeClient, rtype: Any, name: str, namespace: str
    ) -> None:
        for _ in range(600):
            if await kube.get(rtype, name, namespace) is None:
                return
            activity.heartbeat(f"waiting for {rtype.kind.lower()}/{name} to be deleted")
            await asyncio.sleep(0.2)
        raise ApplicationError(
            f"{rtype.kind.lower()}/{name} was not deleted within 120 s",
            type=contracts.KUBE_API_UNAVAILABLE,
        )

    async def _prune_migrations(
        self,
        kube: KubeClient,
        request: DeployRequest,
        keep: set[str],
        pruned: dict[str, str],
    ) -> None:
        """Keep MIGRATION_HISTORY migration Jobs, the ones in keep (this
        deploy's) and the newest others, and delete the rest that have ended,
        after noting the versions of the completed ones.

        The Jobs are listed here, after this deploy's Jobs were applied, so a
        Job that completed meanwhile is noted too. A Job that still runs is
        never deleted: deleting it would stop its migration halfway.
        """
        job_type = well_known("batch/v1", "Job")
        listing = await kube.list(
            job_type, request.namespace, label_selector=migration_selector(request)
        )
        others = sorted(
            (j for j in listing.get("items", []) if j["metadata"]["name"] not in keep),
            key=lambda j: j["metadata"]["creationTimestamp"],
            reverse=True,
        )
        old = [
            job
            for job in others[max(0, MIGRATION_HISTORY - len(keep)) :]
            if (verdict := readiness.job(job)).ready or verdict.failure
        ]
        if not old:
            return
        await note_completed_migrations(
            kube, request.release, request.namespace, old, pruned
        )
        for job in old:
            await kube.delete(job_type, job["metadata"]["name"], request.namespace)

    # -- wait -------------------------------------------------------------

    @activity.defn(name=contracts.WAIT_READY)
    @translate_errors
    async def wait_ready(self, job: WaitRequest) -> WaitResult:
        """Watch every object of a phase until all are ready; heartbeat the statuses."""
        kube = await self.kube(job.kube_context)
        statuses = {ref.describe(): "not observed yet" for ref in job.refs}
        deadline = time.monotonic() + max(0.0, job.deadline_epoch_s - time.time())

        def on_status(ref: ObjectRef, status: str) -> None:
            if statuses.get(ref.describe()) != status:
                statuses[ref.describe()] = status
                activity.heartbeat(statuses)

        async def beat() -> None:
            while True:
                await asyncio.sleep(HEARTBEAT_EVERY_S)
                activity.heartbeat(statuses)

        beating = asyncio.create_task(beat())
        try:
            async with asyncio.TaskGroup() as group:
                for ref in job.refs:
                    group.create_task(wait_object_ready(kube, ref, deadline, on_status))
        except* WaitTimeout as timeouts:
            first = timeouts.exceptions[0]
            assert isinstance(first, WaitTimeout)
            raise _non_retryable(
                contracts.PHASE_TIMEOUT,
                await self._timeout_message(kube, first, job.then),
            ) from first
        except* TerminalFailure as failures:
            first_failure = failures.exceptions[0]
            assert isinstance(first_failure, TerminalFailure)
            raise _non_retryable(
                contracts.TERMINAL_FAILURE,
                self._failure_message(first_failure, job.then),
            ) from first_failure
        except* (KubeApiError, *TRANSIENT_ERRORS) as errors:
            raise errors.exceptions[0] from None
        finally:
            beating.cancel()
        return WaitResult(phase=job.phase, statuses=statuses)

    async def _timeout_message(
        self, kube: KubeClient, error: WaitTimeout, then: str | None
    ) -> str:
        message = str(error)
        ref = error.ref
        if ref.kind in ("Deployment", "StatefulSet") and ref.namespace:
            try:
                obj = await kube.get(
                    await kube.resource_type(ref.api_version, ref.kind),
                    ref.name,
                    ref.namespace,
                )
                selector = ((obj or {}).get("spec") or {}).get("selector", {}).get(
                    "matchLabels"
                ) or {}
                if selector:
                    blocked = await describe_blocked_pods(kube, ref.namespace, selector)
                    if blocked:
                        message += ". Pods not ready: " + "; ".join(blocked)
            except (KubeApiError, *TRANSIENT_ERRORS):
                message += ". (could not list its pods)"
        return (
            f"{message}. Check with: ventros-deploy status, then "
            f"{then or 'retry or abort'}"
        )

    @staticmethod
    def _failure_message(error: TerminalFailure, then: str | None) -> str:
        hints = {
            "Job": "read the Job's pod logs and events, fix the cause",
            "postgresql": "check the postgres-operator's log and the postgresql "
            "manifest",
            "RabbitmqCluster": "check the RabbitMQ operator's log and the "
            "cluster's events",
            "Deployment": "check the new ReplicaSet's pods (`ventros-deploy "
            "status`), fix the image or config",
        }
        hint = hints.get(error.ref.kind, "fix the cause")
        return f"{error}. {hint}, then {then or 'run `ventros-deploy retry`'}"
