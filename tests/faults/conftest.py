"""Fixtures for the fault tests: worker processes and a namespace with slow readiness.

The quick cases carry no marker and run in `make test`; the full set carries
`@pytest.mark.faults` and runs in `make test-faults`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from activities.kubeapi import KubeClient, well_known
from tests.faults.harness import SLOW_READINESS, WorkerProcess
from tests.faults.summary import (  # noqa: F401 - pytest finds hooks by name here
    pytest_runtest_logreport,
    pytest_terminal_summary,
)

NAMESPACE = well_known("v1", "Namespace")

WorkerFactory = Callable[[str, Path], WorkerProcess]


@pytest_asyncio.fixture
async def slow_namespace(kube: KubeClient, namespace: str) -> str:
    """A fresh namespace whose pods and operators take a few seconds to be ready."""
    await kube.merge_patch(
        NAMESPACE, namespace, {"metadata": {"annotations": SLOW_READINESS}}
    )
    return namespace


@pytest_asyncio.fixture
async def worker_factory(tmp_path: Path) -> AsyncIterator[WorkerFactory]:
    """Make worker processes on a unique task queue; stop the ones left running."""
    workers: list[WorkerProcess] = []

    def make(temporal_address: str, kubeconfig: Path) -> WorkerProcess:
        worker = WorkerProcess(
            temporal_address=temporal_address,
            task_queue=f"faults-{uuid.uuid4().hex[:8]}",
            kubeconfig=kubeconfig,
            log_dir=tmp_path,
        )
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop()


def dev_server_address(env: WorkflowEnvironment) -> str:
    """Return host:port of the session's Temporal dev server."""
    return env.client.service_client.config.target_host
