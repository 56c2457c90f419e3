"""The worker runs activities only for the deployer's own workflows.

A standalone activity (started by a client, with no workflow) would skip
validate: here, the temporal phase's apply with a chart repository that the
worker does not allow. A listening socket stands for that host.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from temporalio.client import ActivityFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from deployer import contracts
from deployer.contracts import ApplyRequest
from deployer.inputs import parse_request
from deployer.phases import Phase
from deployer.settings import WorkerSettings
from tests.conftest import deploy_request, listener, running_worker
from worker.guard import NOT_FROM_WORKFLOW


async def test_standalone_activity_rejected(
    temporal_env: WorkflowEnvironment, worker_settings: WorkerSettings
) -> None:
    async with listener() as remote:
        raw = deploy_request(f"guard-{uuid.uuid4().hex[:8]}")
        raw["operator_charts"]["temporal"] = {
            "repository": f"https://127.0.0.1:{remote.port}/charts",
            "name": "temporal",
            "version": "0.65.0",
        }
        job = ApplyRequest(request=parse_request(raw), phase=Phase.TEMPORAL)
        async with running_worker(temporal_env.client, worker_settings):
            with pytest.raises(ActivityFailureError) as failure:
                await temporal_env.client.execute_activity(
                    contracts.APPLY_PHASE,
                    job,
                    id=f"standalone-{uuid.uuid4().hex[:8]}",
                    task_queue=worker_settings.task_queue,
                    start_to_close_timeout=timedelta(seconds=60),
                    retry_policy=RetryPolicy(maximum_attempts=3),
                )

    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == NOT_FROM_WORKFLOW
    assert "came from no workflow (a standalone activity)" in cause.message
    assert remote.accepted == []
