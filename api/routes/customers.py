"""Customers: create, read, and the links to their invoices."""

from __future__ import annotations

from fastapi import HTTPException, Response, status

from api import crud, schemas
from api.deps import CustomerIdPath, SecuredRouter, SessionDep

router = SecuredRouter(tags=["customers"])


@router.post(
    "/customer",
    response_model=schemas.CustomerPublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Identical replay: the stored customer"}, 409: {}},
)
def create_customer(
    session: SessionDep, customer: schemas.CustomerCreate, response: Response
) -> schemas.CustomerPublic:
    """Create a customer; replaying the same body returns it with 200, another country is 409."""
    stored, created = crud.create_customer(session, customer=customer)
    if not created:
        response.status_code = status.HTTP_200_OK
    return stored


@router.get("/customer/{customer_id}", response_model=schemas.CustomerPublic)
def read_customer(session: SessionDep, customer_id: CustomerIdPath) -> schemas.CustomerPublic:
    """One customer."""
    customer = crud.get_customer(session, customer_id=customer_id)
    if customer is None:
        raise HTTPException(status_code=404, detail=f"customer {customer_id} not found")
    return customer


@router.post(
    "/customer/{customer_id}/invoice",
    response_model=schemas.InvoicePublic,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Identical replay: the stored invoice"}, 404: {}, 409: {}},
)
def create_customer_invoice(
    session: SessionDep, customer_id: CustomerIdPath, invoice: schemas.InvoiceCreate, response: Response
) -> schemas.InvoicePublic:
    """Create an invoice of the customer, with its lines; an identical replay stores nothing (200)."""
    stored, created = crud.create_invoice(
        session, invoice=invoice, customer_id=customer_id, customer_in_path=True
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return stored


@router.get(
    "/customer/{customer_id}/invoice",
    response_model=dict[str, str],
    responses={200: {"content": {"application/json": {"example": {"id_536365": "/invoice/536365"}}}}},
)
def read_customer_invoice_links(session: SessionDep, customer_id: CustomerIdPath) -> dict[str, str]:
    """Links to the customer's invoices: `{"id_536365": "/invoice/536365", ...}`."""
    return crud.customer_invoice_links(session, customer_id=customer_id)
