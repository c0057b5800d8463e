"""Invoices and their lines."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status

from api import cache, crud, schemas
from api.deps import REQUIRE_API_KEY, InvoiceNoPath, SessionDep, StockCodePath, reading_rows

router = APIRouter(tags=["invoices"], dependencies=REQUIRE_API_KEY)


@router.post(
    "/invoice",
    response_model=schemas.InvoicePublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Identical replay: the stored invoice"}, 409: {}},
)
def create_invoice(
    request: Request, session: SessionDep, invoice: schemas.InvoiceWithCustomerCreate, response: Response
) -> schemas.InvoicePublic:
    """Create an invoice; `customer_id` is optional (the way in for invoices without a customer)."""
    stored, created = crud.create_invoice(session, invoice=invoice, customer_id=invoice.customer_id)
    if created:
        codes = (line["stock_code"] for line in invoice.lines)
        cache.invalidate(request, cache.invoice_write_keys(invoice.invoice_no, [invoice.customer_id], codes))
    else:
        response.status_code = status.HTTP_200_OK
    return stored


# A coroutine that awaits the cache and reads the database in the thread pool (see customers.py).
@router.get("/invoice/{invoice_no}", response_model=schemas.InvoicePublic)
async def read_invoice(request: Request, invoice_no: InvoiceNoPath) -> Response:
    """One invoice with all its lines."""
    found = await cache.read_through(
        request,
        cache.invoice_key(invoice_no),
        resource="invoice",
        load=reading_rows(request, crud.read_invoice_json, invoice_no=invoice_no),
    )
    if found is None:
        raise HTTPException(status_code=404, detail=f"invoice {invoice_no} not found")
    return found.response()


@router.post(
    "/invoice/{invoice_no}/{stockcode}/",
    response_model=schemas.LinePublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Replay of a line with the same line_no and data"}, 404: {}, 409: {}},
)
def add_invoice_line(
    request: Request,
    session: SessionDep,
    invoice_no: InvoiceNoPath,
    stockcode: StockCodePath,
    line: schemas.LineFields,
    response: Response,
) -> schemas.LinePublic:
    """Add a line with this stock code to the invoice; without `line_no` it gets the next number."""
    stored, created = crud.add_line(session, invoice_no=invoice_no, stock_code=stockcode, line=line)
    if created:
        # The invoice's customer does not change, nor does its list of invoices.
        cache.invalidate(request, cache.invoice_write_keys(invoice_no, [], [stockcode]))
    else:
        response.status_code = status.HTTP_200_OK
    return stored


@router.get("/invoice/{invoice_no}/{stockcode}/", response_model=list[schemas.LinePublic])
def read_invoice_lines(
    session: SessionDep, invoice_no: InvoiceNoPath, stockcode: StockCodePath
) -> list[schemas.LinePublic]:
    """The invoice's lines with this stock code (several lines can carry the same code)."""
    return crud.lines_by_stock_code(session, invoice_no=invoice_no, stock_code=stockcode)
