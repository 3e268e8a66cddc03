"""A client's messages keep their order whichever way each one goes: straight to the
socket when the connection has room, through the outbox when it has not."""

from __future__ import annotations

import asyncio

from pyfuncs.auth import Identity
from pyfuncs.gateway.clients import Client


class Socket:
    """Takes messages while it has room (the connection's buffer below its high-water)."""

    def __init__(self) -> None:
        self.room = True
        self.received: list[str] = []

    def write_now(self, texts: list[str]) -> int:
        """Like server.py's: writes the messages it has room for, says how many."""
        if not self.room:
            return 0
        self.received.extend(texts)
        return len(texts)


def test_messages_wait_behind_queued_ones_and_go_straight_again_once_drained() -> None:
    async def main() -> None:
        socket = Socket()
        client = Client(Identity("manager", {"sub": "u"}), outbox_size=10, transport="websocket")
        client.write_now = socket.write_now
        client.push_raw("change", None, "1")
        socket.room = False  # the client stops reading
        client.push_raw("change", None, "2")
        socket.room = True  # room again, but "2" waits in the outbox: "3" goes after it
        client.push_raw("change", None, "3")
        assert socket.received == ["1"] and client.outbox.qsize() == 2
        # the sender takes "2"; while it holds it, nothing overtakes it
        taken = await client.outbox.get()
        client.sending = True
        client.push_raw("change", None, "4")
        assert socket.received == ["1"]
        socket.received.append(taken.data)
        client.sending = False
        while not client.outbox.empty():
            socket.received.append((await client.outbox.get()).data)
        client.push_raw("change", None, "5")  # drained: straight to the socket again
        assert socket.received == ["1", "2", "3", "4", "5"]

    asyncio.run(main())


def test_a_full_outbox_closes_the_client_as_a_slow_consumer() -> None:
    async def main() -> None:
        socket = Socket()
        socket.room = False
        client = Client(Identity("manager", {"sub": "u"}), outbox_size=2, transport="websocket")
        client.write_now = socket.write_now
        for n in range(3):
            client.push_raw("change", None, str(n))
        assert client.reason is not None and client.reason[0] == "slow_consumer"
        assert client.closing.is_set() and client.outbox.qsize() == 2

    asyncio.run(main())
