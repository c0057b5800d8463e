"""The job's paths: bulk writes and paged read-back."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from fastapi import Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from api import arrow_pages, arrow_writes, cache, models, schemas
from api.auth.security import READ
from api.core import representation
from api.core.fastjson import OrjsonRoute
from api.crud import customers, invoice_pages, invoice_store
from api.deps import SecuredRouter, SessionDep, requires
from api.routes.contract import DATA_ROUTE_ERRORS, AcceptHeader, add_head_route, negotiated_ok
from retail_contract import wire

logger = logging.getLogger(__name__)

router = SecuredRouter(tags=["bulk"], route_class=OrjsonRoute, responses=DATA_ROUTE_ERRORS)

StartQuery = Annotated[schemas.IsoDate | None, Query(description="First invoice day, inclusive")]
EndQuery = Annotated[
    schemas.IsoDate | None, Query(description="Last invoice day, inclusive (before `start`: no day)")
]
LimitQuery = Annotated[int, Query(ge=1, le=5000, description="Items per page")]
InvoiceCursorQuery = Annotated[
    str | None,
    Query(
        max_length=31,
        pattern=schemas.INVOICE_CURSOR_PATTERN,
        description="The previous page's `next_cursor` (`<invoice_day>_<invoice_no>` of its last invoice)",
    ),
]
CustomerCursorQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=models.CUSTOMER_ID_LENGTH,
        pattern=schemas.CUSTOMER_ID_PATTERN,
        description="The previous page's `next_cursor` (the last customer id of that page)",
    ),
]


@router.post("/bulk/customers", response_model=schemas.BulkCustomersResult)
def bulk_create_customers(
    request: Request, session: SessionDep, body: schemas.BulkCustomersCreate
) -> schemas.BulkCustomersResult:
    """Create the customers not stored yet; stored ones stay, differing countries are listed."""
    result = customers.bulk_create_customers(session, customers=body.customers)
    if result.created and cache.cache_of(request) is not None:
        # The result counts, it does not name: every id of the body, a superset of those created.
        cache.invalidate(
            request,
            (key for customer in body.customers for key in cache.customer_write_keys(customer.customer_id)),
        )
    return result


async def _raw_body(request: Request) -> bytes:
    return await request.body()


def bulk_create_invoices_arrow(
    request: Request, session: SessionDep, body: Annotated[bytes, Depends(_raw_body)]
) -> schemas.BulkInvoicesResult:
    """`POST /bulk/invoices` with an Arrow IPC stream body (api.arrow_writes); answers as JSON does."""
    try:
        invoices = arrow_writes.read_invoices(body)
    except arrow_writes.ArrowBodyError as error:
        raise RequestValidationError(error.errors) from None
    result = invoice_store.store_invoices(
        session, invoices, unknown_customer=invoice_store.unknown_bulk_customer
    )
    if result.created and cache.cache_of(request) is not None:
        cache.invalidate(request, _created_keys_arrow(invoices, set(result._created_nos)))
    _log_bulk_result(result)
    return result


def _created_keys_arrow(batch: invoice_store.InvoicesToStore, created: set[str]) -> list[str]:
    """The cache keys the invoices created from an Arrow body make stale."""
    assert isinstance(batch.lines, pa.Table)
    indexes = [index for index, invoice in enumerate(batch.invoices) if invoice.invoice_no in created]
    keys = [cache.invoice_key(batch.invoices[index].invoice_no) for index in indexes]
    customers = {batch.invoices[index].customer_id for index in indexes}
    keys += [cache.customer_invoices_key(customer_id) for customer_id in customers if customer_id]
    lines = batch.lines.filter(
        pc.is_in(batch.lines.column("invoice"), value_set=pa.array(indexes, pa.int64()))
    )
    keys += [cache.stock_code_key(code) for code in pc.unique(lines.column("stock_code")).to_pylist()]
    return keys


class BulkInvoicesRoute(OrjsonRoute):
    """`POST /bulk/invoices`: a JSON body goes to the declared endpoint (validated by its model), an
    Arrow stream (`Content-Type: application/vnd.apache.arrow.stream`) to `bulk_create_invoices_arrow`.

    FastAPI picks a route by path and method only, and would validate an Arrow body against the JSON
    model; one route with two handlers keeps one operation in the OpenAPI document, whose request body
    lists both media types. The Arrow handler is built as a route of its own with the same dependencies
    (the API key), so it is checked and answered exactly as the JSON one.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        json_handler = super().get_route_handler()
        arrow_handler = APIRoute(
            self.path,
            bulk_create_invoices_arrow,
            methods=["POST"],
            dependencies=self.dependencies,
            response_model=schemas.BulkInvoicesResult,
            dependency_overrides_provider=self.dependency_overrides_provider,
        ).get_route_handler()

        async def by_content_type(request: Request) -> Response:
            if arrow_writes.is_arrow(request.headers.get("content-type")):
                return await arrow_handler(request)
            return await json_handler(request)

        return by_content_type


_ARROW_BODY_DESCRIPTION = (
    "JSON (`BulkInvoicesCreate`), or an Arrow IPC stream (`Content-Type: "
    f"{wire.ARROW_STREAM}`): one row per invoice with columns `invoice_no` (string), `invoice_date` "
    "(timestamp[s] or timestamp[us], no time zone), `customer_id` (string, nullable), `country` (string) "
    "and `lines`, a list of structs `line_no` (int32), `stock_code` (string), `description` (string, "
    "nullable), `quantity` (int64), `unit_price` (decimal128(12, 3)), `invoice_date` (timestamp, nullable: "
    "the invoice's). Same limits, answers and content hash as JSON; errors name the JSON body's locations."
)


