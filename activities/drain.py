"""Wait until a release's RabbitMQ clusters may be deleted.

The old chart marked its RabbitmqCluster ``deletionPolicy: WaitForMessages``,
but no released RabbitMQ operator has that field, so the deployer enforces
it: a cluster is deleted only once no app pod runs and its queues hold no
messages. The queue depths come from each cluster's management API
(``GET /api/queues``), with the username and password of the operator's
``<name>-default-user`` Secret as basic auth. When the API cannot be read,
the wait goes on, saying so in its heartbeat, until its deadline.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.deploy import DeployActivities, translate_errors
from activities.kubeapi import KubeClient, NoKindMatchError, well_known
from activities.teardown import phase_selector
from deployer import contracts
from deployer.contracts import DrainRequest, StatusResult
from deployer.phases import Phase

log = structlog.get_logger("ventros.drain")

DRAIN_POLL_S = 2.0
MANAGEMENT_TIMEOUT_S = 5.0
MAX_QUEUES_SHOWN = 3
POD = well_known("v1", "Pod")
SECRET = well_known("v1", "Secret")
RABBITMQ = ("rabbitmq.com/v1beta1", "RabbitmqCluster")


class ManagementError(Exception):
    """Failure to read the queue depths; the message gives the reason, no secret."""


@dataclass(frozen=True)
class QueueDepth:
    """Messages per queue, as the management API reports them."""

    by_queue: dict[str, int]
    # Queues listed without a message count (their statistics are not in yet).
    unreported: list[str]

    @property
    def total(self) -> int:
        return sum(self.by_queue.values())

    @property
    def drained(self) -> bool:
        return self.total == 0 and not self.unreported

    def describe(self) -> str:
        if self.unreported:
            return (
                f"{_queues(len(self.unreported))} without a message count yet "
                f"({', '.join(self.unreported[:MAX_QUEUES_SHOWN])})"
            )
        busy = {name: count for name, count in self.by_queue.items() if count}
        if not busy:
            return f"0 messages in {_queues(len(self.by_queue))}"
        shown = ", ".join(
            f"{name}: {count}"
            for name, count in sorted(busy.items())[:MAX_QUEUES_SHOWN]
        )
        return f"{self.total} messages in {_queues(len(busy))} ({shown})"


def _queues(count: int) -> str:
    return f"{count} queue" if count == 1 else f"{count} queues"


def queue_depth(queues: Any) -> QueueDepth:
    """Read the JSON list that `GET /api/queues` returns."""
    if not isinstance(queues, list):
        raise ManagementError("management API returned no list of queues")
    by_queue: dict[str, int] = {}
    unreported: list[str] = []
    for queue in queues:
        if not isinstance(queue, dict):
            continue
        vhost = queue.get("vhost", "/")
        name = str(queue.get("name", "?"))
        if vhost != "/":
            name += f" (vhost {vhost})"
        count = queue.get("messages")
        if isinstance(count, int):
            by_queue[name] = count
        else:
            unreported.append(name)
    return QueueDepth(by_queue=by_queue, unreported=unreported)


async def fetch_queues(base_url: str, username: str, password: str) -> Any:
    """GET <base_url>/api/queues with basic auth; raise ManagementError."""
    timeout = aiohttp.ClientTimeout(total=MANAGEMENT_TIMEOUT_S)
    headers = {"Authorization": aiohttp.encode_basic_auth(username, password)}
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(
                base_url.rstrip("/") + "/api/queues",
                headers=headers,
                params={"columns": "name,vhost,messages"},
            ) as response,
        ):
            if response.status == 401:
                raise ManagementError(
                    "management API rejected the credentials of the default user"
                )
            if response.status != 200:
                raise ManagementError(f"management API returned HTTP {response.status}")
            return await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        raise ManagementError(
            f"management API unreachable ({error.__class__.__name__}: {error})"
        ) from None


class DrainActivities:
    """The drain wait, sharing the deploy activities' clients and settings."""

    def __init__(self, deploy: DeployActivities) -> None:
        self._deploy = deploy

    def activities(self) -> list[Callable[..., Any]]:
        return [self.wait_drained]

    @activity.defn(name=contracts.WAIT_DRAINED)
    @translate_errors
    async def wait_drained(self, job: DrainRequest) -> StatusResult:
        """Wait until no app pod runs and every queue is empty; heartbeat why not."""
        kube = await self._deploy.kube(job.kube_context)
        deadline = time.monotonic() + max(0.0, job.deadline_epoch_s - time.time())
        last = ""
        while True:
            status, drained = await self._check(kube, job)
            activity.heartbeat({contracts.DRAIN_KEY: status})
            if status != last:
                log.info("drain check", namespace=job.namespace, status=status)
                last = status
            if drained:
                return StatusResult(statuses={contracts.DRAIN_KEY: status})
            if time.monotonic() >= deadline:
                raise ApplicationError(
                    self._timeout_message(job, status),
                    type=contracts.QUEUES_NOT_DRAINED,
                    non_retryable=True,
                )
            await asyncio.sleep(DRAIN_POLL_S)

    async def _check(self, kube: KubeClient, job: DrainRequest) -> tuple[str, bool]:
        """Return the drain status line and whether deletion may go ahead."""
        app = await kube.list(
            POD,
            job.namespace,
            label_selector=phase_selector(job.release, Phase.APP),
        )
        if app.get("items"):
            return f"waiting for the app to stop: {len(app['items'])} pods left", False
        clusters = await self._clusters(kube, job)
        if not clusters:
            return "no RabbitmqCluster to drain", True
        lines, drained = [], True
        for name in clusters:
            try:
                depth = await self._queue_depth(kube, job.namespace, name)
            except ManagementError as error:
                lines.append(f"rabbitmqcluster/{name}: {error}")
                drained = False
                continue
            lines.append(f"rabbitmqcluster/{name}: {depth.describe()}")
            drained = drained and depth.drained
        return "; ".join(lines), drained

    async def _clusters(self, kube: KubeClient, job: DrainRequest) -> list[str]:
        try:
            rtype = await kube.resource_type(*RABBITMQ)
        except NoKindMatchError:
            return []
        listing = await kube.list(
            rtype,
            job.namespace,
            label_selector=phase_selector(job.release, Phase.MESSAGING),
        )
        return [item["metadata"]["name"] for item in listing.get("items", [])]

    async def _queue_depth(
        self, kube: KubeClient, namespace: str, name: str
    ) -> QueueDepth:
        username, password = await self._default_user(kube, namespace, name)
        url = self._deploy.settings.rabbitmq_management_url.format(
            name=name, namespace=namespace
        )
        return queue_depth(await fetch_queues(url, username, password))

    @staticmethod
    async def _default_user(
        kube: KubeClient, namespace: str, name: str
    ) -> tuple[str, str]:
        """Return the credentials the RabbitMQ operator stored for its default user."""
        secret_name = f"{name}-default-user"
        secret = await kube.get(SECRET, secret_name, namespace)
        if secret is None:
            raise ManagementError(
                f"management API credentials missing: secret/{secret_name} not found"
            )
        data = secret.get("data") or {}
        try:
            username = base64.b64decode(data["username"]).decode()
            password = base64.b64decode(data["password"]).decode()
        except (KeyError, binascii.Error, UnicodeDecodeError):
            raise ManagementError(
                f"secret/{secret_name} has no valid username and password keys"
            ) from None
        return username, password

    @staticmethod
    def _timeout_message(job: DrainRequest, status: str) -> str:
        workflow_id = activity.info().workflow_id
        return (
            f"the RabbitMQ cluster of {job.release} in namespace {job.namespace} "
            f"was not drained after {job.timeout_s} s: {status}. It is deleted only "
            "once the app is gone and its queues are empty, so that no message is "
            "lost. Let the consumers empty the queues (or make the management API "
            f"reachable), then run `ventros-deploy retry {workflow_id}`. To delete "
            f"it with its messages, run `ventros-deploy abort {workflow_id}` and "
            "destroy again with --force"
        )
