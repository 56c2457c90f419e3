"""ventros-deploy status and watch on runs that need no cluster: deploys and
destroys whose request the workflow rejects, and rollbacks whose activities
are stand-ins. They run the real workflows on the real dev server, with
payloads encrypted as in production."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from deployer import contracts
from deployer.contracts import ApplyResult, RollbackPlan, WaitResult
from deployer.lifecycle import DestroyStatus, RollbackStatus
from deployer.phases import PHASE_ORDER, ObjectRef, Phase
from tests.cli.test_cli import run_cli
from tests.conftest import REPO_ROOT
from tests.workflow.standins import BlockingStandIns, StandIns, cancel_seen
from worker.main import WORKFLOWS

RELEASE = "ventros-crm"


def client_env(
    temporal_env: WorkflowEnvironment, task_queue: str, key_ring: Path | None
) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("VENTROS_DEPLOY_")
    }
    env["VENTROS_DEPLOY_TEMPORAL_ADDRESS"] = (
        temporal_env.client.service_client.config.target_host
    )
    env["VENTROS_DEPLOY_TASK_QUEUE"] = task_queue
    env["COLUMNS"] = "160"
    if key_ring is not None:
        env["VENTROS_DEPLOY_CODEC_KEYS_FILE"] = str(key_ring)
    return env


@activity.defn(name=contracts.PLAN_ROLLBACK)
async def plan_rollback(request: Any) -> RollbackPlan:
    """Stand-in plan: 1.1.0 runs, and revision 3 deployed 1.0.0."""
    if request["namespace"].startswith("fail-"):
        raise ApplicationError(
            "an earlier app version is not in the history",
            type=contracts.NOTHING_TO_ROLL_BACK,
            non_retryable=True,
        )
    return RollbackPlan(
        current_version="1.1.0",
        target_version="1.0.0",
        helm_revision=3,
        app=ObjectRef(
            api_version="apps/v1",
            kind="Deployment",
            name=RELEASE,
            namespace=request["namespace"],
        ),
        migration_job=f"{RELEASE}-migrate-1-1-0",
    )


@activity.defn(name=contracts.ROLL_BACK_APP)
async def roll_back_app(job: Any) -> ApplyResult:
    """Stand-in: in namespaces named invalid-*, the API server rejects the
    app's objects after helm rolled the base release back."""
    if job["request"]["namespace"].startswith("invalid-"):
        raise ApplicationError(
            "Deployment ventros-crm cannot take the old values",
            type=contracts.OBJECT_INVALID,
            non_retryable=True,
        )
    return ApplyResult(phase=Phase.APP)


@activity.defn(name=contracts.WAIT_READY)
async def wait_ready(request: Any) -> WaitResult:
    return WaitResult(phase=Phase.APP, statuses={})


@activity.defn(name=contracts.RECORD_DEPLOYED)
async def record_deployed(target: Any) -> int:
    return 4


@asynccontextmanager
async def workflows_worker(client: Client, task_queue: str) -> AsyncIterator[None]:
    """Run the real workflows, with stand-ins for the rollback's activities."""
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=[plan_rollback, roll_back_app, wait_ready, record_deployed],
    ):
        yield


