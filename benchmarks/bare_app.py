"""The floor of `benchmarks/api_throughput.py`: what FastAPI + SQLAlchemy cost, and nothing else.

    BARE_DATABASE_URL=sqlite:////tmp/x.db .venv/bin/python -m uvicorn benchmarks.bare_app:app

One route per resource the service serves, over the same database file, written the way the FastAPI
and SQLAlchemy tutorials write it: a sync handler, a session per request from a dependency,
`session.get` or one `select`, a dict returned and encoded by FastAPI. No API key, no middleware, no
response model, no rate limit, no metrics, no logging: the service must come within 0.8 times this.

The answers carry the same fields and values as the service's (a price as its exact decimal string),
so the two do the same work per row.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from api.models import Customer, Invoice, InvoiceLine

engine = create_engine(
    os.environ.get("BARE_DATABASE_URL", "sqlite:///./retail.db"), connect_args={"check_same_thread": False}
)
sessions = sessionmaker(engine)
app = FastAPI(title="bare FastAPI + SQLAlchemy")


def get_session() -> Iterator[Session]:
    """A session per request, closed when the request is done."""
    with sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def _money(value: Decimal) -> str:
    return format(value, "f")


@app.get("/customer/{customer_id}")
def read_customer(customer_id: str, session: SessionDep) -> dict[str, Any]:
    """One customer."""
    customer = session.get(Customer, customer_id)
    if customer is None:
        raise HTTPException(404, "customer not found")
    return {"customer_id": customer.customer_id, "country": customer.country}


@app.get("/invoice/{invoice_no}")
def read_invoice(invoice_no: str, session: SessionDep) -> dict[str, Any]:
    """One invoice with its lines in line order."""
    invoice = session.get(Invoice, invoice_no)
    if invoice is None:
        raise HTTPException(404, "invoice not found")
    lines = session.scalars(
        select(InvoiceLine).where(InvoiceLine.invoice_no == invoice_no).order_by(InvoiceLine.line_no)
    )
    return {
        "invoice_no": invoice.invoice_no,
        "invoice_date": invoice.invoice_date.isoformat(),
        "invoice_day": invoice.invoice_day.isoformat(),
        "country": invoice.country,
        "customer_id": invoice.customer_id,
        "customer": {"url": f"/customer/{invoice.customer_id}"} if invoice.customer_id else None,
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
