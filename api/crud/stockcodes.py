"""Stock codes, summarised from the stored lines."""

from __future__ import annotations

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from api import schemas
from api.errors import NotFoundError
from api.models import InvoiceLine


def stock_code_summary(session: Session, *, stock_code: str) -> schemas.StockCodePublic:
    """Descriptions, price range and counts of the lines carrying `stock_code`."""
    summary = session.execute(
        select(
            func.min(InvoiceLine.unit_price).label("min_unit_price"),
            func.max(InvoiceLine.unit_price).label("max_unit_price"),
            func.count().label("line_count"),
            func.count(distinct(InvoiceLine.invoice_no)).label("invoice_count"),
        ).where(InvoiceLine.stock_code == stock_code)
    ).one()
    if not summary.line_count:
        raise NotFoundError(f"stock code {stock_code!r} not found")
    descriptions = session.scalars(
        select(InvoiceLine.description)
        .distinct()
        .where(InvoiceLine.stock_code == stock_code, InvoiceLine.description.is_not(None))
        .order_by(InvoiceLine.description)
    ).all()
    return schemas.StockCodePublic(
        stock_code=stock_code,
        descriptions=[description for description in descriptions if description is not None],
        min_unit_price=summary.min_unit_price,
        max_unit_price=summary.max_unit_price,
        line_count=summary.line_count,
        invoice_count=summary.invoice_count,
    )
