"""Processes to crash and restart, and probes that watch a deploy from outside.

The fault tests run the worker and (for the restart case) the Temporal dev
server as separate OS processes, so that SIGKILL ends them the way a crashed
container ends: nothing runs a finally block or a shutdown hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError

from activities.kubeapi import GoneError, KubeClient, WatchStalledError, well_known
from activities.waits import TRANSIENT_ERRORS
from deployer.contracts import VALIDATE_REQUEST
from deployer.inputs import workflow_id_for
from deployer.phases import DeployStatus, PhaseState
from testbed.cluster import tool_path

REPO_ROOT = Path(__file__).resolve().parents[2]
MIGRATION_JOB_PREFIX = "ventros-crm-migrate-"
STARTUP_TIMEOUT_S = 30.0
JOB = well_known("batch/v1", "Job")
# Slow readiness for every pod and operator in a namespace, so that each
# phase spends a few seconds in its wait activity and a kill can land there.
SLOW_READINESS = {
    "sim.ventros.io/postgres-delay": "3",
    "sim.ventros.io/rabbitmq-delay": "2",
    "sim.ventros.io/ready-delay": "1",
    "sim.ventros.io/job-duration": "2",
}


def free_port() -> int:
    """Return a loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and its children (helm), as a container crash would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def _spawn(
    args: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start args in a new session, so that killpg reaches its children too."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _log_tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class WorkerProcess:
    """One `python -m worker` process on its own task queue."""

    temporal_address: str
    task_queue: str
    kubeconfig: Path
    log_dir: Path
    starts: int = 0
    process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("VENTROS_DEPLOY_")
        }
        env.update(
            VENTROS_DEPLOY_TEMPORAL_ADDRESS=self.temporal_address,
            VENTROS_DEPLOY_TASK_QUEUE=self.task_queue,
            VENTROS_DEPLOY_KUBECONFIG=str(self.kubeconfig),
            VENTROS_DEPLOY_HELM=str(tool_path("helm")),
            VENTROS_DEPLOY_CHART_ROOT=str(REPO_ROOT),
            VENTROS_DEPLOY_GRACEFUL_SHUTDOWN_S="1",
            VENTROS_DEPLOY_LOG_FORMAT="json",
        )
        return env

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"worker-{self.task_queue}-{self.starts}.log"

    async def start(self) -> None:
        """Start a fresh worker process and wait until it has connected."""
        self.starts += 1
        self.process = _spawn(
            [sys.executable, "-m", "worker"],
            self.log_path,
            env=self.env(),
            cwd=REPO_ROOT,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while b"worker started" not in self.log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"worker process did not start; its log {self.log_path}:\n"
                    + _log_tail(self.log_path)
                )
            await asyncio.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.process is not None, "the worker is not running"
        return self.process.pid

    def kill(self) -> float:
        """SIGKILL the worker and its helm children; return the kill's wall time."""
        assert self.process is not None
        killed_at = time.time()
        _kill_group(self.process)
        self.process = None
        return killed_at

    def stop(self) -> None:
        """Stop the worker with SIGTERM (SIGKILL after 10 s) if it still runs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_group(self.process)
        self.process = None


@dataclass
class DevServer:
    """A `temporal server start-dev` of our own, kept in an SQLite file."""

    cli: str
    folder: Path
    port: int = field(default_factory=free_port)
    ui_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start the server on the same port and database file every time."""
        args = [
            self.cli, "server", "start-dev",
            "--db-filename", str(self.folder / "temporal.db"),
            "--ip", "127.0.0.1",
            "--port", str(self.port),
            "--ui-port", str(self.ui_port),
            "--headless",
            "--log-level", "error",
        ]  # fmt: skip
        self.process = _spawn(args, self.folder / "dev-server.log")
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _port_open(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"temporal dev server did not start on {self.address}:\n"
                    + _log_tail(self.folder / "dev-server.log")
                )
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        assert self.process is not None
        _kill_group(self.process)
        self.process = None


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def connect_client(address: str) -> Client:
    """Connect with the deployer's converter, retrying while the server starts."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            return await Client.connect(address, data_converter=pydantic_data_converter)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


# -- probes into a running deploy ------------------------------------------


@dataclass(frozen=True)
class RunningActivity:
    """A pending activity of the deploy, named by its summary."""

    activity_id: str
    summary: str
    attempt: int
    started: bool
    # "<pid>@<host>" of the worker that started the current attempt.
    worker_identity: str


def _summary_of(event: HistoryEvent) -> str:
    """Return the summary the workflow gave a scheduled activity, or ""."""
    if not event.user_metadata.HasField("summary"):
        return ""
    converter = pydantic_data_converter.payload_converter
    return str(converter.from_payload(event.user_metadata.summary, str))


async def _summaries(handle: WorkflowHandle[Any, Any]) -> dict[str, str]:
    """Map activity id to its summary ("data: wait for ..."), from the history."""
    summaries: dict[str, str] = {}
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            activity_id = event.activity_task_scheduled_event_attributes.activity_id
            summaries[activity_id] = _summary_of(event)
    return summaries


async def running_activities(handle: WorkflowHandle[Any, Any]) -> list[RunningActivity]:
    """Return the deploy's pending activities (scheduled or started)."""
    description = await handle.describe()
    pending = description.raw_description.pending_activities
    # Only the validate activity has no phase, and its type name identifies
    # it, so the history is read only when a phase activity is pending.
    needs_history = any(i.activity_type.name != VALIDATE_REQUEST for i in pending)
    summaries = await _summaries(handle) if needs_history else {}
    return [
        RunningActivity(
            activity_id=info.activity_id,
            summary=summaries.get(info.activity_id, info.activity_type.name),
            attempt=info.attempt,
            started=info.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED,
            worker_identity=info.last_worker_identity,
        )
        for info in pending
    ]


