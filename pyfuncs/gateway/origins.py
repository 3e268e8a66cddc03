"""Which other origins' pages may use the gateway (PYFUNCS_GATEWAY_ALLOWED_ORIGINS).

Tokens reach the gateway in a header, a first message or a query string, never in a cookie,
so a page on another origin gains nothing by using a visitor's browser against it: the
origin check is about which sites may embed the client, not an authentication. Hence:

* CORS (Starlette's CORSMiddleware) answers for the browser client (`/realtime.js`, which a
  page on another origin imports as a module) and the SSE endpoint (an EventSource from
  another origin), and their preflights (`OPTIONS`), for the allowed origins only. Nothing
  else gets CORS headers: /metrics and /health are for operators, /demo is the gateway's own.
* A WebSocket from a browser carries an `Origin` (other clients send none, and are not
  asked for one). With no origins configured any is accepted, as before; with some, a
  browser's WebSocket must come from one of them or from the gateway's own host, else the
  handshake is refused (HTTP 403), as is CORS for the same page.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

CORS_PATHS = frozenset({"/realtime.js", "/realtime/sse"})


class Origins:
    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.allowed = allowed
        self.any = allowed == ("*",)

    def websocket_allowed(
        self, origin: str, headers: Mapping[str, str], scheme: str = "http"
    ) -> bool:
        if self.any or not self.allowed or origin.lower() in self.allowed:
            return True
        # the gateway's own pages: the same scheme (http for ws, https for wss), host and
        # port. The host is the request's `Host`, which a DNS-rebinding page controls: with
        # origins configured only pages it names or the gateway's own may connect, but the
        # own-host rule cannot tell a rebinding page from the gateway's (tokens still rule)
        host = headers.get("host", "").lower()
        parts = urllib.parse.urlsplit(origin.lower())
        return bool(host) and parts.scheme == scheme and parts.netloc == host


class ClientCors:
    """ASGI middleware: CORS for the allowed origins on CORS_PATHS, nothing elsewhere."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app, allow_origins=list(allowed), allow_methods=["GET"],
            allow_headers=["Authorization", "Last-Event-ID"], max_age=600,
        )  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in CORS_PATHS:
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
