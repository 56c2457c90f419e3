"""Tests for the remote codec HTTP server, run on real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog.testing
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from deployer.codec import KEYS_ENV_VAR, EncryptionCodec, KeyRing
from deployer.codec_server import (
    ALLOWED_HEADERS,
    MAX_BODY_BYTES,
    TOKEN_ENV_VAR,
    TokenError,
    build_app,
    load_token,
    validate_origin,
)

TOKEN = "test-token-0123456789abcdef"
UI_ORIGIN = "http://127.0.0.1:8233"
OTHER_ORIGIN = "http://127.0.0.1:9999"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLAINTEXT = b'"secret-marker"'

REPO_ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def _serve(key_ring: KeyRing) -> AsyncIterator[TestClient[Any, Any]]:
    # TestServer listens on an ephemeral port on 127.0.0.1.
    app = build_app(key_ring, TOKEN, UI_ORIGIN)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def _plain_payloads() -> Payloads:
    return Payloads(
        payloads=[Payload(metadata={"encoding": b"json/plain"}, data=PLAINTEXT)]
    )


def _to_json(payloads: Payloads) -> str:
    return json_format.MessageToJson(payloads)


def _from_json(text: str) -> Payloads:
    return json_format.Parse(text, Payloads())


async def _encrypted_payloads(key_ring: KeyRing) -> Payloads:
    payloads = _plain_payloads()
    await EncryptionCodec(key_ring).encode_wrapper(payloads)
    return payloads


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789abcdef"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer "},
    ],
    ids=["missing", "wrong", "prefix", "longer", "basic-scheme", "no-scheme", "empty"],
)
async def test_decode_without_valid_token_401(headers: dict[str, str]) -> None:
    key_ring = KeyRing.generate()
    body = _to_json(await _encrypted_payloads(key_ring))

    async with _serve(key_ring) as client:
        response = await client.post("/decode", data=body, headers=headers)
        text = await response.text()

    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert TOKEN not in text
    assert "secret-marker" not in text
    assert "payloads" not in text


@pytest.mark.asyncio
async def test_encode_without_token_401() -> None:
    async with _serve(KeyRing.generate()) as client:
        response = await client.post("/encode", data=_to_json(_plain_payloads()))

    assert response.status == 401


@pytest.mark.asyncio
async def test_bearer_scheme_case_insensitive() -> None:
    key_ring = KeyRing.generate()
    body = _to_json(await _encrypted_payloads(key_ring))

    async with _serve(key_ring) as client:
        response = await client.post(
            "/decode", data=body, headers={"Authorization": f"bearer {TOKEN}"}
        )

    assert response.status == 200


@pytest.mark.asyncio
async def test_decode_round_trip_over_http() -> None:
    key_ring = KeyRing.generate()
    body = _to_json(await _encrypted_payloads(key_ring))

    async with _serve(key_ring) as client:
        # The Temporal Web UI appends this query parameter to every request.
        response = await client.post(
            "/decode?preserveStorageRefs=true",
            data=body,
            headers={**AUTH, "Content-Type": "application/json", "X-Namespace": "ns"},
        )
        text = await response.text()

    assert response.status == 200
    assert response.content_type == "application/json"
    assert _from_json(text) == _plain_payloads()


@pytest.mark.asyncio
async def test_encode_over_http_then_decode() -> None:
    key_ring = KeyRing.generate()

    async with _serve(key_ring) as client:
        encoded = await client.post(
            "/encode", data=_to_json(_plain_payloads()), headers=AUTH
        )
        encoded_text = await encoded.text()
        decoded = await client.post("/decode", data=encoded_text, headers=AUTH)
        decoded_text = await decoded.text()

    encrypted = _from_json(encoded_text).payloads[0]
    assert encoded.status == 200
    assert encrypted.metadata["encoding"] == b"binary/encrypted"
    assert encrypted.metadata["encryption-key-id"] == key_ring.current_key_id.encode()
    assert PLAINTEXT not in encrypted.data
    assert decoded.status == 200
    assert _from_json(decoded_text) == _plain_payloads()


@pytest.mark.asyncio
async def test_decode_empty_payloads_list() -> None:
    async with _serve(KeyRing.generate()) as client:
        response = await client.post("/decode", data="{}", headers=AUTH)
        body = await response.json()

    assert response.status == 200
    assert body == {"payloads": []}


@pytest.mark.asyncio
async def test_decode_invalid_json_400() -> None:
    async with _serve(KeyRing.generate()) as client:
        response = await client.post("/decode", data="not json", headers=AUTH)
        body = await response.json()

    assert response.status == 400
    assert "request body is not valid Payloads JSON" in body["error"]


@pytest.mark.asyncio
async def test_decode_unknown_key_id_400() -> None:
    writer_ring = KeyRing.generate()
    body = _to_json(await _encrypted_payloads(writer_ring))

    async with _serve(KeyRing.generate()) as client:
        response = await client.post("/decode", data=body, headers=AUTH)
        error = (await response.json())["error"]

    assert response.status == 400
    assert repr(writer_ring.current_key_id) in error
    assert "Add the old key back to the key ring" in error


@pytest.mark.asyncio
async def test_cors_headers_for_ui_origin() -> None:
    key_ring = KeyRing.generate()
    body = _to_json(await _encrypted_payloads(key_ring))

    async with _serve(key_ring) as client:
        response = await client.post(
            "/decode", data=body, headers={**AUTH, "Origin": UI_ORIGIN}
        )

    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Vary"] == "Origin"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "origin",
    [OTHER_ORIGIN, "http://localhost:8233", "null", UI_ORIGIN + ".evil", None],
    ids=["other-port", "other-host", "null", "suffix", "no-origin"],
)
async def test_no_cors_headers_for_other_origins(origin: str | None) -> None:
    key_ring = KeyRing.generate()
    body = _to_json(await _encrypted_payloads(key_ring))
    headers = dict(AUTH) if origin is None else {**AUTH, "Origin": origin}

    async with _serve(key_ring) as client:
        response = await client.post("/decode", data=body, headers=headers)

    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.asyncio
async def test_cors_headers_on_401_for_ui_origin() -> None:
    # The UI can only tell a 401 from a network error if CORS lets it read it.
    async with _serve(KeyRing.generate()) as client:
        response = await client.post(
            "/decode", data="{}", headers={"Origin": UI_ORIGIN}
        )

    assert response.status == 401
    assert response.headers["Access-Control-Allow-Origin"] == UI_ORIGIN


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/decode", "/encode"])
async def test_preflight_for_ui_origin(path: str) -> None:
    async with _serve(KeyRing.generate()) as client:
        response = await client.options(
            path,
            headers={
                "Origin": UI_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": ALLOWED_HEADERS,
            },
        )

    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Access-Control-Allow-Headers"] == ALLOWED_HEADERS
    assert set(ALLOWED_HEADERS.split(",")) == {
        "content-type",
        "authorization",
        "x-namespace",
    }
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


@pytest.mark.asyncio
async def test_preflight_for_other_origin() -> None:
    async with _serve(KeyRing.generate()) as client:
        response = await client.options(
            "/decode",
            headers={"Origin": OTHER_ORIGIN, "Access-Control-Request-Method": "POST"},
        )

    assert response.status == 403
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Headers" not in response.headers
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.asyncio
async def test_oversized_body_413() -> None:
    body = b"x" * (MAX_BODY_BYTES + 1)

    async with _serve(KeyRing.generate()) as client:
        response = await client.post("/decode", data=body, headers=AUTH)

    assert response.status == 413


@pytest.mark.asyncio
async def test_oversized_chunked_body_413() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * (1024 * 1024)

    async with _serve(KeyRing.generate()) as client:
        response = await client.post("/decode", data=chunks(), headers=AUTH)

    assert response.status == 413


@pytest.mark.asyncio
async def test_body_at_limit_accepted() -> None:
    # Whitespace padding keeps the JSON valid at exactly the maximum size.
    compact = _to_json(_plain_payloads()).encode()
    body = compact + b" " * (MAX_BODY_BYTES - len(compact))

    async with _serve(KeyRing.generate()) as client:
        response = await client.post("/decode", data=body, headers=AUTH)

    assert len(body) == MAX_BODY_BYTES
    assert response.status == 200


@pytest.mark.asyncio
async def test_oversized_body_without_token_401() -> None:
    body = b"x" * (MAX_BODY_BYTES + 1)

    async with _serve(KeyRing.generate()) as client:
        response = await client.post("/decode", data=body)

    assert response.status == 401


@pytest.mark.parametrize(
    "origin", ["*", "127.0.0.1:8233", "http://127.0.0.1:8233/path", "", "http://"]
)
def test_validate_origin_rejects(origin: str) -> None:
    with pytest.raises(ValueError, match="invalid UI origin"):
        validate_origin(origin)


def test_validate_origin_strips_slash() -> None:
    assert validate_origin(UI_ORIGIN + "/") == UI_ORIGIN


def test_build_app_rejects_short_token() -> None:
    with pytest.raises(TokenError, match="expected at least 16"):
        build_app(KeyRing.generate(), "short", UI_ORIGIN)


def test_load_token_from_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    path.chmod(0o600)

    assert load_token(str(path), env={TOKEN_ENV_VAR: "ignored-0123456789"}) == TOKEN


def test_load_token_file_mode_rejected(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN, encoding="utf-8")
    path.chmod(0o640)

    with pytest.raises(TokenError) as excinfo:
        load_token(str(path))

    assert f"chmod 600 {path}" in str(excinfo.value)
    assert TOKEN not in str(excinfo.value)


def test_load_token_from_env() -> None:
    assert load_token(None, env={TOKEN_ENV_VAR: TOKEN}) == TOKEN


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, f"set {TOKEN_ENV_VAR}"),
        ({TOKEN_ENV_VAR: "short"}, "token is 5 characters"),
        ({TOKEN_ENV_VAR: "has space 0123456789"}, "other than visible ASCII"),
    ],
    ids=["missing", "short", "space"],
)
def test_load_token_errors(env: dict[str, str], expected: str) -> None:
    with pytest.raises(TokenError) as excinfo:
        load_token(None, env=env)

    assert expected in str(excinfo.value)
    assert "has space" not in str(excinfo.value)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = _free_port()
    token_path = tmp_path / "token"
    token_path.write_text(TOKEN, encoding="utf-8")
    token_path.chmod(0o600)
    env = {**os.environ, KEYS_ENV_VAR: KeyRing.generate().to_json()}
    command = [
        sys.executable,
        "-m",
        "deployer.codec_server",
        "--port",
        str(port),
        "--token-file",
        str(token_path),
        "--log-format",
        "json",
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process, port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _json_log_events(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


async def _wait_for_port(port: int, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        else:
            writer.close()
            await writer.wait_closed()
            return


@pytest.mark.asyncio
async def test_entry_point_serves_and_logs(
    server_process: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = server_process
    await _wait_for_port(port, timeout_seconds=20)
    url = f"http://127.0.0.1:{port}/decode"

    async with aiohttp.ClientSession() as session:
        async with session.post(url, data="{}") as unauthenticated:
            unauthenticated_status = unauthenticated.status
        async with session.post(url, data="{}", headers=AUTH) as authenticated:
            authenticated_body = await authenticated.json()
    process.terminate()
    output, _ = process.communicate(timeout=10)

    assert unauthenticated_status == 401
    assert authenticated_body == {"payloads": []}
    events = _json_log_events(output)
    assert events[0]["event"] == "codec server starting"
    assert events[0]["url"] == f"http://127.0.0.1:{port}"
    assert events[-1]["event"] == "codec server stopped"
    assert TOKEN not in output
    assert '"key"' not in output


def test_entry_point_help_names_units() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deployer.codec_server", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )

    assert "TCP port" in result.stdout
    assert "--ui-origin" in result.stdout
    assert TOKEN_ENV_VAR in result.stdout
    assert KEYS_ENV_VAR in result.stdout


def test_entry_point_invalid_config_exits_1() -> None:
    env = {key: value for key, value in os.environ.items() if key != KEYS_ENV_VAR}
    env[TOKEN_ENV_VAR] = TOKEN

    result = subprocess.run(
        [sys.executable, "-m", "deployer.codec_server"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 1
    assert "no key ring configured" in result.stdout + result.stderr
    assert TOKEN not in result.stdout + result.stderr


@pytest.mark.asyncio
async def test_auth_failure_logged_once_per_interval() -> None:
    async with _serve(KeyRing.generate()) as client:
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                response = await client.post(
                    "/decode", data="{}", headers={"Origin": UI_ORIGIN}
                )
                assert response.status == 401

    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["path"] == "/decode"
    assert warnings[0]["origin"] == UI_ORIGIN
    assert warnings[0]["bearer_sent"] is False
    assert warnings[0]["unlogged_rejections"] == 0
    assert TOKEN not in repr(logs)


@pytest.mark.asyncio
async def test_decrypt_failure_logged() -> None:
    body = _to_json(await _encrypted_payloads(KeyRing.generate()))

    async with _serve(KeyRing.generate()) as client:
        with structlog.testing.capture_logs() as logs:
            response = await client.post(
                "/decode", data=body, headers={**AUTH, "X-Namespace": "ns-1"}
            )

    assert response.status == 400
    assert logs[0]["event"] == "payload decryption failed"
    assert logs[0]["namespace"] == "ns-1"
    assert "not in the key ring" in logs[0]["error"]
