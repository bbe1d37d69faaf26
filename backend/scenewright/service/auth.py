"""Who may talk to the service: local clients that know the token.

A web page in the user's browser can reach 127.0.0.1 too (DNS rebinding, or a
plain cross-origin form post), so besides the bearer token every request must
name this very server in its Host header, and requests that carry an Origin
header must be one of the service's own origins (the Blender add-on sends
no Origin at all).
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
# Headers the access check reads: a request carrying one twice is refused (which copy would count is ambiguous).
SINGLE_HEADERS = ("host", "origin", "authorization")


@dataclass
class AccessPolicy:
    """Token and the names this server answers to; `port` is filled in once the socket is bound."""

    token: str
    bound_host: str = "127.0.0.1"
    port: int = 0
    # More Host values to accept ("name" or "name:port"), e.g. the machine's name when serving a remote
    # client, or the local end of an SSH tunnel on another port.
    extra_hosts: tuple[str, ...] = ()

    def allowed_hosts(self) -> set[str]:
        bound = f"[{self.bound_host}]" if ":" in self.bound_host else self.bound_host
        names = {*LOOPBACK_NAMES, bound, *(h for h in self.extra_hosts if not _has_port(h))}
        return {f"{name}:{self.port}".lower() for name in names} | {h.lower() for h in self.extra_hosts if _has_port(h)}

    def allowed_origins(self) -> set[str]:
        return {f"http://{host}" for host in self.allowed_hosts()}

    def check(self, headers: dict[str, str]) -> tuple[int, str] | None:
        """None when the request may pass, else (HTTP status, message saying why not)."""
        host = headers.get("host", "").lower()
        if host not in self.allowed_hosts():
            return 403, (
                f"refused: Host header {host!r} does not name this service; "
                f"use http://127.0.0.1:{self.port} (allowed: {sorted(self.allowed_hosts())}; add names with --allow-host)"
            )
        origin = headers.get("origin")
        if origin is not None and origin.lower() not in self.allowed_origins():
            return 403, f"refused: requests from origin {origin!r} are not allowed (browser pages may not use this service)"
        auth = headers.get("authorization", "")
        scheme, _, supplied = auth.partition(" ")
        if scheme.lower() != "bearer" or not supplied:
            return 401, (
                "missing access token: send 'Authorization: Bearer <token>'; the token is in "
                "service.json in the service's data dir, or set with --token"
            )
        if not hmac.compare_digest(supplied.strip().encode("utf-8"), self.token.encode("utf-8")):
            return 401, "wrong access token: read the current one from service.json in the service's data dir"
        return None


def _has_port(host: str) -> bool:
    return host.rsplit("]", 1)[-1].count(":") == 1


class AccessMiddleware:
    """ASGI middleware applying AccessPolicy to every HTTP request, before routing."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            names = [k.decode("latin-1").lower() for k, _ in scope["headers"]]
            repeated = sorted({n for n in names if n in SINGLE_HEADERS and names.count(n) > 1})
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            refusal = (400, f"refused: the request repeats the {', '.join(repeated)} header(s); send each once") \
                if repeated else self.policy.check(headers)
            if refusal is not None:
                status, message = refusal
                extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
                await send_json(send, status, {"detail": message}, extra)
                return
        await self.app(scope, receive, send)


async def send_json(send: Send, status: int, body: dict, extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer directly from middleware, in the same {"detail": ...} shape as the app's errors."""
    data = json.dumps(body).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *(extra_headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
