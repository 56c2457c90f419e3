"""Retry and abort handlers shared by the workflows that run phases in order.

VentrosDeploy and VentrosDestroy stop a failed phase in WAITING_FOR_RETRY and
take the same retry and abort requests, as updates (which return a result)
and as signals (for clients that cannot send updates). The handlers live here once;
each workflow class sets the attributes they read. No I/O and no Kubernetes
imports, like the rest of workflows/.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from deployer.phases import Phase, PhaseRecord, PhaseState

REASON_MAX = 500


class PhaseControl:
    """Base class of a phase-running workflow: its retry and abort handlers.

    A subclass sets, in __init__: _order (its phases, in the order it runs
    them), _noun ("deploy", "destroy"), _records, _retry_requested,
    _abort_reason and _state.
    """

    _order: tuple[Phase, ...]
    _noun: str
    _records: dict[Phase, PhaseRecord]
    _retry_requested: set[Phase]
    _abort_reason: str | None
    _state: str

    @workflow.update(name="retry")
    def retry(self, phase: str | None = None) -> list[str]:
        """Run the failed phase (or every failed phase) again; return their names."""
        chosen = self._failed_phases(phase)
        self._retry_requested.update(chosen)
        return [p.value for p in chosen]

    @retry.validator
    def _validate_retry(self, phase: str | None = None) -> None:
        self._failed_phases(phase)

    @workflow.update(name="abort")
    def abort(self, reason: str = "aborted by request") -> str:
        """End the run as failed; what it applied or removed stays so."""
        self._abort_reason = reason[:REASON_MAX] or "aborted by request"
        return self._state

    @workflow.signal(name="retry-signal")
    def retry_signal(self, phase: str | None = None) -> None:
        try:
            self._retry_requested.update(self._failed_phases(phase))
        except ApplicationError as error:
            workflow.logger.warning(
                "retry signal ignored", extra={"reason": error.message}
            )

    @workflow.signal(name="abort-signal")
    def abort_signal(self, reason: str = "aborted by signal") -> None:
        self._abort_reason = reason[:REASON_MAX] or "aborted by signal"

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
