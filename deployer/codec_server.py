"""HTTP codec server that lets the Temporal Web UI and CLI show encrypted payloads.

It implements Temporal's remote codec protocol: ``POST /encode`` and
``POST /decode`` take ``{"payloads": [...]}`` in the protobuf JSON form of
``temporal.api.common.v1.Payloads`` and return the transformed payloads in the
same form. A request is authorized by ``Authorization: Bearer <token>`` or
by a session cookie, and only the configured Web UI origin gets CORS headers.

The session cookie exists because the Temporal Web UI cannot send a static
bearer token, but it can send cookies ("Include cross-origin credentials" in
its codec settings). A person opens ``GET /login`` on this server once, pastes
the token, and gets an ``HttpOnly``, ``SameSite=Strict`` cookie that contains a
random session id, never the token. Sessions live in this process's memory, so
they end on ``POST /logout``, on expiry, or when the server restarts.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import html
import json
import math
import os
import re
import secrets
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

SESSION_COOKIE = "codec_session"
DEFAULT_SESSION_HOURS = 8.0
# Only holders of the token create sessions, so the cap only bounds memory if a
# script logs in in a loop. The session that expires first is dropped first.
MAX_SESSIONS = 1000
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
_LOGIN_PATHS = frozenset({LOGIN_PATH, LOGOUT_PATH})
# Nothing on the login pages loads from anywhere, forms post only back here, and
# no other page may frame them (clickjacking the token field).
LOGIN_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # "no-referrer" would make browsers send "Origin: null" on the form POST
    # (Fetch standard, origin serialization), which the CSRF check rejects.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_ORIGIN_PATTERN = re.compile(r"https?://[^/\s]+")

log = structlog.get_logger(__name__)


class _AuthFailureLog:
    """Rate-limited warning for rejected requests or logins.

    A browser UI without a session fails on every page view, so the log gets at
    most one line per interval, with the count of rejections since the last one.
    The line names which credentials were sent, never their values.
    """

    def __init__(
        self, event: str, interval_seconds: float = AUTH_FAILURE_LOG_INTERVAL_SECONDS
    ) -> None:
        self._event = event
        self._interval_seconds = interval_seconds
        self._last_logged = -math.inf
        self._unlogged_rejections = 0

    def record(self, request: web.Request, **fields: object) -> None:
        now = time.monotonic()
        if now - self._last_logged < self._interval_seconds:
            self._unlogged_rejections += 1
            return
        log.warning(
            self._event,
            path=request.path,
            origin=request.headers.get("Origin"),
            remote=request.remote,
            bearer_sent="Authorization" in request.headers,
            cookie_sent=SESSION_COOKIE in request.cookies,
            unlogged_rejections=self._unlogged_rejections,
            **fields,
        )
        self._last_logged = now
        self._unlogged_rejections = 0


class _SessionStore:
    """Login sessions in memory, keyed by the SHA-256 digest of the session id.

    Keying by the digest means the time a lookup takes does not depend on how
    much of a guessed id is right. Expiry uses the monotonic clock.
    """

    def __init__(self, lifetime_seconds: int, max_sessions: int = MAX_SESSIONS) -> None:
        self.lifetime_seconds = lifetime_seconds
        self._max_sessions = max_sessions
        self._expiry_by_digest: dict[bytes, float] = {}

    def create(self) -> str:
        """Start a session and return its id, 256 random bits in URL-safe base64."""
        self._drop_expired()
        if len(self._expiry_by_digest) >= self._max_sessions:
            oldest = min(self._expiry_by_digest, key=self._expiry_by_digest.__getitem__)
            del self._expiry_by_digest[oldest]
        session_id = secrets.token_urlsafe(32)
        expiry = time.monotonic() + self.lifetime_seconds
        self._expiry_by_digest[_digest(session_id)] = expiry
        return session_id

    def remaining_seconds(self, session_id: str) -> float | None:
        """Return the seconds left in the session, or None if it is unknown or over."""
        digest = _digest(session_id)
        expiry = self._expiry_by_digest.get(digest)
        if expiry is None:
            return None
        remaining = expiry - time.monotonic()
        if remaining <= 0:
            del self._expiry_by_digest[digest]
            return None
        return remaining

    def end(self, session_id: str) -> None:
        self._expiry_by_digest.pop(_digest(session_id), None)

    def _drop_expired(self) -> None:
        now = time.monotonic()
        expired = [d for d, expiry in self._expiry_by_digest.items() if expiry <= now]
        for digest in expired:
            del self._expiry_by_digest[digest]


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8", errors="surrogateescape")).digest()


_CODEC_KEY = web.AppKey("codec", EncryptionCodec)
_TOKEN_KEY = web.AppKey("token", bytes)
_UI_ORIGIN_KEY = web.AppKey("ui_origin", str)
_AUTH_FAILURE_LOG_KEY = web.AppKey("auth_failure_log", _AuthFailureLog)
_LOGIN_FAILURE_LOG_KEY = web.AppKey("login_failure_log", _AuthFailureLog)
_SESSIONS_KEY = web.AppKey("sessions", _SessionStore)

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
    # The login pages are for the codec server's own origin only.
    if request.path in _LOGIN_PATHS:
        return
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
    # The login pages check the token or the session themselves.
    if request.method == "OPTIONS" or request.path in _LOGIN_PATHS:
        return await handler(request)
    if not (_has_valid_token(request) or _has_valid_ui_session(request)):
        request.app[_AUTH_FAILURE_LOG_KEY].record(request)
        # A missing and a wrong credential get the same bare 401, so the
        # response reveals nothing about the expected token or sessions.
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


def _has_valid_token(request: web.Request) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return _token_matches(request, presented)


def _token_matches(request: web.Request, presented: str) -> bool:
    # surrogateescape turns any header text back into the bytes that arrived, and
    # compare_digest takes the same time wherever the first mismatch is.
    presented_bytes = presented.strip().encode("utf-8", errors="surrogateescape")
    return hmac.compare_digest(presented_bytes, request.app[_TOKEN_KEY])


def _has_valid_ui_session(request: web.Request) -> bool:
    """Return whether the request carries a live session cookie and comes from the UI.

    Codec requests with a cookie are accepted only from the UI origin, so another
    site on the same host (SameSite does not count ports) cannot use the session
    even for requests whose response it would not be allowed to read.
    """
    if not _is_allowed_origin(request):
        return False
    return _session_remaining_seconds(request) is not None


def _session_remaining_seconds(request: web.Request) -> float | None:
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id is None:
        return None
    return request.app[_SESSIONS_KEY].remaining_seconds(session_id)


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


_LOGIN_FORM = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Codec server login</title></head>
<body>
<h1>Codec server login</h1>
{message}
<form method="post" action="/login">
<p><label>Bearer token
<input type="password" name="token" autocomplete="off" required autofocus>
</label></p>
<p><button type="submit">Log in</button></p>
</form>
<p>Logging in sets a session cookie for this host. Then, in the Temporal Web UI's
codec settings, enable "Include cross-origin credentials" so that the UI sends it.
</p>
</body>
</html>
"""

