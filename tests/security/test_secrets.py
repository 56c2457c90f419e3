"""Secret values stay out of workflow history, logs, errors and helm's files.

A whole deploy runs with random secret values in the chart values, through a
worker and a client that encrypt payloads with deployer.codec. The history is
then read with a client that has no key, the way the Temporal server and its
UI see it, and searched byte by byte for the secrets, plain and base64.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import math
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_asyncio
import structlog
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.deploy import object_phase
from activities.helm import Helm, HelmError, remove_stale_values, values_file
from activities.kubeapi import KubeClient, well_known
from client.cli import CliError, build_parser, build_request, live_statuses, parse_set
from deployer import codec, contracts, logs
from deployer.inputs import ChartRef, InvalidRequestError
from deployer.phases import DeployStatus
from deployer.settings import WorkerSettings
from tests.conftest import REPO_ROOT, deploy_request, running_worker


def encoded_forms(secret: str) -> dict[str, bytes]:
    """Return the secret as bytes, and in base64 at each of the three alignments.

    A secret inside a longer base64 text is encoded differently depending on
    its offset modulo 3, so each alignment yields a different substring. Only
    the characters that depend on the secret alone are kept.
    """
    raw = secret.encode()
    forms = {"plain": raw}
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        start = -(-offset * 4 // 3)  # ceil(offset * 4 / 3)
        end = (offset + len(raw)) * 4 // 3
        forms[f"base64 at offset {offset}"] = encoded[start:end]
        urlsafe = base64.urlsafe_b64encode(b"\0" * offset + raw)
        forms[f"urlsafe base64 at offset {offset}"] = urlsafe[start:end]
    return forms


def leaked_forms(secrets: list[str], data: bytes) -> list[str]:
    """Return which secrets, in which form, occur in data."""
    return [
        f"secret {index} ({form})"
        for index, secret in enumerate(secrets)
        for form, needle in encoded_forms(secret).items()
        if needle in data
    ]


async def raw_history_bytes(plain_client: Client, workflow_id: str) -> bytes:
    """Return every history event and the description as stored, undecoded."""
    handle = plain_client.get_workflow_handle(workflow_id)
    history = await handle.fetch_history()
    description = await handle.describe()
    return b"".join(
        [
            *(event.SerializeToString() for event in history.events),
            history.to_json().encode(),
            description.raw_description.SerializeToString(),
        ]
    )


def secret_values() -> tuple[list[str], dict[str, Any]]:
    """Return two random secrets, and chart values that carry them."""
    secrets = [uuid.uuid4().hex, uuid.uuid4().hex]
    values = {
        "app": {"replicas": 2},
        "rabbitmq": {"replicas": 1},
        "secrets": {"appSecretKey": secrets[0], "redisPassword": secrets[1]},
    }
    return secrets, values


@pytest_asyncio.fixture
async def codec_client(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> AsyncIterator[Client]:
    """A client of the dev server that encrypts payloads with a fresh key ring."""
    ring = codec.generate_key_ring_file(str(tmp_path / "codec-keys.json"))
    client = await Client.connect(
        temporal_env.client.service_client.config.target_host,
        namespace=temporal_env.client.namespace,
        data_converter=codec.data_converter(ring),
    )
    yield client


@dataclass
class CapturedLogs:
    """The product's log handler output, and what reached file descriptors 1 and 2."""

    handler_stream: io.StringIO
    capfd: pytest.CaptureFixture[str]

    def text(self) -> str:
        output = self.capfd.readouterr()
        return self.handler_stream.getvalue() + output.out + output.err


