"""Inputs and results of the activities: the workflow and activities share them.

Results stay small and never carry manifests or secret values: only object
references and one-line statuses.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from deployer.inputs import DeployRequest
from deployer.lifecycle import DestroyRequest, RollbackRequest
from deployer.phases import ObjectRef, Phase

# The memo key under which a canceled run keeps its last status, which
# `ventros-deploy status` reads without a worker. The codec encrypts it.
STATUS_MEMO = "status"

# Activity names, registered by the worker and called by the workflow.
VALIDATE_REQUEST = "validate_request"
APPLY_PHASE = "apply_phase"
WAIT_READY = "wait_ready"

# ApplicationError type names. The first group cannot be fixed by retrying.
# A retry or abort update that came after the run took a cancel request.
BEING_CANCELED = "BeingCanceled"
INVALID_REQUEST = "InvalidRequest"
VALUES_REJECTED = "ValuesRejected"
CHART_NOT_FOUND = "ChartNotFound"
KUBE_CONTEXT_NOT_FOUND = "KubeContextNotFound"
OBJECT_INVALID = "ObjectInvalid"
FORBIDDEN = "Forbidden"
TERMINAL_FAILURE = "TerminalFailure"
PHASE_TIMEOUT = "PhaseTimeout"
UNAUTHORIZED = "Unauthorized"
NON_RETRYABLE_TYPES = (
    INVALID_REQUEST,
    VALUES_REJECTED,
    CHART_NOT_FOUND,
    KUBE_CONTEXT_NOT_FOUND,
    OBJECT_INVALID,
    FORBIDDEN,
    TERMINAL_FAILURE,
    PHASE_TIMEOUT,
    UNAUTHORIZED,
)
# Raised with non_retryable set by the activity. It is not in
# NON_RETRYABLE_TYPES because that tuple is part of the retry policy of the
# activities that running workflows have already scheduled.
OWNED_ELSEWHERE = "OwnedElsewhere"
OPERATORS_INSTALLED = "OperatorsInstalled"
RELEASE_NAME_TAKEN = "ReleaseNameTaken"
# The worker cannot read or use its own kubeconfig: a worker problem, not the
# request's.
KUBECONFIG_INVALID = "KubeconfigInvalid"
# A migration Job of another app version with the same name still runs.
MIGRATION_BUSY = "MigrationBusy"
# An attempt cancelled after its workflow run ended; the server discards it.
RUN_ENDED = "RunEnded"
# A validate whose attempts ended without a verdict (timed out): the run
# failed, and the request was not judged invalid.
VALIDATE_UNFINISHED = "ValidateUnfinished"
# Retried with backoff by the activity retry policy.
HELM_FAILED = "HelmFailed"
OPERATOR_CLAIM_LOST = "OperatorClaimLost"
KUBE_API_UNAVAILABLE = "KubeApiUnavailable"
# Error types of a run that ended because its request was rejected before
# anything was applied: the workflow could not parse it, or validate found it
# invalid. Such a run has state "invalid", and the client exits 2 for it, as
# for a request it rejects itself.
REJECTED_REQUEST_TYPES = frozenset(
    {
        INVALID_REQUEST,
        VALUES_REJECTED,
        CHART_NOT_FOUND,
        KUBE_CONTEXT_NOT_FOUND,
        OBJECT_INVALID,
        OPERATORS_INSTALLED,
        RELEASE_NAME_TAKEN,
        OWNED_ELSEWHERE,
    }
)


class ValidateResult(BaseModel):
    chart: str
    objects: int
    # The app version the rendered chart deploys (its app image tag), also
    # when the request gives none. None from workers before this field.
    app_version: str | None = None


class ApplyRequest(BaseModel):
    request: DeployRequest
    phase: Phase


class ApplyResult(BaseModel):
    phase: Phase
    applied: int = 0
    waits: list[ObjectRef] = Field(default_factory=list)
    # Free-form notes such as "migration already complete for this version".
    notes: list[str] = Field(default_factory=list)


class WaitRequest(BaseModel):
    phase: Phase
    namespace: str
    kube_context: str | None
    refs: list[ObjectRef]
    timeout_s: int
    # Unix time when the phase times out, fixed at the phase's start so that a
    # retried wait (after a worker crash) keeps the original deadline.
    deadline_epoch_s: float
    # What the user runs once the cause is fixed, when it is not `retry`. A
    # deploy's or destroy's step waits for a retry, but a rollback has ended.
    then: str | None = None


class WaitResult(BaseModel):
    phase: Phase
    statuses: dict[str, str]


# -- rollback and destroy -----------------------------------------------------

# Activity names of VentrosRollback.
PLAN_ROLLBACK = "plan_rollback"
ROLL_BACK_APP = "roll_back_app"
# Notes which base release revision ran to the end, for later rollbacks.
RECORD_DEPLOYED = "record_deployed_revision"
# Activity names of VentrosDestroy.
TEARDOWN_PHASE = "teardown_phase"
WAIT_DELETED = "wait_deleted"
WAIT_DRAINED = "wait_drained"
DELETE_NAMESPACE = "delete_namespace"

# ApplicationError type names of rollback and destroy; none is retryable by
# the activity retry policy.
NOTHING_TO_ROLL_BACK = "NothingToRollBack"
QUEUES_NOT_DRAINED = "QueuesNotDrained"
NAMESPACE_STUCK = "NamespaceStuck"
DELETION_TIMEOUT = "DeletionTimeout"
OPERATORS_IN_USE = "OperatorsInUse"
RELEASE_NOT_FOUND = "ReleaseNotFound"
# Errors of a destroy's first step that no retry can fix, because they come
# from the request, so the run ends as invalid. Other failures of that step
# (an API outage, another run of the release) wait for retry or abort.
DESTROY_REJECTED_TYPES = frozenset(
    {INVALID_REQUEST, KUBE_CONTEXT_NOT_FOUND, RELEASE_NOT_FOUND}
)
# A deploy and a destroy of one release never run at the same time.
OTHER_RUN_ACTIVE = "OtherRunActive"

# The key of the drain wait's heartbeat status, also the messaging step's
# `waiting_on` entry, so `ventros-deploy status` shows the two together.
DRAIN_KEY = "RabbitMQ queues"


class SelectorRef(BaseModel):
    """All objects of one kind that match a label selector, such as a phase's pods."""

    api_version: str
    kind: str
    namespace: str
    label_selector: str

    def describe(self) -> str:
        return (
            f"{self.kind.lower()}s with {self.label_selector} "
            f"in namespace {self.namespace}"
        )


