"""A stand-in for the queue listing of the RabbitMQ management API.

Test tooling, like the simulator that starts it. No RabbitMQ server runs in
the local cluster, so this serves ``GET /api/queues`` for every
RabbitmqCluster under one loopback port, at

    /api/namespaces/<namespace>/<name>/api/queues

and returns one queue whose ``messages`` count is the
``sim.ventros.io/rabbitmq-messages`` annotation of the RabbitmqCluster, else
of its namespace, else 0. Like the real API it needs basic auth with the
username and password of the cluster's ``<name>-default-user`` Secret, and it
reads the annotations and the Secret on every request, so the request after
a test changes the annotation returns the new count.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import socket

from aiohttp import web

from activities.kubeapi import KubeClient, well_known

log = logging.getLogger("simulator.management")

MESSAGES_ANNOTATION = "sim.ventros.io/rabbitmq-messages"
QUEUES_PATH = "/api/namespaces/{namespace}/{name}/api/queues"
RABBITMQ = well_known("rabbitmq.com/v1beta1", "RabbitmqCluster")
NAMESPACE = well_known("v1", "Namespace")
SECRET = well_known("v1", "Secret")


class ManagementApi:
    """The loopback HTTP server; start() binds it, stop() closes it."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self._runner: web.AppRunner | None = None

    async def start(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve on host:port (0 picks a free port); return the bound port."""
        app = web.Application()
        app.router.add_get(QUEUES_PATH, self.queues)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            await self._runner.cleanup()
            raise
        await web.SockSite(self._runner, sock).start()
        bound = int(sock.getsockname()[1])
        log.info("RabbitMQ management stand-in listens on %s:%d", host, bound)
        return bound

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def queues(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        name = request.match_info["name"]
        cluster = await self.kube.get(RABBITMQ, name, namespace)
        if cluster is None:
            return web.json_response(
                {"error": "Object Not Found", "reason": "Not Found"}, status=404
            )
        if not await self._authorized(request, namespace, name):
            return web.json_response(
                {"error": "not_authorized", "reason": "Login failed"}, status=401
            )
        messages = await self._messages(cluster, namespace)
        return web.json_response(
            [
                {
                    "name": f"{name}.events",
                    "vhost": "/",
                    "messages": messages,
                    "messages_ready": messages,
                    "messages_unacknowledged": 0,
                }
            ]
        )

    async def _authorized(
        self, request: web.Request, namespace: str, name: str
    ) -> bool:
        secret = await self.kube.get(SECRET, f"{name}-default-user", namespace)
        header = request.headers.get("Authorization", "")
        if secret is None or not header.startswith("Basic "):
            return False
        data = secret.get("data") or {}
        try:
            expected = (
                base64.b64decode(data.get("username", "")).decode()
                + ":"
                + base64.b64decode(data.get("password", "")).decode()
            )
            given = base64.b64decode(header.removeprefix("Basic ")).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(given.encode(), expected.encode())

    async def _messages(self, cluster: dict[str, object], namespace: str) -> int:
        metadata = cluster.get("metadata")
        annotations = (
            (metadata.get("annotations") or {}) if isinstance(metadata, dict) else {}
        )
        raw = annotations.get(MESSAGES_ANNOTATION)
        if raw is None:
            ns = await self.kube.get(NAMESPACE, namespace) or {}
            raw = (ns.get("metadata", {}).get("annotations") or {}).get(
                MESSAGES_ANNOTATION, "0"
            )
        try:
            return max(0, int(str(raw)))
        except ValueError:
            log.warning("ignoring %s=%r: not a whole number", MESSAGES_ANNOTATION, raw)
            return 0
