"""Who may use the server: an optional bearer key, and cross-origin requests only from allowed origins.

An ASGI middleware in front of the app. A request carrying an `Origin` that is neither the
server's own nor one of `cors_origins` is refused with 403 before anything reads its body (a
web page elsewhere cannot make a visitor's browser use the server); allowed origins get the CORS
headers and their preflight answered. With an API key, every endpoint but the page, liveness and
readiness needs `Authorization: Bearer <key>` (401 otherwise); keys are compared in constant time.
With `allowed_hosts`, a request whose `Host` header names another host is refused with 421 first:
a page on `evil.example` whose name a DNS rebinding points at 127.0.0.1 sends `Host: evil.example`
(and its own, "same" origin), so the origin check alone would let it read the API.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from runner.serve.upload import drain, error_body

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

OPEN_PATHS = ("/", "/health", "/ready")  # the page asks for the key itself; probes carry none
API_KEY_VARIABLE = "ST_RUNNER_API_KEY"


class Security:
    """The middleware.

    Args:
        app: the ASGI app it guards.
        api_key: the bearer key every guarded request must carry (None: no key needed).
        cors_origins: origins (scheme://host[:port]) allowed to call the API from a browser; "*" allows any.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], api_key: str | None = None,
                 cors_origins: Sequence[str] = (), allowed_hosts: Sequence[str] | None = None) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.cors_origins = {origin.rstrip("/") for origin in cors_origins}
        self.allowed_hosts = None if allowed_hosts is None else {h.lower().strip("[]") for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        origin = headers.get("origin")
        cross = origin is not None and not self._same_origin(origin, scope, headers)
        extra = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")] \
            if cross and scope["type"] == "http" else []
        preflight = bool(extra) and scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        refusal = self._refusal(scope, headers, cross, preflight)
        if refusal is None and preflight:
            await send({"type": "http.response.start", "status": 204, "headers": extra + [
                (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                (b"access-control-allow-headers", b"Authorization, Content-Type"),
                (b"access-control-max-age", b"600")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if refusal is not None:
            status, message = refusal
            more = [(b"www-authenticate", b'Bearer realm="st-runner"')] if status == 401 else []
            if scope["type"] == "websocket":
                await deny_websocket(scope, receive, send, status, message, more)
                return
            await drain(receive)  # so a client still uploading reads the answer rather than a reset
            await _json(send, status, message, (extra if status == 401 else []) + more, scope["path"])
            return
        if not extra:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _refusal(self, scope: Scope, headers: dict[str, str], cross: bool, preflight: bool) -> tuple[int, str] | None:
        """Why a request (or a WebSocket upgrade) is refused, as (status, reason); None when it may go on.
        A CORS preflight carries no key: an allowed origin's is answered without one."""
        if self.allowed_hosts is not None and host_name(headers.get("host", "")) not in self.allowed_hosts:
            return 421, (f"Host '{headers.get('host', '')[:100]}' is not this server's; start it with "
                         f"--allowed-host NAME to accept that name")
        origin = headers.get("origin", "")
        if cross and "*" not in self.cors_origins and origin.rstrip("/") not in self.cors_origins:
            return 403, f"cross-origin request from {origin[:100]} refused; start the server with --cors-origin {origin[:100]} to allow it"
        if self.api_key is not None and not preflight and scope["path"] not in OPEN_PATHS \
                and not self._authorized(headers, scope):
            return 401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
        return None

    def _authorized(self, headers: dict[str, str], scope: Scope) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key):
            return True
        # A browser's WebSocket cannot set headers: it offers the key as a subprotocol, as OpenAI's API takes it.
        offered = scope["type"] == "websocket" and key_from_subprotocols(scope.get("subprotocols", ()))
        return bool(offered) and hmac.compare_digest(offered.encode(), self.api_key)

    @staticmethod
    def _same_origin(origin: str, scope: Scope, headers: dict[str, str]) -> bool:
        host = headers.get("host")
        scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope.get("scheme", "http"))
        return host is not None and origin.rstrip("/") == f"{scheme}://{host}"


def host_name(host: str) -> str:
    """The name in a Host header, without its port and IPv6 brackets, lower-cased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


def allowed_hosts(bind: str, names: Sequence[str], cors_origins: Sequence[str]) -> list[str] | None:
    """The Host names a server bound to `bind` answers: the address, loopback names when it is loopback,
    `names` (--allowed-host) and the CORS allow-list's hosts. None (any) for a wildcard bind without names."""
    if bind in WILDCARDS and not names:
        return None
    hosts = [*names, *(host_name(o.split("://", 1)[-1].split("/", 1)[0]) for o in cors_origins if o != "*")]
    if bind not in WILDCARDS:
        hosts.append(bind)
    if bind in WILDCARDS or bind.startswith("127.") or bind in LOOPBACK_NAMES:
        hosts += LOOPBACK_NAMES
    return hosts


KEY_SUBPROTOCOL = "openai-insecure-api-key."


def key_from_subprotocols(subprotocols: Sequence[str]) -> str | None:
    """The API key a browser offered as the WebSocket subprotocol `openai-insecure-api-key.<key>`, if any."""
    return next((p[len(KEY_SUBPROTOCOL):] for p in subprotocols if p.startswith(KEY_SUBPROTOCOL)), None)


async def deny_websocket(scope: Scope, receive: Receive, send: Send, status: int, message: str,
                         headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Refuse a WebSocket upgrade with an HTTP status and the JSON error body (1008 close where the server
    cannot send a response to an upgrade)."""
    await receive()  # websocket.connect
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    body = json.dumps(error_body(scope["path"], status, message)).encode()
    await send({"type": "websocket.http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "websocket.http.response.body", "body": body})


async def _json(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] = (),
                path: str = "") -> None:
    body = json.dumps(error_body(path, status, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
