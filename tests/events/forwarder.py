"""A TCP forwarder on loopback: the relay's "broker", which a test can stop and start.

Nothing listens on `port` until `open()`: a client gets "connection refused", exactly what it gets from a
stopped broker. `open()` forwards every connection to the real broker (the broker "started"); `close()`
stops listening and cuts the open connections (the broker "stopped" or crashed).

`cut_after_bytes`: close by itself once clients sent that many bytes (the broker lost mid-stream, at a
point that does not depend on timing); `cut` is set when it did. `latency_seconds`: delay every chunk the
broker sends back (its confirms), so a publisher is slow enough for a test to act mid-stream.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from tests.support.service import free_port


class TcpForwarder:
    def __init__(
        self,
        upstream: tuple[str, int],
        port: int | None = None,
        *,
        cut_after_bytes: int | None = None,
        latency_seconds: float = 0.0,
    ) -> None:
        self.upstream = upstream
        self.port = port or free_port()
        self.cut_after_bytes = cut_after_bytes
        self.latency_seconds = latency_seconds
        self.cut = threading.Event()
        self.sent = 0
        self.connections = 0
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        """Start listening on `port` and forwarding to `upstream`."""
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def close(self) -> None:
        """Stop listening and cut every forwarded connection."""
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            server.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _address = server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):  # AMQP frames are small: no Nagle delay on the extra hop
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                self._sockets += [client, upstream]
            for source, target, outgoing in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(source, target, outgoing), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, outgoing: bool) -> None:
        try:
            while data := source.recv(65536):
                if not outgoing and self.latency_seconds:
                    time.sleep(self.latency_seconds)
                target.sendall(data)
                if outgoing and self.cut_after_bytes is not None:
                    with self._lock:
                        self.sent += len(data)
                        over = self.sent >= self.cut_after_bytes
                    if over:
                        self.cut_after_bytes = None
                        self.close()
                        self.cut.set()
                        return
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
