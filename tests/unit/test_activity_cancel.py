"""The end of a cancelled activity. A cancel the workflow requested stays a
cancellation. A cancel that only reports that the run has ended becomes a
benign error, which the SDK logs at debug level instead of as a warning."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.activity import ActivityCancellationDetails
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.testing import ActivityEnvironment

from activities.deploy import translate_errors
from deployer import contracts


@translate_errors
async def long_wait() -> None:
    await asyncio.sleep(60)


async def cancelled_with(details: ActivityCancellationDetails) -> BaseException:
    """Run long_wait, cancel it with details, and return what it raised."""
    environment = ActivityEnvironment()
    running = asyncio.ensure_future(environment.run(long_wait))
    await asyncio.sleep(0.05)
    environment.cancel(details)
    try:
        await asyncio.wait_for(running, 5)
    except (ApplicationError, asyncio.CancelledError) as raised:
        return raised
    raise AssertionError("the cancelled activity returned normally")


async def test_run_ended_cancel_is_benign() -> None:
    raised = await cancelled_with(ActivityCancellationDetails(not_found=True))
    assert isinstance(raised, ApplicationError)
    assert raised.type == contracts.RUN_ENDED
    assert raised.category is ApplicationErrorCategory.BENIGN
    assert raised.non_retryable


@pytest.mark.parametrize(
    "details",
    [
        ActivityCancellationDetails(cancel_requested=True),
        ActivityCancellationDetails(worker_shutdown=True),
        ActivityCancellationDetails(timed_out=True),
    ],
    ids=["requested", "worker-shutdown", "timed-out"],
)
async def test_other_cancels_stay_cancellations(
    details: ActivityCancellationDetails,
) -> None:
    raised = await cancelled_with(details)
    assert isinstance(raised, asyncio.CancelledError)
