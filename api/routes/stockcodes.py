"""Stock codes, summarised from the stored lines."""

from __future__ import annotations

from fastapi import Request, Response

from api import schemas
from api.core import etag
from api.crud import stockcodes as crud
from api.deps import SecuredRouter, SessionDep, StockCodePath
from api.routes.contract import DATA_ROUTE_ERRORS, IfNoneMatch, errors, get_with_head

router = SecuredRouter(tags=["stock codes"], responses=DATA_ROUTE_ERRORS)


@get_with_head(
    router, "/stockcode/{stockcode}", response_model=schemas.StockCodePublic, responses=errors(404)
)
def read_stock_code(
    request: Request, session: SessionDep, stockcode: StockCodePath, if_none_match: IfNoneMatch = None
) -> Response:
    """The code's descriptions, price range, and how many lines and invoices carry it."""
    summary = crud.stock_code_summary(session, stock_code=stockcode)
    return etag.json_response(
        summary.model_dump_json().encode(), method=request.method, if_none_match=if_none_match
    )