_SIGNED_IN_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Codec server login</title></head>
<body>
<h1>Logged in to the codec server</h1>
<p>The session ends in {minutes} minutes, on logout, or when the codec server
restarts. The Temporal Web UI at {ui_origin} can decode payloads while it
lasts, if "Include cross-origin credentials" is enabled in its codec settings.</p>
<form method="post" action="/logout"><button type="submit">Log out</button></form>
</body>
</html>
"""


def _html_page(body: str, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=body,
        content_type="text/html",
        charset="utf-8",
        headers=LOGIN_PAGE_HEADERS,
    )


def _login_form(message: str = "") -> str:
    paragraph = f"<p><strong>{html.escape(message)}</strong></p>" if message else ""
    return _LOGIN_FORM.format(message=paragraph)


def _is_same_origin_post(request: web.Request) -> bool:
    """Return whether a login or logout POST comes from a page of this server.

    Current browsers send ``Origin`` on form POSTs (Chromium 156 was checked), so
    a missing or ``null`` Origin is rejected too. Clients without a browser need
    no session because they send the bearer token on each request.
    """
    own_origin = f"{request.scheme}://{request.host}"
    return request.headers.get("Origin") == own_origin


def _reject_cross_origin(request: web.Request) -> web.Response:
    request.app[_LOGIN_FAILURE_LOG_KEY].record(request, reason="cross-origin POST")
    return web.Response(
        status=403,
        text="rejected: this form only accepts posts from its own page\n",
        headers=LOGIN_PAGE_HEADERS,
    )


async def _handle_login_page(request: web.Request) -> web.Response:
    remaining = _session_remaining_seconds(request)
    if remaining is None:
        return _html_page(_login_form())
    page = _SIGNED_IN_PAGE.format(
        minutes=math.ceil(remaining / 60),
        ui_origin=html.escape(request.app[_UI_ORIGIN_KEY]),
    )
    return _html_page(page)


async def _handle_login(request: web.Request) -> web.Response:
    if not _is_same_origin_post(request):
        return _reject_cross_origin(request)

    form = await request.post()
    presented = form.get("token")
    if not isinstance(presented, str) or not _token_matches(request, presented):
        request.app[_LOGIN_FAILURE_LOG_KEY].record(request, reason="invalid token")
        return _html_page(_login_form("Invalid token. Try again."), status=401)

    sessions = request.app[_SESSIONS_KEY]
    session_id = sessions.create()
    # 303 turns the POST into a GET of the status page, so reloading it does not
    # post the token again.
    response = web.Response(
        status=303, headers={**LOGIN_PAGE_HEADERS, "Location": LOGIN_PATH}
    )
    # NOTE: cookies ignore the port, so the browser sends this one to every
    # server on the same host, which could replay it with a forged Origin.
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=sessions.lifetime_seconds,
        path="/",
        httponly=True,
        samesite="Strict",
        # Without https, a Secure cookie would never be sent back.
        secure=request.secure,
    )
    log.info(
        "codec login succeeded",
        remote=request.remote,
        session_seconds=sessions.lifetime_seconds,
    )
    return response


async def _handle_logout(request: web.Request) -> web.Response:
    if not _is_same_origin_post(request):
        return _reject_cross_origin(request)
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id is not None:
        request.app[_SESSIONS_KEY].end(session_id)
        log.info("codec logout", remote=request.remote)
    response = web.Response(
        status=303, headers={**LOGIN_PAGE_HEADERS, "Location": LOGIN_PATH}
    )
    response.del_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict")
    return response


def build_app(
    key_ring: KeyRing,
    token: str,
    ui_origin: str,
    session_seconds: int = int(DEFAULT_SESSION_HOURS * 3600),
) -> web.Application:
    """Build the codec server application.

    ``token`` is the bearer token that a codec request must present, unless it
    comes from ``ui_origin`` with a session cookie from ``POST /login``.
    ``ui_origin`` is the one origin, such as ``http://127.0.0.1:8233``, that
    gets CORS headers. A session lasts ``session_seconds``.
    """
    if session_seconds < 1:
        raise ValueError(f"session lifetime is {session_seconds} s, expected >= 1")
    app = web.Application(
        middlewares=[_cors_middleware, _auth_middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app[_CODEC_KEY] = EncryptionCodec(key_ring)
    app[_TOKEN_KEY] = validate_token(token, "token").encode("ascii")
    app[_UI_ORIGIN_KEY] = validate_origin(ui_origin)
    app[_AUTH_FAILURE_LOG_KEY] = _AuthFailureLog(
        "request rejected: no valid bearer token or session cookie"
    )
    app[_LOGIN_FAILURE_LOG_KEY] = _AuthFailureLog("login rejected")
    app[_SESSIONS_KEY] = _SessionStore(session_seconds)
    for path, handler in (("/encode", _handle_encode), ("/decode", _handle_decode)):
        app.router.add_post(path, handler)
        app.router.add_route("OPTIONS", path, _handle_preflight)
    app.router.add_get(LOGIN_PATH, _handle_login_page)
    app.router.add_post(LOGIN_PATH, _handle_login)
    app.router.add_post(LOGOUT_PATH, _handle_logout)
    return app


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deployer.codec_server",
        description="Serve Temporal's remote codec protocol (POST /encode and "
        "POST /decode) so the Temporal Web UI and CLI can show payloads that the "
        "deployer encrypted. A request needs 'Authorization: Bearer <token>' or a "
        "session cookie from the login page at GET /login.",
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
        "--session-hours",
        type=_positive_hours,
        default=DEFAULT_SESSION_HOURS,
        help="lifetime of a login session from GET /login, in hours "
        "(default: %(default)s)",
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


def _positive_hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of hours {text!r}") from None
    # One second is the shortest Max-Age that a cookie can have.
    if not hours * 3600 >= 1:
        raise argparse.ArgumentTypeError(f"{text} hours is shorter than 1 second")
    return hours


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logs.configure(args.log_format)
    try:
        key_ring = load_key_ring(args.keys_file)
        token = load_token(args.token_file)
        session_seconds = int(args.session_hours * 3600)
        app = build_app(key_ring, token, args.ui_origin, session_seconds)
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
        login_url=f"http://{args.host}:{args.port}{LOGIN_PATH}",
        session_seconds=session_seconds,
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
