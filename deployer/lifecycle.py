"""The inputs of VentrosDestroy and VentrosRollback, and their workflow ids.

Like the deploy request, each is one JSON object that the workflow validates
itself, so a bad input from ``temporal workflow start`` fails at once with a
message that names the field. Nothing here does I/O.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from deployer.inputs import (
    APP_VERSION,
    DEFAULT_TIMEOUT_S,
    LAX,
    TIMEOUT_MIN_S,
    ChartRef,
    InvalidRequestError,
    JsonBool,
    PhaseTimeoutS,
    PhaseTimeouts,
    check_kube_context,
    check_namespace,
    check_release,
    cluster_namespace,
    describe_validation_error,
    json_int,
    not_an_object,
    workflow_id_for,
)
from deployer.phases import DeployStatus

M = TypeVar("M", bound=BaseModel)

# The drain wait may last as long as consumers need, so it allows more than
# a phase timeout.
DRAIN_TIMEOUT_MAX_S = 24 * 3600


def destroy_workflow_id_for(namespace: str, release: str) -> str:
    """Return the workflow id of a release's destroy: one at a time per release."""
    return f"destroy-{namespace}.{release}"


def rollback_workflow_id_for(namespace: str, release: str) -> str:
    """Return the workflow id of a release's rollback: one at a time per release."""
    return f"rollback-{namespace}.{release}"


def run_ids_for(namespace: str, release: str) -> dict[str, str]:
    """Return the workflow id of each kind of run of a release."""
    return {
        "deploy": workflow_id_for(namespace, release),
        "rollback": rollback_workflow_id_for(namespace, release),
        "destroy": destroy_workflow_id_for(namespace, release),
    }


def other_runs(kind: str, namespace: str, release: str) -> dict[str, str]:
    """Return the workflow ids of the runs that exclude a run of kind."""
    return {k: v for k, v in run_ids_for(namespace, release).items() if k != kind}


def how_to_stop(kind: str, workflow_id: str) -> str:
    """Return how a user stops a running run of kind (a rollback has no abort)."""
    if kind == "rollback":
        return f"cancel it with `temporal workflow cancel --workflow-id {workflow_id}`"
    return f"abort it with `ventros-deploy abort {workflow_id}`"


class ReleaseTarget(BaseModel):
    """The release, namespace and kube context that a lifecycle request acts on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    release: str = "ventros-crm"
    namespace: str = "ventros-crm"
    kube_context: str | None = None

    @field_validator("release")
    @classmethod
    def _release(cls, value: str) -> str:
        return check_release(value)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return check_namespace(value)

    @field_validator("kube_context")
    @classmethod
    def _kube_context(cls, value: str | None) -> str | None:
        return check_kube_context(value)


class DestroyRequest(ReleaseTarget):
    """The input of VentrosDestroy: what to remove and what to keep."""

    # Delete the RabbitMQ cluster without waiting for its queues to drain.
    force: JsonBool = False
    # Delete the postgresql resource and the Redis volumes too.
    delete_data: JsonBool = False
    # Delete the namespace at the end, with everything left in it.
    delete_namespace: JsonBool = False
    # Seconds each removal step may take before it waits for retry.
    timeouts: PhaseTimeouts = PhaseTimeouts()
    drain_timeout_s: Annotated[
        int, BeforeValidator(json_int), Field(ge=TIMEOUT_MIN_S, le=DRAIN_TIMEOUT_MAX_S)
    ] = DEFAULT_TIMEOUT_S
    namespace_timeout_s: PhaseTimeoutS = DEFAULT_TIMEOUT_S

    @model_validator(mode="after")
    def _namespace_needs_data(self) -> DestroyRequest:
        if self.delete_namespace and not self.delete_data:
            raise ValueError(
                "delete_namespace also deletes the PostgreSQL data in the namespace: "
                "set delete_data too, or keep the namespace"
            )
        return self

    @property
    def workflow_id(self) -> str:
        return destroy_workflow_id_for(self.namespace, self.release)


class RollbackRequest(ReleaseTarget):
    """The input of VentrosRollback."""

    # The chart that renders the app phase; the deploy's chart.
    chart: ChartRef = ChartRef(path="chart")
    # The app version to return to; None means the one before the running one.
    to_version: str | None = None
    timeout_s: PhaseTimeoutS = DEFAULT_TIMEOUT_S

    @field_validator("to_version")
    @classmethod
    def _to_version(cls, value: str | None) -> str | None:
        if value is not None and not APP_VERSION.fullmatch(value):
            raise ValueError(
                "must be an image tag: letters, digits, '_', '.' and '-', "
                "at most 128 characters, not starting with '.' or '-'"
            )
        return value

    @property
    def workflow_id(self) -> str:
        return rollback_workflow_id_for(self.namespace, self.release)


class DestroyStatus(DeployStatus):
    """The destroy as its `status` query returns it.

    It has the deploy status's shape, so `ventros-deploy status` and `watch`
    show both, plus the objects that the destroy kept.
    """

    app_version: str = ""
    kept: list[str] = Field(default_factory=list)


class RollbackStatus(BaseModel):
    """The rollback as its `status` query and its result return it."""

    workflow_id: str
    release: str
    namespace: str
    state: str
    from_version: str | None = None
    to_version: str | None = None
    helm_revision: int | None = None
    migration_note: str | None = None
    message: str | None = None


def parse_destroy_request(
    raw: Any, lax: bool = False, cluster_namespaces: bool = False
) -> DestroyRequest:
    """Validate raw JSON into a DestroyRequest; raise InvalidRequestError.

    lax and cluster_namespaces are for the replay of runs recorded before the
    strict JSON types and before the check that a destroy deletes no namespace
    of the cluster's own.
    """
    # Before the model's checks, so that this error comes before the model's
    # request to add delete_data, which would not help.
    namespace = raw.get("namespace") if isinstance(raw, dict) else None
    if (
        not cluster_namespaces
        and isinstance(namespace, str)
        and raw.get("delete_namespace") is True
        and cluster_namespace(namespace)
    ):
        raise InvalidRequestError(
            f"invalid destroy request: delete_namespace would delete namespace "
            f"{namespace!r}, which belongs to the cluster (default, and names "
            "starting with 'kube-'): leave delete_namespace out; the destroy "
            "still removes the release"
        )
    return _validate(DestroyRequest, raw, "destroy", lax)


def parse_rollback_request(raw: Any, lax: bool = False) -> RollbackRequest:
    """Validate raw JSON into a RollbackRequest; raise InvalidRequestError.

    lax is for the replay of runs recorded before the strict JSON types.
    """
    return _validate(RollbackRequest, raw, "rollback", lax)


def _validate(model: type[M], raw: Any, what: str, lax: bool) -> M:
    if not isinstance(raw, dict):
        raise not_an_object(what, raw)
    try:
        return model.model_validate(raw, context={LAX: lax})
    except ValidationError as error:
        message = describe_validation_error(error)
        raise InvalidRequestError(
            message.replace("invalid deploy request", f"invalid {what} request", 1)
        ) from None
