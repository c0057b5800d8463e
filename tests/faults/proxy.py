"""A fault-injecting HTTP proxy on loopback, between the job and the real service process.

It parses each request (the job sends `Content-Length` bodies), decides with a seeded random generator
whether to inject a fault, and otherwise forwards the request to the service with httpx and writes the
answer back. Faults, each at its own rate:

- `503`: answered by the proxy, the service never sees the request;
- `429`: answered by the proxy with `Retry-After: <seconds>`;
- `reset_before`: the connection is reset (RST) before the request reaches the service;
- `reset_after`: the request reaches the service, its answer is dropped and the connection reset;
- `delay`: the request reaches the service, its answer is held past the client's timeout.

A request is faulted with probability `sum(rates)`; the kind is drawn by rate, except that each kind is
injected once before any is drawn (so every kind shows up even in a short run).

`counts` holds how many of each were injected, plus `forwarded` and `forwarded <METHOD> <path>`.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

FAULTS = ("503", "429", "reset_before", "reset_after", "delay")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


@dataclass
class FaultProxy:
    """A proxy to `upstream`; `rates` maps a fault of FAULTS to its share of requests (0..1).

    Use as a context manager: the proxy listens on `url` inside the block.
    """

    upstream: str
    rates: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    retry_after_seconds: int = 1
    delay_seconds: float = 3.0
    #: Added to every forwarded answer (not a fault): stretches a run so a test can act mid-run.
    latency_seconds: float = 0.0
    #: Faults only on these paths (None: every path).
    paths: tuple[str, ...] | None = None
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        unknown = set(self.rates) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}")
        if sum(self.rates.values()) > 1:
            raise ValueError("fault rates add up to more than 1")
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def injected(self) -> dict[str, int]:
        """Faults injected so far, by kind (every kind of FAULTS, zeros included)."""
        with self._lock:
            return {kind: self.counts[kind] for kind in FAULTS}

    def count(self, key: str) -> int:
        with self._lock:
            return self.counts[key]

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    # -- the proxy's own thread and event loop -------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._http = httpx.AsyncClient(base_url=self.upstream, timeout=120)
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
        # Connections still open (a client's keep-alive) end here, not in a closed loop's garbage.
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await self._http.aclose()

    def _bump(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def _choose(self, path: str) -> str | None:
        if self.paths is not None and not path.startswith(self.paths):
            return None
        with self._lock:
            if self._random.random() >= sum(self.rates.values()):
                return None
            # Which fault: drawn by rate, except that a kind not injected yet goes first, so that a
            # short run with several kinds still gets each of them.
            missing = [kind for kind in FAULTS if self.rates.get(kind) and not self.counts[kind]]
            if missing:
                return missing[0]
            kinds = [kind for kind in FAULTS if self.rates.get(kind)]
            return self._random.choices(kinds, weights=[self.rates[k] for k in kinds])[0]

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, target, _version = request_line.split(" ", 2)
                headers = [tuple(h.split(":", 1)) for h in header_lines if ":" in h]
                length = next((int(v) for k, v in headers if k.strip().lower() == "content-length"), 0)
                body = await reader.readexactly(length) if length else b""
                if not await self._answer(method, target, headers, body, writer):
                    return
        finally:
            if not writer.is_closing():
                writer.close()

    async def _answer(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, ...]],
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; False when the connection is gone."""
        path = target.split("?", 1)[0]
        fault = self._choose(path)
        if fault is not None:
            self._bump(fault)
        if fault == "503":
            await _write(writer, 503, {"content-type": "application/json"}, b'{"detail": "injected 503"}')
            return True
        if fault == "429":
            extra = {"content-type": "application/json", "retry-after": str(self.retry_after_seconds)}
            await _write(writer, 429, extra, b'{"detail": "injected 429"}')
            return True
        if fault == "reset_before":
            _reset(writer)
            return False
        forward = {
            k.strip(): v.strip() for k, v in headers if k.strip().lower() not in _HOP_BY_HOP | {"host"}
        }
        try:
            response = await self._http.request(method, target, headers=forward, content=body)
        except httpx.TransportError:
            # The service is down (a test killed it): what a gateway answers.
            self._bump("upstream_down")
            await _write(writer, 502, {"content-type": "application/json"}, b'{"detail": "upstream down"}')
            return True
        self._bump("forwarded")
        self._bump(f"forwarded {method} {path}")
        if fault == "reset_after":
            _reset(writer)
            return False
        if fault == "delay":
            await asyncio.sleep(self.delay_seconds)
        elif self.latency_seconds:
            await asyncio.sleep(self.latency_seconds)
        answer = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            await _write(writer, response.status_code, answer, response.content)
        except ConnectionError:
            return False
        return True


async def _write(writer: asyncio.StreamWriter, status: int, headers: Mapping[str, str], body: bytes) -> None:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"content-length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: SO_LINGER on, zero seconds."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