class RollbackPlan(BaseModel):
    """The versions and the helm revision a rollback goes back to."""

    current_version: str
    target_version: str
    # The base release's revision that was deployed with target_version.
    helm_revision: int
    app: ObjectRef
    # The migration Job of current_version, when it still exists.
    migration_job: str | None = None
    # The migrations of every version but the target that ran after the
    # target's, oldest first, as (Job name, app version, outcome). The outcome
    # is complete, failed or running, or deleted (with no name) for a version
    # whose completed Job was deleted and noted in the migrations ConfigMap.
    # Plans made before this field have it empty.
    kept_migrations: list[tuple[str, str, str]] = []


class RollbackJob(BaseModel):
    request: RollbackRequest
    plan: RollbackPlan


class TeardownRequest(BaseModel):
    request: DestroyRequest
    phase: Phase


class TeardownResult(BaseModel):
    phase: Phase
    deleted: list[str] = Field(default_factory=list)
    # Objects left in place on purpose, each with the reason.
    kept: list[str] = Field(default_factory=list)
    # What must be gone before the step counts as done.
    gone: list[ObjectRef] = Field(default_factory=list)
    groups: list[SelectorRef] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class GoneRequest(BaseModel):
    phase: Phase
    namespace: str
    kube_context: str | None
    refs: list[ObjectRef]
    groups: list[SelectorRef]
    timeout_s: int
    deadline_epoch_s: float


class DrainRequest(BaseModel):
    release: str
    namespace: str
    kube_context: str | None
    timeout_s: int
    deadline_epoch_s: float


class NamespaceRequest(BaseModel):
    namespace: str
    kube_context: str | None
    timeout_s: int
    deadline_epoch_s: float


class StatusResult(BaseModel):
    """The last status of each object or group that a wait watched."""

    statuses: dict[str, str] = Field(default_factory=dict)