@contextmanager
def captured_logs(
    capfd: pytest.CaptureFixture[str], log_format: str
) -> Iterator[CapturedLogs]:
    """Configure the product's logging at DEBUG; restore logging afterwards.

    The handler is pointed at a buffer because pytest swaps sys.stderr between
    test phases. The SDK's Rust core logs straight to file descriptor 2, which
    capfd captures.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    kube_level = logging.getLogger("kubernetes_asyncio").level
    logs.configure(log_format, level=logging.DEBUG)
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    yield CapturedLogs(handler_stream=stream, capfd=capfd)
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("kubernetes_asyncio").setLevel(kube_level)
    structlog.reset_defaults()


@pytest.fixture
def json_logs(capfd: pytest.CaptureFixture[str]) -> Iterator[CapturedLogs]:
    with captured_logs(capfd, "json") as captured:
        yield captured


async def start(
    client: Client, settings: WorkerSettings, request: dict[str, Any]
) -> WorkflowHandle[Any, Any]:
    return await client.start_workflow(
        "VentrosDeploy",
        request,
        id=f"deploy-{request['namespace']}.{request['release']}",
        task_queue=settings.task_queue,
    )


async def test_secrets_absent_after_deploy(
    codec_client: Client,
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    kube: KubeClient,
    namespace: str,
    json_logs: CapturedLogs,
) -> None:
    """An encrypted deploy leaves its secrets in no history byte and no log line."""
    secrets, values = secret_values()
    async with running_worker(codec_client, worker_settings):
        handle = await start(
            codec_client, worker_settings, deploy_request(namespace, values=values)
        )
        result = DeployStatus.model_validate(await handle.result())
    assert result.state == "succeeded"

    # The secrets did reach the cluster, so their absence below means something.
    stored = await kube.get(
        well_known("v1", "Secret"), "ventros-crm-secrets", namespace
    )
    assert stored is not None
    assert base64.b64decode(stored["data"]["app-secret-key"]).decode() == secrets[0]
    assert base64.b64decode(stored["data"]["redis-password"]).decode() == secrets[1]

    history = await raw_history_bytes(temporal_env.client, handle.id)
    assert leaked_forms(secrets, history) == []

    output = json_logs.text()
    assert '"event": "phase applied"' in output
    assert leaked_forms(secrets, output.encode()) == []


async def test_secrets_decrypt_with_key(
    codec_client: Client,
    worker_settings: WorkerSettings,
    namespace: str,
) -> None:
    """The encrypted workflow input contains the secrets: only the key decrypts it."""
    secrets, values = secret_values()
    request = deploy_request(namespace, values=values)
    # No worker polls this task queue: the input is stored and never run.
    handle = await start(codec_client, worker_settings, request)
    history = await handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    [decoded] = await codec_client.data_converter.decode(started.input.payloads)
    await handle.terminate("input inspected")
    assert decoded["values"]["secrets"]["appSecretKey"] == secrets[0]
    assert started.input.payloads[0].metadata["encoding"] == codec.ENCODING


async def rejected_deploy(
    client: Client,
    worker_settings: WorkerSettings,
    namespace: str,
    values: dict[str, Any],
    error_type: str = contracts.VALUES_REJECTED,
) -> tuple[WorkflowHandle[Any, Any], ApplicationError]:
    """Run a deploy whose values the chart or the API server rejects; return
    it and its error, which must be of error_type."""
    async with running_worker(client, worker_settings):
        handle = await start(
            client, worker_settings, deploy_request(namespace, values=values)
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    error = failure.value.cause
    assert isinstance(error, ApplicationError)
    assert error.type == error_type
    return handle, error


async def test_secrets_absent_from_failure(
    codec_client: Client,
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    namespace: str,
    json_logs: CapturedLogs,
) -> None:
    """A failed activity's error, its history and the logs hold no secret.
    The failure's message is stored encrypted too: helm quotes values in its
    errors, so only a client with the key reads it."""
    secrets, values = secret_values()
    values["app"]["replicas"] = -1
    handle, error = await rejected_deploy(
        codec_client, worker_settings, namespace, values
    )
    assert "/app/replicas" in error.message
    assert leaked_forms(secrets, error.message.encode()) == []

    history = await raw_history_bytes(temporal_env.client, handle.id)
    assert b"/app/replicas" not in history
    assert b"Encoded failure" in history
    assert leaked_forms(secrets, history) == []

    output = json_logs.text()
    assert "app/replicas" in output
    assert leaked_forms(secrets, output.encode()) == []


async def test_schema_error_hides_rejected_value(
    codec_client: Client,
    worker_settings: WorkerSettings,
    namespace: str,
    json_logs: CapturedLogs,
) -> None:
    """A secret in a value that the chart's schema rejects by pattern, such as
    a password in image.repository, is named by its key only: helm's error
    quotes the value, and the status output and the logs show the message."""
    secrets, values = secret_values()
    values["image"] = {"repository": f"deployer:{secrets[0]}@registry.example/crm"}
    _, error = await rejected_deploy(codec_client, worker_settings, namespace, values)
    assert "at '/image/repository': (value not shown) does not match" in error.message
    assert error.cause is None
    assert leaked_forms(secrets, error.message.encode()) == []
    assert leaked_forms(secrets, json_logs.text().encode()) == []


async def test_api_error_hides_rejected_value(
    codec_client: Client,
    worker_settings: WorkerSettings,
    namespace: str,
    json_logs: CapturedLogs,
) -> None:
    """A secret typed into a value that the chart's schema accepts and the API
    server rejects, such as an annotation key, is named by its field only.
    The server's error quotes the value, and the status output and the logs
    show that error."""
    secrets, values = secret_values()
    values["redis"] = {"podAnnotations": {f"pw {secrets[0]}": "x"}}
    _, error = await rejected_deploy(
        codec_client, worker_settings, namespace, values, contracts.OBJECT_INVALID
    )
    assert "annotations: Invalid value: (value not shown)" in error.message
    assert leaked_forms(secrets, error.message.encode()) == []
    assert leaked_forms(secrets, json_logs.text().encode()) == []


async def test_attempt_failure_shown_decoded(
    codec_client: Client,
    temporal_env: WorkflowEnvironment,
    worker_settings: WorkerSettings,
    namespace: str,
    tmp_path: Path,
) -> None:
    """A retried apply's last error is stored encrypted, and status decodes
    it for the phase table."""
    helm = tmp_path / "helm"
    helm.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = upgrade ]; then echo "Error: simulated registry outage" >&2; '
        "exit 1; fi\n"
        f'exec {worker_settings.helm} "$@"\n'
    )
    helm.chmod(0o755)
    settings = worker_settings.model_copy(update={"helm": str(helm)})
    async with running_worker(codec_client, settings):
        handle = await start(codec_client, settings, deploy_request(namespace))
        statuses: dict[str, str] = {}
        for _ in range(100):
            statuses = await live_statuses(codec_client, handle)
            if "__attempt__" in statuses:
                break
            await asyncio.sleep(0.2)
        raw = await raw_history_bytes(temporal_env.client, handle.id)
        await handle.terminate(reason="the test saw the attempt")
    assert "simulated registry outage" in statuses.get("__attempt__", ""), statuses
    assert b"simulated registry outage" not in raw


def test_values_file_private() -> None:
    """values_file writes 0600 in a 0700 folder, even under a permissive umask."""
    secret = uuid.uuid4().hex
    previous = os.umask(0)
    try:
        with values_file({"secrets": {"appSecretKey": secret}}) as path:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            folder_mode = stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode)
            content = Path(path).read_text()
    finally:
        os.umask(previous)
    assert mode == 0o600
    assert folder_mode == 0o700
    assert secret in content


def test_values_file_removed() -> None:
    """values_file removes the file and its folder after use."""
    with values_file({"a": 1}) as path:
        pass
    assert not os.path.exists(path)
    assert not os.path.exists(os.path.dirname(path))


def test_values_file_removed_on_error() -> None:
    """values_file removes the file and its folder when the body raises."""
    seen: list[str] = []
    with pytest.raises(RuntimeError), values_file({"a": 1}) as path:
        seen.append(path)
        raise RuntimeError("helm failed")
    assert not os.path.exists(seen[0])
    assert not os.path.exists(os.path.dirname(seen[0]))


class RecordingHelm(Helm):
    """The real helm runner; it records each call's arguments and values file mode."""

    calls: ClassVar[list[tuple[list[str], int | None]]] = []

    async def run(self, args: list[str], timeout_s: float = 300.0) -> str:
        mode = None
        for arg in args:
            if arg.startswith("--values="):
                mode = stat.S_IMODE(os.stat(arg.removeprefix("--values=")).st_mode)
        self.calls.append((list(args), mode))
        return await super().run(args, timeout_s)


