"""The machine's real Redis (127.0.0.1:6379): a URL for a test, fail (CI) or skip when it is down; a
redis-server of a test's own; a TCP passage to cut a service off its Redis."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import pytest
import redis

from tests.support.service import free_port

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_problem() -> str | None:
    """Why Redis cannot be used, or None when it answers PING."""
    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2) as client:
            client.ping()
    except redis.RedisError as error:
        return repr(error)
    return None


def require_redis() -> str:
    """The URL of the real Redis; a failure with CI=true, a skip elsewhere, when it does not answer."""
    problem = redis_problem()
    if problem is not None:
        message = (
            f"Redis is not reachable at {REDIS_URL} ({problem}); start it with: redis-server --daemonize yes "
            '--bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no (or ./dev test)'
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return REDIS_URL


@contextmanager
def unique_prefix() -> Iterator[str]:
    """A key prefix nobody else uses; its keys are deleted afterwards."""
    prefix = f"retail-test:{secrets.token_hex(6)}"
    try:
        yield prefix
    finally:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2) as client:
            keys = list(client.scan_iter(match=f"{prefix}:*"))
            if keys:
                client.delete(*keys)


@contextmanager
def own_redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own on a free port (nothing on disk), killed at the end: a test
    may kill it early to take Redis away from a running service."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (Debian package redis-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(url=f"redis://127.0.0.1:{port}/0", process=process)
    try:
        server.wait_until_ready()
        yield server
    finally:
        server.kill()


@dataclass
class RedisServer:
    """A redis-server process started by `own_redis_server`."""

    url: str
    process: subprocess.Popen[bytes]

    def wait_until_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1) as client:
                    client.ping()
                return
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on {self.url} did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: Redis is gone at once, its port closed."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


class TcpPassage:
    """A TCP forwarder on loopback to `upstream` (host, port) that a test can cut and restore: while
    cut, connections are refused and open ones are closed; the other side keeps running and keeps its
    data (unlike a stopped Redis). Use as a context manager; `port` is where it listens."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> TcpPassage:
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()

    def restore(self) -> None:
        """Listen again on the same port."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Stop listening and close every forwarded connection."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        for sock in [*sockets, *([listener] if listener else [])]:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._sockets |= {client, server}
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
