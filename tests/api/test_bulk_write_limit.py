"""BulkWriteLimit: at most N bulk writes per worker reach the app (and read their body) at once."""

from __future__ import annotations

import asyncio
from typing import Any

from api.main import BulkWriteLimit


class _Recorder:
    """An ASGI app that holds each request a moment and records how many were inside at once."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.seen: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.inside += 1
        self.most = max(self.most, self.inside)
        self.seen.append(scope["path"])
        await asyncio.sleep(0.01)
        self.inside -= 1


def _scope(path: str, method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path}


async def _nothing() -> dict[str, Any]:
    return {"type": "http.disconnect"}


async def _ignore(_message: Any) -> None:
    return None


def _run(app: BulkWriteLimit, scopes: list[dict[str, Any]]) -> None:
    async def go() -> None:
        await asyncio.gather(*(app(scope, _nothing, _ignore) for scope in scopes))

    asyncio.run(go())


def test_bulk_writes_beyond_the_limit_wait_their_turn() -> None:
    inner = _Recorder()
    app = BulkWriteLimit(inner, max_in_flight=2, paths=frozenset({"/bulk/invoices"}))
    _run(app, [_scope("/bulk/invoices") for _ in range(7)])
    assert inner.most == 2
    assert len(inner.seen) == 7  # every request was served, none refused


def test_other_requests_are_not_held() -> None:
    inner = _Recorder()
    app = BulkWriteLimit(inner, max_in_flight=1, paths=frozenset({"/bulk/invoices"}))
    scopes = [_scope("/bulk/invoices"), _scope("/bulk/invoices")]
    scopes += [_scope("/invoices", "GET") for _ in range(3)] + [_scope("/invoice")]
    _run(app, scopes)
    # Both bulk writes serialised, the four others ran alongside them.
    assert inner.most == 5
