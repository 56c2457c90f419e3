"""Tests of the run state and error type that a failed validate leaves.

A timed-out validate reaches the workflow with no error type. These tests
build each failure as the SDK does, because a timeout once showed "invalid".
"""

from __future__ import annotations

from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    RetryState,
    TimeoutError,
    TimeoutType,
)

from client.cli import EXIT_FAILED, EXIT_USAGE, outcome_code
from deployer import contracts
from deployer.phases import DeployStatus
from workflows.deploy import validate_failure


def activity_error(cause: BaseException) -> ActivityError:
    error = ActivityError(
        "Activity task failed",
        scheduled_event_id=5,
        started_event_id=6,
        identity="worker@host",
        activity_type=contracts.VALIDATE_REQUEST,
        activity_id="1",
        retry_state=RetryState.MAXIMUM_ATTEMPTS_REACHED,
    )
    error.__cause__ = cause
    return error


def exit_code(state: str, kind: str) -> int:
    status = DeployStatus(
        workflow_id="w",
        release="r",
        namespace="n",
        app_version="1.0.0",
        state=state,
        phases=[],
    )
    return outcome_code(status, kind)


def test_rejected_request_is_invalid() -> None:
    cause = ApplicationError(
        "chart renders no postgresql", type=contracts.VALUES_REJECTED
    )
    kind, state, message = validate_failure(activity_error(cause))
    assert (kind, state) == (contracts.VALUES_REJECTED, "invalid")
    assert message == "chart renders no postgresql"
    assert exit_code(state, kind) == EXIT_USAGE


def test_unrun_check_is_failed() -> None:
    cause = ApplicationError("repository unreachable", type=contracts.HELM_FAILED)
    kind, state, message = validate_failure(activity_error(cause))
    assert (kind, state) == (contracts.HELM_FAILED, "failed")
    assert message == "repository unreachable"
    assert exit_code(state, kind) == EXIT_FAILED


def test_timeout_is_failed() -> None:
    cause = TimeoutError(
        "activity Heartbeat timeout",
        type=TimeoutType.HEARTBEAT,
        last_heartbeat_details=[],
    )
    kind, state, message = validate_failure(activity_error(cause))
    assert kind == contracts.VALIDATE_UNFINISHED
    assert kind not in contracts.REJECTED_REQUEST_TYPES
    assert state == "failed"
    assert "validate did not finish (activity Heartbeat timeout)" in message
    assert "nothing was applied" in message
    assert "start the deploy again" in message
    assert exit_code(state, kind) == EXIT_FAILED


def test_untyped_error_is_failed() -> None:
    kind, state, message = validate_failure(
        activity_error(ApplicationError("something odd"))
    )
    assert (kind, state, message) == (
        contracts.VALIDATE_UNFINISHED,
        "failed",
        "something odd",
    )
