"""Stock codes, summarised from the stored lines."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from api import cache, crud, schemas
from api.deps import REQUIRE_API_KEY, StockCodePath, reading

router = APIRouter(tags=["stock codes"], dependencies=REQUIRE_API_KEY)


@router.get("/stockcode/{stockcode}", response_model=schemas.StockCodePublic)
async def read_stock_code(request: Request, stockcode: StockCodePath) -> Response:
    """The code's descriptions, price range, and how many lines and invoices carry it."""

    def summary(session: Session) -> bytes:
        return crud.stock_code_summary(session, stock_code=stockcode).model_dump_json().encode()

    # A coroutine that awaits the cache and reads the database in the thread pool (see customers.py).
    found = await cache.read_through(
        request, cache.stock_code_key(stockcode), resource="stockcode", load=reading(request, summary)
    )
    assert found is not None  # an unknown code raised NotFoundError
    return found.response()
