"""Watch edge cases of activities.waits.wait_ready and KubeClient.watch.

A real API server cannot be made to return 410 Gone, stall a stream or reject
credentials at a chosen moment, so these tests use fakes fed with the JSON
that the API server sends. FakeKube replays responses for wait_ready. FakeApi
replaces the HTTP layer under a real KubeClient, so the stream parsing and
the watchdog in KubeClient.watch run for real.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import pytest
from temporalio.exceptions import ApplicationError

from activities import waits
from activities.deploy import translate_errors
from activities.kubeapi import (
    ApiUnreachableError,
    GoneError,
    KubeClient,
    ResourceType,
    UnauthorizedError,
    WatchStalledError,
    api_error,
    well_known,
)
from deployer import contracts
from deployer.phases import ObjectRef

NAMESPACE = "ventros-crm"
NAME = "ventros-crm"
DEPLOYMENT = well_known("apps/v1", "Deployment")
PATH = DEPLOYMENT.path(NAMESPACE)
REF = ObjectRef(
    api_version="apps/v1", kind="Deployment", name=NAME, namespace=NAMESPACE
)
READY_STATUS = "2/2 available, 2 updated, 2 total"
STALL = object()  # In a FakeApi stream: send nothing more and keep the stream open.

# A scripted response: an object, None (not found) or an exception to raise.
Scripted = dict[str, Any] | BaseException | None


# -- realistic API objects ---------------------------------------------------


def deployment(resource_version: str, available: int) -> dict[str, Any]:
    """Return a Deployment as GET and watch return it, with 2 desired replicas."""
    labels = {
        "app.kubernetes.io/name": "ventros-crm",
        "app.kubernetes.io/instance": NAME,
    }
    status: dict[str, Any] = {
        "observedGeneration": 1,
        "replicas": 2,
        "updatedReplicas": 2,
        "readyReplicas": available,
        "availableReplicas": available,
        "conditions": [
            {
                "type": "Available",
                "status": "True" if available == 2 else "False",
                "reason": "MinimumReplicasAvailable"
                if available == 2
                else "MinimumReplicasUnavailable",
                "lastUpdateTime": "2026-05-09T10:00:04Z",
                "lastTransitionTime": "2026-05-09T10:00:04Z",
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable"
                if available == 2
                else "ReplicaSetUpdated",
                "message": 'ReplicaSet "ventros-crm-5d4f8b7c9d" is progressing.',
                "lastUpdateTime": "2026-05-09T10:00:04Z",
                "lastTransitionTime": "2026-05-09T10:00:01Z",
            },
        ],
    }
    if available < 2:
        status["unavailableReplicas"] = 2 - available
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": NAME,
            "namespace": NAMESPACE,
            "uid": "3b0f2f0e-8a57-4c52-9a8e-0c7d1f6b2a11",
            "resourceVersion": resource_version,
            "generation": 1,
            "creationTimestamp": "2026-05-09T10:00:00Z",
            "labels": labels,
            "annotations": {"deployment.kubernetes.io/revision": "1"},
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "crm",
                            "image": "ventros/crm:1.0.0",
                            "ports": [{"containerPort": 8080}],
                        }
                    ]
                },
            },
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
            },
        },
        "status": status,
    }


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def bookmark(resource_version: str) -> dict[str, Any]:
    return event(
        "BOOKMARK",
        {
            "kind": "Deployment",
            "apiVersion": "apps/v1",
            "metadata": {
                "resourceVersion": resource_version,
                "creationTimestamp": None,
            },
            "spec": {
                "template": {
                    "metadata": {"creationTimestamp": None},
                    "spec": {"containers": None},
                }
            },
            "status": {},
        },
    )


def expired_status(resource_version: str) -> dict[str, Any]:
    """Return the Status object of a 410 Gone, as the watch's ERROR event has it."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {resource_version} (4242)",
        "reason": "Expired",
        "code": 410,
    }


def gone_error(resource_version: str) -> GoneError:
    error = api_error(
        410, json.dumps(expired_status(resource_version)), f"watch {PATH}"
    )
    assert isinstance(error, GoneError)
    return error


def unauthorized_error() -> UnauthorizedError:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }
    error = api_error(401, json.dumps(body), f"GET {DEPLOYMENT.path(NAMESPACE, NAME)}")
    assert isinstance(error, UnauthorizedError)
    return error