def runs_on(activity: RunningActivity, worker_pid: int) -> bool:
    """Tell whether the activity's current attempt runs on the worker with that pid.

    An attempt started by a killed worker stays started on the server until
    its heartbeat timeout, so "started" alone does not mean it runs.
    """
    return activity.started and activity.worker_identity.startswith(f"{worker_pid}@")


class KillPointMissedError(AssertionError):
    """The step ended before the test saw it run, so no kill can land in it."""

    def __init__(self, step: str) -> None:
        self.step = step
        super().__init__(f"kill point missed: {step!r} ended before it was seen")


async def _step_finished(handle: WorkflowHandle[Any, Any], step: str) -> bool:
    """Tell whether the phase of step ("data: wait", "validate") already ended."""
    status = await deploy_status(handle)
    if step == "validate":
        return status.state != "validating"
    phase = step.split(":", 1)[0]
    record = next(r for r in status.phases if r.phase.value == phase)
    return record.state is PhaseState.SUCCEEDED


async def wait_for_activity(
    handle: WorkflowHandle[Any, Any],
    step: str,
    worker_pid: int,
    timeout_s: float = 180.0,
) -> RunningActivity:
    """Wait until an activity whose summary starts with step runs on the worker.

    Raises KillPointMissedError when the step's phase ends before that is seen,
    within about a second instead of after timeout_s.
    """
    deadline = time.monotonic() + timeout_s
    seen: list[RunningActivity] = []
    polls = 0
    while time.monotonic() < deadline:
        seen = await running_activities(handle)
        for activity in seen:
            if runs_on(activity, worker_pid) and activity.summary.startswith(step):
                return activity
        polls += 1
        if polls % 10 == 0 and await _step_finished(handle, step):
            raise KillPointMissedError(step)
        await asyncio.sleep(0.1)
    raise AssertionError(
        f"no activity {step!r} started within {timeout_s:.0f} s; last seen: {seen}"
    )


async def final_status(
    handle: WorkflowHandle[Any, Any], timeout_s: float = 300.0
) -> DeployStatus:
    """Wait until the deploy ends, riding out a restarting server; return its status.

    Raises AssertionError, with the phases and pending activities, when the
    deploy still runs after timeout_s.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            description = await handle.describe()
        except RPCError:
            await asyncio.sleep(0.5)  # The server is down or starting up.
            continue
        if description.status != WorkflowExecutionStatus.RUNNING:
            result = await handle.result()
            return DeployStatus.model_validate(result)
        await asyncio.sleep(0.5)
    phases = (await deploy_status(handle)).model_dump_json(indent=1)
    pending = await running_activities(handle)
    raise AssertionError(
        f"the deploy {handle.id} did not end within {timeout_s:.0f} s; "
        f"pending activities: {pending}; phases: {phases}"
    )


async def deploy_status(handle: WorkflowHandle[Any, Any]) -> DeployStatus:
    return await handle.query("status", result_type=DeployStatus)


# -- migration Job creations ------------------------------------------------


class JobCreations:
    """Record the uid of every migration Job created in a namespace.

    It watches Jobs from before the deploy starts, so a Job created and
    replaced (a new uid under the same name) counts twice.
    """

    def __init__(self, kube: KubeClient, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.uids: dict[str, set[str]] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> JobCreations:
        version = await self._list()
        self._task = asyncio.create_task(self._watch(version))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def per_name(self) -> dict[str, int]:
        """Return how many distinct Jobs were created under each name."""
        return {name: len(uids) for name, uids in sorted(self.uids.items())}

    def _record(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        if name.startswith(MIGRATION_JOB_PREFIX):
            self.uids.setdefault(name, set()).add(job["metadata"]["uid"])

    async def _list(self) -> str:
        listing = await self.kube.list(JOB, self.namespace)
        for job in listing.get("items", []):
            self._record(job)
        return str(listing["metadata"]["resourceVersion"])

    async def _watch(self, version: str) -> None:
        while True:
            try:
                async for event in self.kube.watch(
                    JOB, self.namespace, resource_version=version, timeout_s=30
                ):
                    version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._record(event["object"])
            except (GoneError, WatchStalledError):
                version = await self._list()
            except TRANSIENT_ERRORS:
                await asyncio.sleep(0.5)


# -- what the history contains ------------------------------------------------


@dataclass
class ActivityRun:
    """One activity of the deploy as its history records it."""

    summary: str
    # The attempt that started last; above 1 means an earlier attempt failed.
    attempt: int = 0
    result: dict[str, Any] | None = None


async def activity_runs(handle: WorkflowHandle[Any, Any]) -> list[ActivityRun]:
    """Return every activity of the deploy with its last attempt and result."""
    runs: dict[int, ActivityRun] = {}
    converter = pydantic_data_converter.payload_converter
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            runs[event.event_id] = ActivityRun(summary=_summary_of(event))
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            runs[started.scheduled_event_id].attempt = started.attempt
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            completed = event.activity_task_completed_event_attributes
            payloads = completed.result.payloads
            if payloads:
                result = converter.from_payload(payloads[0])
                if isinstance(result, dict):  # Not the revision a record returns.
                    runs[completed.scheduled_event_id].result = result
    return list(runs.values())


async def start_deploy(
    client: Client, request: dict[str, Any], task_queue: str
) -> WorkflowHandle[Any, Any]:
    """Start a deploy of request under its release's workflow id."""
    return await client.start_workflow(
        "VentrosDeploy",
        request,
        id=workflow_id_for(request["namespace"], request["release"]),
        task_queue=task_queue,
    )
