"""The transactional outbox: events are rows of `outbox_events`, written in the transaction of the change.

An event is JSON:

    {"event_id": "<uuid4>", "type": "invoice.created", "occurred_at": "2026-11-27T20:41:00.123456Z",
     "data": {...the resource...}}

The writers (`api.crud`) build events with `customer_created`, `invoice_created_from`, `invoice_changed`,
`customer_updated`, `customer_deleted`, `invoice_updated`, `invoice_deleted` and store them with `record`;
the relay (`api.events.relay`) publishes them and sets `published_at`.
Timestamps in the table are naive UTC.

An event may carry a `FeedChange`: `record` then also writes a row of the change feed (`change_feed`,
read by `api.events.feed`) in the same transaction, with the resource's content after the change. The
published payload does not change.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any, NamedTuple, cast

import orjson
from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.orm import Session

from api.models import Change, OutboxEvent
from retail_contract.content_hash import money_text

CUSTOMER_CREATED = "customer.created"
INVOICE_CREATED = "invoice.created"
INVOICE_CHANGED = "invoice.changed"
CUSTOMER_UPDATED = "customer.updated"
CUSTOMER_DELETED = "customer.deleted"
INVOICE_UPDATED = "invoice.updated"
INVOICE_DELETED = "invoice.deleted"
EVENT_TYPES = (
    CUSTOMER_CREATED,
    INVOICE_CREATED,
    INVOICE_CHANGED,
    CUSTOMER_UPDATED,
    CUSTOMER_DELETED,
    INVOICE_UPDATED,
    INVOICE_DELETED,
)

OUTBOX = cast(Table, OutboxEvent.__table__)
CHANGES = cast(Table, Change.__table__)

# What a change did (`FeedChange.kind`), and to what (`FeedChange.resource`).
CREATED = "created"
REPLACED = "replaced"
PATCHED = "patched"
DELETED = "deleted"
CUSTOMER = "customer"
INVOICE = "invoice"
LINE = "line"
#: From this many events on, PostgreSQL gets them with COPY instead of an INSERT executemany.
COPY_THRESHOLD = 100


class FeedChange(NamedTuple):
    """What the change feed says of an event's change: kind, resource, id, days and content after it.

    A line's id is `<invoice_no>/<stock_code>`, its path in the API (`/invoice/{no}/{code}/`), and its
    content the lines that path answers after the change; an invoice's content is its GET body (lines
    included), a customer's likewise. `previous_invoice_day` is set when a change moved an invoice to
    another day, so a reader that rewrites whole days knows both.
    """

    kind: str
    resource: str
    resource_id: str
    invoice_day: dt.date | None
    content: str | None
    previous_invoice_day: dt.date | None = None


class Event(NamedTuple):
    """One event, ready to be stored: its id, its type (the routing key), its JSON text, and what the
    change feed says of it (None: not a change of the feed)."""

    event_id: str
    event_type: str
    payload: str
    created_at: dt.datetime
    change: FeedChange | None = None


def utcnow() -> dt.datetime:
    """Now, as naive UTC (the outbox's timestamps)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def make_event(
    event_type: str,
    data: dict[str, Any],
    *,
    now: dt.datetime | None = None,
    change: FeedChange | None = None,
) -> Event:
    """An event of `event_type` carrying `data` (JSON-ready: strings, numbers, None), and the feed's
    `change`."""
    created_at = now or utcnow()
    event_id = str(uuid.uuid4())
    envelope = {
        "event_id": event_id,
        "type": event_type,
        "occurred_at": created_at.isoformat(timespec="microseconds") + "Z",
        "data": data,
    }
    return Event(event_id, event_type, orjson.dumps(envelope).decode(), created_at, change)


def _customer_change(kind: str, customer_id: str, country: str | None) -> FeedChange:
    # The content is spelled as GET /customer/{id} spells it (`crud.customers.customer_json`).
    content = None if country is None else orjson.dumps({"customer_id": customer_id, "country": country})
    return FeedChange(kind, CUSTOMER, customer_id, None, content.decode() if content is not None else None)


def invoice_change(
    kind: str,
    invoice_no: str,
    invoice_day: dt.date,
    content: bytes | None,
    *,
    previous_invoice_day: dt.date | None = None,
) -> FeedChange:
    """The feed's change of an invoice; `content` is its GET body after the change (None: deleted)."""
    moved = previous_invoice_day if previous_invoice_day not in (None, invoice_day) else None
    text = content.decode() if content is not None else None
    return FeedChange(kind, INVOICE, invoice_no, invoice_day, text, moved)


