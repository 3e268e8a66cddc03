"""`pyfuncs serve`: the realtime gateway, a Starlette application.

Endpoints (the protocol is in the README, "Realtime: the gateway"):
    /realtime       WebSocket: auth, subscribe/unsubscribe, events, errors, heartbeats
    /realtime/sse   Server-Sent Events: one subscription per stream, Last-Event-ID resume
    /health         200 while the change feed is followed, 503 otherwise
    /metrics        Prometheus text: connections, subscriptions, delivery lag, counters (to
                    loopback clients, or with PYFUNCS_GATEWAY_METRICS_TOKEN)
    /realtime.js    the browser client (an ES module)
    /demo           a page listing a table's live rows (token and table in the URL fragment)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.resources
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..auth import Identity, JwtVerifier, bearer
from ..config import resolve_dsn
from ..errors import AuthError, SubscriptionError
from . import metrics, protocol, sse
from .audit import AuditLog
from .clients import Client, Outgoing, user_of
from .config import GatewayConfig
from .hub import Hub
from .origins import ClientCors, Origins
from .protocol import CLOSE_CODES, Auth, Ping, Subscribe, TooBig, Unsubscribe, close_reason
from .ratelimit import RateLimits
from .server import WRITE_NOW, on_exit_signal
from .sessions import Sessions
from .tables import weight, weight_of

log = logging.getLogger("pyfuncs.gateway")
INTERNAL = "the gateway failed unexpectedly; reconnect and resume from your last position"


async def _receive(ws: WebSocket) -> str | None:
    """The next message's text (None for a binary one); WebSocketDisconnect at the end."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    text = message.get("text")
    return text if isinstance(text, str) else None


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.sessions = Sessions(config)
        self.hub = Hub(config, self.sessions)
        self.audit = AuditLog(self.sessions.feed)
        self.limits = RateLimits(config)
        self.clients: set[Client] = set()
        self.cors = Origins(config.allowed_origins)
        self.stopping = False
        self._leaving: asyncio.Task[None] | None = None  # (on a signal: see _going_away)
        # WebSockets not authenticated yet: in all, and by peer address
        self.pending: collections.Counter[str] = collections.Counter()
        # auth_failed audit records: a token bucket (anyone can fail to authenticate)
        self._audit_tokens = 30 * config.auth_failures_audited
        self._audit_at = time.monotonic()
        self._unaudited = 0  # failures not audited since the last record (in its detail)
        self.hub.on_end = lambda sub: self.limits.unsubscribe(sub.client.user, weight(sub.filters))

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.sessions.open()
        await self.hub.start()
        tasks = [asyncio.create_task(t) for t in (self.hub.run(), self.hub.prune_forever(),
                                                  self.hub.capture_forever(),
                                                  self.audit.run(), self._heartbeats())]  # fmt: skip
        loop = asyncio.get_running_loop()
        restore = on_exit_signal(
            lambda proceed: loop.call_soon_threadsafe(self._going_away, proceed)
        )
        try:
            yield
        finally:
            restore()
            self._going_away()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.audit.flush()
            await self.sessions.close()

    def _going_away(self, then: Callable[[], None] | None = None) -> None:
        """The server is stopping: end every connection now, WebSockets with 1001 and SSE
        streams with an `error` event `shutdown`. The server waits for open connections to
        end before it stops, and an event stream would otherwise never end. On a signal,
        the server's own shutdown (`then`) starts once they have ended, or after the grace:
        uvicorn's closes a WebSocket still open with 1012, and it used to beat the 1001 of a
        connection whose sender had not run yet (a machine short of CPU)."""
        self.stopping = True
        for client in list(self.clients):
            client.close("shutdown", protocol.SHUTDOWN)
        # an event stream whose client stopped reading cannot send its last event: it is
        # cut off after a short grace, else the server would wait for it for ever
        loop = asyncio.get_running_loop()
        for abort in [c.abort for c in self.clients if c.abort is not None]:
            loop.call_later(self.config.shutdown_grace, abort)
        if then is not None:
            self._leaving = asyncio.create_task(self._then_when_gone(then))

    async def _then_when_gone(self, then: Callable[[], None]) -> None:
        deadline = asyncio.get_running_loop().time() + self.config.shutdown_grace
        while self.clients and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        then()

    # --- connections, whatever the transport ---------------------------------------------

    def _authenticate(self, token: str | None, connection: str) -> Identity:
        try:
            if not token:
                raise AuthError(
                    'no token: send "Authorization: Bearer <jwt>", or {"type": "auth", '
                    '"token": "<jwt>"} as the first message'
                )
            return self.config.verifier.verify(token)
        except AuthError as exc:
            self._auth_failed(connection, exc)
            raise

    def _auth_failed(self, connection: str, exc: AuthError) -> None:
        """Counted always; audited at most `auth_failures_audited` times a second (bursts
        of thirty times that), each record saying how many failures went unaudited before it:
        failing needs no token, and the audit table must not grow at an attacker's pace."""
        self.hub.metrics.auth_failures += 1
        rate = self.config.auth_failures_audited
        now = time.monotonic()
        self._audit_tokens = min(30 * rate, self._audit_tokens + (now - self._audit_at) * rate)
        self._audit_at = now
        if self._audit_tokens < 1:
            self._unaudited += 1
            return
        self._audit_tokens -= 1
        unaudited, self._unaudited = self._unaudited, 0
        self.audit.record("auth_failed", connection, reason=str(exc), unaudited_before=unaudited)

    def _open(self, identity: Identity, transport: str) -> Client:
        if self.stopping:
            raise SubscriptionError("shutdown", protocol.SHUTDOWN)
        client = Client(identity, self.config.outbox_size, transport, self.config.outbox_bytes)
        try:
            self.limits.connect(client.user)
        except SubscriptionError as exc:
            self.audit.record("rate_limited", client.id, client=client, reason=str(exc))
            raise
        self.clients.add(client)
        self.audit.record("connect", client.id, client=client, transport=transport)
        return client

    def _close(self, client: Client) -> None:
        if client not in self.clients:
            return  # closed already
        count = len(client.subscriptions)
        values = sum(weight(sub.filters) for sub in client.subscriptions.values())
        self.hub.drop(client)
        self.clients.discard(client)
        self.limits.disconnect(client.user, count, values)
        code, message = client.reason or ("client_closed", "the client went away")
        if code == "slow_consumer":
            self.hub.metrics.slow_consumers += 1
        self.audit.record("disconnect", client.id, client=client, reason=code, message=message)

    async def _subscribe(self, client: Client, message: Subscribe) -> None:
        values = weight_of(message.filters)
        try:
            self.limits.subscribe(client.user, values)
        except SubscriptionError as exc:
            self.audit.record("rate_limited", client.id, client=client, reason=str(exc))
            raise
        try:
            sub = await self.hub.subscribe(client, message)
        except SubscriptionError as exc:
            self.limits.unsubscribe(client.user, values)
            self.audit.record("subscribe_failed", client.id, client=client, code=exc.code,
                              reason=str(exc), table=str(message.table)[:256])  # fmt: skip
            raise
        except BaseException:
            self.limits.unsubscribe(client.user, values)
            raise
        self.audit.record("subscribe", client.id, client=client, sub=sub.id,
                          table=sub.table.qualified, filters=message.filters or [],
                          since=message.since, keys=None if message.keys is None
                          else len(message.keys))  # fmt: skip

    def _unsubscribe(self, client: Client, sub_id: str) -> None:
        sub = client.subscriptions.get(sub_id)
        if sub is None:
            raise SubscriptionError("unknown_subscription", f"no subscription {sub_id!r}")
        self.hub.unsubscribe(sub)
        client.drop_snapshot(sub.id)
        self.limits.unsubscribe(client.user, weight(sub.filters))
        self.audit.record("unsubscribe", client.id, client=client, sub=sub.id)
        client.send("unsubscribed", {"type": "unsubscribed", "sub": sub.id})

    async def _heartbeats(self) -> None:
        """Send a heartbeat to each client that was sent nothing for `heartbeat` seconds:
        it carries the positions of all its subscriptions (one timer for all clients, not
        one per message of each)."""
        every = self.config.heartbeat
        while True:
            await asyncio.sleep(min(every / 4, 1.0))
            now = time.monotonic()
            tokens = self.hub.tokens
            for client in list(self.clients):
                if now - client.sent_at >= every and client.reason is None:
                    subs = client.subscriptions.values()
                    positions = {s.id: tokens.resume_token(s.position) for s in subs}
                    last = max(subs, key=lambda s: s.position, default=None)
                    message = {"type": "heartbeat", "positions": positions}
                    client.send("heartbeat", message, positions[last.id] if last else None)

    async def _watch_expiry(self, client: Client) -> None:
        """End a client's subscriptions when its token expires; a refreshed token within
        the grace period resumes them from where they stopped."""
        while True:
            exp = client.identity.claims.get("exp")
            if not isinstance(exp, (int, float)):
                return
            client.refreshed.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow the
            # cancellation that ends the connection, and the task then never finishes
            try:
                async with asyncio.timeout(max(0.0, exp - time.time())):
                    await client.refreshed.wait()
                continue
            except TimeoutError:
                pass
            client.suspended = True
            self.audit.record("token_expired", client.id, client=client)
            client.send("error", {
                "type": "error", "code": "token_expired",
                "message": "your token has expired: deliveries are paused; send "
                           '{"type": "auth", "token": "<new jwt>"} within '
                           f"{self.config.expiry_grace:g} s to resume without loss",
            })  # fmt: skip
            try:
                async with asyncio.timeout(self.config.expiry_grace):
                    await client.refreshed.wait()
            except TimeoutError:
                client.close("token_expired", "the token expired and was not refreshed")
                return

    def _refresh(self, client: Client, token: str | None) -> None:
        identity = self._authenticate(token, client.id)
        if user_of(identity) != client.user or identity.role != client.identity.role:
            raise SubscriptionError(
                "unauthorized", "a refreshed token must be for the same user and role"
            )
        suspended = client.suspended
        client.reauthenticate(identity)
        if suspended:
            for sub in client.subscriptions.values():
                self.hub.catch_up(sub)
        self._ready(client)

    def _ready(self, client: Client) -> None:
        """`ready`, with the limits a client needs to know to stay within them."""
        client.send("ready", {"type": "ready", "connection": client.id,
                              "expires": client.identity.claims.get("exp"),
                              "limits": {"message": self.config.max_message,
                                         "keys": self.config.max_resume_keys}})  # fmt: skip

    # --- WebSocket -----------------------------------------------------------------------

    async def websocket(self, ws: WebSocket) -> None:
        origin = ws.headers.get("origin")
        if origin is not None and not self.cors.websocket_allowed(
            origin, ws.headers, "https" if ws.url.scheme == "wss" else "http"
        ):
            # audited as an authentication failure (the audit table's events), rate limited
            self._auth_failed(f"ws-{id(ws):x}", AuthError(
                f"origin not allowed: {origin[:256]}"))  # fmt: skip
            await ws.close(protocol.REFUSED, "origin not allowed")  # before accept: HTTP 403
            return
        peer = ws.client.host if ws.client else "?"
        if bearer(ws.headers.get("authorization")) is not None:
            await self._websocket(ws, lambda: None)  # authenticated at once, not held
            return
        if (
            sum(self.pending.values()) >= self.config.max_pending
            or self.pending[peer] >= self.config.max_pending_per_peer
        ):
            self.hub.metrics.auth_failures += 1
            # refused before the handshake (HTTP 403), the cheapest answer (uvicorn logs an
            # error for each denial response with another status)
            await ws.close(protocol.REFUSED, "too many connections waiting to authenticate")
            return
        self.pending[peer] += 1
        counted = [True]

        def authenticated() -> None:
            if counted:
                counted.clear()
                self.pending[peer] -= 1
                if self.pending[peer] <= 0:
                    del self.pending[peer]

        try:
            await self._websocket(ws, authenticated)
        finally:
            authenticated()

    async def _websocket(self, ws: WebSocket, authenticated: Callable[[], None]) -> None:
        await ws.accept()
        provisional = f"ws-{id(ws):x}"
        try:
            token = bearer(ws.headers.get("authorization"))
            if token is None:
                first = self._first_token(ws, provisional)
                token = await asyncio.wait_for(first, self.config.auth_timeout)
            client = self._open(self._authenticate(token, provisional), "websocket")
        except TimeoutError:
            await self._refuse(ws, "unauthorized", "send a token first")
            return
        except AuthError as exc:
            await self._refuse(ws, "unauthorized", str(exc))
            return
        except SubscriptionError as exc:
            await self._refuse(ws, exc.code, str(exc))
            return
        except WebSocketDisconnect:
            return
        authenticated()
        client.write_now = ws.scope.get("extensions", {}).get(WRITE_NOW, {}).get("write")
        self._ready(client)
        tasks = [asyncio.create_task(c) for c in (
            self._ws_send(ws, client), self._ws_receive(ws, client),
            self._watch_expiry(client), client.closing.wait(),
        )]  # fmt: skip
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None and not isinstance(error, WebSocketDisconnect):
                    self._failed(client, error)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._close(client)
            if client.reason is not None:
                code, message = client.reason
                with contextlib.suppress(Exception):  # the client may be gone already
                    await ws.close(CLOSE_CODES.get(code, 1011), close_reason(code, message))

    async def _first_token(self, ws: WebSocket, connection: str) -> str | None:
        """The token of the first message, None unless it is `auth`; AuthError (the
        connection is refused with 4001) saying what was wrong with a malformed one, TooBig
        past the size limit."""
        try:
            message = protocol.parse(
                protocol.decode(await _receive(ws), self.config.max_message), 0
            )  # fmt: skip
        except TooBig:
            raise
        except SubscriptionError as exc:
            error = AuthError(f'send {{"type": "auth", "token": "<jwt>"}} first: {exc}')
            self._auth_failed(connection, error)
            raise error from None
        return message.token if isinstance(message, Auth) else None

    def _failed(self, client: Client, exc: BaseException) -> None:
        """A bug: one line in the log (no traceback, no message text, which could hold a
        client's data), and the connection ends with 1011."""
        where = exc.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        place = f"{where.tb_frame.f_code.co_filename}:{where.tb_lineno}" if where else "?"
        log.error("%s connection %s failed: %s at %s", client.transport, client.id,
                  type(exc).__name__, place)  # fmt: skip
        client.close("internal_error", INTERNAL)

    async def _refuse(self, ws: WebSocket, code: str, message: str) -> None:
        with contextlib.suppress(Exception):
            await ws.send_json({"type": "error", "code": code, "message": message})
            await ws.close(CLOSE_CODES.get(code, protocol.REFUSED), close_reason(code, message))

    async def _ws_send(self, ws: WebSocket, client: Client) -> None:
        while True:
            message = await client.outbox.get()
            client.sending = True
            await ws.send_text(message.data)
            client.sending = False

    async def _ws_receive(self, ws: WebSocket, client: Client) -> None:
        """The client's messages, one at a time; an error in one is answered with an error
        message (carrying the subscription's id when it names one), and a message over the
        size limit ends the connection (1009). Anything else it raises is a bug: the
        connection ends (see `_failed`)."""
        while True:
            try:
                text = await _receive(ws)
            except WebSocketDisconnect:
                return
            raw: Any = None
            malformed: SubscriptionError | None = None
            try:
                raw = protocol.decode(text, self.config.max_message)
            except TooBig as exc:
                client.close(exc.code, str(exc))
                return
            except SubscriptionError as exc:
                malformed = exc
            try:
                self.limits.message(client.user)  # every message counts, malformed or not
                if malformed is not None:
                    raise malformed
                await self._handle(client, protocol.parse(raw, self.config.max_resume_keys))
            except (SubscriptionError, AuthError) as exc:
                code = exc.code if isinstance(exc, SubscriptionError) else "unauthorized"
                client.send("error", {"type": "error", "code": code, "message": str(exc),
                                      "sub": protocol.message_id(raw)})  # fmt: skip

    async def _handle(self, client: Client, message: protocol.Message) -> None:
        if isinstance(message, Auth):
            self._refresh(client, message.token)
        elif isinstance(message, Unsubscribe):  # also while paused: shedding is fine
            self._unsubscribe(client, message.id)
        elif client.suspended:
            raise SubscriptionError("token_expired", "send a refreshed token first")
        elif isinstance(message, Subscribe):
            await self._subscribe(client, message)
        elif isinstance(message, Ping):
            client.send("pong", {"type": "pong"})

    # --- Server-Sent Events --------------------------------------------------------------

    async def sse(self, request: Request) -> Response:
        """GET /realtime/sse?table=s.t&col=op.value...: one subscription as an event
        stream; `Last-Event-ID` (or `since`) resumes after that position."""
        params = request.query_params
        token = bearer(request.headers.get("authorization")) or params.get("access_token")
        try:
            client = self._open(self._authenticate(token, "sse"), "sse")
        except AuthError as exc:
            return JSONResponse({"code": "unauthorized", "message": str(exc)}, 401)
        except SubscriptionError as exc:
            return JSONResponse({"code": exc.code, "message": str(exc)}, sse.status(exc.code))
        except Exception as exc:  # a bug: the connection slot is not taken
            log.error("sse request failed: %s", type(exc).__name__)
            return JSONResponse({"code": "internal_error", "message": INTERNAL}, 500)
        since = request.headers.get("last-event-id") or params.get("since")
        try:
            message = Subscribe("sse", params.get("table"), sse.filters(params), since)
            await self._subscribe(client, message)
        except SubscriptionError as exc:
            client.close(exc.code, str(exc))
            self._close(client)
            return JSONResponse({"code": exc.code, "message": str(exc)}, sse.status(exc.code))
        except Exception as exc:
            self._failed(client, exc)
            self._close(client)
            return JSONResponse({"code": "internal_error", "message": INTERNAL}, 500)
        except BaseException:
            self._close(client)
            raise
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        stream = sse.Stream(self._sse_stream(client), lambda: self._close(client),
                            media_type="text/event-stream", headers=headers)  # fmt: skip
        client.abort = stream.abort
        return stream

    async def _sse_stream(self, client: Client) -> AsyncIterator[str]:
        """The stream's events (sse.Stream lets the connection go, even if this never runs)."""
        expiry = asyncio.create_task(self._watch_expiry(client))
        outbox = client.outbox
        try:
            while client.reason is None:
                if outbox.empty():
                    await client.arrival()  # a message, or the client is closing
                    continue
                events = [sse.event(outbox.get_nowait())]
                # what else is waiting (a batch's events) goes out in the same write
                while not client.suspended and client.reason is None and not outbox.empty():
                    events.append(sse.event(outbox.get_nowait()))
                yield "".join(events)
                if client.suspended:
                    break  # SSE has no way to send a new token: reconnect with one
            code, text = client.reason or ("token_expired", "reconnect with a new token")
            yield sse.event(Outgoing("error", None, json.dumps(
                {"type": "error", "code": code, "message": text})))  # fmt: skip
        finally:
            expiry.cancel()
            self._close(client)

    # --- health and metrics --------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """Anyone may ask: it says nothing of the feed's position or of other clients."""
        healthy = self.hub.connected
        body = {"status": "ok" if healthy else "degraded", "feed_connected": healthy}
        return JSONResponse(body, 200 if healthy else 503)

    async def metrics(self, request: Request) -> Response:
        if not metrics.may_read(request, self.config.metrics_token):
            return PlainTextResponse("Not Found", 404)
        by_transport = {"websocket": 0, "sse": 0}
        for client in self.clients:
            by_transport[client.transport] += 1
        return PlainTextResponse(metrics.exposition(
            self.hub.metrics, connections=by_transport, lag=self.hub.lag_seconds(),
            subscriptions=self.hub.subscription_count(), connected=self.hub.connected,
            audit_dropped=self.audit.dropped,
        ))  # fmt: skip


