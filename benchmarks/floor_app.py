"""The service with reads that cost nothing: the floor under which no read of the service can go.

    DATABASE_URL=sqlite:////tmp/x.db .venv/bin/python -m uvicorn benchmarks.floor_app:app

With `FLOOR_REDIS_URL` set (the `floor-redis` target), each read also awaits one `PING` to that Redis:
the least a read through a network cache can cost, whatever it asks.

The service's own app (`api.main.create_app`: every middleware, the credentials check, the rate limit,
content negotiation, the ETag's 304, the access log and metrics), with `GET /customer/{id}` and
`GET /invoice/{no}` answered from a dict filled at start-up with the bytes and ETags the service itself
reads (`read_customer_json`, `read_invoice_json`). A hit in the Redis cache does this plus one round
trip, so `benchmarks/api_throughput.py`'s `floor` target bounds what any cache can reach (issue 32).
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import Request, Response
from sqlalchemy import Engine, select

from api import schemas
from api.cache import CachedResponse
from api.core import etag, representation
from api.crud import customers as customer_crud
from api.crud import invoices as invoice_crud
from api.deps import CustomerIdPath, InvoiceNoPath, SecuredRouter
from api.errors import NotFoundError
from api.main import create_app
from api.models import Customer, Invoice
from api.routes.contract import AcceptHeader, IfNoneMatch, errors, get_with_head

app = create_app()


def _answers(engine: Engine) -> tuple[dict[str, CachedResponse], dict[str, CachedResponse]]:
    """Every customer's and invoice's answer, as the service reads it."""
    customers: dict[str, CachedResponse] = {}
    invoices: dict[str, CachedResponse] = {}
    with engine.connect() as connection:
        for customer_id in connection.scalars(select(Customer.customer_id)).all():
            body = customer_crud.read_customer_json(connection, customer_id=customer_id)
            if body is not None:
                customers[customer_id] = CachedResponse(body, etag.etag_of(body))
        for invoice_no in connection.scalars(select(Invoice.invoice_no)).all():
            body = invoice_crud.read_invoice_json(connection, invoice_no=invoice_no)
            if body is not None:
                invoices[invoice_no] = CachedResponse(body, etag.etag_of(body))
    return customers, invoices


CUSTOMERS, INVOICES = _answers(app.state.engine)
router = SecuredRouter()
_REDIS_URL = os.environ.get("FLOOR_REDIS_URL")
_redis: Any = None


async def _round_trip() -> None:
    """One PING to `FLOOR_REDIS_URL`, if set (a client made in the server's event loop)."""
    global _redis
    if _REDIS_URL is None:
        return
    if _redis is None:
        import redis.asyncio as aioredis

        _redis = aioredis.Redis.from_url(_REDIS_URL)
    await _redis.ping()


@get_with_head(
    router, "/customer/{customer_id}", response_model=schemas.CustomerPublic, responses=errors(404)
)
async def customer_from_memory(
    request: Request,
    customer_id: CustomerIdPath,
    if_none_match: IfNoneMatch = None,
    accept: AcceptHeader = None,
) -> Response:
    """`read_customer` with the read replaced by a dict lookup."""
    media_type = representation.choose(accept)
    await _round_trip()
    found = CUSTOMERS.get(customer_id)
    if found is None:
        raise NotFoundError(f"customer {customer_id} not found")
    return representation.respond(
        found.body, media_type, root="customer", method=request.method, if_none_match=if_none_match,
        json_etag=found.etag,
    )  # fmt: skip


@get_with_head(router, "/invoice/{invoice_no}", response_model=schemas.InvoicePublic, responses=errors(404))
async def invoice_from_memory(
    request: Request,
    invoice_no: InvoiceNoPath,
    if_none_match: IfNoneMatch = None,
    accept: AcceptHeader = None,
) -> Response:
    """`read_invoice` with the read replaced by a dict lookup."""
    media_type = representation.choose(accept)
    await _round_trip()
    found = INVOICES.get(invoice_no)
    if found is None:
        raise NotFoundError(f"invoice {invoice_no} not found")
    return representation.respond(
        found.body, media_type, root="invoice", method=request.method, if_none_match=if_none_match,
        json_etag=found.etag,
    )  # fmt: skip


# First in the routing table, ahead of the service's routes for the same paths. In place: the
# observability middleware holds this very list to name each request's route.
app.router.routes[:] = [*router.routes, *app.router.routes]