async def test_helm_values_not_on_command_line(worker_settings: WorkerSettings) -> None:
    """helm gets the values as a 0600 file, never on its command line."""
    secret = uuid.uuid4().hex
    helm = RecordingHelm(worker_settings.helm, None, None, REPO_ROOT)
    RecordingHelm.calls.clear()
    values = {"secrets": {"appSecretKey": secret}, "deployer": {"phases": ["base"]}}
    objects = await helm.template(
        "ventros-crm", "ventros-crm", ChartRef(path="chart"), values
    )
    [(args, mode)] = RecordingHelm.calls
    assert mode == 0o600
    assert [a for a in args if secret in a] == []
    secret_object = next(o for o in objects if o["kind"] == "Secret")
    assert base64.b64decode(secret_object["data"]["app-secret-key"]).decode() == secret


async def test_helm_strings_stay_strings(worker_settings: WorkerSettings) -> None:
    """Strings that YAML 1.1 reads as numbers or booleans reach the chart as
    the same strings: a password of `12e34`, an annotation of `y`."""
    helm = Helm(worker_settings.helm, None, None, REPO_ROOT)
    values = {
        "secrets": {"appSecretKey": "0o17", "redisPassword": "12e34"},
        "app": {"podAnnotations": {"note": "y", "size": "1e3", "odd": "NaN"}},
    }
    objects = await helm.template(
        "ventros-crm", "ventros-crm", ChartRef(path="chart"), values
    )
    secret = next(o for o in objects if o["kind"] == "Secret")
    app = next(
        o for o in objects if o["kind"] == "Deployment" and object_phase(o) == "app"
    )
    annotations = app["spec"]["template"]["metadata"]["annotations"]
    assert base64.b64decode(secret["data"]["redis-password"]) == b"12e34"
    assert base64.b64decode(secret["data"]["app-secret-key"]) == b"0o17"
    assert annotations["note"] == "y"
    assert annotations["size"] == "1e3"
    assert annotations["odd"] == "NaN"