def line_change(
    kind: str, invoice_no: str, stock_code: str, invoice_day: dt.date, content: bytes | None
) -> FeedChange:
    """The feed's change of the lines of one stock code of an invoice (`/invoice/{no}/{code}/`);
    `content` is what that GET answers after the change (None: no such line left)."""
    text = content.decode() if content is not None else None
    return FeedChange(kind, LINE, f"{invoice_no}/{stock_code}", invoice_day, text)


def customer_created(customer_id: str, country: str, *, now: dt.datetime | None = None) -> Event:
    """`customer.created`: `{"customer_id", "country"}`."""
    return make_event(
        CUSTOMER_CREATED,
        {"customer_id": customer_id, "country": country},
        now=now,
        change=_customer_change(CREATED, customer_id, country),
    )


def invoice_totals(lines: Iterable[tuple[int, Decimal]]) -> tuple[int, Decimal]:
    """The line count and amount (sum of quantity * unit_price) of lines given as (quantity, unit_price)."""
    line_count = 0
    amount = Decimal(0)
    for quantity, unit_price in lines:
        line_count += 1
        amount += quantity * unit_price
    return line_count, amount


def invoice_summary(
    *,
    invoice_no: str,
    customer_id: str | None,
    invoice_date: dt.datetime,
    country: str,
    line_count: int,
    amount: Decimal,
) -> dict[str, Any]:
    """The invoice header of an invoice event, from totals computed elsewhere (see `invoice_totals`).

    The bulk paths compute the totals their own way (Python for JSON bodies, Arrow kernels for Arrow
    ones); spelling the event here keeps the two paths' events identical.
    """
    return {
        "invoice_no": invoice_no,
        "customer_id": customer_id,
        "invoice_date": invoice_date.isoformat(),
        "invoice_day": invoice_date.date().isoformat(),
        "country": country,
        "line_count": line_count,
        "amount": money_text(amount),
    }


def invoice_data(
    *,
    invoice_no: str,
    customer_id: str | None,
    invoice_date: dt.datetime,
    country: str,
    lines: Iterable[tuple[int, Decimal]],
) -> dict[str, Any]:
    """The invoice header of an invoice event; `lines` are its lines' (quantity, unit_price)."""
    line_count, amount = invoice_totals(lines)
    return invoice_summary(
        invoice_no=invoice_no,
        customer_id=customer_id,
        invoice_date=invoice_date,
        country=country,
        line_count=line_count,
        amount=amount,
    )


def invoice_created_from(data: dict[str, Any], *, content: bytes, now: dt.datetime | None = None) -> Event:
    """`invoice.created` carrying `data`, an `invoice_summary`; `content` is the invoice's GET body."""
    change = invoice_change(CREATED, data["invoice_no"], dt.date.fromisoformat(data["invoice_day"]), content)
    return make_event(INVOICE_CREATED, data, now=now, change=change)


def invoice_changed(
    data: dict[str, Any], *, line_no: int, change: FeedChange, now: dt.datetime | None = None
) -> Event:
    """`invoice.changed`: the invoice header after a change, plus `added_line_no`, the line added;
    `change` is the feed's (a `line_change`)."""
    return make_event(INVOICE_CHANGED, {**data, "added_line_no": line_no}, now=now, change=change)


def customer_updated(
    customer_id: str, country: str, *, kind: str = REPLACED, now: dt.datetime | None = None
) -> Event:
    """`customer.updated` (PUT: `kind` replaced, or PATCH: patched): the customer after the change,
    `{"customer_id", "country"}`."""
    return make_event(
        CUSTOMER_UPDATED,
        {"customer_id": customer_id, "country": country},
        now=now,
        change=_customer_change(kind, customer_id, country),
    )


def customer_deleted(customer_id: str, country: str, *, now: dt.datetime | None = None) -> Event:
    """`customer.deleted`: the customer as it was, `{"customer_id", "country"}`."""
    return make_event(
        CUSTOMER_DELETED,
        {"customer_id": customer_id, "country": country},
        now=now,
        change=_customer_change(DELETED, customer_id, None),
    )


def invoice_updated(
    data: dict[str, Any],
    *,
    change: FeedChange,
    removed_line_nos: Sequence[int] = (),
    now: dt.datetime | None = None,
) -> Event:
    """`invoice.updated` (PUT, PATCH, or its lines of a stock code deleted): the header after the change
    (an `invoice_summary`), plus `removed_line_nos` when lines were deleted; `change` is the feed's."""
    payload = {**data, "removed_line_nos": list(removed_line_nos)} if removed_line_nos else data
    return make_event(INVOICE_UPDATED, payload, now=now, change=change)


