"""Invoices and their lines."""

from __future__ import annotations

from fastapi import HTTPException, Response, status

from api import crud, schemas
from api.deps import InvoiceNoPath, SecuredRouter, SessionDep, StockCodePath

router = SecuredRouter(tags=["invoices"])


@router.post(
    "/invoice",
    response_model=schemas.InvoicePublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Identical replay: the stored invoice"}, 409: {}},
)
def create_invoice(
    session: SessionDep, invoice: schemas.InvoiceWithCustomerCreate, response: Response
) -> schemas.InvoicePublic:
    """Create an invoice; `customer_id` is optional (the way in for invoices without a customer)."""
    stored, created = crud.create_invoice(session, invoice=invoice, customer_id=invoice.customer_id)
    if not created:
        response.status_code = status.HTTP_200_OK
    return stored


@router.get("/invoice/{invoice_no}", response_model=schemas.InvoicePublic)
def read_invoice(session: SessionDep, invoice_no: InvoiceNoPath) -> schemas.InvoicePublic:
    """One invoice with all its lines."""
    invoice = crud.get_invoice(session, invoice_no=invoice_no)
    if invoice is None:
        raise HTTPException(status_code=404, detail=f"invoice {invoice_no} not found")
    return invoice


@router.post(
    "/invoice/{invoice_no}/{stockcode}/",
    response_model=schemas.LinePublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Replay of a line with the same line_no and data"}, 404: {}, 409: {}},
)
def add_invoice_line(
    session: SessionDep,
    invoice_no: InvoiceNoPath,
    stockcode: StockCodePath,
    line: schemas.LineFields,
    response: Response,
) -> schemas.LinePublic:
    """Add a line with this stock code to the invoice; without `line_no` it gets the next number."""
    stored, created = crud.add_line(session, invoice_no=invoice_no, stock_code=stockcode, line=line)
    if not created:
        response.status_code = status.HTTP_200_OK
    return stored


@router.get("/invoice/{invoice_no}/{stockcode}/", response_model=list[schemas.LinePublic])
def read_invoice_lines(
    session: SessionDep, invoice_no: InvoiceNoPath, stockcode: StockCodePath
) -> list[schemas.LinePublic]:
    """The invoice's lines with this stock code (several lines can carry the same code)."""
    return crud.lines_by_stock_code(session, invoice_no=invoice_no, stock_code=stockcode)
