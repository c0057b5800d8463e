"""Invoices and their lines: create, read (GET and HEAD, with ETags), replace, patch, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Request, Response, status

from api import cache, schemas
from api.core import etag, representation
from api.crud import common
from api.crud import invoices as crud
from api.deps import InvoiceNoPath, SecuredRouter, SessionDep, StockCodePath, reading_rows
from api.errors import NotFoundError
from api.routes.contract import (
    DATA_ROUTE_ERRORS,
    AcceptHeader,
    IfMatch,
    IfNoneMatch,
    errors,
    get_with_head,
    merge_patch_body,
    merge_patch_component,
)

router = SecuredRouter(tags=["invoices"], responses=DATA_ROUTE_ERRORS)


@router.post(
    "/invoice",
    response_model=schemas.InvoicePublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Identical replay: the stored invoice"}, **errors(409)},
)
def create_invoice(
    request: Request, session: SessionDep, invoice: schemas.InvoiceWithCustomerCreate
) -> Response:
    """Create an invoice; `customer_id` is optional (the way in for invoices without a customer), and so
    is `country` when there is a customer (the invoice then has the customer's)."""
    body, created = crud.create_invoice(session, invoice=invoice, customer_id=invoice.customer_id)
    if created:
        codes = (line["stock_code"] for line in invoice.lines)
        cache.invalidate(request, cache.invoice_write_keys(invoice.invoice_no, [invoice.customer_id], codes))
    return etag.json_response(body, status_code=201 if created else 200)


@get_with_head(router, "/invoice/{invoice_no}", response_model=schemas.InvoicePublic, responses=errors(404))
@cache.point_read("invoice", "invoice_no", cache.invoice_key)
async def read_invoice(
    request: Request,
    invoice_no: InvoiceNoPath,
    if_none_match: IfNoneMatch = None,
    accept: AcceptHeader = None,
) -> Response:
    """One invoice with all its lines, with its ETag; 304 when `If-None-Match` names it. JSON, CSV (a
    row per line, the invoice's fields on each) or XML by `Accept`."""
    media_type = representation.choose(accept)
    # A coroutine that awaits the cache and reads the database in the thread pool once; a cached entry
    # carries its ETag (see api/routes/customers.py, read_customer).
    found = await cache.read_through(
        request,
        cache.invoice_key(invoice_no),
        resource="invoice",
        load=reading_rows(request, crud.read_invoice_json, invoice_no=invoice_no),
        point_read=True,
        etag=etag.etag_of,
    )
    if found is None:
        raise NotFoundError(f"invoice {invoice_no} not found")
    return representation.respond(
        found.body,
        media_type,
        root="invoice",
        method=request.method,
        if_none_match=if_none_match,
        json_etag=found.etag,
    )


def _invalidate_invoice(request: Request, invoice_no: str, touched: common.Touched) -> None:
    """After a write's commit, before its answer: the invoice, the invoice links of its customers and
    the summaries of its stock codes, as they were before the write and after it."""
    cache.invalidate(request, cache.invoice_write_keys(invoice_no, touched.customer_ids, touched.stock_codes))


@router.put(
    "/invoice/{invoice_no}",
    response_model=schemas.InvoicePublic,
    responses={201: {"description": "Created: there was no such invoice"}, **errors(409, 412)},
)
def replace_invoice(
    request: Request,
    session: SessionDep,
    invoice_no: InvoiceNoPath,
    invoice: schemas.InvoiceReplace,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Replace the invoice as a whole, its lines included, or create it (201) when missing. `If-Match`
    guards against overwriting a change you have not seen; `If-None-Match: *` only creates."""
    touched = common.Touched()
    body, created = crud.replace_invoice(
        session,
        invoice_no=invoice_no,
        invoice=invoice,
        if_match=if_match,
        if_none_match=if_none_match,
        touched=touched,
    )
    _invalidate_invoice(request, invoice_no, touched)
    return etag.json_response(body, status_code=201 if created else 200)


@router.patch(
    "/invoice/{invoice_no}",
    response_model=schemas.InvoicePublic,
    responses=errors(404, 409, 412),
    openapi_extra=merge_patch_body(
        merge_patch_component("InvoicePatch", schemas.InvoiceReplace, nullable=("lines",)),
        {"country": "France"},
    ),
)
def patch_invoice(
    request: Request,
    session: SessionDep,
    invoice_no: InvoiceNoPath,
    patch: Annotated[dict[str, Any], Body(include_in_schema=False)],
    if_match: IfMatch = None,
) -> Response:
    """Change the invoice with a JSON merge patch (RFC 7396); `lines`, an array, is replaced whole."""
    touched = common.Touched()
    body = crud.patch_invoice(session, invoice_no=invoice_no, patch=patch, if_match=if_match, touched=touched)
    _invalidate_invoice(request, invoice_no, touched)
    return etag.json_response(body)


@router.delete(
    "/invoice/{invoice_no}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404, 409, 412)
)
def delete_invoice(
    request: Request, session: SessionDep, invoice_no: InvoiceNoPath, if_match: IfMatch = None
) -> Response:
    """Delete the invoice with all its lines."""
    touched = common.Touched()
    crud.delete_invoice(session, invoice_no=invoice_no, if_match=if_match, touched=touched)
    _invalidate_invoice(request, invoice_no, touched)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/invoice/{invoice_no}/{stockcode}/",
    response_model=schemas.LinePublic,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "Replay of a line with the same line_no and data"},
        **errors(404, 409),
    },
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


@get_with_head(
    router,
    "/invoice/{invoice_no}/{stockcode}/",
    response_model=list[schemas.LinePublic],
    responses=errors(404),
)
def read_invoice_lines(
    request: Request,
    session: SessionDep,
    invoice_no: InvoiceNoPath,
    stockcode: StockCodePath,
    if_none_match: IfNoneMatch = None,
    accept: AcceptHeader = None,
) -> Response:
    """The invoice's lines with this stock code (several lines can carry the same code). JSON, CSV or
    XML by `Accept`."""
    media_type = representation.choose(accept)
    body = crud.lines_json(session, invoice_no=invoice_no, stock_code=stockcode)
    return representation.respond(
        body, media_type, root="lines", method=request.method, if_none_match=if_none_match
    )


@router.delete(
    "/invoice/{invoice_no}/{stockcode}/",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(404, 409, 412),
)
def delete_invoice_lines(
    request: Request,
    session: SessionDep,
    invoice_no: InvoiceNoPath,
    stockcode: StockCodePath,
    if_match: IfMatch = None,
) -> Response:
    """Delete the invoice's lines with this stock code; `If-Match` is the ETag of their GET."""
    crud.delete_lines(session, invoice_no=invoice_no, stock_code=stockcode, if_match=if_match)
    # The invoice and the code's summary change; its customer's list of invoices does not.
    cache.invalidate(request, cache.invoice_write_keys(invoice_no, [], [stockcode]))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
