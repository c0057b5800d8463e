"""Stock codes, summarised from the stored lines."""

from __future__ import annotations

from api import crud, schemas
from api.deps import SecuredRouter, SessionDep, StockCodePath

router = SecuredRouter(tags=["stock codes"])


@router.get("/stockcode/{stockcode}", response_model=schemas.StockCodePublic)
def read_stock_code(session: SessionDep, stockcode: StockCodePath) -> schemas.StockCodePublic:
    """The code's descriptions, price range, and how many lines and invoices carry it."""
    return crud.stock_code_summary(session, stock_code=stockcode)
