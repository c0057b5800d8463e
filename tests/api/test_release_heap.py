"""ReleaseHeapAfterBulk: the free heap goes back to the system after each request that moves many rows
(bulk paths, Arrow pages), and only then."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import api.main
from api.main import ReleaseHeapAfterBulk
from retail_contract.wire import ARROW_STREAM


async def _answer(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _failing(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("the route failed")


async def _nothing() -> dict[str, Any]:
    return {"type": "http.disconnect"}


async def _ignore(_message: Any) -> None:
    return None


def _scope(path: str, method: str = "GET", accept: str = "application/json") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": [(b"accept", accept.encode())]}


@pytest.fixture
def trims(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def trim() -> bool:
        calls.append("trim")
        return True

    monkeypatch.setattr(api.main, "release_free_heap", trim)
    return calls


def test_bulk_paths_and_arrow_pages_trim_the_heap_and_other_requests_do_not(trims: list[str]) -> None:
    app = ReleaseHeapAfterBulk(_answer)
    for scope in (
        _scope("/bulk/invoices", "POST"),
        _scope("/bulk/invoices/compare", "POST"),
        _scope("/invoice-lines", accept=ARROW_STREAM),
    ):
        asyncio.run(app(scope, _nothing, _ignore))
    assert len(trims) == 3
    for scope in (_scope("/invoice/536365"), _scope("/health"), {"type": "lifespan"}):
        asyncio.run(app(scope, _nothing, _ignore))
    assert len(trims) == 3


def test_a_failed_bulk_request_still_trims(trims: list[str]) -> None:
    with pytest.raises(RuntimeError):
        asyncio.run(ReleaseHeapAfterBulk(_failing)(_scope("/bulk/invoices", "POST"), _nothing, _ignore))
    assert trims == ["trim"]
