"""Request bodies shaped like the real data, and a look at what the database stores."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

API_KEY = "test-key"
AUTH = {"X-API-Key": API_KEY}


def line(
    stock_code: str = "85123A",
    *,
    quantity: int = 6,
    unit_price: str = "2.55",
    description: str | None = "WHITE HANGING HEART T-LIGHT HOLDER",
    **extra: Any,
) -> dict[str, Any]:
    """One `LineIn`; pass `line_no=` / `invoice_date=` to set them."""
    return {
        "stock_code": stock_code,
        "description": description,
        "quantity": quantity,
        "unit_price": unit_price,
        **extra,
    }


def invoice(
    invoice_no: str = "536365",
    *,
    invoice_date: str = "2010-12-01T08:26:00",
    country: str = "United Kingdom",
    lines: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An invoice body with two lines by default; pass `customer_id=` for POST /invoice and bulk."""
    if lines is None:
        lines = [
            line("85123A", line_no=1),
            line("71053", line_no=2, description="WHITE METAL LANTERN", unit_price="3.39"),
        ]
    return {
        "invoice_no": invoice_no,
        "invoice_date": invoice_date,
        "country": country,
        "lines": lines,
        **extra,
    }


def row_counts(engine: Engine) -> dict[str, int]:
    """How many customers, invoices and lines are stored."""
    with engine.connect() as connection:
        return {
            table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("customers", "invoices", "invoice_lines")
        }
