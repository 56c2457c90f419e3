"""VentrosDeploy: the deploy phases as activities, in their real dependency order.

Each phase is one apply activity followed by one wait activity. A phase
starts as soon as the phases it needs have succeeded, so PostgreSQL,
RabbitMQ and Redis run at the same time, and Temporal and the migration
start as soon as PostgreSQL is ready. A failed phase does not end the
workflow: it records the error and waits for ``retry`` or ``abort``.

This module is deterministic: no I/O, no clocks but workflow.now(), and no
Kubernetes imports.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, NoReturn

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType

from workflows.control import (
    ABORTED_TYPE,
    CLUSTER_NAMESPACES_PATCH,
    RECORD_DEPLOYED_PATCH,
    STRICT_INPUT_PATCH,
    PhaseAborted,
    PhaseControl,
    cause_message,
    read_input,
    run_failed,
    start_record_deployed,
)

with workflow.unsafe.imports_passed_through():
    from deployer import contracts
    from deployer.contracts import (
        ApplyRequest,
        ApplyResult,
        ValidateResult,
        WaitRequest,
        WaitResult,
    )
    from deployer.inputs import DeployRequest, InvalidRequestError, parse_request
    from deployer.phases import (
        DEPENDENCIES,
        PHASE_ATTRIBUTE,
        PHASE_ORDER,
        RELEASE_ATTRIBUTE,
        DeployStatus,
        Phase,
        PhaseRecord,
        PhaseState,
    )

WORKFLOW_TYPE = "VentrosDeploy"
# Marks runs in which a cancel request during validate cancels the run.
VALIDATE_CANCEL_PATCH = "validate-cancel-ends-run"
# Marks runs that publish the invalid state when their input cannot be parsed.
INVALID_INPUT_PATCH = "invalid-input-published"
ABORTED = ABORTED_TYPE


def validate_failure(error: ActivityError) -> tuple[str, str, str]:
    """Return the error type, run state and message for a failed validate.

    A request that validate rejected is invalid. A check that could not run,
    such as a chart fetch from an unreachable repository, leaves the state
    failed, because the same request may pass later. So does a validate that
    never finished (its attempts timed out): it judged nothing.
    """
    cause = error.cause
    if isinstance(cause, ApplicationError):
        kind = cause.type or contracts.VALIDATE_UNFINISHED
        state = "invalid" if kind in contracts.REJECTED_REQUEST_TYPES else "failed"
        return kind, state, cause_message(error)
    message = (
        f"validate did not finish ({cause_message(error)}), so the request was "
        "neither accepted nor rejected and nothing was applied. Check that the "
        "worker reaches the Kubernetes API and the chart, then start the deploy "
        "again"
    )
    return contracts.VALIDATE_UNFINISHED, "failed", message


VALIDATE_RETRY = RetryPolicy(
    maximum_attempts=3, non_retryable_error_types=list(contracts.NON_RETRYABLE_TYPES)
)
APPLY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=20),
    maximum_attempts=6,
    non_retryable_error_types=list(contracts.NON_RETRYABLE_TYPES),
)
# Waits retry until their schedule-to-close timeout: a crashed worker or an
# API outage must not fail the phase, only the phase deadline may.
WAIT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    non_retryable_error_types=list(contracts.NON_RETRYABLE_TYPES),
)
APPLY_TIMEOUT = timedelta(minutes=6)
WAIT_HEARTBEAT_TIMEOUT = timedelta(seconds=20)
# Validate and apply heartbeat too: without it, an attempt on a worker that
# crashed is only retried after its start-to-close timeout (2 and 6 minutes).
APPLY_HEARTBEAT_TIMEOUT = timedelta(seconds=20)
WAIT_MARGIN = timedelta(seconds=60)


@workflow.defn(name=WORKFLOW_TYPE)
class VentrosDeploy(PhaseControl):
    """Deploy one release of the Ventros CRM stack into one namespace."""

    def __init__(self) -> None:
        self._order = tuple(PHASE_ORDER)
        self._noun = "deploy"
        self._step = "phase"
        self._records = {phase: PhaseRecord(phase=phase) for phase in PHASE_ORDER}
        self._retry_requested: set[Phase] = set()
        self._abort_reason: str | None = None
        self._request: DeployRequest | None = None
        self._state = "validating"
        self._message: str | None = None
        self._phase_attribute: str | None = None
        # The app version validate found in the rendered chart.
        self._app_version: str | None = None

    @workflow.run
    async def run(self, raw: RawValue) -> dict[str, Any]:
        # raw is a RawValue so that any input reaches parse_request, which names
        # the invalid field: a dict hint would fail the workflow task on a
        # string input, retry it forever and echo the input in the task failure.
        try:
            request = parse_request(
                read_input(raw),
                lax=not workflow.patched(STRICT_INPUT_PATCH),
                cluster_namespaces=not workflow.patched(CLUSTER_NAMESPACES_PATCH),
            )
        except InvalidRequestError as error:
            # The status query shows it as a rejected validate does. Publishing
            # also upserts VentrosPhase. Runs recorded before the patch sent no
            # command here, so the patch guards it.
            self._state = "invalid"
            self._message = str(error)
            if workflow.patched(INVALID_INPUT_PATCH):
                self._publish()
            raise run_failed(
                str(error), contracts.INVALID_REQUEST, self.status()
            ) from None
        self._request = request
        self._publish()
        try:
            await self._validate(request)
        except PhaseAborted:
            await self.settle_after_abort()
            self._raise_aborted(request)
        except asyncio.CancelledError:
            if not await self.end_canceled():
                raise
            await self.settle_after_abort()
            self._raise_aborted(request)

        self._state = "running"
        tasks = [asyncio.create_task(self._run_phase(phase)) for phase in PHASE_ORDER]
        try:
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            if not await self.end_canceled(tasks):
                raise
            # An abort came first: it decides how the run ends.
            await self.settle_after_abort()
            self._raise_aborted(request)
        if self._abort_reason is not None:
            await self.settle_after_abort()
            self._raise_aborted(request)
        self._state = "succeeded"
        self._publish()
        return self.status().model_dump(mode="json")

    def _raise_aborted(self, request: DeployRequest) -> NoReturn:
        self._state = "aborted"
        self._message = f"aborted: {self._abort_reason}"
        self._publish()
        raise run_failed(
            f"deploy of {request.release} in {request.namespace} aborted: "
            f"{self._abort_reason}. Phases that succeeded were left in "
            "place; a phase that was running stopped where it was",
            ABORTED,
            self.status(),
        )

    async def _validate(self, request: DeployRequest) -> None:
        """Run the validate activity; raise PhaseAborted when an abort stops it."""
        try:
            validated = await self.until_aborted(
                workflow.start_activity(
                    contracts.VALIDATE_REQUEST,
                    request.model_dump(mode="json"),
                    result_type=ValidateResult,
                    start_to_close_timeout=timedelta(minutes=2),
                    heartbeat_timeout=APPLY_HEARTBEAT_TIMEOUT,
                    retry_policy=VALIDATE_RETRY,
                    summary=(
                        f"validate the request for {request.release} in "
                        f"{request.namespace}"
                    ),
                )
            )
        except ActivityError as error:
            # A cancelled run ends as cancelled, not as a failed validate. Runs
            # recorded before this change failed there, and replay keeps that.
            if is_cancelled_exception(error) and workflow.patched(
                VALIDATE_CANCEL_PATCH
            ):
                raise
            kind, self._state, self._message = validate_failure(error)
            self._publish()
            raise run_failed(self._message, kind, self.status()) from None
        self._app_version = validated.app_version

    # -- phases -----------------------------------------------------------

    async def _dependencies_done(self, phase: Phase) -> bool:
        """Wait until every phase this one needs succeeded; False on abort."""
        needed = DEPENDENCIES[phase]
        await workflow.wait_condition(
            lambda: (
                self._abort_reason is not None
                or all(self._records[p].state is PhaseState.SUCCEEDED for p in needed)
            )
        )
        return self._abort_reason is None

    async def _run_phase(self, phase: Phase) -> None:
        assert self._request is not None
        request = self._request
        record = self._records[phase]
        if not await self._dependencies_done(phase):
            return
        await self.run_attempts(
            record, lambda: self._apply_and_wait(request, phase, record)
        )

    async def _apply_and_wait(
        self, request: DeployRequest, phase: Phase, record: PhaseRecord
    ) -> None:
        timeout_s = request.timeouts.for_phase(phase)
        deadline = workflow.now().timestamp() + timeout_s
        applied = await self.until_aborted(
            workflow.start_activity(
                contracts.APPLY_PHASE,
                ApplyRequest(request=request, phase=phase),
                result_type=ApplyResult,
                start_to_close_timeout=APPLY_TIMEOUT,
                heartbeat_timeout=APPLY_HEARTBEAT_TIMEOUT,
                retry_policy=APPLY_RETRY,
                # An abort waits until helm was stopped, so that nothing is
                # still being applied once the deploy reports it aborted.
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"{phase.value}: apply the {phase.value} objects",
            )
        )
        record.waiting_on = [ref.describe() for ref in applied.waits]
        record.notes = list(applied.notes)
        record.last_status = "; ".join(applied.notes) or "applied"
        self._publish()
        waited = await self.until_aborted(
            workflow.start_activity(
                contracts.WAIT_READY,
                WaitRequest(
                    phase=phase,
                    namespace=request.namespace,
                    kube_context=request.kube_context,
                    refs=applied.waits,
                    timeout_s=timeout_s,
                    deadline_epoch_s=deadline,
                ),
                result_type=WaitResult,
                start_to_close_timeout=timedelta(seconds=timeout_s) + WAIT_MARGIN,
                schedule_to_close_timeout=timedelta(seconds=timeout_s)
                + 2 * WAIT_MARGIN,
                heartbeat_timeout=WAIT_HEARTBEAT_TIMEOUT,
                retry_policy=WAIT_RETRY,
                summary=f"{phase.value}: wait for "
                + (", ".join(record.waiting_on) or "nothing"),
            )
        )
        if phase is Phase.APP and workflow.patched(RECORD_DEPLOYED_PATCH):
            # The app is ready, so this deploy's base revision ran: a later
            # rollback may return to it.
            await self.until_aborted(
                start_record_deployed(
                    request,
                    APPLY_RETRY,
                    "app: note the base release revision as deployed",
                )
            )
        record.state = PhaseState.SUCCEEDED
        # The apply's notes stay: a skipped migration, a recovered release.
        details = [*applied.notes, *(f"{k}: {v}" for k, v in waited.statuses.items())]
        record.last_status = "; ".join(details) or "ready"
        self._end_attempt(record)
        workflow.logger.info(
            "phase succeeded", extra={"phase": phase.value, "attempt": record.attempts}
        )

    # -- queries, updates and signals ---------------------------------------

    @workflow.query(name="status")
    def status(self) -> DeployStatus:
        request = self._request
        return DeployStatus(
            workflow_id=workflow.info().workflow_id,
            release=request.release if request else "",
            namespace=request.namespace if request else "",
            app_version=self._shown_version(request),
            state=self._state,
            phases=[self._records[p] for p in PHASE_ORDER],
            message=self._message,
        )

    def _shown_version(self, request: DeployRequest | None) -> str:
        """Return the app version for the status: the requested one, else the
        one validate found in the rendered chart."""
        if request is None:
            return ""
        return request.app_version or self._app_version or "chart default"

    # -- UI -----------------------------------------------------------------

    def _publish(self) -> None:
        """Show the phase table as the workflow's current details in the UI."""
        self._upsert_phase_attribute()
        rows = [
            "| phase | state | attempts | duration | waiting on | last status |",
            "|---|---|---|---|---|---|",
        ]
        for phase in PHASE_ORDER:
            r = self._records[phase]
            duration = f"{r.duration_s:.1f} s" if r.duration_s is not None else ""
            detail = r.error or r.last_status or ""
            rows.append(
                f"| {phase.value} | {r.state.value} | {r.attempts} | {duration} | "
                f"{', '.join(r.waiting_on)[:120]} | {detail[:200].replace('|', '/')} |"
            )
        header = f"**{self._state}**" + (f": {self._message}" if self._message else "")
        workflow.set_current_details(header + "\n\n" + "\n".join(rows))

    def _upsert_phase_attribute(self) -> None:
        """Keep VentrosPhase current, when the client set the search attributes."""
        if workflow.info().typed_search_attributes.get(RELEASE_ATTRIBUTE) is None:
            return
        running = [
            p.value for p in PHASE_ORDER if self._records[p].state is PhaseState.RUNNING
        ]
        waiting = [
            p.value
            for p in PHASE_ORDER
            if self._records[p].state is PhaseState.WAITING_FOR_RETRY
        ]
        if waiting:
            value = "waiting-for-retry:" + ",".join(waiting)
        elif running:
            value = ",".join(running)
        else:
            value = self._state
        if value != self._phase_attribute:
            self._phase_attribute = value
            workflow.upsert_search_attributes([PHASE_ATTRIBUTE.value_set(value)])