def invoice_deleted(data: dict[str, Any], *, now: dt.datetime | None = None) -> Event:
    """`invoice.deleted`: the header of the invoice as it was (an `invoice_summary`)."""
    change = invoice_change(DELETED, data["invoice_no"], dt.date.fromisoformat(data["invoice_day"]), None)
    return make_event(INVOICE_DELETED, data, now=now, change=change)


#: The columns of a change feed row that `record` writes (the stamper fills in `position`).
_CHANGE_COLUMNS = (
    "event_id",
    "kind",
    "resource",
    "resource_id",
    "invoice_day",
    "previous_invoice_day",
    "content",
    "created_at",
)


def _change_row(event: Event) -> tuple[Any, ...]:
    change = event.change
    assert change is not None
    return (
        event.event_id,
        change.kind,
        change.resource,
        change.resource_id,
        change.invoice_day,
        change.previous_invoice_day,
        change.content,
        event.created_at,
    )


def record(session: Session, events: Sequence[Event]) -> None:
    """Store `events` in the session's open transaction, and the change feed's rows of those that carry
    a change: committed, or rolled back, with the change."""
    if not events:
        return
    changes = [_change_row(event) for event in events if event.change is not None]
    connection = session.connection()
    if connection.dialect.name == "postgresql" and len(events) >= COPY_THRESHOLD:
        # COPY in the same transaction: several times faster than INSERT for a bulk request's events.
        driver = connection.connection.driver_connection
        assert driver is not None
        statement = f"COPY {OUTBOX.name} (event_id, event_type, payload, created_at) FROM STDIN"
        with driver.cursor() as cursor:
            with cursor.copy(statement) as copy:
                for event in events:
                    copy.write_row(event[:4])
            if changes:
                columns = ", ".join(_CHANGE_COLUMNS)
                with cursor.copy(f"COPY {CHANGES.name} ({columns}) FROM STDIN") as copy:
                    for row in changes:
                        copy.write_row(row)
        return
    if changes:
        session.execute(insert(CHANGES), [dict(zip(_CHANGE_COLUMNS, row, strict=True)) for row in changes])
    session.execute(
        insert(OUTBOX),
        [
            {
                "event_id": event.event_id,
                "event_type": event.event_type,
                "payload": event.payload,
                "created_at": event.created_at,
            }
            for event in events
        ],
    )


# --- for the relay and for metrics ----------------------------------------------------------------


class PendingEvent(NamedTuple):
    seq: int
    event_id: str
    event_type: str
    payload: str


def has_unpublished(session: Session) -> bool:
    """Whether any event waits (one row read on the partial index)."""
    stmt = select(OutboxEvent.seq).where(OutboxEvent.published_at.is_(None)).limit(1)
    return session.execute(stmt).first() is not None


def claim_unpublished(session: Session, limit: int) -> list[PendingEvent]:
    """The oldest unpublished events, in order, locked for this transaction.

    On PostgreSQL the rows are locked with `FOR UPDATE SKIP LOCKED`: concurrent relays take disjoint
    batches. SQLite has one writer at a time; the caller holds the write lock (`begin_write`).
    """
    stmt = (
        select(OutboxEvent.seq, OutboxEvent.event_id, OutboxEvent.event_type, OutboxEvent.payload)
        .where(OutboxEvent.published_at.is_(None))
        .order_by(OutboxEvent.seq)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return [PendingEvent(*row) for row in session.execute(stmt)]


def mark_published(session: Session, seqs: Sequence[int], *, now: dt.datetime | None = None) -> None:
    """Set `published_at` of the events `seqs` (in the session's transaction)."""
    if seqs:
        session.execute(
            update(OutboxEvent).where(OutboxEvent.seq.in_(seqs)).values(published_at=now or utcnow())
        )


def delete_published_before(session: Session, cutoff: dt.datetime) -> int:
    """Delete the events published before `cutoff`; returns how many."""
    result = session.execute(
        delete(OutboxEvent).where(OutboxEvent.published_at.is_not(None), OutboxEvent.published_at < cutoff)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def outbox_depth(session: Session) -> int:
    """How many events wait to be published."""
    count = session.scalar(select(func.count()).select_from(OUTBOX).where(OutboxEvent.published_at.is_(None)))
    return int(count or 0)


def relay_lag_seconds(session: Session, *, now: dt.datetime | None = None) -> float:
    """Age in seconds of the oldest unpublished event; 0.0 when none waits."""
    unpublished = OutboxEvent.published_at.is_(None)
    oldest = session.scalar(select(func.min(OutboxEvent.created_at)).where(unpublished))
    if oldest is None:
        return 0.0
    return max(0.0, ((now or utcnow()) - oldest).total_seconds())
