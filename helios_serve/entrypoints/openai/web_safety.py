"""Guards for a server that web browsers can reach, whether or not it has an API key.

Without a key (the default), any web page a user opens could otherwise drive a local server:
a form or ``fetch`` with a "simple" content type crosses origins without a CORS preflight, and
a page can rebind its own DNS name to 127.0.0.1 to become same-origin with it. So, before any
route runs (``WebSafety``, an ASGI middleware):

- the Host header must name the server (``HostPolicy``): its --host, loopback names when it
  listens there, --allowed-hosts; else 400, which defeats DNS rebinding;
- a request that changes something (POST, DELETE, ...) and the WebSocket must come from the
  server's own pages or an --allowed-origins origin when a browser sent them (it says so in the
  Origin header; other clients send none); else 403;
- a body is JSON or multipart; else 415 (a page's text/plain or form-urlencoded POST).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from ...config import ServerConfig
from .body import media_type
from .errors import ApiError, error_body

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BODY_METHODS = frozenset({"POST"})
"""The methods of the routes that read a body (other methods are refused by the router, 405)."""
BODY_TYPES = frozenset({"application/json", "multipart/form-data"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
POLICY_VIOLATION = 1008
"""The WebSocket close code of a refused handshake (uvicorn answers it with HTTP 403)."""


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def split_host(host: str, default_port: int) -> tuple[str, int | None]:
    """``Example.com:8000`` -> ("example.com", 8000); ``[::1]`` -> ("::1", default_port). A port
    that is not a number gives None, which matches nothing."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal: [addr] or [addr]:port
        name, _, rest = host[1:].partition("]")
        port_text = rest.removeprefix(":") if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, _, port_text = host.partition(":")
    else:
        name, port_text = host, ""
    if not port_text:
        return name.rstrip("."), default_port
    return name.rstrip("."), int(port_text) if port_text.isdigit() else None


@dataclass(frozen=True)
class HostPolicy:
    """The names a request's Host header may give for this server."""

    names: frozenset[str]
    any_ip: bool
    """Bound to every address (0.0.0.0): each of the machine's IP addresses is one of its names.
    An IP address in the Host header is never a DNS-rebinding attack (the page's origin is
    that address itself), so accepting them costs nothing."""
    any_name: bool = False

    @classmethod
    def for_server(cls, server: ServerConfig, behind_ingress: bool) -> HostPolicy:
        """``behind_ingress``: an engine replica of a Ray deployment, which the ingress calls by
        the replica's own IP address (its config is the ingress's, with the ingress's --host)."""
        bound = server.host.strip().strip("[]").lower()
        names = {bound, *server.allowed_host_list}
        wildcard = bound in WILDCARD_ADDRESSES
        if wildcard or bound == "localhost" or (_is_ip(bound) and ipaddress.ip_address(bound).is_loopback):
            names |= LOOPBACK_NAMES
        return cls(frozenset(names - {"*"}), wildcard or behind_ingress, "*" in names)

    def allows(self, name: str) -> bool:
        return self.any_name or name in self.names or (self.any_ip and _is_ip(name))


@dataclass(frozen=True)
class OriginPolicy:
    """Which web pages may send requests that change something, and open the WebSocket."""

    origins: frozenset[str]
    hosts: HostPolicy
    public_port: int | None
    """Set on a Ray replica: the ingress's port. The ingress replaces the Host header with the
    replica's address, so a page of the server is recognised by naming the public endpoint
    (an allowed name, this port) instead of by matching the Host header."""

    @classmethod
    def for_server(cls, server: ServerConfig, hosts: HostPolicy, behind_ingress: bool) -> OriginPolicy:
        return cls(frozenset(server.allowed_origin_list), hosts, server.port if behind_ingress else None)

    def allows(self, origin: str, host_header: str, scheme: str) -> bool:
        origin = origin.strip().lower()
        if "*" in self.origins or origin in self.origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in DEFAULT_PORTS or not parts.netloc:
            return False  # "null" (a sandboxed frame, a file), or not an origin at all
        page = split_host(parts.netloc, DEFAULT_PORTS[parts.scheme])
        if self.public_port is not None:
            return page[1] == self.public_port and self.hosts.allows(page[0])
        return page == split_host(host_header, DEFAULT_PORTS.get(scheme, 80))


class WebSafety:
    """ASGI middleware: the Host, Origin and Content-Type checks of the module docstring."""

    def __init__(self, app, hosts: HostPolicy, origins: OriginPolicy):
        self.app, self.hosts, self.origins = app, hosts, origins

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        problem = self.problem(scope, Headers(scope=scope))
        if problem is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":  # refused before the handshake completes
            return await send({"type": "websocket.close", "code": POLICY_VIOLATION, "reason": problem.code})
        response = JSONResponse(error_body(problem.status, problem.code, problem.message), problem.status)
        await response(scope, receive, send)

    def problem(self, scope, headers: Headers) -> ApiError | None:
        host = headers.get("host", "")
        name, _ = split_host(host, 0)
        if not self.hosts.allows(name):
            return ApiError(400, "invalid_host", f"this server does not answer to the host name {name[:80]!r} "
                                                 "(the server's --allowed-hosts lists more names)")
        method = scope.get("method", "GET")  # a WebSocket handshake has none
        origin = headers.get("origin")
        if origin is not None and (scope["type"] == "websocket" or method not in SAFE_METHODS) \
                and not self.origins.allows(origin, host, scope.get("scheme", "http")):
            return ApiError(403, "origin_not_allowed", f"pages from {origin[:80]!r} may not call this server "
                                                       "(the server's --allowed-origins lists those that may)")
        if method in BODY_METHODS and media_type(headers.get("content-type", "")) not in BODY_TYPES:
            return ApiError(415, "unsupported_media_type",
                            "the body must be application/json or multipart/form-data")
        return None
