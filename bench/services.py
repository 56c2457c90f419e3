"""The processes the benchmark starts: a Temporal dev server and one worker.

Both run on free loopback ports, log into the run's output folder, and are
stopped by their process ids when the benchmark ends. The dev server keeps
its state in memory only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from deployer import codec
from testbed.cluster import REPO_ROOT, LocalCluster, tool_path
from testbed.demo import SEARCH_ATTRIBUTES

TEMPORAL_CLI = REPO_ROOT / ".venv" / "bin" / "temporal"
STARTUP_TIMEOUT_S = 60.0


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message names what failed."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{name} exited with code {process.returncode} at start")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise BenchError(f"{name} did not listen on 127.0.0.1:{port} within 60 s")


def _wait_http(url: str, process: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{name} exited with code {process.returncode} at start")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # Any HTTP response shows the server is up.
        except (OSError, urllib.error.URLError):
            time.sleep(0.2)
    raise BenchError(f"{name} did not respond at {url} within 60 s")


class Services:
    """A headless in-memory Temporal dev server and a `python -m worker`."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.temporal_port = free_port()
        self.task_queue = f"bench-{os.getpid()}-{int(time.time())}"
        self.keys_file = state / "codec-keys.json"
        self.temporal: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    def start(self) -> None:
        if not TEMPORAL_CLI.exists():
            raise BenchError(
                f"the temporal CLI is missing at {TEMPORAL_CLI}: run `make venv`"
            )
        codec.generate_key_ring_file(str(self.keys_file))
        self._start_temporal()
        self._start_worker()

    def _start_temporal(self) -> None:
        metrics_port = free_port()
        argv = [
            str(TEMPORAL_CLI), "server", "start-dev", "--headless",
            "--ip", "127.0.0.1",
            "--port", str(self.temporal_port),
            "--metrics-port", str(metrics_port),
            "--log-level", "error",
        ]  # fmt: skip
        # Registered as in `make demo`, so the workflow keeps VentrosPhase
        # current and its history has the same events as there.
        for attribute in SEARCH_ATTRIBUTES:
            argv += ["--search-attribute", attribute]
        self.temporal = self._spawn("temporal", argv, os.environ.copy())
        _wait_port(self.temporal_port, self.temporal, "the Temporal dev server")
        # The frontend port opens before the default namespace is served.
        _wait_http(
            f"http://127.0.0.1:{metrics_port}/metrics", self.temporal, "Temporal"
        )

    def worker_env(self) -> dict[str, str]:
        env = os.environ.copy()
        env.update(
            {
                "VENTROS_DEPLOY_TEMPORAL_ADDRESS": self.address,
                "VENTROS_DEPLOY_TASK_QUEUE": self.task_queue,
                # Every request of this identity is audited, so the benchmark
                # can count the worker's requests per deploy.
                "VENTROS_DEPLOY_KUBECONFIG": str(
                    LocalCluster().config.deployer_kubeconfig
                ),
                "VENTROS_DEPLOY_HELM": str(tool_path("helm")),
                "VENTROS_DEPLOY_CHART_ROOT": str(REPO_ROOT),
                "VENTROS_DEPLOY_CODEC_KEYS_FILE": str(self.keys_file),
                "VENTROS_DEPLOY_LOG_FORMAT": "json",
            }
        )
        return env

    def _start_worker(self) -> None:
        argv = [sys.executable, "-m", "worker"]
        self.worker = self._spawn("worker", argv, self.worker_env())

    async def wait_for_worker(self, client: Client) -> None:
        """Return once the worker polls both task queues, so that the first
        deploy's time does not include the worker's start."""
        assert self.worker is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        kinds = (
            TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        )
        while time.monotonic() < deadline:
            if self.worker.poll() is not None:
                raise BenchError(
                    f"the worker exited at start; see {self.state / 'worker.log'}"
                )
            described = [
                await client.workflow_service.describe_task_queue(
                    DescribeTaskQueueRequest(
                        namespace=client.namespace,
                        task_queue=TaskQueue(name=self.task_queue),
                        task_queue_type=kind,
                    )
                )
                for kind in kinds
            ]
            if all(queue.pollers for queue in described):
                return
            await asyncio.sleep(0.1)
        raise BenchError(
            f"the worker polled no task queue within {STARTUP_TIMEOUT_S:.0f} s; "
            f"see {self.state / 'worker.log'}"
        )

    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        log = (self.state / f"{name}.log").open("wb")
        return subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        """Stop the worker, then the dev server, each by its own process id."""
        for process in (self.worker, self.temporal):
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=25)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
