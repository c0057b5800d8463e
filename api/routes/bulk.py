"""The job's paths: bulk writes and paged read-back."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query, Response

from api import crud, schemas
from api.deps import REQUIRE_API_KEY, SessionDep

router = APIRouter(tags=["bulk"], dependencies=REQUIRE_API_KEY)

StartQuery = Annotated[dt.date | None, Query(description="First invoice day, inclusive")]
EndQuery = Annotated[dt.date | None, Query(description="Last invoice day, inclusive")]
LimitQuery = Annotated[int, Query(ge=1, le=5000, description="Items per page")]
CursorQuery = Annotated[
    str | None, Query(max_length=512, description="The previous page's `next_cursor`; opaque")
]


@router.post("/bulk/customers", response_model=schemas.BulkCustomersResult)
def bulk_create_customers(
    session: SessionDep, body: schemas.BulkCustomersCreate
) -> schemas.BulkCustomersResult:
    """Create the customers not stored yet; stored ones stay, differing countries are listed."""
    return crud.bulk_create_customers(session, customers=body.customers)


@router.post(
    "/bulk/invoices",
    response_model=schemas.BulkInvoicesResult,
    responses={409: {"description": "Invoices stored with other content (`invoice_nos`); nothing stored"}},
)
def bulk_create_invoices(session: SessionDep, body: schemas.BulkInvoicesCreate) -> schemas.BulkInvoicesResult:
    """Create many invoices with their lines in one transaction; replaying a batch stores nothing new."""
    return crud.bulk_create_invoices(session, invoices=body.invoices)


@router.get("/invoices", response_model=schemas.InvoicePage)
def read_invoices(
    session: SessionDep,
    start: StartQuery = None,
    end: EndQuery = None,
    limit: LimitQuery = 1000,
    cursor: CursorQuery = None,
) -> Response:
    """Invoices of the days [start, end] with their lines, ordered by (invoice_day, invoice_no)."""
    # Already JSON in the shape of `InvoicePage` (the response_model, which documents it).
    page = crud.read_invoices_page(session, start=start, end=end, limit=limit, cursor=cursor)
    return Response(content=page, media_type="application/json")


@router.get("/customers", response_model=schemas.CustomerPage)
def read_customers(
    session: SessionDep,
    start: StartQuery = None,
    end: EndQuery = None,
    limit: LimitQuery = 1000,
    cursor: CursorQuery = None,
) -> schemas.CustomerPage:
    """Customers with an invoice in the days [start, end], ordered by customer_id."""
    return crud.read_customers_page(session, start=start, end=end, limit=limit, cursor=cursor)
