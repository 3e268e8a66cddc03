"""A loopback TCP relay that counts the bytes between a client and PostgreSQL.

The demo and the benchmark route connections through it to report real bytes on the wire
(protocol overhead included) for each way of computing the same answer.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class WireTap:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._server = socket.create_server(("127.0.0.1", 0))
        port = self._server.getsockname()[1]
        self.url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))
        self._lock = threading.Lock()
        self.to_client = 0
        self.to_server = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def total(self) -> int:
        return self.to_client + self.to_server

    def reset(self) -> None:
        with self._lock:
            self.to_client = self.to_server = 0

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                with self._lock:
                    if downstream:
                        self.to_client += len(data)
                    else:
                        self.to_server += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):  # the other pump may have closed it
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()
