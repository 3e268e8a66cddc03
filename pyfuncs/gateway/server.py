"""How `pyfuncs serve` runs the gateway: uvicorn, with a WebSocket protocol that lets the
hub write a message at once.

Through ASGI alone, every message a server sends is a coroutine (`await send(...)`), which
takes a sender task per connection, woken through a queue for each message: with a change
fanned out to a thousand clients, the wake-ups and the send path cost more than the writes.
This protocol (uvicorn's websockets-sansio one, plus an ASGI extension) offers
`scope["extensions"]["pyfuncs.write_now"]["write"]`: a plain function that frames text
messages and hands them to the socket (several in one write) while the connection has room,
and says how many it wrote (it stops when its buffer is past the high-water mark, or it is
closing). The gateway then queues the rest for the connection's sender task, which awaits
room through the ordinary ASGI path: slow clients still fill their bounded outbox and are
disconnected, and memory stays bounded.

Under another server the extension is missing and every message takes the ASGI path.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import os
import re
import resource
import signal
import threading
from collections import Counter
from collections.abc import Callable
from types import FrameType
from typing import Any, ClassVar

import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from ..auth import JwtVerifier
from ..config import resolve_dsn
from .config import GatewayConfig, numbers_from_env
from .protocol import SHUTDOWN, close_reason
from .sessions import verify

WRITE_NOW = "pyfuncs.write_now"


class WebSocketProtocol(WebSocketsSansIOProtocol):
    async def run_asgi(self) -> None:
        # ASGI extensions are dicts: the function is under "write"
        self.scope["extensions"][WRITE_NOW] = {"write": self.write_now}
        await super().run_asgi()

    def shutdown(self) -> None:
        """The server is stopping: close with 1001 (going away) and the reason, as the
        README says, where uvicorn would say 1012 (service restart). The gateway has
        normally closed every connection itself by now (on the signal, see app.py)."""
        if self.close_sent or not self.handshake_complete:
            super().shutdown()
            return
        self.stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1001})
        self.conn.send_close(1001, close_reason("shutdown", SHUTDOWN))
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()

    def write_now(self, texts: list[str]) -> int:
        """Send text messages now, in order, while the connection is open and has room:
        frames written together (one system call for several messages), a chunk at a time,
        so the transport's buffer passes its high-water mark by at most one chunk. Returns
        how many were written; the caller takes the ASGI path (await send) for the rest."""
        if self.close_sent or self.disconnected or not self.writable.is_set():
            return 0
        conn = self.conn
        if conn.state is not State.OPEN or conn.expect_continuation_frame or conn.extensions:
            return 0  # the ASGI path knows what to do (extensions: serve() has none)
        write, writable = self.transport.write, self.writable
        if len(texts) == 1:
            write(_frame(texts[0]))
            return 1
        chunk: list[bytes] = []
        size = done = 0
        for text in texts:
            frame = _frame(text)
            chunk.append(frame)
            size += len(frame)
            done += 1
            if size >= _CHUNK:
                write(b"".join(chunk))
                chunk, size = [], 0
                if not writable.is_set() or self.disconnected:
                    return done
        if chunk:
            write(b"".join(chunk))
        return done


# The frames of recent messages. The hub hands the same message (the same str) to every
# subscription that gets it: each is framed once, not once per client. Server frames are not
# masked, so the bytes are the same for every connection.
_frames: dict[str, bytes] = {}
_FRAMES_KEPT = 1024  # messages (a batch's, for its subscriptions), then forgotten
_CHUNK = 65536  # bytes written at once when several messages are due


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, with bounds on connections whose request has not arrived
    whole: uvicorn gives a new connection no timeout (nor a request's body: each byte reset
    its keep-alive timer) and counts it toward limit_concurrency, so sockets that never sent
    a byte, or trickled a body, made every plain HTTP request (the event stream, /health)
    a 503 for as long as they stayed open (red teams). Each request must arrive whole
    (headers and body; a WebSocket upgrade: its headers) within `header_timeout` of the
    connection or of its first byte, and one IP address may have `max_unsent_per_peer`
    connections waiting for theirs; past either the connection is closed (GatewayConfig)."""

    waiting: ClassVar[Counter[str]] = Counter()  # connections waiting for a request, by IP
    limits: ClassVar[tuple[float, int] | None] = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if HttpProtocol.limits is None:  # (read in each worker process, once)
            set_ = numbers_from_env(os.environ)
            HttpProtocol.limits = (
                float(set_.get("header_timeout", GatewayConfig.header_timeout)),
                int(set_.get("max_unsent_per_peer", GatewayConfig.max_unsent_per_peer)),
            )
        self._peer = self.client[0] if self.client else ""
        self._deadline: asyncio.TimerHandle | None = None
        self._wait()

    def _wait(self) -> None:
        """Count this connection as waiting for its request, with a deadline (once)."""
        if self._deadline is not None:
            return
        timeout, most = HttpProtocol.limits or (10.0, 64)  # (set by connection_made)
        if self.waiting[self._peer] >= most:  # (not counted: nothing to give back)
            self.transport.close()
            return
        self.waiting[self._peer] += 1
        self._deadline = self.loop.call_later(timeout, self._late)

    def _arrived(self) -> None:
        """No longer waiting: the request arrived whole, or the connection is gone."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
            self.waiting[self._peer] -= 1
            if self.waiting[self._peer] <= 0:
                del self.waiting[self._peer]

    def _late(self) -> None:
        self._arrived()
        if not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._wait()  # (a keep-alive connection's next request)

    def on_headers_complete(self) -> None:
        if self.parser.should_upgrade():
            self._arrived()  # (a WebSocket's handshake: its protocol takes the connection)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._arrived()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._arrived()
        super().connection_lost(exc)


def _frame(text: str) -> bytes:
    """A final, unmasked text frame (RFC 6455 5.2)."""
    frame = _frames.get(text)
    if frame is None:
        data = text.encode()
        n = len(data)
        if n < 126:
            head = bytes((0x81, n))
        elif n < 65536:
            head = b"\x81\x7e" + n.to_bytes(2, "big")
        else:
            head = b"\x81\x7f" + n.to_bytes(8, "big")
        frame = head + data
        if len(_frames) >= _FRAMES_KEPT:
            _frames.clear()
        _frames[text] = frame
    return frame


_QUERY = re.compile(r"(/[^\s?\"']*)\?[^\s\"']*")
# an ASGI scope's query string, as `--log-level trace` prints scopes
_SCOPE_QUERY = re.compile(r"('query_string': )b?(['\"]).*?(?<!\\)\2")
# the value of a header that carries credentials: `authorization: Bearer …` (websockets'
# request headers at debug), `(b'authorization', b'Bearer …')` (a scope's headers at trace),
# and a credential after its scheme wherever else it appears
_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization|cookie|sec-websocket-protocol)"
    r"(:\s*|['\"],\s*b?['\"])[^'\"\n]*"
)
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s'\",)\]]+")
# a JWT, or any part of one, wherever it is (a cookie, a subprotocol, a frame cut short)
_JWT = re.compile(r"eyJ[A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]*){0,2}")
# a WebSocket frame as websockets logs it at debug (`< TEXT '{"type": "auth", …}' [217
# bytes]`): what clients send holds tokens, and what the gateway sends, rows
_FRAME = re.compile(r"^([<>] (?:TEXT|BINARY|CONT)) .*( \[\d+ bytes?[^\]]*\])$", re.DOTALL)


def on_exit_signal(then: Callable[[Callable[[], None]], object]) -> Callable[[], None]:
    """When SIGTERM or SIGINT arrives, call `then(proceed)` first, and the server's own
    handler (which starts the server's shutdown: uvicorn's closes every connection, a
    WebSocket with 1012) only when `then` calls `proceed`; returns what puts the handlers
    back. Only the main thread may set handlers: elsewhere (a server in a thread) this does
    nothing."""
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        def proceed() -> None:
            before = previous.get(signum)
            if callable(before):
                before(signum, frame)
            elif before == signal.SIG_DFL:  # nobody else handles it: what it would have done
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

        then(proceed)

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, handler)

    def restore() -> None:
        for signum, before in previous.items():
            if signal.getsignal(signum) is handler:
                signal.signal(signum, before)

    return restore


def without_query(text: str) -> str:
    """`text` with the query string of every path or URL in it left out: EventSource clients
    put their token there (`access_token=`), and so may WebSocket clients."""
    return _QUERY.sub(r"\1?[query]", text) if "?" in text else text


def redacted(text: str) -> str:
    """A log line without what may hold a token: query strings, credentials after their
    scheme, anything shaped like a JWT, and the payloads of WebSocket frames."""
    text = _FRAME.sub(r"\1 [payload]\2", text)
    text = without_query(text)
    text = _SCOPE_QUERY.sub(r"\1b'[query]'", text)
    text = _HEADER.sub(r"\1\2[redacted]", text)
    text = _CREDENTIAL.sub(r"\1\2[redacted]", text)
    return _JWT.sub("[token]", text)


class WithoutQuery(logging.Filter):
    """Log lines without secrets, whichever logger writes them and at whatever level: the
    access log ("GET /realtime/sse?..."), the WebSocket handshakes ("WebSocket
    /realtime?..."), the request headers and frames websockets logs at debug
    ("< authorization: Bearer ...", "< TEXT '{"type": "auth", ...}'") and the ASGI scopes
    `--log-level trace` prints (their headers and query strings); a log is no place for
    tokens. The message is formatted here, redacted, and passed on as plain text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: logging reports it, without arguments
            text, record.args = str(record.msg), None
        record.msg, record.args = redacted(text), None
        if record.exc_text:
            record.exc_text = redacted(record.exc_text)
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging, with WithoutQuery on every handler, and the root logger (the
    gateway's own and any library's) through uvicorn's handler, so through the filter too."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"without_query": {"()": f"{__name__}.WithoutQuery"}}
    for handler in config["handlers"].values():
        handler["filters"] = ["without_query"]
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return config


def serve(host: str, port: int, workers: int, log_level: str, access_log: bool = False) -> None:
    """Run the gateway (`create_app` from the environment) until interrupted. Requests are
    logged only with `access_log`; no log line has a query string. A configuration the
    gateway cannot work with is a ConfigError here, before any worker starts."""
    config = GatewayConfig.from_env(resolve_dsn(), JwtVerifier.from_env())
    asyncio.run(verify(config))
    files = raise_file_limit()
    # websockets refuses a message past the gateway's limit without reading it all (1009);
    # no per-message compression: the gateway sends each change to many clients, and
    # deflating small JSON messages once per client cost more CPU than all the rest
    uvicorn.run("pyfuncs.gateway.app:create_app", factory=True, host=host, port=port,
                workers=workers, log_level=log_level, access_log=access_log,
                log_config=log_config(), ws=f"{__name__}:WebSocketProtocol",
                http=f"{__name__}:HttpProtocol",
                ws_per_message_deflate=False, ws_max_size=config.max_message,
                # past it uvicorn answers 503 (sockets for the database and logs aside);
                # on SIGTERM, connections still open after the grace are cut
                limit_concurrency=max(64, files - 128),
                timeout_graceful_shutdown=math.ceil(2 * config.shutdown_grace + 1))  # fmt: skip


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard one (each connection is a socket):
    the soft limit a service starts with is often 1024. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 65_536)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 65_536
