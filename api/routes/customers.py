"""Customers: create, read, and the links to their invoices."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, HTTPException, Request, Response, status
from sqlalchemy.orm import Session

from api import cache, crud, schemas
from api.deps import REQUIRE_API_KEY, CustomerIdPath, SessionDep, reading, reading_rows

router = APIRouter(tags=["customers"], dependencies=REQUIRE_API_KEY)


@router.post(
    "/customer",
    response_model=schemas.CustomerPublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Identical replay: the stored customer"}, 409: {}},
)
def create_customer(
    request: Request, session: SessionDep, customer: schemas.CustomerCreate, response: Response
) -> schemas.CustomerPublic:
    """Create a customer; replaying the same body returns it with 200, another country is 409."""
    stored, created = crud.create_customer(session, customer=customer)
    if created:
        cache.invalidate(request, cache.customer_write_keys(customer.customer_id))
    else:
        response.status_code = status.HTTP_200_OK
    return stored


# Resource GETs are coroutines that only await the cache and hand the database read to the thread
# pool once (`reading_rows`, `reading`): a plain `def` handler with its dependencies and response
# validation costs several thread hops per request. They return the JSON as bytes; `response_model`
# documents it.
@router.get("/customer/{customer_id}", response_model=schemas.CustomerPublic)
async def read_customer(request: Request, customer_id: CustomerIdPath) -> Response:
    """One customer."""
    found = await cache.read_through(
        request,
        cache.customer_key(customer_id),
        resource="customer",
        load=reading_rows(request, crud.read_customer_json, customer_id=customer_id),
    )
    if found is None:
        raise HTTPException(status_code=404, detail=f"customer {customer_id} not found")
    return found.response()


@router.post(
    "/customer/{customer_id}/invoice",
    response_model=schemas.InvoicePublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Identical replay: the stored invoice"}, 404: {}, 409: {}},
)
def create_customer_invoice(
    request: Request,
    session: SessionDep,
    customer_id: CustomerIdPath,
    invoice: schemas.InvoiceCreate,
    response: Response,
) -> schemas.InvoicePublic:
    """Create an invoice of the customer, with its lines; an identical replay stores nothing (200)."""
    stored, created = crud.create_invoice(
        session, invoice=invoice, customer_id=customer_id, customer_in_path=True
    )
    if created:
        codes = (line["stock_code"] for line in invoice.lines)
        cache.invalidate(request, cache.invoice_write_keys(invoice.invoice_no, [customer_id], codes))
    else:
        response.status_code = status.HTTP_200_OK
    return stored


@router.get(
    "/customer/{customer_id}/invoice",
    response_model=dict[str, str],
    responses={200: {"content": {"application/json": {"example": {"id_536365": "/invoice/536365"}}}}},
)
async def read_customer_invoice_links(request: Request, customer_id: CustomerIdPath) -> Response:
    """Links to the customer's invoices: `{"id_536365": "/invoice/536365", ...}`."""

    def links(session: Session) -> bytes:
        return orjson.dumps(crud.customer_invoice_links(session, customer_id=customer_id))

    found = await cache.read_through(
        request,
        cache.customer_invoices_key(customer_id),
        resource="customer_invoices",
        load=reading(request, links),
    )
    assert found is not None  # an unknown customer raised NotFoundError
    return found.response()