def bulk_create_invoices(
    request: Request, session: SessionDep, body: schemas.BulkInvoicesCreate
) -> schemas.BulkInvoicesResult:
    """Create many invoices with their lines in one transaction; replaying a batch stores nothing new."""
    result = invoice_store.bulk_create_invoices(session, invoices=body.invoices)
    if result.created and cache.cache_of(request) is not None:
        created = set(result._created_nos)
        cache.invalidate(
            request,
            (
                key
                for invoice in body.invoices
                if invoice.invoice_no in created
                for key in cache.invoice_write_keys(
                    invoice.invoice_no, [invoice.customer_id], (line["stock_code"] for line in invoice.lines)
                )
            ),
        )
    _log_bulk_result(result)
    return result


# Added here rather than with `@router.post`, which takes no route class of its own.
router.add_api_route(
    "/bulk/invoices",
    bulk_create_invoices,
    methods=["POST"],
    response_model=schemas.BulkInvoicesResult,
    responses={409: {"description": "Invoices stored with other content (`invoice_nos`); nothing stored"}},
    route_class_override=BulkInvoicesRoute,
    openapi_extra={
        "requestBody": {
            "description": _ARROW_BODY_DESCRIPTION,
            "content": {wire.ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)


def _log_bulk_result(result: schemas.BulkInvoicesResult) -> None:
    # Counts at INFO: on the full data one request names ~26,000 invoices, too many for every line of
    # the log. The numbers go to DEBUG, where an invoice can still be followed from the job's log (same
    # request_id) to what the service did with it.
    logger.info(
        "bulk invoices: %d created, %d unchanged, %d lines created",
        result.created,
        result.unchanged,
        result.lines_created,
    )
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "bulk invoices by number: %d created, %d unchanged",
            result.created,
            result.unchanged,
            extra={"invoices_created": result._created_nos, "invoices_unchanged": result._unchanged_nos},
        )


# It reads only: a client that may read may compare.
@router.post(
    "/bulk/invoices/compare", response_model=schemas.InvoiceHashComparison, dependencies=[requires(READ)]
)
def compare_invoices(session: SessionDep, body: schemas.InvoiceHashes) -> schemas.InvoiceHashComparison:
    """Compare content hashes with the stored invoices' (docs/design.md, "Content hash"): a rerun posts
    only the invoices that are not stored unchanged. Reads only; stores nothing."""
    return invoice_store.compare_invoice_hashes(session, hashes=body.invoices)


@router.get(
    "/invoices",
    response_model=schemas.InvoicePage,
    responses={
        **negotiated_ok({wire.ARROW_STREAM: {}}),
        200: {
            **negotiated_ok({wire.ARROW_STREAM: {}})[200],
            "description": (
                "The page as JSON (`InvoicePage`); as CSV (a row per line) or XML by `Accept`; or, when "
                f"`Accept` names `{wire.ARROW_STREAM}`, as one Arrow record batch of invoices with their "
                f"lines. CSV, XML and Arrow carry the next page's cursor in the `{wire.NEXT_CURSOR_HEADER}` "
                "header"
            ),
        },
    },
)
def read_invoices(
    session: SessionDep,
    start: StartQuery = None,
    end: EndQuery = None,
    limit: LimitQuery = 1000,
    cursor: InvoiceCursorQuery = None,
    accept: AcceptHeader = None,
) -> Response:
    """Invoices of the days [start, end] with their lines, ordered by (invoice_day, invoice_no)."""
    media_type = None if arrow_pages.wants_arrow(accept) else representation.choose(accept)
    if media_type is None:
        stream, next_cursor = invoice_pages.read_invoices_page_arrow(
            session, start=start, end=end, limit=limit, cursor=cursor
        )
        headers = {wire.NEXT_CURSOR_HEADER: next_cursor} if next_cursor is not None else None
        return Response(content=stream, media_type=wire.ARROW_STREAM, headers=headers)
    # Already JSON in the shape of `InvoicePage` (the response_model, which documents it).
    page = invoice_pages.read_invoices_page(session, start=start, end=end, limit=limit, cursor=cursor)
    if media_type == representation.JSON:
        return Response(content=page, media_type=representation.JSON, headers={"Vary": "Accept"})
    return _page_in(media_type, page, root="invoice_page")


@router.get("/customers", response_model=schemas.CustomerPage, responses=negotiated_ok())
def read_customers(
    session: SessionDep,
    start: StartQuery = None,
    end: EndQuery = None,
    limit: LimitQuery = 1000,
    cursor: CustomerCursorQuery = None,
    accept: AcceptHeader = None,
) -> Response:
    """Customers with an invoice in the days [start, end], ordered by customer_id; JSON, CSV (a row per
    customer, the next page's cursor in a header) or XML by `Accept`."""
    media_type = representation.choose(accept)
    page = customers.read_customers_page(session, start=start, end=end, limit=limit, cursor=cursor)
    body = page.model_dump_json().encode()
    if media_type == representation.JSON:
        return Response(content=body, media_type=representation.JSON, headers={"Vary": "Accept"})
    return _page_in(media_type, body, root="customer_page")


def _page_in(media_type: str, page: bytes, *, root: str) -> Response:
    """A page (`items`, `next_cursor`) as CSV (its items' rows; the cursor in a header) or XML."""
    cursor = orjson.loads(page).get("next_cursor")
    headers = {wire.NEXT_CURSOR_HEADER: cursor} if cursor is not None else None
    return representation.respond(
        page,
        media_type,
        root=root,
        rows=lambda document: representation.csv_rows(document["items"]),
        headers=headers,
    )


add_head_route(router, "/invoices", read_invoices)
add_head_route(router, "/customers", read_customers)
