"""HTTP codec server that lets the Temporal Web UI and CLI show encrypted payloads.

It implements Temporal's remote codec protocol: ``POST /encode`` and
``POST /decode`` take ``{"payloads": [...]}`` in the protobuf JSON form of
``temporal.api.common.v1.Payloads`` and return the transformed payloads in the
same form. Every request needs ``Authorization: Bearer <token>``, and only the
configured Web UI origin gets CORS headers.
"""

from __future__ import annotations

import argparse
import hmac
import json
import math
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence

import structlog
from aiohttp import web
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from deployer import logs
from deployer.codec import (
    KEYS_ENV_VAR,
    EncryptionCodec,
    KeyRing,
    KeyRingError,
    PayloadDecryptionError,
    SecretFileError,
    load_key_ring,
    read_private_file,
)

TOKEN_ENV_VAR = "VENTROS_DEPLOY_CODEC_TOKEN"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081
DEFAULT_UI_ORIGIN = "http://127.0.0.1:8233"
MAX_BODY_BYTES = 4 * 1024 * 1024
# Shorter tokens are easy to guess, so load_token and build_app reject them.
MIN_TOKEN_LENGTH = 16

ALLOWED_METHODS = "POST, OPTIONS"
ALLOWED_HEADERS = "content-type,authorization,x-namespace"
PREFLIGHT_MAX_AGE_SECONDS = 600
AUTH_FAILURE_LOG_INTERVAL_SECONDS = 60.0

_ORIGIN_PATTERN = re.compile(r"https?://[^/\s]+")

log = structlog.get_logger(__name__)


class _AuthFailureLog:
    """Rate-limited warning for requests rejected with 401.

    A browser UI without the token fails on every page view, so the log gets at
    most one line per interval, with the count of rejections since the last one.
    """

    def __init__(
        self, interval_seconds: float = AUTH_FAILURE_LOG_INTERVAL_SECONDS
    ) -> None:
        self._interval_seconds = interval_seconds
        self._last_logged = -math.inf
        self._unlogged_rejections = 0

    def record(self, request: web.Request) -> None:
        now = time.monotonic()
        if now - self._last_logged < self._interval_seconds:
            self._unlogged_rejections += 1
            return
        log.warning(
            "request rejected: missing or invalid bearer token",
            path=request.path,
            origin=request.headers.get("Origin"),
            remote=request.remote,
            bearer_sent="Authorization" in request.headers,
            unlogged_rejections=self._unlogged_rejections,
        )
        self._last_logged = now
        self._unlogged_rejections = 0


_CODEC_KEY = web.AppKey("codec", EncryptionCodec)
_TOKEN_KEY = web.AppKey("token", bytes)
_UI_ORIGIN_KEY = web.AppKey("ui_origin", str)
_AUTH_FAILURE_LOG_KEY = web.AppKey("auth_failure_log", _AuthFailureLog)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TokenError(ValueError):
    """Missing or unusable bearer token configuration."""


def validate_token(token: str, source: str) -> str:
    """Return ``token`` without surrounding whitespace, or raise TokenError."""
    token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(
            f"{source}: token is {len(token)} characters, expected at least "
            f"{MIN_TOKEN_LENGTH}. Generate one with: python -c "
            "'import secrets; print(secrets.token_urlsafe(32))'"
        )
    # Visible ASCII only, so the token fits an HTTP header unchanged.
    if not all("!" <= char <= "~" for char in token):
        raise TokenError(
            f"{source}: token contains characters other than visible ASCII"
        )
    return token


def load_token(path: str | None, env: Mapping[str, str] = os.environ) -> str:
    """Load the bearer token from ``path`` or, when it is None, from the environment."""
    if path is not None:
        try:
            text = read_private_file(path)
        except SecretFileError as exc:
            raise TokenError(f"token file: {exc}") from None
        return validate_token(text, f"token file {path}")
    env_token = env.get(TOKEN_ENV_VAR)
    if env_token is None:
        raise TokenError(
            f"no token configured: pass --token-file or set {TOKEN_ENV_VAR}"
        )
    return validate_token(env_token, f"environment variable {TOKEN_ENV_VAR}")


