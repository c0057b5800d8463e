"""The change feed (`GET /changes`, its head, and the WebSocket stream) and the service's own figures
per invoice day (`GET /invoice-days`): what a consumer such as the job's `sync` follows and checks."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request, Response
from sqlalchemy import Engine

from api import schemas
from api.crud import invoice_days
from api.deps import SecuredRouter, SessionDep
from api.events import feed
from api.routes.bulk import EndQuery, StartQuery
from api.routes.contract import DATA_ROUTE_ERRORS, add_head_route

router = SecuredRouter(tags=["changes"], responses=DATA_ROUTE_ERRORS)

_CURSOR_ERROR = {"content": {"application/json": {"schema": {"type": "object", "required": ["detail"]}}}}
#: The answers of a refused cursor, besides a malformed one (422).
CURSOR_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Unknown `after`: past the feed's head (or a malformed request)", **_CURSOR_ERROR},
    410: {
        "description": "Expired `after`: retention deleted changes after it; read a snapshot",
        **_CURSOR_ERROR,
    },
}

AfterQuery = Annotated[
    str,
    Query(
        max_length=19,
        pattern=schemas.FEED_CURSOR_PATTERN,
        description="Changes after this position: the previous page's `next_cursor`, or the head's `cursor`; "
        "0 is the feed's start",
        examples=["0"],
    ),
]
ChangeLimitQuery = Annotated[int, Query(ge=1, le=feed.MAX_LIMIT, description="Changes per page")]


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


@router.get("/changes", response_model=schemas.ChangePage, responses=CURSOR_ERRORS)
def read_changes(request: Request, after: AfterQuery = "0", limit: ChangeLimitQuery = 1000) -> Response:
    """Every committed change of a customer, an invoice or a line after `after`, in commit order (see
    docs/feed.md): what changed, its invoice day, and the resource after the change (null: deleted).
    Continue with `after=next_cursor` while `more` is true; later, the same cursor gives what committed
    since. No change is skipped or given twice, whatever order transactions commit in."""
    page = feed.read_changes(_engine(request), after=int(after), limit=limit)
    return Response(content=feed.page_json(page), media_type="application/json")


@router.get("/changes/head", response_model=schemas.ChangeFeedHead)
def read_change_feed_head(request: Request) -> schemas.ChangeFeedHead:
    """The feed's head. Ask it, then read a snapshot (`GET /invoices`, `GET /customers`), then follow
    the feed from `cursor`: every change the snapshot missed comes after it (some it has may come again:
    apply them idempotently)."""
    head = feed.head(_engine(request))
    return schemas.ChangeFeedHead(
        position=head.position, cursor=str(head.position), purged_through=head.purged_through
    )


@router.get("/invoice-days", response_model=schemas.InvoiceDays)
def read_invoice_days(
    session: SessionDep, start: StartQuery = None, end: EndQuery = None
) -> schemas.InvoiceDays:
    """Per invoice day in [start, end] with an invoice: how many invoices and lines the service holds,
    and their amount (sum of quantity x unit_price, exact, as a string); computed by the database."""
    return schemas.InvoiceDays(days=invoice_days.invoice_day_totals(session, start=start, end=end))


add_head_route(router, "/changes", read_changes)
add_head_route(router, "/changes/head", read_change_feed_head)
add_head_route(router, "/invoice-days", read_invoice_days)
