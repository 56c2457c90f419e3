"""The deploy phases, their real dependencies and their records.

This module is pure data, so the workflow can import it. The order follows
what each phase needs, not the old chart's single line of hook weights:
PostgreSQL, RabbitMQ and Redis only need the base objects; Temporal and the
migration only need PostgreSQL; the app needs everything.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field
from temporalio.common import SearchAttributeKey


class Phase(StrEnum):
    """A deploy phase; its value is the chart's `deploy.ventros.io/phase` label."""

    BASE = "base"
    DATA = "data"
    MESSAGING = "messaging"
    CACHE = "cache"
    TEMPORAL = "temporal"
    MIGRATION = "migration"
    APP = "app"


# Phases in the order people read them (the table in the README).
PHASE_ORDER: tuple[Phase, ...] = tuple(Phase)

DEPENDENCIES: dict[Phase, tuple[Phase, ...]] = {
    Phase.BASE: (),
    Phase.DATA: (Phase.BASE,),
    Phase.MESSAGING: (Phase.BASE,),
    Phase.CACHE: (Phase.BASE,),
    Phase.TEMPORAL: (Phase.DATA,),
    Phase.MIGRATION: (Phase.DATA,),
    Phase.APP: (
        Phase.DATA,
        Phase.MESSAGING,
        Phase.CACHE,
        Phase.TEMPORAL,
        Phase.MIGRATION,
    ),
}

# Removal goes the other way round: VentrosDestroy (workflows/destroy.py)
# runs these steps one after another.
TEARDOWN_ORDER: tuple[Phase, ...] = (
    Phase.APP,
    Phase.MIGRATION,
    Phase.TEMPORAL,
    Phase.CACHE,
    Phase.MESSAGING,
    Phase.DATA,
    Phase.BASE,
)


class PhaseState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    WAITING_FOR_RETRY = "waiting-for-retry"
    ABORTED = "aborted"


class ObjectRef(BaseModel):
    """One Kubernetes object a phase applies or waits on."""

    api_version: str
    kind: str
    name: str
    namespace: str | None = None

    def describe(self) -> str:
        where = f" in namespace {self.namespace}" if self.namespace else ""
        return f"{self.kind.lower()}/{self.name}{where}"


class PhaseRecord(BaseModel):
    """The record of one phase, as the `status` query returns it."""

    phase: Phase
    state: PhaseState = PhaseState.PENDING
    attempts: int = 0
    started_at: str | None = None
    ended_at: str | None = None
    duration_s: float | None = None
    waiting_on: list[str] = Field(default_factory=list)
    last_status: str | None = None
    error: str | None = None
    error_type: str | None = None
    changed: bool | None = None
    # What the last apply noted: a migration not run again, a helm release
    # recovered from an interrupted run.
    notes: list[str] = Field(default_factory=list)


class DeployStatus(BaseModel):
    """The whole deploy as the `status` query returns it."""

    workflow_id: str
    release: str
    namespace: str
    app_version: str
    state: str
    phases: list[PhaseRecord]
    message: str | None = None


# Custom search attributes, so the UI's workflow list filters by release and
# phase. The client sets release and namespace at start only when configured to
# (they must be registered on the server); the workflow then keeps the phase
# attribute current, and does nothing when they were not set.
RELEASE_ATTRIBUTE = SearchAttributeKey.for_keyword("VentrosRelease")
NAMESPACE_ATTRIBUTE = SearchAttributeKey.for_keyword("VentrosNamespace")
PHASE_ATTRIBUTE = SearchAttributeKey.for_keyword("VentrosPhase")