def _static(name: str, media_type: str) -> Route:
    body = (importlib.resources.files(__package__) / "static" / name).read_bytes()
    headers = {"Cache-Control": "no-cache"}  # small, and must follow the gateway's version

    async def endpoint(request: Request) -> Response:
        return Response(body, media_type=media_type, headers=headers)

    return Route("/" + name.removesuffix(".html"), endpoint)


def create_app(config: GatewayConfig | None = None) -> Starlette:
    """The gateway application; without a config, from the environment (PYFUNCS_DSN,
    PYFUNCS_JWT_*, PYFUNCS_GATEWAY_*): what `pyfuncs serve` and its workers use."""
    if config is None:
        config = GatewayConfig.from_env(resolve_dsn(), JwtVerifier.from_env())
    gateway = Gateway(config)
    routes = [
        WebSocketRoute("/realtime", gateway.websocket),
        Route("/realtime/sse", gateway.sse),
        Route("/health", gateway.health),
        Route("/metrics", gateway.metrics),
        _static("realtime.js", "text/javascript"),
        _static("demo.html", "text/html"),
    ]  # fmt: skip
    middleware = [Middleware(ClientCors, allowed=config.allowed_origins)]
    app = Starlette(routes=routes, lifespan=gateway.lifespan,
                    middleware=middleware if config.allowed_origins else None)  # fmt: skip
    app.state.gateway = gateway
    return app
