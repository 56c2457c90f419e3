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
    SESSION_COOKIE,
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
async def _serve(
    key_ring: KeyRing, session_seconds: int = 3600
) -> AsyncIterator[TestClient[Any, Any]]:
    # TestServer listens on an ephemeral port on 127.0.0.1.
    app = build_app(key_ring, TOKEN, UI_ORIGIN, session_seconds)
    # DummyCookieJar stores nothing, so a test sends exactly the cookies it names.
    server = TestServer(app, host="127.0.0.1")
    async with TestClient(server, cookie_jar=aiohttp.DummyCookieJar()) as client:
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


def _own_origin(client: TestClient[Any, Any]) -> str:
    return f"http://127.0.0.1:{client.port}"


async def _login(
    client: TestClient[Any, Any], token: str = TOKEN
) -> aiohttp.ClientResponse:
    # Redirects stay unfollowed so the test reads the Set-Cookie of the POST itself.
    return await client.post(
        "/login",
        data={"token": token},
        headers={"Origin": _own_origin(client)},
        allow_redirects=False,
    )


def _session_id(response: aiohttp.ClientResponse) -> str:
    return response.cookies[SESSION_COOKIE].value


async def _decode_with_cookie(
    client: TestClient[Any, Any], session_id: str, body: str, origin: str = UI_ORIGIN
) -> aiohttp.ClientResponse:
    # The header is set by hand, so the client's cookie jar plays no part.
    return await client.post(
        "/decode",
        data=body,
        headers={"Origin": origin, "Cookie": f"{SESSION_COOKIE}={session_id}"},
    )


@pytest.mark.asyncio
async def test_login_form_headers() -> None:
    """GET /login serves a form that no page may frame and that loads nothing."""
    async with _serve(KeyRing.generate()) as client:
        response = await client.get("/login")
        text = await response.text()

    csp = response.headers["Content-Security-Policy"]
    assert response.status == 200
    assert response.content_type == "text/html"
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "form-action 'self'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    # "no-referrer" would make browsers post the form with "Origin: null".
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert 'name="token"' in text
    assert 'type="password"' in text
    assert "Set-Cookie" not in response.headers


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "token",
    ["wrong-token-0123456789abcdef", TOKEN[:-1], TOKEN + "x", ""],
    ids=["wrong", "prefix", "longer", "empty"],
)
async def test_login_wrong_token_401(token: str) -> None:
    """A wrong token gets a 401 page, no cookie, and a log line without the token."""
    async with _serve(KeyRing.generate()) as client:
        with structlog.testing.capture_logs() as logs:
            response = await _login(client, token)
            text = await response.text()

    assert response.status == 401
    assert "Set-Cookie" not in response.headers
    assert "Invalid token" in text
    assert response.headers["X-Frame-Options"] == "DENY"
    assert logs[0]["event"] == "login rejected"
    assert logs[0]["reason"] == "invalid token"
    assert TOKEN not in repr(logs)


@pytest.mark.asyncio
async def test_login_missing_field_401() -> None:
    """A login POST without the token field is rejected like a wrong token."""
    async with _serve(KeyRing.generate()) as client:
        response = await client.post(
            "/login",
            data={"other": TOKEN},
            headers={"Origin": _own_origin(client)},
            allow_redirects=False,
        )

    assert response.status == 401
    assert "Set-Cookie" not in response.headers


@pytest.mark.asyncio
async def test_login_failures_logged_once_per_interval() -> None:
    """Repeated failed logins produce one warning per interval with a count."""
    async with _serve(KeyRing.generate()) as client:
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                response = await _login(client, "wrong-token-0123456789abcdef")
                assert response.status == 401

    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1


@pytest.mark.asyncio
async def test_login_sets_session_cookie() -> None:
    """The right token sets an HttpOnly, SameSite=Strict cookie without the token."""
    async with _serve(KeyRing.generate(), session_seconds=7200) as client:
        with structlog.testing.capture_logs() as logs:
            response = await _login(client)

    cookie = response.cookies[SESSION_COOKIE]
    assert response.status == 303
    assert response.headers["Location"] == "/login"
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/"
    assert cookie["max-age"] == "7200"
    # Plain HTTP: a Secure cookie would never come back.
    assert not cookie["secure"]
    assert TOKEN not in cookie.value
    assert len(cookie.value) >= 43
    assert logs[0]["event"] == "codec login succeeded"
    assert cookie.value not in repr(logs)


@pytest.mark.asyncio
async def test_login_ids_differ() -> None:
    """Each login gets its own random session id."""
    async with _serve(KeyRing.generate()) as client:
        first = _session_id(await _login(client))
        second = _session_id(await _login(client))

    assert first != second


@pytest.mark.asyncio
async def test_login_page_shows_session() -> None:
    """GET /login with a live session shows the status page with a logout form."""
    async with _serve(KeyRing.generate()) as client:
        session_id = _session_id(await _login(client))
        response = await client.get(
            "/login", headers={"Cookie": f"{SESSION_COOKIE}={session_id}"}
        )
        text = await response.text()

    assert response.status == 200
    assert "Logged in" in text
    assert 'action="/logout"' in text
    assert UI_ORIGIN in text