async def test_status_encrypted_without_key_ring(
    temporal_env: WorkflowEnvironment, encrypted_client: Client
) -> None:
    """status of a run with encrypted payloads, from a client without a key
    ring, exits 2 and names the setting, without a traceback."""
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    async with workflows_worker(encrypted_client, task_queue):
        handle = await encrypted_client.start_workflow(
            "VentrosDeploy",
            {"release": "Bad_Name", "namespace": "bad"},
            id=f"deploy-bad-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        result = await run_cli(
            ["status", handle.id], client_env(temporal_env, task_queue, None)
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "the run's payloads are encrypted" in result.stderr
    assert "VENTROS_DEPLOY_CODEC_KEYS_FILE" in result.stderr


async def test_watch_shows_run_duration(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """watch of a run that ended prints how long the run took, not the watch,
    and a request the workflow rejected exits 2."""
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    handle = await encrypted_client.start_workflow(
        "VentrosDeploy",
        {"release": "Bad_Name", "namespace": "bad"},
        id=f"deploy-bad-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
    )
    # No worker polls yet, so the run lasts at least this long.
    await asyncio.sleep(3)
    async with workflows_worker(encrypted_client, task_queue):
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        env = client_env(temporal_env, task_queue, key_ring_file)
        watched = await run_cli(["watch", handle.id], env)
        watched_json = await run_cli(["watch", handle.id, "--json"], env)
    assert watched.returncode == 2, watched.stderr
    duration = re.search(
        r"invalid after ([0-9.]+) s \(InvalidRequest\)", watched.stdout
    )
    assert duration, watched.stdout
    assert float(duration.group(1)) >= 3.0
    assert "DNS-1123" in watched.stdout
    assert watched_json.returncode == 2, watched_json.stderr
    shown = json.loads(watched_json.stdout)
    assert shown["state"] == "invalid"
    assert shown["error_type"] == "InvalidRequest"


@asynccontextmanager
async def rollback_run(
    temporal_env: WorkflowEnvironment,
    client: Client,
    key_ring_file: Path,
    namespace: str,
    *options: str,
) -> AsyncIterator[tuple[dict[str, str], subprocess.CompletedProcess[str]]]:
    """Run `ventros-deploy rollback` with options on the stand-in workers;
    yield the CLI's environment and its result while the workers still run."""
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    env = client_env(temporal_env, task_queue, key_ring_file)
    async with workflows_worker(client, task_queue):
        started = await run_cli(
            ["rollback", "--release", RELEASE, "--namespace", namespace, *options],
            env,
        )
        yield env, started


async def test_status_rollback_run(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """status, status --json and watch show a rollback's versions, helm
    revision and migration note, and exit 0 once it succeeded."""
    namespace = f"ok-{uuid.uuid4().hex[:8]}"
    workflow_id = f"rollback-{namespace}.{RELEASE}"
    async with rollback_run(
        temporal_env, encrypted_client, key_ring_file, namespace
    ) as (env, started):
        table = await run_cli(["status", workflow_id], env)
        as_json = await run_cli(["status", workflow_id, "--json"], env)
        watched = await run_cli(["watch", workflow_id], env)
    assert started.returncode == 0, started.stderr
    assert table.returncode == 0, table.stderr
    assert f"{workflow_id} ({namespace}): succeeded" in table.stdout
    assert re.search(r"from version[\s│]+1\.1\.0", table.stdout), table.stdout
    assert re.search(r"to version[\s│]+1\.0\.0", table.stdout), table.stdout
    assert re.search(r"helm revision[\s│]+3", table.stdout), table.stdout
    assert f"migration {RELEASE}-migrate-1-1-0 for 1.1.0 stays" in table.stdout
    status = RollbackStatus.model_validate_json(as_json.stdout)
    assert as_json.returncode == 0, as_json.stderr
    assert status.state == "succeeded"
    assert status.from_version == "1.1.0"
    assert status.to_version == "1.0.0"
    assert status.helm_revision == 3
    assert watched.returncode == 0, watched.stderr
    assert "succeeded after" in watched.stdout
    assert "stays applied" in watched.stdout


async def succeeded_rollback(
    temporal_env: WorkflowEnvironment, client: Client, key_ring_file: Path
) -> tuple[str, dict[str, str]]:
    """Run a rollback that succeeds, and stop its worker; return the rollback's
    workflow id and the CLI's environment."""
    namespace = f"ok-{uuid.uuid4().hex[:8]}"
    async with rollback_run(temporal_env, client, key_ring_file, namespace) as (
        env,
        started,
    ):
        pass
    assert started.returncode == 0, started.stderr
    return f"rollback-{namespace}.{RELEASE}", env


async def test_succeeded_run_shown_without_worker(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """status and watch of a run that succeeded show its table from the run's
    result once its worker has stopped: no status query, which would go to the
    stopped worker and time out."""
    workflow_id, env = await succeeded_rollback(
        temporal_env, encrypted_client, key_ring_file
    )
    table = await run_cli(["status", workflow_id], env)
    as_json = await run_cli(["status", workflow_id, "--json"], env)
    watched = await run_cli(["watch", workflow_id], env)
    watched_json = await run_cli(["watch", workflow_id, "--json"], env)
    for result in (table, watched):
        assert result.returncode == 0, result.stderr
        assert re.search(r"to version[\s│]+1\.0\.0", result.stdout), result.stdout
        assert "stays applied" in result.stdout
        assert "not shown" not in result.stdout
    assert "succeeded after" in watched.stdout
    for result in (as_json, watched_json):
        assert result.returncode == 0, result.stderr
        status = RollbackStatus.model_validate_json(result.stdout)
        assert status.state == "succeeded"
        assert status.helm_revision == 3


async def test_failed_run_shown_without_worker(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """status and watch of a run that failed show its table from the failure
    that ended it once its worker has stopped, as for a run that succeeded.
    They show the versions of a failed rollback and the phases of an invalid
    deploy."""
    namespace = f"invalid-{uuid.uuid4().hex[:8]}"
    async with rollback_run(
        temporal_env, encrypted_client, key_ring_file, namespace
    ) as (env, started):
        bad_deploy = await encrypted_client.start_workflow(
            "VentrosDeploy",
            {"release": "Bad_Name", "namespace": "bad"},
            id=f"deploy-bad-{uuid.uuid4().hex[:8]}",
            task_queue=env["VENTROS_DEPLOY_TASK_QUEUE"],
        )
        with pytest.raises(WorkflowFailureError):
            await bad_deploy.result()
    assert started.returncode == 1, started.stderr
    workflow_id = f"rollback-{namespace}.{RELEASE}"
    table = await run_cli(["status", workflow_id], env)
    as_json = await run_cli(["status", workflow_id, "--json"], env)
    watched = await run_cli(["watch", workflow_id], env)
    for result in (table, watched):
        assert result.returncode == 1, result.stderr
        assert re.search(r"from version[\s│]+1\.1\.0", result.stdout), result.stdout
        assert "cannot take the old values" in result.stdout
        assert "not shown" not in result.stdout
    assert as_json.returncode == 1, as_json.stderr
    status = RollbackStatus.model_validate_json(as_json.stdout)
    assert status.state == "failed"
    assert status.helm_revision == 3
    assert json.loads(as_json.stdout)["error_type"] == "RollbackFailed"

    deploy_json = await run_cli(["status", bad_deploy.id, "--json"], env)
    deploy_table = await run_cli(["status", bad_deploy.id], env)
    assert deploy_json.returncode == 2, deploy_json.stderr
    shown = json.loads(deploy_json.stdout)
    assert shown["state"] == "invalid"
    assert [row["phase"] for row in shown["phases"]] == [
        phase.value for phase in PHASE_ORDER
    ]
    assert "DNS-1123" in shown["message"]
    assert deploy_table.returncode == 2, deploy_table.stderr
    assert "migration" in deploy_table.stdout
    assert "not shown" not in deploy_table.stdout


@pytest.mark.parametrize("json_output", [True, False])
async def test_closed_stdout_exits_141(
    temporal_env: WorkflowEnvironment,
    encrypted_client: Client,
    key_ring_file: Path,
    json_output: bool,
) -> None:
    """status into a reader that has closed the pipe (`| head`) exits 141, as
    a process that SIGPIPE ended, without a traceback: exit 1 would mean
    that the run failed."""
    workflow_id, env = await succeeded_rollback(
        temporal_env, encrypted_client, key_ring_file
    )
    options = ["--json"] if json_output else []
    code, err = await run_cli_closed_pipe(["status", workflow_id, *options], env)
    assert code == 141, err
    assert "Traceback" not in err


async def run_cli_closed_pipe(
    args: list[str], env: dict[str, str], timeout_s: float = 180
) -> tuple[int, str]:
    """Run the CLI into a pipe whose reader has closed it, as `head` does once
    it has enough. Return the exit code and stderr."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "client",
            *args,
            stdout=writer,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=REPO_ROOT,
        )
    finally:
        os.close(writer)
    try:
        _, err = await asyncio.wait_for(process.communicate(), timeout_s)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode or 0, err.decode()


@asynccontextmanager
async def held_destroy(
    client: Client, task_queue: str, blocking: BlockingStandIns, namespace: str
) -> AsyncIterator[WorkflowHandle[Any, Any]]:
    """Start a forced destroy on a worker with blocking's stand-ins, and yield
    its handle once the held step runs."""
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=blocking.activities(),
    ):
        handle = await client.start_workflow(
            "VentrosDestroy",
            {"release": RELEASE, "namespace": namespace, "force": True},
            id=f"destroy-{namespace}-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
        await asyncio.wait_for(blocking.holding.wait(), timeout=60)
        yield handle


async def test_watch_notices_closed_pipe(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """watch with FORCE_COLOR, where rich draws the live table into the pipe,
    exits 141 once the reader has closed the pipe, while the run goes on.
    rich's own handler of a closed pipe exits 1."""
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    blocking = BlockingStandIns(("teardown", Phase.CACHE))
    env = {**client_env(temporal_env, task_queue, key_ring_file), "FORCE_COLOR": "1"}
    async with held_destroy(encrypted_client, task_queue, blocking, "piped") as handle:
        try:
            code, err = await run_cli_closed_pipe(["watch", handle.id], env, 30)
        finally:
            await handle.cancel()
            with pytest.raises(WorkflowFailureError):
                await asyncio.wait_for(handle.result(), timeout=60)

    assert code == 141, err
    assert "Traceback" not in err


async def test_rollback_follow_shows_table(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """rollback --follow shows the rollback's table and outcome as watch does,
    and exits 0 once the rollback succeeded or 1 once it failed."""
    namespace = f"ok-{uuid.uuid4().hex[:8]}"
    async with rollback_run(
        temporal_env, encrypted_client, key_ring_file, namespace, "--follow"
    ) as (_, followed):
        pass
    failed_namespace = f"fail-{uuid.uuid4().hex[:8]}"
    async with rollback_run(
        temporal_env, encrypted_client, key_ring_file, failed_namespace, "--follow"
    ) as (_, failed):
        pass
    assert followed.returncode == 0, followed.stderr
    assert f"started rollback-{namespace}.{RELEASE}" in followed.stdout
    assert re.search(r"to version[\s│]+1\.0\.0", followed.stdout), followed.stdout
    assert "succeeded after" in followed.stdout
    assert "stays applied" in followed.stdout
    assert failed.returncode == 1, failed.stderr
    assert "an earlier app version is not in the history" in failed.stdout


async def test_status_failed_rollback_exit_1(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """status of a rollback that failed shows why and exits 1."""
    namespace = f"fail-{uuid.uuid4().hex[:8]}"
    workflow_id = f"rollback-{namespace}.{RELEASE}"
    async with rollback_run(
        temporal_env, encrypted_client, key_ring_file, namespace
    ) as (env, started):
        table = await run_cli(["status", workflow_id], env)
    assert started.returncode == 1, started.stderr
    assert table.returncode == 1, table.stderr
    assert f"{workflow_id} ({namespace}): failed" in table.stdout
    assert "an earlier app version is not in the history" in table.stdout


async def test_rollback_failed_after_planning_exits_1(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """A rollback whose app step the API server rejects, after helm already
    rolled back, exits 1 as RollbackFailed, not 2, because exit 2 means that
    nothing was applied."""
    namespace = f"invalid-{uuid.uuid4().hex[:8]}"
    async with rollback_run(
        temporal_env, encrypted_client, key_ring_file, namespace
    ) as (env, started):
        watched = await run_cli(["watch", f"rollback-{namespace}.{RELEASE}"], env)
    assert started.returncode == 1, started.stderr
    assert "cannot take the old values" in started.stderr
    assert watched.returncode == 1, watched.stdout
    assert "(RollbackFailed)" in watched.stdout


async def test_status_invalid_destroy(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """status --json of a destroy whose request was invalid prints the
    destroy's status and exits 2."""
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    workflow_id = f"destroy-bad-{uuid.uuid4().hex[:8]}"
    async with workflows_worker(encrypted_client, task_queue):
        handle = await encrypted_client.start_workflow(
            "VentrosDestroy",
            {"release": RELEASE, "namespace": "bad", "delete_namespace": True},
            id=workflow_id,
            task_queue=task_queue,
        )
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        shown = await run_cli(
            ["status", workflow_id, "--json"],
            client_env(temporal_env, task_queue, key_ring_file),
        )
    assert shown.returncode == 2, shown.stderr
    status = DestroyStatus.model_validate_json(shown.stdout)
    assert status.state == "invalid"
    assert status.kept == []
    assert "delete_data" in (status.message or "")


async def start_without_worker(
    client: Client, task_queue: str
) -> WorkflowHandle[Any, Any]:
    """Start a deploy on a task queue that no worker polls."""
    return await client.start_workflow(
        "VentrosDeploy",
        {"release": RELEASE, "namespace": "no-worker"},
        id=f"deploy-no-worker-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
    )


async def test_abort_and_retry_without_worker(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """With no worker on the task queue, abort and retry exit 5 naming the
    task queue instead of waiting forever. abort --no-wait sends the
    abort-signal signal, which aborts the run once a worker runs it."""
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    env = client_env(temporal_env, task_queue, key_ring_file)
    handle = await start_without_worker(encrypted_client, task_queue)
    try:
        aborted = await run_cli(["abort", handle.id], env)
        retried = await run_cli(["retry", handle.id], env)
        signalled = await run_cli(
            ["abort", handle.id, "--no-wait", "--reason", "no worker came"], env
        )
    except BaseException:
        await handle.terminate("the test failed")
        raise
    for result in (aborted, retried):
        assert result.returncode == 5, result.stderr
        assert "Traceback" not in result.stderr
        assert f"no worker on task queue {task_queue} accepted it" in result.stderr
        assert "a worker that starts on that queue still receives it" in result.stderr
    assert "the abort update of" in aborted.stderr
    assert "the retry update of" in retried.stderr
    assert signalled.returncode == 0, signalled.stderr
    assert f"abort of {handle.id} requested" in signalled.stdout

    async with workflows_worker(encrypted_client, task_queue):
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), 60)
    assert "no worker came" in str(failure.value.cause)


async def test_queued_abort_applies_later(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """An abort update that timed out without a worker stays on the server, as
    its error message states: the run aborts with its reason once a worker
    starts."""
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    env = client_env(temporal_env, task_queue, key_ring_file)
    handle = await start_without_worker(encrypted_client, task_queue)
    try:
        aborted = await run_cli(
            ["abort", handle.id, "--reason", "queued while no worker ran"], env
        )
    except BaseException:
        await handle.terminate("the test failed")
        raise
    assert aborted.returncode == 5, aborted.stderr

    async with workflows_worker(encrypted_client, task_queue):
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), 60)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "Aborted"
    assert "queued while no worker ran" in cause.message


async def test_status_watch_no_poller(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """When no worker has polled the run's task queue, status and watch exit 5
    at once and send no query, which would only time out. For a run that has
    ended they show how Temporal ended it, without the phases."""
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    env = client_env(temporal_env, task_queue, key_ring_file)
    handle = await start_without_worker(encrypted_client, task_queue)
    try:
        status = await run_cli(["status", handle.id], env)
        watched = await run_cli(["watch", handle.id, "--json"], env)
    finally:
        await handle.terminate("no worker came")
    no_poller = f"no worker has polled task queue {task_queue} in the last 5 minutes"
    for result in (status, watched):
        assert result.returncode == 5, result.stderr
        assert "Traceback" not in result.stderr
        assert no_poller in result.stderr
        assert f"It needs a worker on task queue {task_queue}" in result.stderr
        assert result.stdout == ""
    assert f"no worker responds to the status query of {handle.id}" in status.stderr
    assert f"then run `ventros-deploy watch {handle.id}`" in watched.stderr

    ended = await run_cli(["status", handle.id], env)
    ended_json = await run_cli(["status", handle.id, "--json"], env)
    ended_watch = await run_cli(["watch", handle.id], env)
    for result in (ended, ended_json, ended_watch):
        assert result.returncode == 1, result.stderr
        assert result.stderr == ""
    for result in (ended, ended_watch):
        assert f"{handle.id}: terminated" in result.stdout
        assert f"{no_poller}, so the phases are not shown" in result.stdout
    shown = json.loads(ended_json.stdout)
    assert shown["state"] == "terminated"
    assert shown["phases"] is None


async def test_status_worker_starting(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """A worker that starts just after status gets a moment for its first
    poll, so status shows the run instead of exiting 5."""
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    env = client_env(temporal_env, task_queue, key_ring_file)
    handle = await start_without_worker(encrypted_client, task_queue)
    try:
        status = asyncio.create_task(run_cli(["status", handle.id, "--json"], env))
        await asyncio.sleep(1.0)
        async with workflows_worker(encrypted_client, task_queue):
            shown = await status
    finally:
        await handle.terminate("the test ended")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["workflow_id"] == handle.id


async def test_watch_worker_stopped(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """A worker that stopped a moment ago still counts as a poller, so watch
    sends the query. When no worker responds, watch exits 5 and names the
    task queue."""
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    env = client_env(temporal_env, task_queue, key_ring_file)
    async with workflows_worker(encrypted_client, task_queue):
        handle = await start_without_worker(encrypted_client, task_queue)
        # The worker has run the first workflow task once validate is scheduled.
        await wait_for_scheduled_activity(handle)
    try:
        watched = await run_cli(["watch", handle.id], env)
    finally:
        await handle.terminate("the worker stopped")
    assert watched.returncode == 5, watched.stderr
    assert "Traceback" not in watched.stderr
    assert f"the status query of {handle.id} failed" in watched.stderr
    assert f"It needs a worker on task queue {task_queue}" in watched.stderr


async def wait_for_scheduled_activity(handle: WorkflowHandle[Any, Any]) -> None:
    for _ in range(200):
        description = await handle.describe()
        if description.raw_description.pending_activities:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{handle.id} scheduled no activity within 10 s")


RUN_TYPES = {
    "deploy": "VentrosDeploy",
    "rollback": "VentrosRollback",
    "destroy": "VentrosDestroy",
}
COMMANDS = {"deploy": "start", "rollback": "rollback", "destroy": "destroy"}


@pytest.mark.parametrize(
    ("running", "started"),
    [(a, b) for a in RUN_TYPES for b in RUN_TYPES if a != b],
)
async def test_one_run_per_release(
    temporal_env: WorkflowEnvironment,
    encrypted_client: Client,
    key_ring_file: Path,
    running: str,
    started: str,
) -> None:
    """A deploy, rollback or destroy is refused with exit 3 while a run of
    another kind of the same release runs. The message names the run, how to
    follow it and how to stop it, and the refused run is not started."""
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    namespace = f"busy-{uuid.uuid4().hex[:8]}"
    # No worker runs it, so it stays running.
    handle = await encrypted_client.start_workflow(
        RUN_TYPES[running],
        {"release": RELEASE, "namespace": namespace},
        id=f"{running}-{namespace}.{RELEASE}",
        task_queue=task_queue,
    )
    try:
        blocked = await run_cli(
            [COMMANDS[started], "--release", RELEASE, "--namespace", namespace],
            client_env(temporal_env, task_queue, key_ring_file),
        )
        rejected_id = f"{started}-{namespace}.{RELEASE}"
        with pytest.raises(RPCError):
            await encrypted_client.get_workflow_handle(rejected_id).describe()
    finally:
        await handle.terminate("the test is done")
    assert blocked.returncode == 3, blocked.stderr
    message = " ".join(blocked.stderr.split())
    assert f"a {running} of {RELEASE} in {namespace} is running: {handle.id}" in (
        message
    )
    assert f"`ventros-deploy watch {handle.id}`" in message
    stop = (
        f"`temporal workflow cancel --workflow-id {handle.id}`"
        if running == "rollback"
        else f"`ventros-deploy abort {handle.id}`"
    )
    assert stop in message


@pytest.mark.parametrize("prefix", ["old-", "kube-old-"])
async def test_destroy_reads_a_deploy_under_the_old_id(
    temporal_env: WorkflowEnvironment,
    encrypted_client: Client,
    key_ring_file: Path,
    prefix: str,
) -> None:
    """A release last deployed before the ids joined the names with a dot,
    with timeouts given as text as the old parser took them, and in a kube-
    namespace as deploys before that check could: destroy by --release and
    --namespace still reads that deploy's kube context, and does not fall back
    to the worker's default context."""
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    namespace = f"{prefix}{uuid.uuid4().hex[:8]}"
    request = {
        "release": RELEASE,
        "namespace": namespace,
        "kube_context": "prod-eu",
        "timeouts": {"app": "600"},
    }
    old = await encrypted_client.start_workflow(
        "VentrosDeploy",
        request,
        id=f"deploy-{namespace}-{RELEASE}",
        task_queue=task_queue,
    )
    await old.terminate("the deploy of the old version ended")
    destroyed = await run_cli(
        ["destroy", "--release", RELEASE, "--namespace", namespace, "--force"],
        client_env(temporal_env, task_queue, key_ring_file),
    )
    handle = encrypted_client.get_workflow_handle(f"destroy-{namespace}.{RELEASE}")
    try:
        assert destroyed.returncode == 0, destroyed.stderr
        history = await handle.fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        [sent] = await encrypted_client.data_converter.decode(started.input.payloads)
    finally:
        await handle.terminate("the test is done")
    assert sent["kube_context"] == "prod-eu"


async def test_destroy_by_id_keeps_cluster_namespace(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """destroy by the id of a deploy recorded in a kube- namespace, with
    --delete-namespace, exits 2 naming the flag once the client has read the
    namespace from the run, and starts no destroy."""
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    namespace = f"kube-old-{uuid.uuid4().hex[:8]}"
    old = await encrypted_client.start_workflow(
        "VentrosDeploy",
        {"release": RELEASE, "namespace": namespace},
        id=f"deploy-{namespace}.{RELEASE}",
        task_queue=task_queue,
    )
    await old.terminate("the deploy of the old version ended")
    result = await run_cli(
        ["destroy", old.id, "--delete-data", "--delete-namespace"],
        client_env(temporal_env, task_queue, key_ring_file),
    )
    assert result.returncode == 2, result.stderr
    assert f"--delete-namespace would delete namespace '{namespace}'" in (result.stderr)
    assert "leave out --delete-namespace" in result.stderr
    with pytest.raises(RPCError):
        await encrypted_client.get_workflow_handle(
            f"destroy-{namespace}.{RELEASE}"
        ).describe()


async def test_watch_failed_phase_then_cancel(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """watch of a deploy whose phase waits for a retry names the phase's
    error type and exits 1. After a cancel request, status shows the run
    canceled with the failed phase, and exits 1, also once the worker has
    stopped."""
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    standins = StandIns()
    standins.failures[Phase.MIGRATION] = 1
    env = client_env(temporal_env, task_queue, key_ring_file)
    async with Worker(
        encrypted_client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=standins.activities(),
    ):
        handle = await encrypted_client.start_workflow(
            "VentrosDeploy",
            {"release": RELEASE, "namespace": "cancel-me"},
            id=f"deploy-cancel-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
        watched = await run_cli(["watch", handle.id], env)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(handle.result(), timeout=60)
        shown = await run_cli(["status", handle.id], env)
        shown_json = await run_cli(["status", handle.id, "--json"], env)
    # The worker has stopped: the run's memo still has its phases.
    offline = await run_cli(["status", handle.id], env)
    offline_watch = await run_cli(["watch", handle.id], env)

    assert watched.returncode == 1, watched.stderr
    assert (
        "migration failed (TerminalFailure): job/migration-object failed: "
        "BackoffLimitExceeded"
    ) in watched.stdout
    assert f"ventros-deploy retry {handle.id}" in watched.stdout
    assert shown.returncode == 1, shown.stderr
    assert f"{handle.id} (cancel-me): canceled" in shown.stdout
    assert "TerminalFailure: job/migration-object failed" in shown.stdout
    assert "canceled: a cancel request stopped the deploy" in shown.stdout
    status = json.loads(shown_json.stdout)
    assert shown_json.returncode == 1, shown_json.stderr
    assert status["state"] == "canceled"
    phases = {record["phase"]: record["state"] for record in status["phases"]}
    assert phases["migration"] == "failed"
    assert phases["app"] == "pending"
    for result in (offline, offline_watch):
        assert result.returncode == 1, result.stderr
        assert "TerminalFailure: job/migration-object failed" in result.stdout
        assert "canceled: a cancel request stopped the deploy" in result.stdout
        assert "status query" not in result.stdout
    assert f"{handle.id} (cancel-me): canceled" in offline.stdout


async def test_abort_while_canceling_exit_1(
    temporal_env: WorkflowEnvironment, encrypted_client: Client, key_ring_file: Path
) -> None:
    """abort of a destroy that took a cancel request is rejected with exit 1,
    naming the cancel, and the destroy ends as canceled."""
    task_queue = f"tq-{uuid.uuid4().hex[:8]}"
    blocking = BlockingStandIns(("teardown", Phase.CACHE), finish_s=3)
    env = client_env(temporal_env, task_queue, key_ring_file)
    async with held_destroy(
        encrypted_client, task_queue, blocking, "canceling"
    ) as handle:
        await handle.cancel()
        await cancel_seen(handle)
        aborted = await run_cli(["abort", handle.id, "--reason", "too late"], env)
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), timeout=60)

    assert aborted.returncode == 1, aborted.stderr
    assert (
        "abort rejected: BeingCanceled: this destroy is being canceled"
        in aborted.stderr
    )
    assert isinstance(failure.value.cause, CancelledError)