def validate_origin(origin: str) -> str:
    """Return ``origin`` without a trailing slash, or raise ValueError.

    Browsers send the Origin header as scheme://host[:port], and CORS compares
    it as a whole string, so anything else could never match.
    """
    origin = origin.rstrip("/")
    if not _ORIGIN_PATTERN.fullmatch(origin):
        raise ValueError(
            f"invalid UI origin {origin!r}: expected scheme://host[:port] such "
            f"as {DEFAULT_UI_ORIGIN}"
        )
    return origin


def _add_cors_headers(request: web.Request, headers: MutableMapping[str, str]) -> None:
    headers["Vary"] = "Origin"
    if _is_allowed_origin(request):
        ui_origin = request.app[_UI_ORIGIN_KEY]
        headers["Access-Control-Allow-Origin"] = ui_origin
        headers["Access-Control-Allow-Credentials"] = "true"


def _is_allowed_origin(request: web.Request) -> bool:
    return request.headers.get("Origin") == request.app[_UI_ORIGIN_KEY]


@web.middleware
async def _cors_middleware(
    request: web.Request, handler: _Handler
) -> web.StreamResponse:
    """Add CORS headers for the UI origin to every response, errors included.

    Without them on a 401 or 400, the browser hides the status from the UI,
    which then reports a network error instead of the codec server's response.
    """
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _add_cors_headers(request, exc.headers)
        raise
    _add_cors_headers(request, response.headers)
    return response


@web.middleware
async def _auth_middleware(
    request: web.Request, handler: _Handler
) -> web.StreamResponse:
    # Browsers send CORS preflights without credentials, so they skip the check.
    if request.method == "OPTIONS":
        return await handler(request)
    if not _has_valid_token(request):
        request.app[_AUTH_FAILURE_LOG_KEY].record(request)
        # A missing and a wrong token get the same bare 401, so the response
        # reveals nothing about the expected token.
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


def _has_valid_token(request: web.Request) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # surrogateescape turns any header text back into the bytes that arrived, and
    # compare_digest takes the same time wherever the first mismatch is.
    presented_bytes = presented.strip().encode("utf-8", errors="surrogateescape")
    return hmac.compare_digest(presented_bytes, request.app[_TOKEN_KEY])


async def _handle_preflight(request: web.Request) -> web.Response:
    if not _is_allowed_origin(request):
        return web.Response(status=403, text="origin not allowed\n")
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_SECONDS),
        },
    )


async def _read_payloads(request: web.Request) -> Payloads:
    content_length = request.content_length
    if content_length is not None and content_length > MAX_BODY_BYTES:
        # Rejecting on the header avoids reading a body that is too large.
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_BODY_BYTES, actual_size=content_length
        )
    # read() raises the same 413 for chunked bodies over client_max_size.
    body = await request.read()
    payloads = Payloads()
    try:
        json_format.Parse(body, payloads)
    except json_format.ParseError as exc:
        raise _bad_request(f"request body is not valid Payloads JSON: {exc}") from None
    return payloads


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": message}), content_type="application/json"
    )


def _payloads_response(payloads: Payloads) -> web.Response:
    body = json_format.MessageToDict(payloads)
    # MessageToDict leaves out an empty list, so the key is added back for clients
    # that read body["payloads"] without a default.
    body.setdefault("payloads", [])
    return web.json_response(body)


async def _handle_encode(request: web.Request) -> web.Response:
    payloads = await _read_payloads(request)
    await request.app[_CODEC_KEY].encode_wrapper(payloads)
    return _payloads_response(payloads)


