"""Customers: create, read (GET and HEAD, with ETags), replace, patch, delete, and their invoice links."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Request, Response, status
from sqlalchemy.orm import Session

from api import cache, schemas
from api.core import etag, representation
from api.crud import customers as crud
from api.crud import invoices as invoice_crud
from api.deps import CustomerIdPath, SecuredRouter, SessionDep, reading, reading_rows
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

router = SecuredRouter(tags=["customers"], responses=DATA_ROUTE_ERRORS)


@router.post(
    "/customer",
    response_model=schemas.CustomerPublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Identical replay: the stored customer"}, **errors(409)},
)
def create_customer(request: Request, session: SessionDep, customer: schemas.CustomerCreate) -> Response:
    """Create a customer; replaying the same body returns it with 200, another country is 409."""
    body, created = crud.create_customer(session, customer=customer)
    if created:
        cache.invalidate(request, cache.customer_write_keys(customer.customer_id))
    return etag.json_response(body, status_code=201 if created else 200)


@get_with_head(
    router, "/customer/{customer_id}", response_model=schemas.CustomerPublic, responses=errors(404)
)
@cache.point_read("customer", "customer_id", cache.customer_key)
async def read_customer(
    request: Request,
    customer_id: CustomerIdPath,
    if_none_match: IfNoneMatch = None,
    accept: AcceptHeader = None,
) -> Response:
    """One customer, with its ETag; 304 when `If-None-Match` names it. JSON, CSV or XML by `Accept`."""
    media_type = representation.choose(accept)
    # Resource GETs are coroutines that await the cache and hand the database read to the thread pool
    # once (`reading_rows`, `reading`): a plain `def` handler with a session dependency costs several
    # thread hops per request. A cached entry carries the ETag of its bytes, so a hit answers 304 and
    # HEAD exactly as a read from the database does.
    found = await cache.read_through(
        request,
        cache.customer_key(customer_id),
        resource="customer",
        load=reading_rows(request, crud.read_customer_json, customer_id=customer_id),
        point_read=True,
        etag=etag.etag_of,
    )
    if found is None:
        raise NotFoundError(f"customer {customer_id} not found")
    return representation.respond(
        found.body,
        media_type,
        root="customer",
        method=request.method,
        if_none_match=if_none_match,
        json_etag=found.etag,
    )


@router.put(
    "/customer/{customer_id}",
    response_model=schemas.CustomerPublic,
    responses={201: {"description": "Created: there was no such customer"}, **errors(409, 412)},
)
def replace_customer(
    request: Request,
    session: SessionDep,
    customer_id: CustomerIdPath,
    customer: schemas.CustomerReplace,
    if_match: IfMatch = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Replace the customer (its country), or create it (201) when missing. `If-Match` guards against
    overwriting a change you have not seen; `If-None-Match: *` only creates."""
    body, created = crud.replace_customer(
        session, customer_id=customer_id, customer=customer, if_match=if_match, if_none_match=if_none_match
    )
    # After the commit, before the answer: no read that starts after it sees the customer as it was.
    cache.invalidate(request, cache.customer_write_keys(customer_id))
    return etag.json_response(body, status_code=201 if created else 200)


@router.patch(
    "/customer/{customer_id}",
    response_model=schemas.CustomerPublic,
    responses=errors(404, 412),
    openapi_extra=merge_patch_body(
        merge_patch_component("CustomerPatch", schemas.CustomerReplace), {"country": "Germany"}
    ),
)
def patch_customer(
    request: Request,
    session: SessionDep,
    customer_id: CustomerIdPath,
    patch: Annotated[dict[str, Any], Body(include_in_schema=False)],
    if_match: IfMatch = None,
) -> Response:
    """Change the customer with a JSON merge patch (RFC 7396): `{"country": "Germany"}`."""
    body = crud.patch_customer(session, customer_id=customer_id, patch=patch, if_match=if_match)
    cache.invalidate(request, cache.customer_write_keys(customer_id))
    return etag.json_response(body)


@router.delete(
    "/customer/{customer_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **errors(404, 412),
        409: {
            "description": "The customer has invoices (`invoice_nos`: the first of them, `invoice_count`)",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
    },
)
def delete_customer(
    request: Request, session: SessionDep, customer_id: CustomerIdPath, if_match: IfMatch = None
) -> Response:
    """Delete a customer without invoices; one with invoices is 409, naming them."""
    crud.delete_customer(session, customer_id=customer_id, if_match=if_match)
    cache.invalidate(request, cache.customer_write_keys(customer_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/customer/{customer_id}/invoice",
    response_model=schemas.InvoicePublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Identical replay: the stored invoice"}, **errors(404, 409)},
)
def create_customer_invoice(
    request: Request, session: SessionDep, customer_id: CustomerIdPath, invoice: schemas.InvoiceCreate
) -> Response:
    """Create an invoice of the customer, with its lines; an identical replay stores nothing (200).
    Without `country` the invoice has the customer's; a date alone is its midnight."""
    body, created = invoice_crud.create_invoice(
        session, invoice=invoice, customer_id=customer_id, customer_in_path=True
    )
    if created:
        codes = (line["stock_code"] for line in invoice.lines)
        cache.invalidate(request, cache.invoice_write_keys(invoice.invoice_no, [customer_id], codes))
    return etag.json_response(body, status_code=201 if created else 200)


@get_with_head(
    router,
    "/customer/{customer_id}/invoice",
    response_model=dict[str, str],
    responses={
        200: {"content": {"application/json": {"example": {"id_536365": "/invoice/536365"}}}},
        **errors(404),
    },
)
async def read_customer_invoice_links(
    request: Request,
    customer_id: CustomerIdPath,
    if_none_match: IfNoneMatch = None,
    accept: AcceptHeader = None,
) -> Response:
    """Links to the customer's invoices: `{"id_536365": "/invoice/536365", ...}` (CSV: a row per invoice,
    `invoice_no,url`). JSON, CSV or XML by `Accept`."""
    media_type = representation.choose(accept)

    def links(session: Session) -> bytes:
        return invoice_crud.to_json(crud.customer_invoice_links(session, customer_id=customer_id))

    # A coroutine that awaits the cache and reads the database in the thread pool (see read_customer).
    found = await cache.read_through(
        request,
        cache.customer_invoices_key(customer_id),
        resource="customer_invoices",
        load=reading(request, links),
        etag=etag.etag_of,
    )
    assert found is not None  # an unknown customer raised NotFoundError
    return representation.respond(
        found.body,
        media_type,
        root="invoice_links",
        method=request.method,
        if_none_match=if_none_match,
        json_etag=found.etag,
        rows=_link_rows,
    )


def _link_rows(links: dict[str, str]) -> list[dict[str, str]]:
    return [{"invoice_no": key.removeprefix("id_"), "url": url} for key, url in links.items()]
