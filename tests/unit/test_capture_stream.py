"""The streaming consumer's side of the replication protocol (pyfuncs/capture.py, _Stream):
every position the server is told is one the consumer decided. The stream itself is tested
against PostgreSQL in tests/integration/test_wal_stream.py; here a connection that plays back
the server's messages shows what is answered to a keepalive, which a real server sends only
after seconds of silence."""

from __future__ import annotations

import struct
from typing import Any

from pyfuncs.capture import _STATUS, _Stream


class Playback:
    """The libpq calls _Stream makes, with the server's messages played back."""

    def __init__(self, *messages: bytes) -> None:
        self.messages = list(messages)
        self.sent: list[tuple[Any, ...]] = []

    def get_copy_data(self, nonblocking: int) -> tuple[int, bytes]:
        if not self.messages:
            return 0, b""
        data = self.messages.pop(0)
        return len(data), data

    def consume_input(self) -> None:
        pass

    def put_copy_data(self, data: bytes) -> int:
        self.sent.append(_STATUS.unpack(data))
        return 1

    def flush(self) -> int:
        return 0


def xlog(start: int, end: int, payload: bytes) -> bytes:
    return b"w" + struct.pack("!QQq", start, end, 0) + payload


def keepalive(end: int, reply: bool) -> bytes:
    return b"k" + struct.pack("!Qq?", end, 0, reply)


def test_a_keepalive_is_answered_with_what_was_told_never_the_servers_position() -> None:
    """A client library that answered a keepalive with the server's position (psycopg2 does,
    when the flush it was last told is past the LSN of the last message read, as a long
    transaction's early changes are) confirmed transactions received but not yet written;
    a stream started again after them then lost them (found by a red team)."""
    change = b'{"action":"I","xid":7,"schema":"s","table":"t"}'
    conn = Playback(xlog(100, 5000, change), keepalive(9000, True), keepalive(9500, False))
    stream = _Stream(conn, "s.t", applied=200)  # type: ignore[arg-type]
    stream._told = (150, 200)  # what it said last: the change log holds up to 200
    assert stream._read() == (100, change)  # an early change of a long transaction
    assert stream._read() is None  # the keepalives are answered, and nothing else comes
    assert [(s[1], s[2], s[3]) for s in conn.sent] == [(150, 200, 200)]  # asked once
    assert stream.wal_end == 9500  # known, for when the consumer has dealt with everything
