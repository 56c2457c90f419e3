"""VentrosDestroy: remove a release in the reverse order of its deploy.

The steps run one after another: app (and its pods), migration Jobs,
Temporal, Redis, RabbitMQ, PostgreSQL, base. RabbitMQ is deleted only once
the app is gone and its queues hold no messages, unless the request sets
``force``. PostgreSQL (and Redis's volumes) are deleted only with
``delete_data``; otherwise the result lists them as kept. A failed step
waits for ``retry`` or ``abort``, like a deploy phase, and keeps what the
steps before it removed. A first step that rejects the request (a release
not in the namespace, a kube context the worker lacks) ends the run as
invalid instead, before anything is deleted.

This module is deterministic: no I/O, no clocks but workflow.now(), and no
Kubernetes imports.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, NoReturn

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError
from temporalio.workflow import ActivityCancellationType

from workflows.control import (
    ABORTED_TYPE,
    CLUSTER_NAMESPACES_PATCH,
    STRICT_INPUT_PATCH,
    PhaseControl,
    cause_message,
    error_type_of,
    read_input,
    run_failed,
)

with workflow.unsafe.imports_passed_through():
    from deployer import contracts
    from deployer.contracts import (
        DrainRequest,
        GoneRequest,
        NamespaceRequest,
        StatusResult,
        TeardownRequest,
        TeardownResult,
    )
    from deployer.inputs import InvalidRequestError
    from deployer.lifecycle import (
        DestroyRequest,
        DestroyStatus,
        parse_destroy_request,
    )
    from deployer.phases import TEARDOWN_ORDER, Phase, PhaseRecord, PhaseState

WORKFLOW_TYPE = "VentrosDestroy"
ABORTED = ABORTED_TYPE
# Runs with this patch end as invalid when the first step rejects the request
# (contracts.DESTROY_REJECTED_TYPES). Runs recorded before it waited for a
# retry or an abort there, and replay keeps that.
REJECTED_STEP_ENDS_RUN_PATCH = "destroy-rejected-request-ends-run"

REMOVE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=20),
    maximum_attempts=6,
)
# Waits retry until their schedule-to-close timeout, so that a crashed worker
# or an API outage does not fail the step; only the step's deadline does.
WAIT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
)
REMOVE_TIMEOUT = timedelta(minutes=6)
HEARTBEAT_TIMEOUT = timedelta(seconds=20)
WAIT_MARGIN = timedelta(seconds=60)
STEP_NAMES = {
    Phase.APP: "the app",
    Phase.MIGRATION: "the migration Jobs",
    Phase.TEMPORAL: "the app's Temporal",
    Phase.CACHE: "Redis",
    Phase.MESSAGING: "RabbitMQ",
    Phase.DATA: "PostgreSQL",
    Phase.BASE: "the base release and the operators",
}


@workflow.defn(name=WORKFLOW_TYPE)
class VentrosDestroy(PhaseControl):
    """Remove one release of the Ventros CRM stack from one namespace."""

    def __init__(self) -> None:
        self._order = tuple(TEARDOWN_ORDER)
        self._noun = "destroy"
        self._step = "removal step"
        self._records = {phase: PhaseRecord(phase=phase) for phase in TEARDOWN_ORDER}
        self._retry_requested: set[Phase] = set()
        self._abort_reason: str | None = None
        self._request: DestroyRequest | None = None
        self._state = "validating"
        self._message: str | None = None
        self._kept: list[str] = []

    @workflow.run
    async def run(self, raw: RawValue) -> dict[str, Any]:
        # raw is a RawValue for the same reason as in VentrosDeploy: any input
        # must reach parse_destroy_request, which names the invalid field.
        try:
            request = parse_destroy_request(
                read_input(raw),
                lax=not workflow.patched(STRICT_INPUT_PATCH),
                cluster_namespaces=not workflow.patched(CLUSTER_NAMESPACES_PATCH),
            )
        except InvalidRequestError as error:
            self._state = "invalid"
            raise run_failed(
                str(error), contracts.INVALID_REQUEST, self.status()
            ) from None
        self._request = request
        self._state = "running"
        self._publish()
        for phase in TEARDOWN_ORDER:
            try:
                done = await self._run_step(request, phase)
            except asyncio.CancelledError:
                if not await self.end_canceled():
                    raise
                done = False
            except ActivityError as error:
                # Only a first step's rejection of the request ends up here.
                self._state = "invalid"
                self._message = cause_message(error)
                self._publish()
                raise run_failed(
                    self._message, error_type_of(error), self.status()
                ) from None
            if not done:
                await self.settle_after_abort()
                self._raise_aborted(request)
        self._state = "succeeded"
        self._message = self._summary(request)
        self._publish()
        return self.status().model_dump(mode="json")

    def _raise_aborted(self, request: DestroyRequest) -> NoReturn:
        self._state = "aborted"
        self._message = f"aborted: {self._abort_reason}"
        self._publish()
        raise run_failed(
            f"destroy of {request.release} in {request.namespace} aborted: "
            f"{self._abort_reason}. What the finished steps removed stays removed; "
            "a step that was running stopped where it was",
            ABORTED,
            self.status(),
        )

    def _summary(self, request: DestroyRequest) -> str:
        removed = f"removed {request.release} from namespace {request.namespace}"
        if request.delete_namespace:
            removed += ", and the namespace"
        if not self._kept:
            return removed
        summary = f"{removed}. Kept: " + "; ".join(self._kept)
        if request.delete_data:
            return summary
        return (
            f"{summary}. To delete the data too, run `ventros-deploy destroy "
            f"--release {request.release} --namespace {request.namespace} "
            "--delete-data`"
        )

    # -- steps --------------------------------------------------------------

    async def _run_step(self, request: DestroyRequest, phase: Phase) -> bool:
        """Run one removal step until it succeeds; False when the destroy is aborted."""
        record = self._records[phase]
        return await self.run_attempts(
            record,
            lambda: self._remove(request, phase, record),
            ends_run=lambda error: self._rejects_request(phase, error),
        )

    def _rejects_request(self, phase: Phase, error: ActivityError) -> bool:
        """Tell whether the failed step rejected the request, so that no retry
        can fix it: a wrong workflow id, a kube context the worker lacks, or a
        release that is not in the namespace."""
        return (
            phase is TEARDOWN_ORDER[0]
            and error_type_of(error) in contracts.DESTROY_REJECTED_TYPES
            and workflow.patched(REJECTED_STEP_ENDS_RUN_PATCH)
        )

    async def _remove(
        self, request: DestroyRequest, phase: Phase, record: PhaseRecord
    ) -> None:
        """Delete one phase's objects, then wait until they are gone."""
        timeout_s = request.timeouts.for_phase(phase)
        deadline = workflow.now().timestamp() + timeout_s
        drain_line = ""
        if phase is Phase.MESSAGING:
            drain_line = await self._drain(request, record)

        removed = await self.until_aborted(
            workflow.start_activity(
                contracts.TEARDOWN_PHASE,
                TeardownRequest(request=request, phase=phase),
                result_type=TeardownResult,
                start_to_close_timeout=REMOVE_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=REMOVE_RETRY,
                # An abort waits until the deletes stopped, like a deploy's apply.
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"{phase.value}: delete {STEP_NAMES[phase]}",
            )
        )
        self._keep(removed.kept)
        record.waiting_on = [ref.describe() for ref in removed.gone] + [
            group.describe() for group in removed.groups
        ]
        record.last_status = "; ".join(
            line for line in (drain_line, self._removed_line(removed)) if line
        )
        self._publish()

        await self.until_aborted(
            workflow.start_activity(
                contracts.WAIT_DELETED,
                GoneRequest(
                    phase=phase,
                    namespace=request.namespace,
                    kube_context=request.kube_context,
                    refs=removed.gone,
                    groups=removed.groups,
                    timeout_s=timeout_s,
                    deadline_epoch_s=deadline,
                ),
                result_type=StatusResult,
                start_to_close_timeout=timedelta(seconds=timeout_s) + WAIT_MARGIN,
                schedule_to_close_timeout=timedelta(seconds=timeout_s)
                + 2 * WAIT_MARGIN,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=WAIT_RETRY,
                summary=f"{phase.value}: wait until {STEP_NAMES[phase]} is gone",
            )
        )
        if phase is Phase.BASE and request.delete_namespace:
            await self._delete_namespace(request, record)

        record.state = PhaseState.SUCCEEDED
        self._end_attempt(record)
        workflow.logger.info(
            "removal step succeeded",
            extra={"phase": phase.value, "attempt": record.attempts},
        )

    async def _drain(self, request: DestroyRequest, record: PhaseRecord) -> str:
        """Wait until the app is gone and the queues are empty, unless forced.

        Return one line on the outcome for the step's last status.
        """
        if request.force:
            return "drain check skipped: force is set"
        record.waiting_on = [contracts.DRAIN_KEY]
        record.last_status = "waiting for the queues to drain"
        self._publish()
        timeout = timedelta(seconds=request.drain_timeout_s)
        drained: StatusResult = await self.until_aborted(
            workflow.start_activity(
                contracts.WAIT_DRAINED,
                DrainRequest(
                    release=request.release,
                    namespace=request.namespace,
                    kube_context=request.kube_context,
                    timeout_s=request.drain_timeout_s,
                    deadline_epoch_s=workflow.now().timestamp()
                    + request.drain_timeout_s,
                ),
                result_type=StatusResult,
                start_to_close_timeout=timeout + WAIT_MARGIN,
                schedule_to_close_timeout=timeout + 2 * WAIT_MARGIN,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=WAIT_RETRY,
                summary=(
                    "messaging: wait until the app is gone and the queues are empty"
                ),
            )
        )
        return "drained: " + drained.statuses.get(contracts.DRAIN_KEY, "")

    async def _delete_namespace(
        self, request: DestroyRequest, record: PhaseRecord
    ) -> None:
        record.waiting_on = [f"namespace/{request.namespace}"]
        self._publish()
        await self.until_aborted(
            workflow.start_activity(
                contracts.DELETE_NAMESPACE,
                NamespaceRequest(
                    namespace=request.namespace,
                    kube_context=request.kube_context,
                    timeout_s=request.namespace_timeout_s,
                    deadline_epoch_s=workflow.now().timestamp()
                    + request.namespace_timeout_s,
                ),
                result_type=StatusResult,
                start_to_close_timeout=timedelta(seconds=request.namespace_timeout_s)
                + WAIT_MARGIN,
                schedule_to_close_timeout=timedelta(seconds=request.namespace_timeout_s)
                + 2 * WAIT_MARGIN,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=WAIT_RETRY,
                summary=f"base: delete namespace {request.namespace}",
            )
        )

    def _keep(self, kept: list[str]) -> None:
        for line in kept:
            if line not in self._kept:
                self._kept.append(line)

    @staticmethod
    def _removed_line(removed: TeardownResult) -> str:
        parts = []
        if removed.deleted:
            parts.append("deleted " + ", ".join(removed.deleted))
        if removed.kept:
            parts.append("kept " + "; ".join(removed.kept))
        parts += removed.notes
        return "; ".join(parts) or "nothing to delete"

    # -- queries and updates ------------------------------------------------

    @workflow.query(name="status")
    def status(self) -> DestroyStatus:
        request = self._request
        return DestroyStatus(
            workflow_id=workflow.info().workflow_id,
            release=request.release if request else "",
            namespace=request.namespace if request else "",
            state=self._state,
            phases=[self._records[p] for p in TEARDOWN_ORDER],
            message=self._message,
            kept=list(self._kept),
        )

    # -- UI -------------------------------------------------------------------

    def _publish(self) -> None:
        """Show the step table as the workflow's current details in the UI."""
        rows = [
            "| phase | state | attempts | duration | waiting on | last status |",
            "|---|---|---|---|---|---|",
        ]
        for phase in TEARDOWN_ORDER:
            r = self._records[phase]
            duration = f"{r.duration_s:.1f} s" if r.duration_s is not None else ""
            detail = r.error or r.last_status or ""
            rows.append(
                f"| {phase.value} | {r.state.value} | {r.attempts} | {duration} | "
                f"{', '.join(r.waiting_on)[:120]} | {detail[:200].replace('|', '/')} |"
            )
        header = f"**destroy {self._state}**" + (
            f": {self._message}" if self._message else ""
        )
        workflow.set_current_details(header + "\n\n" + "\n".join(rows))
