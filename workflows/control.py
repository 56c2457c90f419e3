"""Retry and abort handlers shared by the workflows that run phases in order.

VentrosDeploy and VentrosDestroy stop a failed phase in WAITING_FOR_RETRY and
take the same retry and abort requests, as updates (which return a result)
and as signals (for clients that cannot send updates). The handlers live here once;
each workflow class sets the attributes they read. No I/O and no Kubernetes
imports, like the rest of workflows/.

An abort also stops the activities that run when it comes: each phase awaits
its activities through ``until_aborted``, which cancels the running one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from deployer import contracts
    from deployer.inputs import MAX_VALUES_DEPTH, DeployRequest, InvalidRequestError
    from deployer.lifecycle import ReleaseTarget, RollbackRequest
    from deployer.phases import Phase, PhaseRecord, PhaseState


def read_input(raw: RawValue) -> Any:
    """Decode a run's input payload; raise InvalidRequestError when it cannot be
    read.

    The runs take a RawValue because the SDK decodes a typed argument before
    the run starts: input it cannot decode (JSON nested past the decoder's
    recursion limit) failed every workflow task, and the run never ended.
    """
    try:
        return workflow.payload_converter().from_payload(raw.payload)
    except (RecursionError, KeyError, RuntimeError, TypeError, ValueError) as error:
        # Only the error's type: a decoder's message can quote the input. Deep
        # JSON raises RecursionError, or ValidationError from pydantic's parser.
        raise InvalidRequestError(
            f"the request cannot be decoded ({type(error).__name__}): send a JSON "
            f"object whose values nest at most {MAX_VALUES_DEPTH} levels deep"
        ) from None


REASON_MAX = 500


def keep_canceled_status(status: Any) -> None:
    """Store a canceled run's last status (a pydantic model) in its memo.

    A cancel request ends the run with a CancelledError, which carries no
    details, so the memo keeps the phases that status shows without a worker.
    """
    if workflow.patched(CANCELED_MEMO_PATCH):
        workflow.upsert_memo({contracts.STATUS_MEMO: status.model_dump(mode="json")})


def run_failed(message: str, kind: str | None, status: Any) -> ApplicationError:
    """Return the error that ends a run, with the run's last status (a pydantic
    model) as its details.

    `ventros-deploy status` reads a failed run's phases from there, as it
    reads a succeeded run's from its result, so neither needs a worker to
    run a query. Details pass through the payload codec, as results do.
    Only the failure's content changes, not the command, so runs recorded
    before replay the same.
    """
    return ApplicationError(
        message, status.model_dump(mode="json"), type=kind, non_retryable=True
    )


# Runs started before this patch let a running activity finish after an
# abort; replaying them must not issue the cancel command they never issued.
ABORT_CANCELS_PATCH = "abort-cancels-running-activity"
ABORTED_TYPE = "Aborted"
# Runs started before this patch ended without noting their base release
# revision; replaying them must not schedule the activity that notes it.
RECORD_DEPLOYED_PATCH = "record-deployed-revision"
RECORD_TIMEOUT = timedelta(seconds=60)
# Before this patch, a cancel request ended a deploy without waiting for a
# running apply to stop, or, with no other phase pending, failed the running
# phase and left the run waiting for a retry. Replaying such runs keeps that.
CANCEL_ENDS_RUN_PATCH = "cancel-during-phase-ends-run"
CANCELED_TYPE = "Canceled"
# Runs started before this patch let a cancel request that came after an abort
# end the deploy as canceled, or lost it during a rollback's helm step.
CANCEL_STOPS_EVERY_STEP_PATCH = "cancel-stops-every-step"
# Runs started before this patch took an abort signal that came after a cancel
# request, and ended as aborted.
CANCEL_BEFORE_ABORT_PATCH = "cancel-before-abort-wins"
# Runs with this patch take their input's timeouts and flags only as JSON
# integers and booleans, and no NaN in values. Runs recorded before it took
# "30" as 30 and "yes" as true, and must replay that way.
STRICT_INPUT_PATCH = "strict-json-input"
# Runs with this patch keep their last status in the memo contracts.STATUS_MEMO
# when a cancel request ends them. Runs recorded before it sent no such command.
CANCELED_MEMO_PATCH = "canceled-status-memo"
# Runs with this patch reject a deploy into a kube- namespace, and a destroy
# that would delete default or a kube- namespace. Runs recorded before it took
# those requests and must replay that way.
CLUSTER_NAMESPACES_PATCH = "reject-cluster-namespaces"


def start_record_deployed(
    request: DeployRequest | RollbackRequest,
    retry_policy: RetryPolicy,
    summary: str,
) -> workflow.ActivityHandle[int]:
    """Start the activity that notes the release's deployed base revision as
    ran, once the app is ready, so that a later rollback may return to it."""
    return workflow.start_activity(
        contracts.RECORD_DEPLOYED,
        ReleaseTarget(
            release=request.release,
            namespace=request.namespace,
            kube_context=request.kube_context,
        ),
        result_type=int,
        start_to_close_timeout=RECORD_TIMEOUT,
        retry_policy=retry_policy,
        summary=summary,
    )


T = TypeVar("T")


# How long a run that an abort interrupted waits before it ends. Ending in the
# workflow task that took the abort update would fail that task whenever an
# event arrives meanwhile (such as the cancelled activity's result), and the
# server then fails the update too.
ABORT_SETTLE = timedelta(milliseconds=200)


async def until_stopped(activity: workflow.ActivityHandle[T]) -> T:
    """Return the activity's result. On a cancel request of the run, cancel the
    activity, wait until it stopped, and raise CancelledError.

    Awaiting the activity directly loses the cancel request when the activity
    finishes before its worker learns of the cancel.
    """
    try:
        await workflow.wait([activity])
    except asyncio.CancelledError:
        activity.cancel()
        await stopped(activity)
        raise
    return activity.result()


async def stopped(activity: workflow.ActivityHandle[Any]) -> None:
    """Wait until a cancelled activity ended, however it ended.

    The SDK's activity handle returns only once the activity ended, for a
    cancellation type that waits for that.
    """
    with contextlib.suppress(ActivityError, asyncio.CancelledError):
        await activity


class PhaseAborted(Exception):
    """An abort interrupted the activity a phase was running."""


class PhaseControl:
    """Base class of a phase-running workflow: its attempts, retries and aborts.

    A subclass sets, in __init__: _order (its phases, in the order it runs
    them), _noun ("deploy", "destroy"), _step (what its log lines call a
    phase), _records, _retry_requested, _abort_reason and _state, and
    defines _publish.
    """

    _order: tuple[Phase, ...]
    _noun: str
    _step: str
    _records: dict[Phase, PhaseRecord]
    _retry_requested: set[Phase]
    _abort_reason: str | None
    _state: str
    _message: str | None

    def status(self) -> Any:
        """Return the run's status model, which each subclass defines."""
        raise NotImplementedError

    # Set once an abort cancelled a running activity.
    _stopped_activity: bool = False

    @workflow.update(name="retry")
    def retry(self, phase: str | None = None) -> list[str]:
        """Run the failed phase (or every failed phase) again; return their names."""
        chosen = self._failed_phases(phase)
        self._retry_requested.update(chosen)
        return [p.value for p in chosen]

    @retry.validator
    def _validate_retry(self, phase: str | None = None) -> None:
        self._reject_after_cancel("retry")
        self._failed_phases(phase)

    @workflow.update(name="abort")
    def abort(self, reason: str = "aborted by request") -> str:
        """End the run as failed; what it applied or removed stays so.

        A second abort keeps the first one's reason.
        """
        if self._abort_reason is None:
            self._abort_reason = reason[:REASON_MAX] or "aborted by request"
        return self._state

    @abort.validator
    def _validate_abort(self, reason: str = "aborted by request") -> None:
        self._reject_after_cancel("abort")

    @workflow.signal(name="retry-signal")
    def retry_signal(self, phase: str | None = None) -> None:
        try:
            self._reject_after_cancel("retry")
            self._retry_requested.update(self._failed_phases(phase))
        except ApplicationError as error:
            workflow.logger.warning(
                "retry signal ignored", extra={"reason": error.message}
            )

    @workflow.signal(name="abort-signal")
    def abort_signal(self, reason: str = "aborted by signal") -> None:
        if workflow.cancellation_reason() is not None and workflow.patched(
            CANCEL_BEFORE_ABORT_PATCH
        ):
            workflow.logger.warning(
                "abort signal ignored", extra={"reason": "the run is being canceled"}
            )
            return
        if self._abort_reason is None:
            self._abort_reason = reason[:REASON_MAX] or "aborted by signal"

    def _reject_after_cancel(self, update: str) -> None:
        """Raise ApplicationError once a cancel request reached the run, because
        the run then ends as canceled and a retry or an abort changes nothing."""
        if workflow.cancellation_reason() is not None:
            raise ApplicationError(
                f"this {self._noun} is being canceled, so it takes no {update}; "
                "`ventros-deploy status` shows how it ends",
                type=contracts.BEING_CANCELED,
            )

    async def until_aborted(self, activity: workflow.ActivityHandle[T]) -> T:
        """Return the activity's result, or cancel it on abort and raise PhaseAborted.

        Waits only read, so they are started with TRY_CANCEL and the workflow
        goes on at once. Steps that change the cluster use
        WAIT_CANCELLATION_COMPLETED, so the abort ends after their worker
        stopped them.
        """
        if self._abort_reason is None:
            aborted = asyncio.create_task(
                workflow.wait_condition(lambda: self._abort_reason is not None)
            )
            try:
                await workflow.wait(
                    [activity, aborted], return_when=asyncio.FIRST_COMPLETED
                )
            except asyncio.CancelledError:
                # The workflow itself is cancelled: pass that on to the
                # activity, as awaiting it directly would.
                activity.cancel()
                if not workflow.patched(CANCEL_ENDS_RUN_PATCH):
                    return await activity
                # Wait for the activity to stop (for the steps that change
                # the cluster), then end the phase with the run.
                await stopped(activity)
                raise
            finally:
                aborted.cancel()
        if activity.done() or not workflow.patched(ABORT_CANCELS_PATCH):
            return await activity
        activity.cancel()
        # The activity was cancelled, or it ended while stopping. The phase
        # ends as aborted in both cases.
        await stopped(activity)
        self._stopped_activity = True
        raise PhaseAborted

    def _publish(self) -> None:
        """Show the records' current state (query, current details, attributes)."""
        raise NotImplementedError

    async def run_attempts(
        self,
        record: PhaseRecord,
        attempt: Callable[[], Awaitable[None]],
        ends_run: Callable[[ActivityError], bool] | None = None,
    ) -> bool:
        """Run a phase's attempts until one succeeds; False when an abort ends it.

        A failed attempt leaves the phase waiting for a retry or an abort,
        unless ends_run returns True for its error: then the phase is failed
        and the error is raised. attempt itself marks the phase succeeded,
        with what it found.
        """
        phase = record.phase
        while True:
            self._start_attempt(record)
            try:
                await attempt()
                return True
            except ActivityError as error:
                if ends_run is not None and ends_run(error):
                    self._fail_attempt(record, error, waits=False)
                    raise
                self._fail_attempt(record, error)
            except PhaseAborted:
                self.abort_attempt(record)
                self._end_attempt(record)
                return False
            except asyncio.CancelledError:
                # Only until_aborted raises it here, and only in patched runs.
                self._cancel_attempt(record)
                raise
            await workflow.wait_condition(
                lambda: phase in self._retry_requested or self._abort_reason is not None
            )
            if self._abort_reason is not None:
                record.state = PhaseState.FAILED
                self._publish()
                return False
            self._retry_requested.discard(phase)

    def _start_attempt(self, record: PhaseRecord) -> None:
        record.state = PhaseState.RUNNING
        record.attempts += 1
        record.started_at = workflow.now().isoformat()
        record.ended_at = None
        record.duration_s = None
        record.error = None
        record.error_type = None
        workflow.logger.info(
            f"{self._step} started",
            extra={"phase": record.phase.value, "attempt": record.attempts},
        )
        self._publish()

    def _end_attempt(self, record: PhaseRecord) -> None:
        ended = workflow.now()
        record.ended_at = ended.isoformat()
        if record.started_at:
            started = ended.fromisoformat(record.started_at)
            record.duration_s = round((ended - started).total_seconds(), 3)
        self._publish()

    def _fail_attempt(
        self, record: PhaseRecord, error: ActivityError, waits: bool = True
    ) -> None:
        record.state = PhaseState.WAITING_FOR_RETRY if waits else PhaseState.FAILED
        record.error = cause_message(error)
        record.error_type = error_type_of(error)
        self._end_attempt(record)
        workflow.logger.warning(
            f"{self._step} failed; "
            + ("waiting for retry or abort" if waits else "the run ends"),
            extra={
                "phase": record.phase.value,
                "attempt": record.attempts,
                "error_type": record.error_type,
            },
        )

    def _cancel_attempt(self, record: PhaseRecord) -> None:
        """Mark the running attempt of record as stopped by a cancel request."""
        record.state = PhaseState.ABORTED
        record.error = "stopped while running: the run was canceled"
        record.error_type = CANCELED_TYPE
        workflow.logger.warning(
            f"running {self._step} stopped by a cancel request",
            extra={"phase": record.phase.value, "attempt": record.attempts},
        )
        self._end_attempt(record)

    async def end_canceled(self, phases: Sequence[asyncio.Task[None]] = ()) -> bool:
        """Wait for phases to stop, then show the run as canceled.

        Return True, and show nothing, when an abort came first: the run then
        ends as aborted.

        Runs recorded before CANCEL_ENDS_RUN_PATCH skip all of it. Call it where
        a cancel request reaches the run, then re-raise unless it returned
        True. gather ends as soon as one of its tasks is canceled, while
        another may still wait for its apply to stop, so a caller that
        gathered passes its tasks.
        """
        if not workflow.patched(CANCEL_ENDS_RUN_PATCH):
            return False
        if phases:
            await workflow.wait(phases)
        if self._abort_reason is not None and workflow.patched(
            CANCEL_STOPS_EVERY_STEP_PATCH
        ):
            return True
        # No retry can come after the run ends, so these phases failed.
        for record in self._records.values():
            if record.state is PhaseState.WAITING_FOR_RETRY:
                record.state = PhaseState.FAILED
        self._state = "canceled"
        self._message = (
            f"canceled: a cancel request stopped the {self._noun}. What the "
            f"finished {self._step}s did stays; a {self._step} that was running "
            "stopped where it was"
        )
        self._publish()
        keep_canceled_status(self.status())
        return False

    async def settle_after_abort(self) -> None:
        """Wait ABORT_SETTLE when an abort cancelled an activity, so that the run
        ends in a later workflow task than the one that took the abort. A
        cancel request meanwhile does not change how the run ends."""
        if not self._stopped_activity:
            return
        try:
            await workflow.sleep(ABORT_SETTLE)
        except asyncio.CancelledError:
            if not workflow.patched(CANCEL_STOPS_EVERY_STEP_PATCH):
                raise

    def abort_attempt(self, record: PhaseRecord) -> None:
        """Mark the running attempt of record as stopped by the abort."""
        record.state = PhaseState.ABORTED
        record.error = f"stopped while running: {self._abort_reason}"
        record.error_type = ABORTED_TYPE
        workflow.logger.warning(
            "running phase stopped by abort",
            extra={"phase": record.phase.value, "attempt": record.attempts},
        )

    def _failed_phases(self, phase: str | None) -> list[Phase]:
        """Return the phases waiting for retry (only phase, if given); raise if none."""
        waiting = [
            p
            for p in self._order
            if self._records[p].state is PhaseState.WAITING_FOR_RETRY
        ]
        if phase is not None:
            if phase not in {p.value for p in self._order}:
                raise ApplicationError(
                    f"unknown phase {phase!r}; phases are "
                    f"{', '.join(p.value for p in self._order)}"
                )
            waiting = [p for p in waiting if p.value == phase]
        if not waiting:
            raise ApplicationError(
                f"no phase{' ' + phase if phase else ''} is waiting for retry in "
                f"this {self._noun}; check `ventros-deploy status` for what runs now"
            )
        return waiting


def error_type_of(error: ActivityError) -> str | None:
    """Return the type of an activity's failure: the ApplicationError's type, or
    the name of the cause's class."""
    cause = error.cause
    if isinstance(cause, ApplicationError):
        return cause.type
    return type(cause).__name__


def cause_message(error: ActivityError) -> str:
    """Return the message of the innermost cause of an activity's failure."""
    cause = error.cause
    while isinstance(cause, ActivityError) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause or error)
