"""The yardstick of `benchmarks/api_throughput.py`: the leanest honest FastAPI read, and nothing else.

    BARE_DATABASE_URL=sqlite:////tmp/x.db .venv/bin/python -m uvicorn benchmarks.bare_app:app

One route per resource the service serves, over the same database file: a sync handler (FastAPI runs it
in its thread pool), a pooled connection checked out for the request, SQLAlchemy Core statements built
once (no ORM session, no dependency), a dict back, encoded by FastAPI. No API key, no middleware, no
response model, no rate limit, no metrics, no logging: the service's uncached reads must come within
0.9 times this (issue 32).

The answers carry the same fields and values as the service's (a price as its exact decimal string,
read through the model's `Money` type), so the two do the same work per row.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

from fastapi import FastAPI, HTTPException
from sqlalchemy import bindparam, create_engine, select

from api.models import Customer, Invoice, InvoiceLine

engine = create_engine(
    os.environ.get("BARE_DATABASE_URL", "sqlite:///./retail.db"), connect_args={"check_same_thread": False}
)
app = FastAPI(title="lean FastAPI + SQLAlchemy Core")

_CUSTOMER = select(Customer.customer_id, Customer.country).where(Customer.customer_id == bindparam("id"))
_INVOICE = select(
    Invoice.invoice_no, Invoice.invoice_date, Invoice.invoice_day, Invoice.country, Invoice.customer_id
).where(Invoice.invoice_no == bindparam("no"))
_LINES = (
    select(
        InvoiceLine.line_no,
        InvoiceLine.stock_code,
        InvoiceLine.description,
        InvoiceLine.quantity,
        InvoiceLine.unit_price,
        InvoiceLine.invoice_date,
    )
    .where(InvoiceLine.invoice_no == bindparam("no"))
    .order_by(InvoiceLine.line_no)
)


def _money(value: Decimal) -> str:
    return format(value, "f")


@app.get("/customer/{customer_id}")
def read_customer(customer_id: str) -> dict[str, Any]:
    """One customer."""
    with engine.connect() as connection:
        row = connection.execute(_CUSTOMER, {"id": customer_id}).first()
    if row is None:
        raise HTTPException(404, "customer not found")
    return {"customer_id": row.customer_id, "country": row.country}


@app.get("/invoice/{invoice_no}")
def read_invoice(invoice_no: str) -> dict[str, Any]:
    """One invoice with its lines in line order (both reads in one transaction, as the service's)."""
    with engine.connect() as connection:
        header = connection.execute(_INVOICE, {"no": invoice_no}).first()
        lines = connection.execute(_LINES, {"no": invoice_no}).all() if header is not None else []
    if header is None:
        raise HTTPException(404, "invoice not found")
    return {
        "invoice_no": header.invoice_no,
        "invoice_date": header.invoice_date.isoformat(),
        "invoice_day": header.invoice_day.isoformat(),
        "country": header.country,
        "customer_id": header.customer_id,
        "customer": {"url": f"/customer/{header.customer_id}"} if header.customer_id else None,
        "lines": [
            {
                "line_no": line.line_no,
                "stock_code": line.stock_code,
                "description": line.description,
                "quantity": line.quantity,
                "unit_price": _money(line.unit_price),
                "invoice_date": line.invoice_date.isoformat(),
            }
            for line in lines
        ],
    }
