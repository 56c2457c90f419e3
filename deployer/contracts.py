"""Inputs and results of the activities: the workflow and activities share them.

Results stay small and never carry manifests or secret values: only object
references and one-line statuses.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from deployer.inputs import DeployRequest
from deployer.phases import ObjectRef, Phase

# Activity names, registered by the worker and called by the workflow.
VALIDATE_REQUEST = "validate_request"
APPLY_PHASE = "apply_phase"
WAIT_READY = "wait_ready"

# ApplicationError type names. The first group cannot be fixed by retrying.
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
# Retried with backoff by the activity retry policy.
HELM_FAILED = "HelmFailed"
KUBE_API_UNAVAILABLE = "KubeApiUnavailable"


class ValidateResult(BaseModel):
    chart: str
    objects: int


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


class WaitResult(BaseModel):
    phase: Phase
    statuses: dict[str, str]
