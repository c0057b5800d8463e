"""What the resource modules share: write transactions, key lists, keyset cursors, row shapes.

Writes run in one transaction each (`writing`); on SQLite it begins with `BEGIN IMMEDIATE`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError
from sqlalchemy import ColumnElement, Connection, Row, String, Table, any_, select, text
from sqlalchemy import cast as cast_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import InstrumentedAttribute, Session

from api import schemas
from api.core.db import begin_write
from api.errors import InvalidBodyError
from api.models import Customer, Invoice, InvoiceLine
from retail_contract.content_hash import LineTuple

__all__ = ["LineTuple"]


#: Ids per `IN (...)` list: well below SQLite's 32,766 and PostgreSQL's 65,535 bind parameters.
IN_CHUNK = 5_000


LINE_COLUMNS = (
    InvoiceLine.line_no,
    InvoiceLine.stock_code,
    InvoiceLine.description,
    InvoiceLine.quantity,
    InvoiceLine.unit_price,
    InvoiceLine.invoice_date,
)


#: Their names, in the same order.
LINE_NAMES = tuple(column.name for column in LINE_COLUMNS)


#: The columns COPY fills for a new line (PostgreSQL's bulk path).
LINE_COPY_COLUMNS = (InvoiceLine.invoice_no, *LINE_COLUMNS)


INVOICE_COLUMNS = (
    Invoice.invoice_no,
    Invoice.invoice_date,
    Invoice.invoice_day,
    Invoice.country,
    Invoice.customer_id,
)


T = TypeVar("T")
Model = TypeVar("Model", bound=BaseModel)


AnyRow = Row[*tuple[Any, ...]]


CUSTOMERS = cast(Table, Customer.__table__)


INVOICES = cast(Table, Invoice.__table__)


INVOICE_LINES = cast(Table, InvoiceLine.__table__)


def connection_of(db: Session | Connection) -> Connection:
    """The connection a read runs on: a session's own, or the plain connection given."""
    return db.connection() if isinstance(db, Session) else db


@dataclass
class Touched:
    """What an invoice write changed besides the invoice it names, filled in under the write's lock with
    the state before and after it: the customers whose invoice links and the stock codes whose summaries
    it may have made stale (the cache invalidates them: `api.cache.invoice_write_keys`)."""

    customer_ids: set[str | None] = field(default_factory=set)
    stock_codes: set[str] = field(default_factory=set)


@contextmanager
def writing(session: Session) -> Iterator[None]:
    """One write transaction: committed when the block ends, rolled back when it raises."""
    with session.begin():
        begin_write(session)
        yield