# -- FakeKube: scripted responses for wait_ready -------------------------------


class FakeKube:
    """A KubeClient stand-in that replays scripted responses in call order.

    gets contains one response per get() call: an object, None (not found) or
    an exception to raise. watches contains one script per watch() call, with
    events to yield and exceptions to raise. A script that runs out ends the
    stream the way the server ends it after timeoutSeconds.
    """

    def __init__(self, gets: list[Scripted], watches: list[list[Scripted]]) -> None:
        self.gets = gets
        self.watches = watches
        self.get_calls = 0
        self.watch_versions: list[str] = []
        self.reloads = 0
        self.forgotten: list[str] = []

    async def resource_type(self, api_version: str, kind: str) -> ResourceType:
        return well_known(api_version, kind)

    async def get(
        self, rtype: ResourceType, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        self.get_calls += 1
        response = self.gets.pop(0)
        if isinstance(response, BaseException):
            raise response
        return response

    async def list(
        self, rtype: ResourceType, namespace: str | None = None, **_: Any
    ) -> dict[str, Any]:
        return {
            "kind": "DeploymentList",
            "apiVersion": "apps/v1",
            "metadata": {"resourceVersion": "90"},
            "items": [],
        }

    async def watch(
        self,
        rtype: ResourceType,
        namespace: str | None = None,
        *,
        resource_version: str,
        **_: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        self.watch_versions.append(resource_version)
        for item in self.watches.pop(0):
            if isinstance(item, BaseException):
                raise item
            assert item is not None
            yield item

    def forget_discovery(self, api_version: str) -> None:
        self.forgotten.append(api_version)

    async def reload_credentials(self) -> None:
        self.reloads += 1


async def wait(
    kube: FakeKube | KubeClient, seconds: float = 5.0
) -> tuple[str, list[str]]:
    """Run wait_ready on REF; return its result and every status it reported."""
    reported: list[str] = []
    result = await waits.wait_ready(
        cast(KubeClient, kube),
        REF,
        time.monotonic() + seconds,
        lambda _ref, status: reported.append(status),
    )
    return result, reported


@pytest.fixture(autouse=True)
def short_retry_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the back-off between retries short so the tests run in milliseconds."""
    monkeypatch.setattr(waits, "RETRY_DELAYS_S", (0.01, 0.02))


async def test_wait_gone_error_lists_again() -> None:
    """A watch failing with 410 Gone makes the wait GET again and watch from there."""
    kube = FakeKube(
        gets=[deployment("100", 0), deployment("250", 1)],
        watches=[[gone_error("100")], [event("MODIFIED", deployment("260", 2))]],
    )
    result, reported = await wait(kube)
    assert result == READY_STATUS
    assert kube.get_calls == 2
    assert kube.watch_versions == ["100", "250"]
    assert reported[-1] == READY_STATUS


async def test_wait_server_closed_stream_resumes() -> None:
    """A stream the server ends is watched again from the last (bookmark) version."""
    kube = FakeKube(
        gets=[deployment("100", 0)],
        watches=[
            [event("MODIFIED", deployment("120", 1)), bookmark("180")],
            [event("MODIFIED", deployment("200", 2))],
        ],
    )
    result, _ = await wait(kube)
    assert result == READY_STATUS
    assert kube.get_calls == 1
    assert kube.watch_versions == ["100", "180"]


async def test_wait_stalled_watch_reconnects() -> None:
    """WatchStalledError from the watch makes the wait GET again and watch anew."""
    kube = FakeKube(
        gets=[deployment("100", 0), deployment("130", 1)],
        watches=[
            [WatchStalledError(PATH, 65)],
            [event("MODIFIED", deployment("140", 2))],
        ],
    )
    result, _ = await wait(kube)
    assert result == READY_STATUS
    assert kube.get_calls == 2
    assert kube.watch_versions == ["100", "130"]


async def test_wait_unauthorized_reloads_once() -> None:
    """A 401 reloads the kubeconfig once, and the wait then finishes."""
    kube = FakeKube(
        gets=[unauthorized_error(), deployment("100", 0)],
        watches=[[event("MODIFIED", deployment("110", 2))]],
    )
    result, _ = await wait(kube)
    assert result == READY_STATUS
    assert kube.reloads == 1
    assert kube.get_calls == 2


async def test_wait_second_unauthorized_raises() -> None:
    """A 401 after the reload raises UnauthorizedError without a second reload."""
    kube = FakeKube(
        gets=[unauthorized_error(), deployment("100", 0)],
        watches=[[event("MODIFIED", deployment("110", 1)), unauthorized_error()]],
    )
    with pytest.raises(UnauthorizedError) as raised:
        await wait(kube)
    assert raised.value.status == 401
    assert kube.reloads == 1
    assert kube.get_calls == 2


async def test_translate_errors_unauthorized_not_retryable() -> None:
    """A 401 that survived the reload becomes a non-retryable Unauthorized error."""

    @translate_errors
    async def rejected() -> None:
        raise unauthorized_error()

    with pytest.raises(ApplicationError) as raised:
        await rejected()
    assert raised.value.type == contracts.UNAUTHORIZED
    assert raised.value.non_retryable
    assert "even after reloading the kubeconfig" in raised.value.message


async def test_wait_connection_errors_retried() -> None:
    """Connection errors on get and mid-stream are retried until the object is ready."""
    reset = aiohttp.ClientPayloadError("Response payload is not completed")
    kube = FakeKube(
        gets=[
            ConnectionRefusedError(111, "Connection refused"),
            aiohttp.ServerDisconnectedError(),
            deployment("100", 0),
            ConnectionRefusedError(111, "Connection refused"),
            deployment("150", 1),
        ],
        watches=[
            [event("MODIFIED", deployment("120", 1)), reset],
            [event("MODIFIED", deployment("160", 2))],
        ],
    )
    result, reported = await wait(kube)
    assert result == READY_STATUS
    assert kube.get_calls == 5
    assert kube.watch_versions == ["100", "150"]
    assert "API server unreachable (ConnectionRefusedError); retrying" in reported
    assert "API server unreachable (ServerDisconnectedError); retrying" in reported
    assert "API server unreachable (ClientPayloadError); retrying" in reported


async def test_wait_outage_past_deadline_times_out() -> None:
    """An API server that stays unreachable makes the wait time out at its deadline."""
    kube = FakeKube(
        gets=[ConnectionRefusedError(111, "Connection refused")] * 200, watches=[]
    )
    with pytest.raises(waits.WaitTimeout) as raised:
        await wait(kube, seconds=0.3)
    assert (
        raised.value.status
        == "API server unreachable (ConnectionRefusedError); retrying"
    )


async def test_wait_outage_names_the_server() -> None:
    """A refused connection reports the server and the kubeconfig it came from
    in the wait's status, and times out as any outage does."""
    unreachable = ApiUnreachableError(
        "API server unreachable at https://127.0.0.1:9 (Connect call failed), "
        "the address from kubeconfig /k, its current context; check that the "
        "server runs there"
    )
    kube = FakeKube(gets=[unreachable] * 200, watches=[])
    with pytest.raises(waits.WaitTimeout) as raised:
        await wait(kube, seconds=0.3)
    assert raised.value.status == f"{unreachable}; retrying"


# -- FakeApi: the HTTP layer under a real KubeClient ---------------------------


class FakeContent:
    """The response body stream: lines, then end of stream unless it stalls."""

    def __init__(self, lines: list[Any]) -> None:
        self.reader = asyncio.StreamReader()
        for line in lines:
            if line is STALL:
                return
            self.reader.feed_data(json.dumps(line).encode() + b"\n")
        self.reader.feed_eof()

    async def readline(self) -> bytes:
        return await self.reader.readline()


class FakeResponse:
    """The response object that ApiClient.call_api returns unread."""

    def __init__(
        self, status: int, body: Any = None, lines: list[Any] | None = None
    ) -> None:
        self.status = status
        self.body = body
        self.content = FakeContent(lines or [])
        self.closed = False

    async def text(self) -> str:
        return json.dumps(self.body) if self.body is not None else ""

    def release(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True


class FakeApi:
    """An ApiClient stand-in that serves GETs and watches from two scripted lists."""

    def __init__(self, gets: list[FakeResponse], watches: list[FakeResponse]) -> None:
        self.gets = gets
        self.watches = watches
        self.urls: list[str] = []

    async def call_api(self, url: str, method: str, **_: Any) -> FakeResponse:
        self.urls.append(f"{method} {url}")
        return self.watches.pop(0) if "watch=true" in url else self.gets.pop(0)

    async def close(self) -> None:
        pass


def kube_over(api: FakeApi) -> KubeClient:
    return KubeClient(cast(Any, api), kubeconfig=None, context=None)


async def collect(stream: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item async for item in stream]


async def test_watch_error_event_raises_gone() -> None:
    """KubeClient.watch yields the events before an ERROR 410 event, then GoneError."""
    api = FakeApi(
        gets=[],
        watches=[
            FakeResponse(
                200,
                lines=[
                    event("MODIFIED", deployment("120", 1)),
                    event("ERROR", expired_status("100")),
                ],
            )
        ],
    )
    seen: list[dict[str, Any]] = []
    with pytest.raises(GoneError) as raised:
        async for item in kube_over(api).watch(
            DEPLOYMENT, NAMESPACE, resource_version="100", name=NAME
        ):
            seen.append(item)
    assert raised.value.status == 410
    assert raised.value.reason == "Expired"
    assert "too old resource version" in raised.value.message
    assert [item["object"]["metadata"]["resourceVersion"] for item in seen] == ["120"]


async def test_watch_http_gone_raises_gone() -> None:
    """A watch request that gets HTTP 410 raises GoneError before any event."""
    api = FakeApi(gets=[], watches=[FakeResponse(410, body=expired_status("100"))])
    with pytest.raises(GoneError):
        await collect(
            kube_over(api).watch(DEPLOYMENT, NAMESPACE, resource_version="100")
        )


async def test_watch_silent_stream_raises_stalled() -> None:
    """An open stream that sends nothing raises WatchStalledError when idle too long."""
    response = FakeResponse(200, lines=[STALL])
    api = FakeApi(gets=[], watches=[response])
    started = time.monotonic()
    with pytest.raises(WatchStalledError):
        await collect(
            kube_over(api).watch(
                DEPLOYMENT, NAMESPACE, resource_version="100", idle_timeout_s=0.2
            )
        )
    assert time.monotonic() - started < 2.0
    assert response.closed


async def test_watch_query_requests_bookmarks() -> None:
    """The watch request names the object and version and requests bookmarks."""
    api = FakeApi(gets=[], watches=[FakeResponse(200, lines=[])])
    await collect(
        kube_over(api).watch(
            DEPLOYMENT, NAMESPACE, resource_version="100", name=NAME, timeout_s=50
        )
    )
    url = api.urls[0]
    assert "resourceVersion=100" in url
    assert "allowWatchBookmarks=true" in url
    assert "fieldSelector=metadata.name%3Dventros-crm" in url
    assert "timeoutSeconds=50" in url


async def test_wait_error_event_lists_again() -> None:
    """Through a real KubeClient, an ERROR 410 event makes the wait GET again."""
    api = FakeApi(
        gets=[
            FakeResponse(200, body=deployment("100", 0)),
            FakeResponse(200, body=deployment("300", 1)),
        ],
        watches=[
            FakeResponse(200, lines=[event("ERROR", expired_status("100"))]),
            FakeResponse(200, lines=[event("MODIFIED", deployment("310", 2))]),
        ],
    )
    result, _ = await wait(kube_over(api))
    assert result == READY_STATUS
    watch_urls = [url for url in api.urls if "watch=true" in url]
    assert len(watch_urls) == 2
    assert "resourceVersion=300" in watch_urls[1]


async def test_wait_stalled_stream_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a real KubeClient, a silent stream trips the watchdog and reconnects."""
    monkeypatch.setattr(waits, "WATCH_IDLE_S", 0.2)
    stalled = FakeResponse(200, lines=[event("MODIFIED", deployment("110", 1)), STALL])
    api = FakeApi(
        gets=[
            FakeResponse(200, body=deployment("100", 0)),
            FakeResponse(200, body=deployment("115", 1)),
        ],
        watches=[
            stalled,
            FakeResponse(200, lines=[event("MODIFIED", deployment("120", 2))]),
        ],
    )
    started = time.monotonic()
    result, reported = await wait(kube_over(api))
    assert result == READY_STATUS
    assert time.monotonic() - started < 3.0
    assert stalled.closed
    # Each GET and each event is judged and reported, the repeated GET included.
    assert reported == [
        "0/2 available, 2 updated, 2 total",
        "1/2 available, 2 updated, 2 total",
        "1/2 available, 2 updated, 2 total",
        READY_STATUS,
    ]
    assert len([url for url in api.urls if "watch=true" in url]) == 2
