"""VentrosRollback: return the app to its previous version.

It runs three activities. The plan finds the running version, the one
before it, and the base helm release's revision that deployed that one. The
rollback runs helm rollback on the base release, then applies the app phase
at the old version. The wait follows the rollout. Database migrations are not
undone, and the result states which migration stays applied.
Any failure fails the workflow with the activity's message: a rollback is
short, and running it again repeats the plan with what then runs.

This module is deterministic: no I/O, no clocks but workflow.now(), and no
Kubernetes imports.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from deployer import contracts
    from deployer.contracts import (
        ApplyResult,
        RollbackJob,
        RollbackPlan,
        WaitRequest,
        WaitResult,
    )
    from deployer.inputs import InvalidRequestError
    from deployer.lifecycle import (
        RollbackRequest,
        RollbackStatus,
        parse_rollback_request,
    )
    from deployer.phases import Phase

from workflows.control import (
    CANCEL_ENDS_RUN_PATCH,
    CANCEL_STOPS_EVERY_STEP_PATCH,
    RECORD_DEPLOYED_PATCH,
    STRICT_INPUT_PATCH,
    cause_message,
    keep_canceled_status,
    read_input,
    run_failed,
    start_record_deployed,
    until_stopped,
)

T = TypeVar("T")

WORKFLOW_TYPE = "VentrosRollback"
ROLLBACK_FAILED = "RollbackFailed"

ACTIVITY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=20),
    maximum_attempts=5,
)
WAIT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
)
ACTIVITY_TIMEOUT = timedelta(minutes=6)
HEARTBEAT_TIMEOUT = timedelta(seconds=20)
WAIT_MARGIN = timedelta(seconds=60)


def migration_note(plan: RollbackPlan) -> str:
    """Return the sentence that names the migrations that stay applied."""
    if plan.kept_migrations:
        outcomes = {
            "complete": "",
            "failed": " (failed, and may be applied in part)",
            "running": " (still running)",
        }
        return (
            "database migrations are not undone: "
            + ", ".join(
                f"the migration for {version} (its Job was deleted)"
                if outcome == "deleted"
                else f"migration {name} for {version}{outcomes.get(outcome, '')}"
                for name, version, outcome in plan.kept_migrations
            )
            + (" stays" if len(plan.kept_migrations) == 1 else " stay")
            + " applied"
        )
    if plan.migration_job:
        return (
            "database migrations are not undone: migration "
            f"{plan.migration_job} for {plan.current_version} stays applied"
        )
    return (
        "database migrations are not undone: the migrations of "
        f"{plan.current_version} stay applied"
    )


@workflow.defn(name=WORKFLOW_TYPE)
class VentrosRollback:
    """Roll one release's app and base helm release back to the previous version."""

    def __init__(self) -> None:
        self._request: RollbackRequest | None = None
        self._plan: RollbackPlan | None = None
        self._state = "validating"
        self._message: str | None = None

    @workflow.run
    async def run(self, raw: RawValue) -> dict[str, Any]:
        try:
            request = parse_rollback_request(
                read_input(raw), lax=not workflow.patched(STRICT_INPUT_PATCH)
            )
        except InvalidRequestError as error:
            self._state = "invalid"
            raise run_failed(
                str(error), contracts.INVALID_REQUEST, self.status()
            ) from None
        self._request = request
        try:
            await self._roll_back(request)
        except asyncio.CancelledError:
            # Only until_stopped raises it, in runs with its patch.
            self._show_canceled()
            raise
        except ActivityError as error:
            # A cancel request ends the run as canceled. Runs recorded before
            # the patch failed there, and replay keeps that.
            if is_cancelled_exception(error) and workflow.patched(
                CANCEL_ENDS_RUN_PATCH
            ):
                self._show_canceled()
                raise
            # The step's own type (PhaseTimeout, OtherRunActive, ...), which the
            # README's troubleshooting table is keyed by. Only the failure's
            # content changes, not the command, so replay is unaffected. Once
            # the plan was made, helm may have rolled back, so a type that
            # means the request was rejected before anything was applied (exit
            # 2) becomes RollbackFailed.
            cause = error.cause
            kind = ROLLBACK_FAILED
            if isinstance(cause, ApplicationError) and cause.type:
                kind = cause.type
                if self._plan and kind in contracts.REJECTED_REQUEST_TYPES:
                    kind = ROLLBACK_FAILED
            # A rejection shows as invalid, as in a deploy's validate. The state
            # only reaches the query and the UI's details, which are not commands.
            rejected = kind in contracts.REJECTED_REQUEST_TYPES
            self._state = "invalid" if rejected else "failed"
            self._message = cause_message(error)
            self._publish()
            raise run_failed(self._message, kind, self.status()) from None
        self._state = "succeeded"
        self._publish()
        return self.status().model_dump(mode="json")

    def _show_canceled(self) -> None:
        """Show the run as canceled, with what the step it stopped in left."""
        plan = self._plan
        if self._state == "rolling back" and plan is not None:
            self._message = (
                "canceled: a cancel request stopped the rollback while helm "
                f"rolled back, so the app may run {plan.current_version} or "
                f"{plan.target_version}. Roll back again, or deploy the version "
                "you want"
            )
        elif self._state == "recording the revision" and plan is not None:
            self._message = (
                f"canceled: the rollback to {plan.target_version} is done and "
                "its rollout is ready, but a cancel request stopped the step "
                "that notes its helm revision, so a later rollback may not "
                "return to it"
            )
        elif self._state == "waiting for the rollout" and plan is not None:
            self._message = (
                f"canceled: the rollback to {plan.target_version} was applied, "
                "and a cancel request stopped the wait for its rollout"
            )
        else:
            self._message = (
                "canceled: a cancel request stopped the rollback before it "
                "changed anything"
            )
        self._state = "canceled"
        self._publish()
        keep_canceled_status(self.status())

    async def _step(self, activity: workflow.ActivityHandle[T]) -> T:
        """Return the activity's result. In runs with the patch, a cancel
        request stops the activity and raises CancelledError even when the
        activity finished first."""
        if workflow.patched(CANCEL_STOPS_EVERY_STEP_PATCH):
            return await until_stopped(activity)
        return await activity

    async def _roll_back(self, request: RollbackRequest) -> None:
        self._state = "planning"
        self._publish()
        plan = await self._step(
            workflow.start_activity(
                contracts.PLAN_ROLLBACK,
                request,
                result_type=RollbackPlan,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=ACTIVITY_RETRY,
                summary=f"find the version before the running one of {request.release}",
            )
        )
        self._plan = plan

        self._state = "rolling back"
        self._publish()
        deadline = workflow.now().timestamp() + request.timeout_s
        applied = await self._step(
            workflow.start_activity(
                contracts.ROLL_BACK_APP,
                RollbackJob(request=request, plan=plan),
                result_type=ApplyResult,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=ACTIVITY_RETRY,
                # A cancel request waits until the worker stopped helm, as an
                # abort of a deploy does. Earlier runs did not wait.
                cancellation_type=(
                    ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
                    if workflow.patched(CANCEL_ENDS_RUN_PATCH)
                    else ActivityCancellationType.TRY_CANCEL
                ),
                summary=(
                    f"roll back to {plan.target_version}: helm revision "
                    f"{plan.helm_revision}, then the app phase"
                ),
            )
        )

        self._state = "waiting for the rollout"
        self._publish()
        await self._step(
            workflow.start_activity(
                contracts.WAIT_READY,
                WaitRequest(
                    phase=Phase.APP,
                    namespace=request.namespace,
                    kube_context=request.kube_context,
                    refs=applied.waits,
                    timeout_s=request.timeout_s,
                    deadline_epoch_s=deadline,
                    then="run the rollback again",
                ),
                result_type=WaitResult,
                start_to_close_timeout=timedelta(seconds=request.timeout_s)
                + WAIT_MARGIN,
                schedule_to_close_timeout=timedelta(seconds=request.timeout_s)
                + 2 * WAIT_MARGIN,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                retry_policy=WAIT_RETRY,
                summary=f"app: wait for the rollout of {plan.target_version}",
            )
        )
        if workflow.patched(RECORD_DEPLOYED_PATCH):
            # Only the status shows this state: publishing issues no command.
            self._state = "recording the revision"
            self._publish()
            await self._step(
                start_record_deployed(
                    request,
                    ACTIVITY_RETRY,
                    "note the rolled-back base release revision as deployed",
                )
            )
        self._message = (
            f"rolled {request.release} in namespace {request.namespace} back from "
            f"{plan.current_version} to {plan.target_version} (helm release "
            f"{request.release} back to revision {plan.helm_revision})"
        )

    @workflow.query(name="status")
    def status(self) -> RollbackStatus:
        request, plan = self._request, self._plan
        return RollbackStatus(
            workflow_id=workflow.info().workflow_id,
            release=request.release if request else "",
            namespace=request.namespace if request else "",
            state=self._state,
            from_version=plan.current_version if plan else None,
            to_version=plan.target_version if plan else None,
            helm_revision=plan.helm_revision if plan else None,
            migration_note=migration_note(plan) if plan else None,
            message=self._message,
        )

    def _publish(self) -> None:
        status = self.status()
        lines = [f"**rollback {status.state}**"]
        if status.from_version:
            lines.append(f"from {status.from_version} to {status.to_version}")
        lines += [line for line in (status.message, status.migration_note) if line]
        workflow.set_current_details("\n\n".join(lines))
