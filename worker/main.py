"""The worker process: ``python -m worker`` or ``ventros-deploy-worker``.

It polls the bootstrap Temporal's task queue for the tasks of the
VentrosDeploy, VentrosDestroy and VentrosRollback workflows and their
activities. On SIGTERM or SIGINT it stops polling and gives running
activities a grace period before it exits. Temporal retries an activity cut off
by the exit on another worker once its heartbeat timeout passes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import structlog
from pydantic import ValidationError
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.worker import Worker

from activities.deploy import DeployActivities
from activities.drain import DrainActivities
from activities.kubeapi import KubeClient, KubeconfigError
from activities.rollback import RollbackActivities
from activities.teardown import TeardownActivities
from deployer import codec, logs
from deployer.connect import (
    TlsFileError,
    connect,
    data_converter,
    key_ring_configured,
    tls_config,
)
from deployer.settings import WorkerSettings, describe_settings_error
from worker.guard import WorkflowActivitiesOnly
from workflows.deploy import WORKFLOW_TYPE as DEPLOY_TYPE
from workflows.deploy import VentrosDeploy
from workflows.destroy import WORKFLOW_TYPE as DESTROY_TYPE
from workflows.destroy import VentrosDestroy
from workflows.rollback import WORKFLOW_TYPE as ROLLBACK_TYPE
from workflows.rollback import VentrosRollback

log = structlog.get_logger("ventros.worker")

WORKFLOWS = [VentrosDeploy, VentrosDestroy, VentrosRollback]
WORKFLOW_TYPES = (DEPLOY_TYPE, DESTROY_TYPE, ROLLBACK_TYPE)
# An activity learns of its cancellation (an abort) only from the response to
# a heartbeat. The SDK sends heartbeats at most every 0.8 of the heartbeat
# timeout (16 s here), so this cap, HEARTBEAT_EVERY_S, keeps an abort of a
# running helm step short.
HEARTBEAT_THROTTLE = timedelta(seconds=5)


def all_activities(activities: DeployActivities) -> list[Callable[..., Any]]:
    """Return every activity the three workflows call.

    The destroy and rollback activities share the deploy activities' clients.
    """
    return [
        *activities.activities(),
        *TeardownActivities(activities).activities(),
        *DrainActivities(activities).activities(),
        *RollbackActivities(activities).activities(),
    ]


def build_worker(
    client: object, settings: WorkerSettings, activities: DeployActivities
) -> Worker:
    from temporalio.client import Client

    assert isinstance(client, Client)
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        activities=all_activities(activities),
        max_concurrent_activities=settings.max_concurrent_activities,
        graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_s),
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        interceptors=[WorkflowActivitiesOnly(WORKFLOW_TYPES)],
    )


def drop_core_entry(record: logging.LogRecord) -> bool:
    """Remove the core's raw entry from a forwarded record and keep the record.

    The entry's fields are in the message already, and the JSON log would
    show the entry object's repr.
    """
    record.__dict__.pop("temporal_log", None)
    return True


def sdk_runtime(settings: WorkerSettings) -> Runtime:
    """Build the SDK's runtime, which the worker's client and worker share.

    The SDK's Rust core logs through Python logging, so its lines get the
    worker's log format. Without forwarding, the core writes colored text to
    stdout, which mixed into the JSON log. The levels are the SDK's defaults.
    With a metrics port, the runtime serves Prometheus metrics on loopback.
    """
    metrics = None
    if settings.metrics_port:
        metrics = PrometheusConfig(bind_address=f"127.0.0.1:{settings.metrics_port}")
    core_logger = logging.getLogger("temporalio.core")
    core_logger.addFilter(drop_core_entry)
    core_logging = LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=core_logger),
    )
    return Runtime(telemetry=TelemetryConfig(logging=core_logging, metrics=metrics))


async def run(settings: WorkerSettings) -> None:
    # Signals first: a stop requested while connecting still ends cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    Runtime.set_default(sdk_runtime(settings), error_if_already_set=False)
    client = await connect(settings, on_plaintext=warn_plaintext)
    activities = DeployActivities(settings)
    worker = build_worker(client, settings, activities)
    log.info(
        "worker started",
        temporal_address=settings.temporal_address,
        namespace=settings.temporal_namespace,
        task_queue=settings.task_queue,
    )
    if settings.codec_keys_file is None and codec.KEYS_ENV_VAR not in os.environ:
        log.warning(
            "payload encryption is off: workflow history and the UI store deploy "
            "requests, including secret values in them, in plaintext; set "
            "VENTROS_DEPLOY_CODEC_KEYS_FILE (python -m deployer.codec generate PATH)"
        )
    async with worker:
        await stop.wait()
        log.info("worker stopping", grace_period_s=settings.graceful_shutdown_s)
    await activities.close()
    log.info("worker stopped")


def kubeconfig_problem(settings: WorkerSettings) -> str | None:
    """Describe why the configured kubeconfig cannot be used, or return None.

    Only a kubeconfig set in the settings is checked here. Without one the
    worker may run in a pod, or the file may appear later, and each deploy
    reports the problem in its validate step.
    """
    if settings.kubeconfig is None:
        return None

    async def load() -> None:
        kube = await KubeClient.connect(str(settings.kubeconfig))
        await kube.close()

    try:
        asyncio.run(load())
    except KubeconfigError as error:
        return f"VENTROS_DEPLOY_KUBECONFIG: {error}"
    return None


def key_ring_problem(settings: WorkerSettings) -> str | None:
    """Describe why the configured payload key ring cannot be loaded, or
    return None when it loads or none is configured."""
    if not key_ring_configured(settings):
        return None
    try:
        data_converter(settings)
    except codec.KeyRingError as error:
        variable = (
            "VENTROS_DEPLOY_CODEC_KEYS_FILE"
            if settings.codec_keys_file is not None
            else codec.KEYS_ENV_VAR
        )
        return (
            f"{variable}: {error}. Fix it, or point VENTROS_DEPLOY_CODEC_KEYS_FILE "
            "to a key ring file (python -m deployer.codec generate PATH creates one)"
        )
    return None


def tls_problem(settings: WorkerSettings) -> str | None:
    """Describe why a TLS file that the settings name cannot be read, or
    return None."""
    try:
        tls_config(settings)
    except TlsFileError as error:
        return str(error)
    return None


def warn_plaintext(payload: Payload) -> None:
    """Log that a payload reached this worker unencrypted, so that a setup
    that stores requests in plain text is noticed. Never logs the payload."""
    log.warning(
        "a payload reached the worker unencrypted, so the bootstrap Temporal "
        "stores it in plain text in the workflow history; start, signal and "
        "update runs through the codec (ventros-deploy, or the temporal CLI "
        "with --codec-endpoint and --codec-auth)",
        encoding=payload.metadata.get("encoding", b"").decode(errors="replace"),
    )


def main() -> None:
    # The SDK appends its context dict to every message; structlog gets it as
    # fields instead (temporal_workflow, temporal_activity).
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
    try:
        settings = WorkerSettings()
    except ValidationError as error:
        print(
            f"invalid worker settings: {describe_settings_error(error)}",
            file=sys.stderr,
        )
        sys.exit(2)
    if shutil.which(settings.helm) is None:
        print(
            f"helm binary {settings.helm!r} not found: install helm, or set "
            "VENTROS_DEPLOY_HELM to its path",
            file=sys.stderr,
        )
        sys.exit(2)
    problem = kubeconfig_problem(settings)
    if problem is not None:
        print(
            f"{problem}: fix the file, or set VENTROS_DEPLOY_KUBECONFIG to a "
            "working kubeconfig",
            file=sys.stderr,
        )
        sys.exit(2)
    for check in (key_ring_problem, tls_problem):
        problem = check(settings)
        if problem is not None:
            print(problem, file=sys.stderr)
            sys.exit(2)
    logs.configure(settings.log_format)
    code = 1
    try:
        asyncio.run(run(settings))
        code = 0
    except (OSError, RuntimeError) as error:
        log.error("worker failed", error=str(error))
    except (Exception, asyncio.CancelledError):
        # The SDK cancels the code inside `async with worker` when the worker
        # fails, for example once the bootstrap Temporal is gone at stop.
        log.exception("worker failed")
    # The SDK's native threads can still call into Python while the
    # interpreter finalizes, which aborted a stopped worker with SIGABRT
    # (exit -6, "PyGILState_Release") once in CI. Everything is stopped and
    # logged by now, so the process leaves without finalizing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