@pytest.mark.asyncio
async def test_decode_with_session_cookie() -> None:
    """The UI origin decodes with the session cookie alone and gets CORS headers."""
    key_ring = KeyRing.generate()
    body = _to_json(await _encrypted_payloads(key_ring))

    async with _serve(key_ring) as client:
        session_id = _session_id(await _login(client))
        response = await _decode_with_cookie(client, session_id, body)
        text = await response.text()

    assert response.status == 200
    assert _from_json(text) == _plain_payloads()
    assert response.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
    assert response.headers["Access-Control-Allow-Credentials"] == "true"


@pytest.mark.asyncio
async def test_encode_with_session_cookie() -> None:
    """POST /encode accepts the session cookie from the UI origin too."""
    async with _serve(KeyRing.generate()) as client:
        session_id = _session_id(await _login(client))
        response = await client.post(
            "/encode",
            data=_to_json(_plain_payloads()),
            headers={"Origin": UI_ORIGIN, "Cookie": f"{SESSION_COOKIE}={session_id}"},
        )

    assert response.status == 200


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "origin",
    [OTHER_ORIGIN, "null", None],
    ids=["same-site-other-port", "null", "no-origin"],
)
async def test_session_cookie_other_origin_401(origin: str | None) -> None:
    """A session cookie counts only on requests from the UI origin.

    SameSite ignores ports, so another server on 127.0.0.1 gets the cookie sent
    along by the browser, and the origin check is what keeps it out.
    """
    async with _serve(KeyRing.generate()) as client:
        session_id = _session_id(await _login(client))
        headers = {"Cookie": f"{SESSION_COOKIE}={session_id}"}
        if origin is not None:
            headers["Origin"] = origin
        response = await client.post("/decode", data="{}", headers=headers)

    assert response.status == 401


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "session_id",
    ["forged-session-id-0123456789abcdefghijklmnop", TOKEN, ""],
    ids=["forged", "token-as-cookie", "empty"],
)
async def test_decode_forged_cookie_401(session_id: str) -> None:
    """A cookie value that the server never issued is rejected."""
    async with _serve(KeyRing.generate()) as client:
        await _login(client)
        response = await _decode_with_cookie(client, session_id, "{}")

    assert response.status == 401
    assert response.headers["Access-Control-Allow-Origin"] == UI_ORIGIN


@pytest.mark.asyncio
async def test_decode_expired_cookie_401() -> None:
    """A session stops working once its lifetime has passed."""
    async with _serve(KeyRing.generate(), session_seconds=1) as client:
        session_id = _session_id(await _login(client))
        before = await _decode_with_cookie(client, session_id, "{}")
        await asyncio.sleep(1.2)
        after = await _decode_with_cookie(client, session_id, "{}")

    assert before.status == 200
    assert after.status == 401


@pytest.mark.asyncio
async def test_session_lost_on_restart() -> None:
    """Sessions live in one server's memory, so another instance rejects them."""
    key_ring = KeyRing.generate()
    async with _serve(key_ring) as client:
        session_id = _session_id(await _login(client))

    async with _serve(key_ring) as restarted:
        response = await _decode_with_cookie(restarted, session_id, "{}")

    assert response.status == 401


@pytest.mark.asyncio
async def test_logout_ends_session() -> None:
    """POST /logout ends the session on the server and clears the cookie."""
    async with _serve(KeyRing.generate()) as client:
        session_id = _session_id(await _login(client))
        logout = await client.post(
            "/logout",
            headers={
                "Origin": _own_origin(client),
                "Cookie": f"{SESSION_COOKIE}={session_id}",
            },
            allow_redirects=False,
        )
        after = await _decode_with_cookie(client, session_id, "{}")

    cleared = logout.cookies[SESSION_COOKIE]
    assert logout.status == 303
    assert cleared.value == ""
    assert cleared["max-age"] == "0"
    assert after.status == 401


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "origin",
    [UI_ORIGIN, "http://evil.example", "null", None],
    ids=["ui-origin", "foreign", "null", "no-origin"],
)
@pytest.mark.parametrize("path", ["/login", "/logout"])
async def test_login_post_cross_origin_403(path: str, origin: str | None) -> None:
    """POST /login and /logout accept only the server's own origin (CSRF check)."""
    async with _serve(KeyRing.generate()) as client:
        headers = {} if origin is None else {"Origin": origin}
        with structlog.testing.capture_logs() as logs:
            response = await client.post(
                path, data={"token": TOKEN}, headers=headers, allow_redirects=False
            )

    assert response.status == 403
    assert "Set-Cookie" not in response.headers
    assert "Access-Control-Allow-Origin" not in response.headers
    assert logs[0]["reason"] == "cross-origin POST"


@pytest.mark.asyncio
async def test_logout_cross_origin_keeps_session() -> None:
    """A rejected cross-origin logout leaves the session working."""
    async with _serve(KeyRing.generate()) as client:
        session_id = _session_id(await _login(client))
        await client.post(
            "/logout",
            headers={
                "Origin": "http://evil.example",
                "Cookie": f"{SESSION_COOKIE}={session_id}",
            },
        )
        response = await _decode_with_cookie(client, session_id, "{}")

    assert response.status == 200


def test_build_app_rejects_zero_session() -> None:
    with pytest.raises(ValueError, match="session lifetime is 0 s"):
        build_app(KeyRing.generate(), TOKEN, UI_ORIGIN, session_seconds=0)