def insert_ignoring_duplicates(session: Session, table: Table) -> Any:
    """`INSERT ... ON CONFLICT DO NOTHING` for the session's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"no INSERT ... ON CONFLICT DO NOTHING for {dialect}")


def chunks(values: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def key_chunks(session: Session, keys: Sequence[str]) -> Iterator[Sequence[str]]:
    """`keys` in the chunks one `among` condition takes: all at once on PostgreSQL, where they travel as
    one array, else `IN_CHUNK` at a time (SQLite limits the number of parameters of a statement)."""
    if session.get_bind().dialect.name == "postgresql":
        if keys:
            yield keys
        return
    yield from chunks(keys)


def among(session: Session, column: InstrumentedAttribute[str], keys: Sequence[str]) -> ColumnElement[bool]:
    """`column` is one of `keys`: `= ANY(<one text[] parameter>)` on PostgreSQL, an `IN` list elsewhere.

    An `IN` list is one bound parameter per key, and psycopg parses a statement with 5,000 of them in
    Python for every execution: that took about a fifth of the service's time in a full-data bulk load.
    """
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(cast_(list(keys), postgresql.ARRAY(String)))
    return column.in_(keys)


def stored_values(
    session: Session, key: InstrumentedAttribute[str], value: InstrumentedAttribute[str], keys: Sequence[str]
) -> dict[str, str]:
    """`{key: value}` of the stored rows whose `key` is among `keys`, read with chunked `IN` lists."""
    stored: dict[str, str] = {}
    for chunk in key_chunks(session, keys):
        stored.update(
            {row[0]: row[1] for row in session.execute(select(key, value).where(among(session, key, chunk)))}
        )
    return stored


def line_tuple(row: AnyRow) -> LineTuple:
    return (row.line_no, row.stock_code, row.description, row.quantity, row.unit_price, row.invoice_date)


def line_public(row: AnyRow | InvoiceLine) -> schemas.LinePublic:
    return {
        "line_no": row.line_no,
        "stock_code": row.stock_code,
        "description": row.description,
        "quantity": row.quantity,
        "unit_price": row.unit_price,
        "invoice_date": row.invoice_date,
    }


def invoice_dict(header: AnyRow, lines: list[schemas.LinePublic]) -> dict[str, Any]:
    return {
        "invoice_no": header.invoice_no,
        "invoice_date": header.invoice_date,
        "invoice_day": header.invoice_day,
        "country": header.country,
        "customer_id": header.customer_id,
        "customer": {"url": f"/customer/{header.customer_id}"} if header.customer_id is not None else None,
        "lines": lines,
    }


def lines_of(session: Session, invoice_nos: Sequence[str]) -> dict[str, list[LineTuple]]:
    """The lines of `invoice_nos` as tuples in `line_no` order, by invoice, fetched with `IN` lists
    (not one query per invoice)."""
    lines: dict[str, list[LineTuple]] = {invoice_no: [] for invoice_no in invoice_nos}
    look_lines_up_by_key(session)
    for chunk in key_chunks(session, list(lines)):
        # Core execution on the session's connection: plain rows, without the ORM's loading layer.
        rows = session.connection().execute(
            select(InvoiceLine.invoice_no, *LINE_COLUMNS)
            .where(among(session, InvoiceLine.invoice_no, chunk))
            .order_by(InvoiceLine.invoice_no, InvoiceLine.line_no)
        )
        # This loop runs once per line of the page (up to ~100,000): tuples, no per-line dict.
        for row in rows:
            lines[row[0]].append(tuple(row[1:]))  # type: ignore[arg-type]
    return lines


def look_lines_up_by_key(session: Session) -> None:
    """Make PostgreSQL find a page's lines through the primary key for the rest of the transaction.

    Right after a bulk load the table has no statistics yet (autovacuum analyses it up to a minute
    later), and the planner then reads all of `invoice_lines` for every page: 33 ms instead of 3 ms per
    page measured on the full data set, so the read-back grew with the square of the data. A page names
    at most 5,000 invoices, so the index is the right path whatever the statistics say.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL enable_seqscan = off"))


def invoices_with_lines(session: Session, headers: Sequence[AnyRow]) -> list[dict[str, Any]]:
    """The invoices of `headers` with their lines, as `InvoicePublic`-shaped dicts."""
    lines = lines_of(session, [header.invoice_no for header in headers])
    return [
        invoice_dict(
            header,
            [
                {
                    "line_no": line_no,
                    "stock_code": stock_code,
                    "description": description,
                    "quantity": quantity,
                    "unit_price": unit_price,
                    "invoice_date": invoice_date,
                }
                for line_no, stock_code, description, quantity, unit_price, invoice_date in lines[
                    header.invoice_no
                ]
            ],
        )
        for header in headers
    ]


def invoice_days(start: dt.date | None, end: dt.date | None) -> list[ColumnElement[bool]]:
    """Conditions for an invoice day in [start, end]; an open end is unbounded, and an end before the
    start is an empty range."""
    conditions: list[ColumnElement[bool]] = []
    if start is not None:
        conditions.append(Invoice.invoice_day >= start)
    if end is not None:
        conditions.append(Invoice.invoice_day <= end)
    return conditions


def require_path_identifier(field: str, in_body: str | None, in_path: str) -> None:
    """A body may name the resource its path names (a PUT or PATCH of what GET returned), only the same
    one: InvalidBodyError naming `field` otherwise."""
    if in_body is not None and in_body != in_path:
        raise InvalidBodyError(
            [
                {
                    "type": "identifier_mismatch",
                    "loc": ["body", field],
                    "msg": f"the path names {in_path!r}: leave this field out or give the same value",
                    "input": in_body,
                }
            ]
        )


def validate_body(model: type[Model], data: Any) -> Model:
    """`data` (a merge patch applied to a stored resource) as `model`; InvalidBodyError naming the
    fields (`["body", ...]`) when it is not valid."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InvalidBodyError(
            [{**detail, "loc": ["body", *detail["loc"]]} for detail in error.errors(include_url=False)]
        ) from None