async def test_helm_string_replicas_rejected(worker_settings: WorkerSettings) -> None:
    """`1e3` given as text for a count is rejected by the schema, not read as
    1000 replicas."""
    helm = Helm(worker_settings.helm, None, None, REPO_ROOT)
    with pytest.raises(HelmError) as raised:
        await helm.template(
            "ventros-crm",
            "ventros-crm",
            ChartRef(path="chart"),
            {"app": {"replicas": "1e3"}},
        )
    assert raised.value.schema_rejected
    assert "/app/replicas" in raised.value.stderr


def test_values_nan_rejected() -> None:
    """A NaN among the values is an invalid request, not a crash."""
    with pytest.raises(InvalidRequestError) as raised, values_file({"a": math.nan}):
        pass
    assert "NaN or an infinite number" in str(raised.value)


def test_values_left_by_dead_worker_removed(tmp_path: Path) -> None:
    """Values folders of processes that ended are removed; those of running
    processes stay."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    stale = tmp_path / f"{ended.pid}-abc"
    stale.mkdir()
    (stale / "values.yaml").write_text("secret")
    live = tmp_path / f"{os.getpid()}-def"
    live.mkdir()
    other = tmp_path / "not-ours"
    other.mkdir()
    removed = remove_stale_values(str(tmp_path))
    assert removed == [stale.name]
    assert not stale.exists()
    assert live.exists()
    assert other.exists()


def test_cli_values_yaml_error_hides_line(tmp_path: Path) -> None:
    """A malformed --values file is reported by line and column, never quoted."""
    secret = uuid.uuid4().hex
    values = tmp_path / "values.yaml"
    values.write_text(f'secrets:\n  redisPassword: "{secret}\n  other: [1\n')
    args = build_parser().parse_args(["start", "--values", str(values)])
    with pytest.raises(CliError) as error:
        build_request(args)
    message = str(error.value)
    assert f"invalid YAML in --values {values}" in message
    assert "line 2, column 18" in message
    assert secret not in message


@pytest.mark.parametrize(
    "pair", ["secrets..redisPassword={}", "secrets.redisPassword=[{}", "{}"]
)
def test_cli_set_error_hides_value(pair: str) -> None:
    """A rejected --set names its key but never echoes its value."""
    secret = uuid.uuid4().hex
    with pytest.raises(CliError) as error:
        parse_set([pair.format(secret)])
    assert secret not in str(error.value)


def test_logs_mask_secret_fields(json_logs: CapturedLogs) -> None:
    """Secret-named fields are masked, from structlog and from stdlib extra=."""
    secrets = [uuid.uuid4().hex for _ in range(4)]
    structlog.get_logger("ventros.test").warning(
        "structlog event", password=secrets[0], values={"redisPassword": secrets[1]}
    )
    logging.getLogger("ventros.test").warning(
        "stdlib event",
        extra={"token": secrets[2], "values": {"appSecretKey": secrets[3]}},
    )
    output = json_logs.text()
    assert '"event": "structlog event"' in output
    assert '"event": "stdlib event"' in output
    assert leaked_forms(secrets, output.encode()) == []


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_logged_traceback_hides_locals(
    capfd: pytest.CaptureFixture[str], log_format: str
) -> None:
    """A logged exception shows its traceback but not the local variables of
    its frames, which can hold a request's secret values."""
    secret = uuid.uuid4().hex

    def apply(values: dict[str, Any]) -> None:
        raise ValueError("the apply failed")

    with captured_logs(capfd, log_format) as captured:
        try:
            apply({"secrets": {"redisPassword": secret}})
        except ValueError:
            structlog.get_logger("ventros.test").exception("activity failed")
        output = captured.text()
    assert "the apply failed" in output
    assert "Traceback" in output
    assert leaked_forms([secret], output.encode()) == []