async def _handle_decode(request: web.Request) -> web.Response:
    payloads = await _read_payloads(request)
    try:
        await request.app[_CODEC_KEY].decode_wrapper(payloads)
    except PayloadDecryptionError as exc:
        log.warning(
            "payload decryption failed",
            error=str(exc),
            namespace=request.headers.get("X-Namespace"),
        )
        raise _bad_request(str(exc)) from None
    return _payloads_response(payloads)


def build_app(key_ring: KeyRing, token: str, ui_origin: str) -> web.Application:
    """Build the codec server application.

    ``token`` is the bearer token that every request except a CORS preflight
    must present. ``ui_origin`` is the one origin, such as
    ``http://127.0.0.1:8233``, that gets CORS headers.
    """
    app = web.Application(
        middlewares=[_cors_middleware, _auth_middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app[_CODEC_KEY] = EncryptionCodec(key_ring)
    app[_TOKEN_KEY] = validate_token(token, "token").encode("ascii")
    app[_UI_ORIGIN_KEY] = validate_origin(ui_origin)
    app[_AUTH_FAILURE_LOG_KEY] = _AuthFailureLog()
    for path, handler in (("/encode", _handle_encode), ("/decode", _handle_decode)):
        app.router.add_post(path, handler)
        app.router.add_route("OPTIONS", path, _handle_preflight)
    return app


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deployer.codec_server",
        description="Serve Temporal's remote codec protocol (POST /encode and "
        "POST /decode) so the Temporal Web UI and CLI can show payloads that the "
        "deployer encrypted. Every request needs 'Authorization: Bearer <token>'.",
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="IP address to listen on (default: %(default)s). Any other address "
        "serves decrypted payloads to the network over plain HTTP, guarded only "
        "by the token.",
    )
    parser.add_argument(
        "--port",
        type=_port_number,
        default=DEFAULT_PORT,
        help="TCP port to listen on (default: %(default)s)",
    )
    parser.add_argument(
        "--ui-origin",
        default=DEFAULT_UI_ORIGIN,
        help="origin of the Temporal Web UI, as scheme://host:port exactly as the "
        "browser shows it; only this origin gets CORS headers "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--keys-file",
        help="key ring JSON file with mode 0600 "
        f"(default: read the key ring from ${{{KEYS_ENV_VAR}}})",
    )
    parser.add_argument(
        "--token-file",
        help="file with mode 0600 that contains the bearer token, at least "
        f"{MIN_TOKEN_LENGTH} visible ASCII characters "
        f"(default: read the token from ${{{TOKEN_ENV_VAR}}})",
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        default="auto",
        help="log format on stderr; auto writes JSON unless stderr is a terminal "
        "(default: %(default)s)",
    )
    return parser


def _port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 0-65535")
    return port


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logs.configure(args.log_format)
    try:
        key_ring = load_key_ring(args.keys_file)
        token = load_token(args.token_file)
        app = build_app(key_ring, token, args.ui_origin)
    except (KeyRingError, TokenError, ValueError) as exc:
        # ValueError covers an invalid --ui-origin.
        log.error("codec server configuration is invalid", error=str(exc))
        return 1
    app.on_cleanup.append(_log_stop)
    log.info(
        "codec server starting",
        url=f"http://{args.host}:{args.port}",
        ui_origin=app[_UI_ORIGIN_KEY],
        # deployer.logs masks fields named like "key" or "token", so these
        # non-secret fields use other names to stay readable.
        ring_ids=list(key_ring.key_ids),
        encrypting_id=key_ring.current_key_id,
        ring_source=args.keys_file or f"${KEYS_ENV_VAR}",
        bearer_source=args.token_file or f"${TOKEN_ENV_VAR}",
    )
    try:
        # No access log: the Web UI polls, so one line per request would bury
        # the rate-limited 401 warnings.
        web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    except OSError as exc:
        # Typically the port is already in use or the address is not local.
        log.error("codec server failed to listen", error=str(exc))
        return 1
    return 0


async def _log_stop(app: web.Application) -> None:
    log.info("codec server stopped")


if __name__ == "__main__":
    sys.exit(main())
