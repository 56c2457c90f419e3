"""Run activities only for the deployer's own workflows.

Temporal servers that support standalone activities let any client with
access to the namespace start an activity on the worker's task queue with
input of its choosing. That would skip what the workflows do first: the
validate step (input checks, the chart repository allow-list, the checks of
the cluster) and the exclusion of runs of the same release. So the worker
fails every activity task that no workflow of its own types scheduled.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

log = structlog.get_logger("ventros.worker")

# The error type of an activity task that no workflow of ours scheduled.
NOT_FROM_WORKFLOW = "NotFromWorkflow"


class WorkflowActivitiesOnly(Interceptor):
    """A worker interceptor that fails activity tasks of other origins."""

    def __init__(self, workflow_types: Collection[str]) -> None:
        self.workflow_types = frozenset(workflow_types)

    def intercept_activity(
        self, next: ActivityInboundInterceptor
    ) -> ActivityInboundInterceptor:
        return _Guard(next, self.workflow_types)


class _Guard(ActivityInboundInterceptor):
    def __init__(
        self, next: ActivityInboundInterceptor, workflow_types: frozenset[str]
    ) -> None:
        super().__init__(next)
        self.workflow_types = workflow_types

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        if info.workflow_type not in self.workflow_types:
            origin = (
                f"workflow type {info.workflow_type}"
                if info.in_workflow
                else "no workflow (a standalone activity)"
            )
            log.warning(
                "rejected an activity task that no deployer workflow scheduled",
                activity_type=info.activity_type,
                activity_id=info.activity_id,
                workflow_type=info.workflow_type,
            )
            raise ApplicationError(
                f"activity {info.activity_type} runs only for the workflows "
                f"{', '.join(sorted(self.workflow_types))}, and this task came "
                f"from {origin}. Start a deploy, rollback or destroy workflow "
                "instead",
                type=NOT_FROM_WORKFLOW,
                non_retryable=True,
            )
        return await super().execute_activity(input)
