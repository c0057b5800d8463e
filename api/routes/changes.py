"""The change feed (`GET /changes`, its head, and the WebSocket stream) and the service's own figures
per invoice day (`GET /invoice-days`): what a consumer such as the job's `sync` follows and checks."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from typing import Annotated, Any

import orjson
from fastapi import HTTPException, Query, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from api import schemas
from api.auth.deps import RateLimitExceeded, authorize_connection
from api.auth.security import READ
from api.crud import invoice_days
from api.deps import SecuredRouter, SessionDep
from api.errors import InvalidInputError
from api.events import feed
from api.routes.bulk import EndQuery, StartQuery
from api.routes.contract import DATA_ROUTE_ERRORS, add_head_route

logger = logging.getLogger(__name__)

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


def _engine(request: Request | WebSocket) -> Engine:
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


#: How often an idle stream looks for new changes.
STREAM_POLL_SECONDS = 0.5
#: Changes per read while a stream catches up.
STREAM_BATCH = 500
_CURSOR = re.compile(schemas.FEED_CURSOR_PATTERN)


@router.websocket("/changes/stream")
async def stream_changes(websocket: WebSocket, after: str = "0") -> None:
    """The feed over a WebSocket: after the handshake (101, with the credentials of any data request and
    the `read` scope), one text message per change, `ChangePublic` JSON in commit order, from `after`
    on; then each new change as it commits (polled every STREAM_POLL_SECONDS). To resume, reconnect with
    `after` = the last `position` received. A refused handshake is answered as HTTP (401, 403, 422 or a
    refused cursor's 400 / 410) where the server allows it, else closed with code 1008."""
    try:
        await authorize_connection(websocket, [READ])
    except HTTPException as error:
        await _deny(websocket, error.status_code, {"detail": error.detail}, error.headers)
        return
    except RateLimitExceeded as error:
        body = {"detail": str(error), "limit": error.limit, "retry_after": error.retry_after}
        await _deny(websocket, 429, body, {"Retry-After": str(error.retry_after)})
        return
    if not _CURSOR.fullmatch(after):
        refused = [
            {"type": "string_pattern_mismatch", "loc": ["query", "after"], "msg": "after is a position"}
        ]
        await _deny(websocket, 422, {"detail": refused})
        return
    engine = _engine(websocket)
    position = int(after)
    try:
        # The first read before the 101: an unknown or expired cursor is refused as GET /changes does.
        page = await run_in_threadpool(feed.read_changes, engine, after=position, limit=STREAM_BATCH)
    except InvalidInputError as error:
        detail: list[dict[str, Any]] = [{"type": error.error_type, "loc": list(error.loc), "msg": str(error)}]
        await _deny(websocket, error.status_code, {"detail": detail})
        return
    await websocket.accept()
    try:
        while True:
            for row in page.rows:
                await websocket.send_text(orjson.dumps(feed.change_document(row)).decode())
            position = page.next_position
            if not page.more and await _disconnected_within(websocket, STREAM_POLL_SECONDS):
                return
            page = await run_in_threadpool(feed.read_changes, engine, after=position, limit=STREAM_BATCH)
    except WebSocketDisconnect:
        return
    except (InvalidInputError, SQLAlchemyError) as error:
        # Retention overtook a stalled stream, or the database went away: the client reconnects.
        logger.warning("change stream closed at position %d: %s", position, error)
        await websocket.close(code=1011, reason=str(error)[:120])


async def _disconnected_within(websocket: WebSocket, seconds: float) -> bool:
    """Wait up to `seconds` for the client; True when it closed (what it sends is ignored)."""
    try:
        message = await asyncio.wait_for(websocket.receive(), timeout=seconds)
    except TimeoutError:
        return False
    return message["type"] == "websocket.disconnect"


async def _deny(
    websocket: WebSocket, status_code: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> None:
    """Refuse the handshake with an HTTP answer, or close with 1008 where the server cannot send one."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        answer = JSONResponse(body, status_code=status_code, headers=dict(headers or {}))
        await websocket.send_denial_response(answer)
    else:
        await websocket.close(code=1008, reason=str(body["detail"])[:120])
