"""Server-Sent Events: a subscription in a query string, events as text, and a response that
always lets its connection go (the endpoint itself is Gateway.sse, in app.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.datastructures import QueryParams
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .clients import Outgoing

NOT_FILTERS = ("table", "access_token", "since")


def filters(params: QueryParams) -> list[dict[str, Any]]:
    """PostgREST's spelling, `column=op.value` and `column=in.(a,b)`, as protocol filters
    (checked like the WebSocket's, see tables.Filter)."""
    found: list[dict[str, Any]] = []
    for column, spec in params.multi_items():
        if column in NOT_FILTERS:
            continue
        op, _, value = spec.partition(".")
        parsed: Any = value[1:-1].split(",") if op == "in" and value[:1] == "(" else value
        found.append({"column": column, "op": op, "value": parsed})
    return found


def event(message: Outgoing) -> str:
    head = f"id: {message.position}\n" if message.position else ""
    data = message.data
    if "\n" in data or "\r" in data:
        # A line end would end the data line (and a blank line the event). In JSON text a raw
        # CR or LF can only be whitespace between tokens (a json value's own text keeps it):
        # a space means the same.
        data = data.replace("\r", " ").replace("\n", " ")
    return f"{head}event: {message.kind}\ndata: {data}\n\n"


class Stream(StreamingResponse):
    """A streaming response that calls `done` when it ends, however it ends: the events may
    never start (the client went away first), or sending the headers may fail, and the
    connection must be let go all the same (the per-user connection limit counts it)."""

    def __init__(
        self, content: AsyncIterator[str], done: Callable[[], None], **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self._done = done
        self._task: asyncio.Task[Any] | None = None
        self._aborted = False

    def abort(self) -> None:
        """Stop sending (the server is stopping and the client does not read): the
        response ends unfinished and the server closes the connection."""
        if self._task is not None and not self._task.done():
            self._aborted = True
            self._task.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._task = asyncio.current_task()
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            if not self._aborted:
                raise
            # the server closes the connection: the response is incomplete
        finally:
            self._task = None
            self._done()


def status(code: str) -> int:
    """The HTTP status of an SSE request refused with `code`."""
    return {"unauthorized": 401, "rate_limited": 429, "unavailable": 503,
            "shutdown": 503}.get(code, 400)  # fmt: skip
