"""Stock codes, summarised from the stored lines."""

from __future__ import annotations

from fastapi import Request, Response
from sqlalchemy.orm import Session

from api import cache, schemas
from api.core import etag, representation
from api.crud import stockcodes as crud
from api.deps import SecuredRouter, StockCodePath, reading
from api.routes.contract import DATA_ROUTE_ERRORS, AcceptHeader, IfNoneMatch, errors, get_with_head

router = SecuredRouter(tags=["stock codes"], responses=DATA_ROUTE_ERRORS)


@get_with_head(
    router, "/stockcode/{stockcode}", response_model=schemas.StockCodePublic, responses=errors(404)
)
async def read_stock_code(
    request: Request,
    stockcode: StockCodePath,
    if_none_match: IfNoneMatch = None,
    accept: AcceptHeader = None,
) -> Response:
    """The code's descriptions, price range, and how many lines and invoices carry it. JSON, CSV (a row
    per description) or XML by `Accept`."""
    media_type = representation.choose(accept)

    def summary(session: Session) -> bytes:
        return crud.stock_code_summary(session, stock_code=stockcode).model_dump_json().encode()

    # A coroutine that awaits the cache and reads the database in the thread pool once; a cached entry
    # carries its ETag (see api/routes/customers.py, read_customer).
    found = await cache.read_through(
        request,
        cache.stock_code_key(stockcode),
        resource="stockcode",
        load=reading(request, summary),
        etag=etag.etag_of,
    )
    assert found is not None  # an unknown code raised NotFoundError
    return representation.respond(
        found.body,
        media_type,
        root="stock_code",
        method=request.method,
        if_none_match=if_none_match,
        json_etag=found.etag,
    )
