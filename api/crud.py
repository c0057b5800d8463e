"""Data access: keyword-only functions over a Session, so the route handlers stay thin.

Writes run in one transaction each (`_writing`); on SQLite it begins with `BEGIN IMMEDIATE`.
Invoices carry `content_hash`, a sha256 of their canonical content, so a replayed invoice is compared
with one indexed read instead of reading and comparing all its lines.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar, cast

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    String,
    Table,
    any_,
    bindparam,
    distinct,
    exists,
    func,
    insert,
    select,
    text,
    tuple_,
)
from sqlalchemy import cast as cast_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import InstrumentedAttribute, Session

from api import arrow_pages, schemas
from api.core.db import begin_write
from api.errors import ConflictError, InvalidInputError, NotFoundError, ServiceError
from api.events import outbox
from api.models import Customer, Invoice, InvoiceLine

#: Ids per `IN (...)` list: well below SQLite's 32,766 and PostgreSQL's 65,535 bind parameters.
IN_CHUNK = 5_000

_LINE_COLUMNS = (
    InvoiceLine.line_no,
    InvoiceLine.stock_code,
    InvoiceLine.description,
    InvoiceLine.quantity,
    InvoiceLine.unit_price,
    InvoiceLine.invoice_date,
)
#: The columns COPY fills for a new line (PostgreSQL's bulk path).
_LINE_COPY_COLUMNS = (InvoiceLine.invoice_no, *_LINE_COLUMNS)
_INVOICE_COLUMNS = (
    Invoice.invoice_no,
    Invoice.invoice_date,
    Invoice.invoice_day,
    Invoice.country,
    Invoice.customer_id,
)

# The resource GETs' statements, built once: building a select per request (column comparisons,
# clause objects) cost about as much as running it on SQLite.
_CUSTOMER_BY_ID = select(Customer.customer_id, Customer.country).where(
    Customer.customer_id == bindparam("customer_id")
)
_INVOICE_BY_NO = select(*_INVOICE_COLUMNS).where(Invoice.invoice_no == bindparam("invoice_no"))
_LINES_OF_INVOICE = (
    select(*_LINE_COLUMNS)
    .where(InvoiceLine.invoice_no == bindparam("invoice_no"))
    .order_by(InvoiceLine.line_no)
)

T = TypeVar("T")
AnyRow = Row[*tuple[Any, ...]]

# Core tables: bulk writes go through Core executemany, not the ORM unit of work.
CUSTOMERS = cast(Table, Customer.__table__)
INVOICES = cast(Table, Invoice.__table__)
INVOICE_LINES = cast(Table, InvoiceLine.__table__)

#: (line_no, stock_code, description, quantity, unit_price, invoice_date)
LineTuple = tuple[int, str, str | None, int, Decimal, dt.datetime]


# --- helpers --------------------------------------------------------------------------------------


@contextmanager
def _writing(session: Session) -> Iterator[None]:
    """One write transaction: committed when the block ends, rolled back when it raises."""
    with session.begin():
        begin_write(session)
        yield


def _insert_ignoring_duplicates(session: Session, table: Table) -> Any:
    """`INSERT ... ON CONFLICT DO NOTHING` for the session's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"no INSERT ... ON CONFLICT DO NOTHING for {dialect}")


def _chunks(values: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _key_chunks(session: Session, keys: Sequence[str]) -> Iterator[Sequence[str]]:
    """`keys` in the chunks one `_among` condition takes: all at once on PostgreSQL, where they travel as
    one array, else `IN_CHUNK` at a time (SQLite limits the number of parameters of a statement)."""
    if session.get_bind().dialect.name == "postgresql":
        if keys:
            yield keys
        return
    yield from _chunks(keys)


def _among(session: Session, column: InstrumentedAttribute[str], keys: Sequence[str]) -> ColumnElement[bool]:
    """`column` is one of `keys`: `= ANY(<one text[] parameter>)` on PostgreSQL, an `IN` list elsewhere.

    An `IN` list is one bound parameter per key, and psycopg parses a statement with 5,000 of them in
    Python for every execution: that took about a fifth of the service's time in a full-data bulk load.
    """
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(cast_(list(keys), postgresql.ARRAY(String)))
    return column.in_(keys)


def content_hash(
    *,
    invoice_no: str,
    customer_id: str | None,
    invoice_date: dt.datetime,
    country: str,
    lines: Iterable[LineTuple],
) -> str:
    """sha256 of the canonical form of an invoice and its lines (in `line_no` order)."""
    canonical = [
        invoice_no,
        customer_id,
        invoice_date.isoformat(),
        country,
        [
            [no, code, description, quantity, schemas.money_text(price), date.isoformat()]
            for no, code, description, quantity, price, date in sorted(lines, key=lambda line: line[0])
        ],
    ]
    try:
        # orjson writes exactly what `json.dumps(..., ensure_ascii=False, separators=(",", ":"))` writes
        # for strings, ints and None (tests/api/test_content_hash.py), about three times faster.
        encoded = orjson.dumps(canonical)
    except TypeError:  # a string orjson refuses (a lone surrogate): the reference encoder decides
        encoded = json.dumps(canonical, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def _line_tuples(invoice: schemas.InvoiceCreate) -> list[LineTuple]:
    # The request schema has already numbered the lines and filled in their timestamps.
    return [
        (
            line["line_no"] or 0,
            line["stock_code"],
            line["description"],
            line["quantity"],
            line["unit_price"],
            line["invoice_date"] or invoice.invoice_date,
        )
        for line in invoice.lines
    ]


def _line_tuple(row: AnyRow) -> LineTuple:
    return (row.line_no, row.stock_code, row.description, row.quantity, row.unit_price, row.invoice_date)


def _line_public(row: AnyRow | InvoiceLine) -> schemas.LinePublic:
    return {
        "line_no": row.line_no,
        "stock_code": row.stock_code,
        "description": row.description,
        "quantity": row.quantity,
        "unit_price": row.unit_price,
        "invoice_date": row.invoice_date,
    }


def _invoice_dict(header: AnyRow, lines: list[schemas.LinePublic]) -> dict[str, Any]:
    return {
        "invoice_no": header.invoice_no,
        "invoice_date": header.invoice_date,
        "invoice_day": header.invoice_day,
        "country": header.country,
        "customer_id": header.customer_id,
        "customer": {"url": f"/customer/{header.customer_id}"} if header.customer_id is not None else None,
        "lines": lines,
    }


def _lines_of(session: Session, invoice_nos: Sequence[str]) -> dict[str, list[LineTuple]]:
    """The lines of `invoice_nos` as tuples in `line_no` order, by invoice, fetched with `IN` lists
    (not one query per invoice)."""
    lines: dict[str, list[LineTuple]] = {invoice_no: [] for invoice_no in invoice_nos}
    _look_lines_up_by_key(session)
    for chunk in _key_chunks(session, list(lines)):
        # Core execution on the session's connection: plain rows, without the ORM's loading layer.
        rows = session.connection().execute(
            select(InvoiceLine.invoice_no, *_LINE_COLUMNS)
            .where(_among(session, InvoiceLine.invoice_no, chunk))
            .order_by(InvoiceLine.invoice_no, InvoiceLine.line_no)
        )
        # This loop runs once per line of the page (up to ~100,000): tuples, no per-line dict.
        for row in rows:
            lines[row[0]].append(tuple(row[1:]))  # type: ignore[arg-type]
    return lines


def _look_lines_up_by_key(session: Session) -> None:
    """Make PostgreSQL find a page's lines through the primary key for the rest of the transaction.

    Right after a bulk load the table has no statistics yet (autovacuum analyses it up to a minute
    later), and the planner then reads all of `invoice_lines` for every page: 33 ms instead of 3 ms per
    page measured on the full data set, so the read-back grew with the square of the data. A page names
    at most 5,000 invoices, so the index is the right path whatever the statistics say.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL enable_seqscan = off"))


def _invoices_with_lines(session: Session, headers: Sequence[AnyRow]) -> list[dict[str, Any]]:
    """The invoices of `headers` with their lines, as `InvoicePublic`-shaped dicts."""
    lines = _lines_of(session, [header.invoice_no for header in headers])
    return [
        _invoice_dict(
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


# --- customers ------------------------------------------------------------------------------------


def get_customer(session: Session, *, customer_id: str) -> schemas.CustomerPublic | None:
    """The stored customer, or None."""
    customer = session.get(Customer, customer_id)
    if customer is None:
        return None
    return schemas.CustomerPublic(customer_id=customer.customer_id, country=customer.country)


def read_customer_json(connection: Connection, *, customer_id: str) -> bytes | None:
    """The stored customer as the JSON of `CustomerPublic`, or None.

    A resource GET returns these bytes as they are (and the cache keeps them): one Core query on a plain
    connection and one orjson call, instead of an ORM session (~55 µs a request on SQLite), ORM loading
    and response-model validation.
    """
    row = connection.execute(_CUSTOMER_BY_ID, {"customer_id": customer_id}).first()
    if row is None:
        return None
    return orjson.dumps({"customer_id": row.customer_id, "country": row.country})


def create_customer(
    session: Session, *, customer: schemas.CustomerCreate
) -> tuple[schemas.CustomerPublic, bool]:
    """Store `customer`; returns it and whether it was created (False: an identical replay).

    Raises ConflictError when the id is stored with another country.
    """
    with _writing(session):
        stmt = _insert_ignoring_duplicates(session, CUSTOMERS).returning(Customer.customer_id)
        created = session.execute(stmt, [customer.model_dump()]).first() is not None
        if created:
            outbox.record(session, [outbox.customer_created(customer.customer_id, customer.country)])
        stored = session.get(Customer, customer.customer_id)
    assert stored is not None  # inserted now, or there before
    if stored.country != customer.country:
        raise ConflictError(
            f"customer {customer.customer_id} exists with country {stored.country!r}, "
            f"not {customer.country!r}"
        )
    return schemas.CustomerPublic(customer_id=stored.customer_id, country=stored.country), created


def customer_invoice_links(session: Session, *, customer_id: str) -> dict[str, str]:
    """`{"id_<invoice_no>": "/invoice/<invoice_no>"}` for the customer's invoices, oldest first."""
    if session.get(Customer, customer_id) is None:
        raise NotFoundError(f"customer {customer_id} not found")
    invoice_nos = session.scalars(
        select(Invoice.invoice_no)
        .where(Invoice.customer_id == customer_id)
        .order_by(Invoice.invoice_day, Invoice.invoice_no)
    )
    return {f"id_{invoice_no}": f"/invoice/{invoice_no}" for invoice_no in invoice_nos}


def bulk_create_customers(
    session: Session, *, customers: Sequence[schemas.CustomerCreate]
) -> schemas.BulkCustomersResult:
    """Store the customers not stored yet; existing ones stay as they are.

    A customer keeps the first country posted: an id stored (or repeated in the request) with another
    country is listed in `conflicts`, which is not an error.
    """
    countries: dict[str, str] = {}
    conflicts: set[str] = set()
    for customer in customers:
        first = countries.setdefault(customer.customer_id, customer.country)
        if first != customer.country:
            conflicts.add(customer.customer_id)

    with _writing(session):
        stored = _stored_countries(session, list(countries))
        new_rows = [
            {"customer_id": customer_id, "country": country}
            for customer_id, country in sorted(countries.items())
            if customer_id not in stored
        ]
        inserted: set[str] = set()
        if new_rows:
            stmt = _insert_ignoring_duplicates(session, CUSTOMERS).returning(Customer.customer_id)
            inserted = set(session.scalars(stmt, new_rows))
            outbox.record(
                session,
                [
                    outbox.customer_created(row["customer_id"], row["country"])
                    for row in new_rows
                    if row["customer_id"] in inserted
                ],
            )
            # Another request stored some of them in the meantime: read what it stored.
            raced = [row["customer_id"] for row in new_rows if row["customer_id"] not in inserted]
            stored.update(_stored_countries(session, raced))

    for customer_id, country in countries.items():
        if customer_id in stored and stored[customer_id] != country:
            conflicts.add(customer_id)
    return schemas.BulkCustomersResult(
        created=len(inserted), existing=len(countries) - len(inserted), conflicts=sorted(conflicts)
    )


def _stored_countries(session: Session, customer_ids: Sequence[str]) -> dict[str, str]:
    return _stored_values(session, Customer.customer_id, Customer.country, customer_ids)


def _stored_values(
    session: Session, key: InstrumentedAttribute[str], value: InstrumentedAttribute[str], keys: Sequence[str]
) -> dict[str, str]:
    """`{key: value}` of the stored rows whose `key` is among `keys`, read with chunked `IN` lists."""
    stored: dict[str, str] = {}
    for chunk in _key_chunks(session, keys):
        stored.update(
            {row[0]: row[1] for row in session.execute(select(key, value).where(_among(session, key, chunk)))}
        )
    return stored


def read_customers_page(
    session: Session, *, start: dt.date | None, end: dt.date | None, limit: int, cursor: str | None
) -> schemas.CustomerPage:
    """Customers with an invoice whose day is in [start, end], ordered by customer_id, one page."""
    has_invoice = select(Invoice.invoice_no).where(
        Invoice.customer_id == Customer.customer_id, *_invoice_days(start, end)
    )
    stmt = select(Customer.customer_id, Customer.country).where(exists(has_invoice))
    if cursor is not None:
        (after,) = _decode_cursor(cursor, kind="c", parts=(_matching(schemas.CUSTOMER_ID_PATTERN),))
        stmt = stmt.where(Customer.customer_id > after)
    rows = session.execute(stmt.order_by(Customer.customer_id).limit(limit + 1)).all()
    next_cursor = _encode_cursor("c", rows[limit - 1].customer_id) if len(rows) > limit else None
    return schemas.CustomerPage.model_validate(
        {
            "items": [{"customer_id": row.customer_id, "country": row.country} for row in rows[:limit]],
            "next_cursor": next_cursor,
        }
    )


# --- invoices -------------------------------------------------------------------------------------


def get_invoice(session: Session, *, invoice_no: str) -> schemas.InvoicePublic | None:
    """The stored invoice with its lines, or None."""
    header = session.execute(select(*_INVOICE_COLUMNS).where(Invoice.invoice_no == invoice_no)).first()
    if header is None:
        return None
    return schemas.InvoicePublic.model_validate(_invoices_with_lines(session, [header])[0])


def read_invoice_json(connection: Connection, *, invoice_no: str) -> bytes | None:
    """The stored invoice with its lines as the JSON of `InvoicePublic` (spelled as `_page_json`
    spells a page's invoices), or None. Both reads are in one transaction: the lines match the header."""
    header = connection.execute(_INVOICE_BY_NO, {"invoice_no": invoice_no}).first()
    if header is None:
        return None
    lines = [_line_public(row) for row in connection.execute(_LINES_OF_INVOICE, {"invoice_no": invoice_no})]
    return _page_json(_invoice_dict(header, lines))


def create_invoice(
    session: Session,
    *,
    invoice: schemas.InvoiceCreate,
    customer_id: str | None,
    customer_in_path: bool = False,
) -> tuple[schemas.InvoicePublic, bool]:
    """Store one invoice with its lines; returns the stored invoice and whether it was created.

    An identical replay stores nothing (False). Raises ConflictError when the number is stored with
    other content; an unknown customer is a NotFoundError when it came in the path, else an
    InvalidInputError on the body's `customer_id`.
    """

    def unknown_customer(_index: int, customer_id: str) -> ServiceError:
        if customer_in_path:
            return NotFoundError(f"customer {customer_id} not found")
        return _unknown_customer(customer_id, loc=("body", "customer_id"))

    result = store_invoices(
        session, invoices_to_store([(invoice, customer_id)]), unknown_customer=unknown_customer
    )
    stored = get_invoice(session, invoice_no=invoice.invoice_no)
    assert stored is not None  # just stored, or stored before
    return stored, result.created == 1


def bulk_create_invoices(
    session: Session, *, invoices: Sequence[schemas.InvoiceWithCustomerCreate]
) -> schemas.BulkInvoicesResult:
    """Store many invoices and their lines in one transaction; see `store_invoices`."""
    return store_invoices(
        session,
        invoices_to_store([(invoice, invoice.customer_id) for invoice in invoices]),
        unknown_customer=unknown_bulk_customer,
    )


def unknown_bulk_customer(index: int, customer_id: str) -> InvalidInputError:
    """The error for an unknown customer at position `index` of a bulk body."""
    return _unknown_customer(customer_id, loc=("body", "invoices", index, "customer_id"))


def _unknown_customer(customer_id: str, *, loc: tuple[str | int, ...]) -> InvalidInputError:
    return InvalidInputError(
        f"customer {customer_id} not found: create it first", loc=loc, error_type="unknown_customer"
    )


class InvoiceToStore(NamedTuple):
    """One invoice of a write, as `store_invoices` needs it: the header, the content hash, and the line
    count and amount its `invoice.created` event carries."""

    invoice_no: str
    customer_id: str | None
    invoice_date: dt.datetime
    country: str
    content_hash: str
    line_count: int
    amount: Decimal


@dataclass(frozen=True)
class InvoicesToStore:
    """The invoices of one write, in request order, ready to store: what both bulk bodies become.

    `lines` holds their lines either per invoice as `LineTuple` lists (a JSON body, parsed into Python
    objects anyway) or as one flat Arrow table (an Arrow body: `arrow_writes.STORED_LINE_SCHEMA`, whose
    `invoice` column is the position of the line's invoice in `invoices`), so an Arrow body's lines reach
    the database without a Python object per value.
    """

    invoices: Sequence[InvoiceToStore]
    lines: Sequence[Sequence[LineTuple]] | pa.Table


def invoices_to_store(entries: Sequence[tuple[schemas.InvoiceCreate, str | None]]) -> InvoicesToStore:
    """Validated JSON invoices (each with its customer id) as `InvoicesToStore`."""
    # Each invoice's lines as tuples once: they are hashed, then (when new) copied into the table.
    line_tuples = [_line_tuples(invoice) for invoice, _customer_id in entries]
    invoices = []
    for (invoice, customer_id), lines in zip(entries, line_tuples, strict=True):
        line_count, amount = outbox.invoice_totals((line[3], line[4]) for line in lines)
        hashed = content_hash(
            invoice_no=invoice.invoice_no,
            customer_id=customer_id,
            invoice_date=invoice.invoice_date,
            country=invoice.country,
            lines=lines,
        )
        invoices.append(
            InvoiceToStore(
                invoice.invoice_no,
                customer_id,
                invoice.invoice_date,
                invoice.country,
                hashed,
                line_count,
                amount,
            )
        )
    return InvoicesToStore(invoices=invoices, lines=line_tuples)


def store_invoices(
    session: Session,
    batch: InvoicesToStore,
    *,
    unknown_customer: Callable[[int, str], ServiceError],
) -> schemas.BulkInvoicesResult:
    """Store the invoices not stored yet, all or nothing.

    An invoice stored with the same content counts as unchanged; one stored (or repeated in the
    request) with other content makes the whole request a ConflictError naming those invoice numbers.
    An unknown customer is `unknown_customer(position, customer_id)`. Counts are per distinct invoice
    number.
    """
    invoices = batch.invoices
    first_index: dict[str, int] = {}
    conflicts: set[str] = set()
    for index, invoice in enumerate(invoices):
        first = first_index.setdefault(invoice.invoice_no, index)
        if invoices[first].content_hash != invoice.content_hash:
            conflicts.add(invoice.invoice_no)

    with _writing(session):
        _require_customers(session, [invoice.customer_id for invoice in invoices], unknown_customer)
        stored = _stored_hashes(session, list(first_index))
        conflicts.update(
            no
            for no, index in first_index.items()
            if stored.get(no, invoices[index].content_hash) != invoices[index].content_hash
        )
        if conflicts:
            raise _invoice_conflict(conflicts)

        # Sorted, so concurrent writers lock rows in the same order and cannot deadlock.
        new = sorted((no, index) for no, index in first_index.items() if no not in stored)
        inserted: set[str] = set()
        if new:
            headers = [
                {
                    "invoice_no": invoice_no,
                    "customer_id": invoices[index].customer_id,
                    "invoice_date": invoices[index].invoice_date,
                    "invoice_day": invoices[index].invoice_date.date(),
                    "country": invoices[index].country,
                    "content_hash": invoices[index].content_hash,
                }
                for invoice_no, index in new
            ]
            inserted = _insert_invoice_headers(session, headers)
            # Another request stored some of them in the meantime: identical is fine, other is 409.
            raced = [no for no, _index in new if no not in inserted]
            raced_hashes = _stored_hashes(session, raced)
            conflicts.update(
                no for no in raced if raced_hashes.get(no) != invoices[first_index[no]].content_hash
            )
            if conflicts:
                raise _invoice_conflict(conflicts)

        created = [index for no, index in new if no in inserted]
        lines_created = _insert_lines_of(session, batch, created)
        # One invoice.created per invoice inserted now: a replay (unchanged) emits nothing.
        outbox.record(session, [outbox.invoice_created_from(_event_data(invoices[i])) for i in created])

    result = schemas.BulkInvoicesResult(
        created=len(inserted), unchanged=len(first_index) - len(inserted), lines_created=lines_created
    )
    result._created_nos = sorted(inserted)
    result._unchanged_nos = sorted(no for no in first_index if no not in inserted)
    return result


def _event_data(invoice: InvoiceToStore) -> dict[str, Any]:
    return outbox.invoice_summary(
        invoice_no=invoice.invoice_no,
        customer_id=invoice.customer_id,
        invoice_date=invoice.invoice_date,
        country=invoice.country,
        line_count=invoice.line_count,
        amount=invoice.amount,
    )


def _insert_lines_of(session: Session, batch: InvoicesToStore, indexes: Sequence[int]) -> int:
    """Insert the lines of the invoices at `indexes` of `batch`; returns how many."""
    if isinstance(batch.lines, pa.Table):
        return _insert_arrow_lines(session, batch, indexes)
    rows = [(batch.invoices[index].invoice_no, *line) for index in indexes for line in batch.lines[index]]
    if rows:
        _insert_lines(session, rows)
    return len(rows)


def _insert_arrow_lines(session: Session, batch: InvoicesToStore, indexes: Sequence[int]) -> int:
    """Insert the lines of an Arrow body's invoices at `indexes`: COPY from CSV that Arrow writes on
    PostgreSQL (no Python object per value, as in the no-HTTP floor), executemany elsewhere."""
    assert isinstance(batch.lines, pa.Table)
    lines = batch.lines.filter(
        pc.is_in(batch.lines.column("invoice"), value_set=pa.array(indexes, pa.int64()))
    )
    if not lines.num_rows:
        return 0
    numbers = pa.array([invoice.invoice_no for invoice in batch.invoices], pa.string())
    table = pa.table(
        [pc.take(numbers, lines.column("invoice"))] + [lines.column(column.name) for column in _LINE_COLUMNS],
        names=[column.name for column in _LINE_COPY_COLUMNS],
    )
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        session.execute(insert(INVOICE_LINES), table.to_pylist())
        return table.num_rows
    buffer = io.BytesIO()
    # CSV as PostgreSQL reads it: a null is written unquoted-empty (NULL), an empty string quoted ('').
    pacsv.write_csv(table, buffer, pacsv.WriteOptions(include_header=False))
    driver = connection.connection.driver_connection
    assert driver is not None
    statement = f"COPY {INVOICE_LINES.name} ({', '.join(table.column_names)}) FROM STDIN (FORMAT csv)"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        copy.write(buffer.getbuffer())
    return table.num_rows


def compare_invoice_hashes(session: Session, *, hashes: dict[str, str]) -> schemas.InvoiceHashComparison:
    """Which of the invoices are stored with exactly the content `hashes` names, stored otherwise, or
    not stored: one indexed read, so a client can skip posting what the service already holds."""
    stored = _stored_hashes(session, sorted(hashes))
    unchanged, different, missing = [], [], []
    for invoice_no in sorted(hashes):
        stored_hash = stored.get(invoice_no)
        if stored_hash is None:
            missing.append(invoice_no)
        elif stored_hash == hashes[invoice_no]:
            unchanged.append(invoice_no)
        else:
            different.append(invoice_no)
    return schemas.InvoiceHashComparison(unchanged=unchanged, different=different, missing=missing)


def _insert_invoice_headers(session: Session, headers: Sequence[dict[str, Any]]) -> set[str]:
    """Insert invoice headers, skipping numbers another request stored meanwhile; returns those inserted.

    On PostgreSQL this is one `INSERT ... SELECT FROM unnest(<one array per column>)`: the multi-row
    VALUES that SQLAlchemy renders for ~26,000 headers cost a tenth of the service's time in the
    full-data benchmark, mostly in parsing the long statement's placeholders.
    """
    if session.get_bind().dialect.name != "postgresql":
        stmt = _insert_ignoring_duplicates(session, INVOICES).returning(Invoice.invoice_no)
        return set(session.scalars(stmt, headers))
    columns = ", ".join(_HEADER_ARRAY_TYPES)
    arrays = ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in _HEADER_ARRAY_TYPES.items())
    statement = text(
        f"INSERT INTO {INVOICES.name} ({columns}) SELECT * FROM unnest({arrays}) "
        "ON CONFLICT DO NOTHING RETURNING invoice_no"
    )
    values = {name: [header[name] for header in headers] for name in _HEADER_ARRAY_TYPES}
    return set(session.scalars(statement, values))


#: The invoice header columns and their PostgreSQL types, for `_insert_invoice_headers`.
_HEADER_ARRAY_TYPES = {
    "invoice_no": "varchar",
    "customer_id": "varchar",
    "invoice_date": "timestamp",
    "invoice_day": "date",
    "country": "varchar",
    "content_hash": "varchar",
}


def _insert_lines(session: Session, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert new lines (tuples in `_LINE_COPY_COLUMNS` order) in the session's transaction: COPY on
    PostgreSQL, executemany elsewhere.

    The lines belong to invoices inserted just now in this transaction, so no row can collide and COPY
    (several times faster than INSERT for tens of thousands of rows) changes nothing of what is stored;
    a failure still rolls back the whole request.
    """
    connection = session.connection()
    names = [column.name for column in _LINE_COPY_COLUMNS]
    if connection.dialect.name != "postgresql":
        session.execute(insert(INVOICE_LINES), [dict(zip(names, row, strict=True)) for row in rows])
        return
    driver = connection.connection.driver_connection
    assert driver is not None
    statement = f"COPY {INVOICE_LINES.name} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        # Binary COPY with declared types: psycopg's C dumpers, no per-value type lookup or text escaping.
        copy.set_types(_LINE_COPY_TYPES)
        for row in rows:
            copy.write_row(row)


#: PostgreSQL types of `_LINE_COPY_COLUMNS`, in order (binary COPY needs them exactly).
_LINE_COPY_TYPES = ["varchar", "int4", "varchar", "varchar", "int8", "numeric", "timestamp"]


def _invoice_conflict(invoice_nos: Iterable[str]) -> ConflictError:
    ordered = sorted(invoice_nos)
    shown = ", ".join(ordered[:20]) + (", ..." if len(ordered) > 20 else "")
    return ConflictError(
        f"{len(ordered)} invoice(s) already stored with other content: {shown}; nothing was stored",
        invoice_nos=ordered,
    )


def _require_customers(
    session: Session,
    customer_ids: Sequence[str | None],
    unknown_customer: Callable[[int, str], ServiceError],
) -> None:
    wanted = sorted({customer_id for customer_id in customer_ids if customer_id is not None})
    known: set[str] = set()
    for chunk in _key_chunks(session, wanted):
        known.update(
            session.scalars(select(Customer.customer_id).where(_among(session, Customer.customer_id, chunk)))
        )
    for index, customer_id in enumerate(customer_ids):
        if customer_id is not None and customer_id not in known:
            raise unknown_customer(index, customer_id)


def _stored_hashes(session: Session, invoice_nos: Sequence[str]) -> dict[str, str]:
    return _stored_values(session, Invoice.invoice_no, Invoice.content_hash, invoice_nos)


def read_invoices_page(
    session: Session, *, start: dt.date | None, end: dt.date | None, limit: int, cursor: str | None
) -> bytes:
    """Invoices whose day is in [start, end] ordered by (invoice_day, invoice_no), with their lines:
    an `InvoicePage` as JSON.

    Two queries per page: the invoice headers (keyset on the index), then all their lines with `IN`.
    The page is serialised straight from the rows (see `_page_json`), not through `InvoicePage`.
    """
    headers, next_cursor = _invoice_page_headers(session, start=start, end=end, limit=limit, cursor=cursor)
    return _page_json({"items": _invoices_with_lines(session, headers), "next_cursor": next_cursor})


def read_invoices_page_arrow(
    session: Session, *, start: dt.date | None, end: dt.date | None, limit: int, cursor: str | None
) -> tuple[bytes, str | None]:
    """The same page as `read_invoices_page`, as an Arrow IPC stream (`api.arrow_pages`), and the
    cursor of the next page (None: this is the last)."""
    headers, next_cursor = _invoice_page_headers(session, start=start, end=end, limit=limit, cursor=cursor)
    invoice_nos = [header.invoice_no for header in headers]
    connection = session.connection()
    if connection.dialect.name == "postgresql" and invoice_nos:
        # COPY out as CSV, parsed by Arrow: no Python object per value (the floor's way of reading).
        driver = connection.connection.driver_connection
        assert driver is not None
        _look_lines_up_by_key(session)
        columns = ", ".join(column.name for column in _LINE_COPY_COLUMNS)
        query = (
            f"COPY (SELECT {columns} FROM {INVOICE_LINES.name} WHERE invoice_no = ANY(%s::varchar[])) "
            "TO STDOUT (FORMAT csv)"
        )
        with driver.cursor() as db_cursor, db_cursor.copy(query, [invoice_nos]) as copy:
            lines = arrow_pages.flat_lines_from_csv(b"".join(bytes(chunk) for chunk in copy))
    else:
        lines = arrow_pages.flat_lines_from_rows(_lines_of(session, invoice_nos))
    return arrow_pages.invoice_page_stream(headers, lines), next_cursor


def _invoice_page_headers(
    session: Session, *, start: dt.date | None, end: dt.date | None, limit: int, cursor: str | None
) -> tuple[list[AnyRow], str | None]:
    """One keyset page of invoice headers ordered by (invoice_day, invoice_no), and the next cursor."""
    stmt = select(*_INVOICE_COLUMNS).where(*_invoice_days(start, end))
    if cursor is not None:
        after_day, after_no = _decode_cursor(
            cursor, kind="i", parts=(dt.date.fromisoformat, _matching(schemas.INVOICE_NO_PATTERN))
        )
        stmt = stmt.where(tuple_(Invoice.invoice_day, Invoice.invoice_no) > tuple_(after_day, after_no))
    headers = list(session.execute(stmt.order_by(Invoice.invoice_day, Invoice.invoice_no).limit(limit + 1)))
    next_cursor = None
    if len(headers) > limit:
        last = headers[limit - 1]
        next_cursor = _encode_cursor("i", last.invoice_day.isoformat(), last.invoice_no)
    return headers[:limit], next_cursor


def _page_json(page: dict[str, Any]) -> bytes:
    """A page (or one invoice) of stored rows as JSON, spelled as `InvoicePage` spells it (prices as
    `money_text`, naive ISO timestamps, keys in the model's order).

    A page holds up to ~100,000 lines whose values come from the database's typed columns; validating
    them into pydantic models only to dump them again took about a fifth of the read-back's time.
    """
    return orjson.dumps(page, default=_json_default)


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return schemas.money_text(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


# --- lines and stock codes ------------------------------------------------------------------------


def add_line(
    session: Session, *, invoice_no: str, stock_code: str, line: schemas.LineFields
) -> tuple[schemas.LinePublic, bool]:
    """Add a line to a stored invoice; returns the line and whether it was created.

    Without `line_no` the line gets the next number. With one, an identical stored line is a replay
    (False) and a different one a ConflictError. The invoice's content hash follows the new line.
    """
    with _writing(session):
        # The row lock serialises line numbering per invoice on PostgreSQL (SQLite locks the file).
        invoice = session.scalars(
            select(Invoice).where(Invoice.invoice_no == invoice_no).with_for_update()
        ).one_or_none()
        if invoice is None:
            raise NotFoundError(f"invoice {invoice_no} not found")
        values = {
            "stock_code": stock_code,
            "description": line.description,
            "quantity": line.quantity,
            "unit_price": line.unit_price,
            "invoice_date": line.invoice_date or invoice.invoice_date,
        }
        if line.line_no is not None:
            stored = session.get(InvoiceLine, (invoice_no, line.line_no))
            if stored is not None:
                if any(getattr(stored, name) != value for name, value in values.items()):
                    raise ConflictError(f"line {line.line_no} of invoice {invoice_no} exists with other data")
                return _line_public(stored), False
            line_no = line.line_no
        else:
            last = session.scalar(
                select(func.max(InvoiceLine.line_no)).where(InvoiceLine.invoice_no == invoice_no)
            )
            line_no = (last or 0) + 1
            if line_no > schemas.INT32_MAX:
                raise ConflictError(f"invoice {invoice_no} has no line number left")
        new_line = InvoiceLine(invoice_no=invoice_no, line_no=line_no, **values)
        session.add(new_line)
        session.flush()
        lines = [
            _line_tuple(row)
            for row in session.execute(select(*_LINE_COLUMNS).where(InvoiceLine.invoice_no == invoice_no))
        ]
        header: dict[str, Any] = {
            "invoice_no": invoice.invoice_no,
            "customer_id": invoice.customer_id,
            "invoice_date": invoice.invoice_date,
            "country": invoice.country,
        }
        invoice.content_hash = content_hash(**header, lines=lines)
        data = outbox.invoice_data(**header, lines=((line[3], line[4]) for line in lines))
        outbox.record(session, [outbox.invoice_changed(data, line_no=line_no)])
    return _line_public(new_line), True


def lines_by_stock_code(session: Session, *, invoice_no: str, stock_code: str) -> list[schemas.LinePublic]:
    """The lines of one invoice that carry `stock_code`, in `line_no` order."""
    if session.get(Invoice, invoice_no) is None:
        raise NotFoundError(f"invoice {invoice_no} not found")
    rows = session.execute(
        select(*_LINE_COLUMNS)
        .where(InvoiceLine.invoice_no == invoice_no, InvoiceLine.stock_code == stock_code)
        .order_by(InvoiceLine.line_no)
    ).all()
    if not rows:
        raise NotFoundError(f"invoice {invoice_no} has no line with stock code {stock_code!r}")
    return [_line_public(row) for row in rows]


def stock_code_summary(session: Session, *, stock_code: str) -> schemas.StockCodePublic:
    """Descriptions, price range and counts of the lines carrying `stock_code`."""
    summary = session.execute(
        select(
            func.min(InvoiceLine.unit_price).label("min_unit_price"),
            func.max(InvoiceLine.unit_price).label("max_unit_price"),
            func.count().label("line_count"),
            func.count(distinct(InvoiceLine.invoice_no)).label("invoice_count"),
        ).where(InvoiceLine.stock_code == stock_code)
    ).one()
    if not summary.line_count:
        raise NotFoundError(f"stock code {stock_code!r} not found")
    descriptions = session.scalars(
        select(InvoiceLine.description)
        .distinct()
        .where(InvoiceLine.stock_code == stock_code, InvoiceLine.description.is_not(None))
        .order_by(InvoiceLine.description)
    ).all()
    return schemas.StockCodePublic(
        stock_code=stock_code,
        descriptions=[description for description in descriptions if description is not None],
        min_unit_price=summary.min_unit_price,
        max_unit_price=summary.max_unit_price,
        line_count=summary.line_count,
        invoice_count=summary.invoice_count,
    )


# --- paging ---------------------------------------------------------------------------------------


def _invoice_days(start: dt.date | None, end: dt.date | None) -> list[ColumnElement[bool]]:
    """Conditions for an invoice day in [start, end]; an open end is unbounded."""
    if start is not None and end is not None and start > end:
        raise InvalidInputError(f"end {end} is before start {start}", loc=("query", "end"))
    conditions = []
    if start is not None:
        conditions.append(Invoice.invoice_day >= start)
    if end is not None:
        conditions.append(Invoice.invoice_day <= end)
    return conditions


# --- cursors --------------------------------------------------------------------------------------


def _encode_cursor(kind: str, *parts: str) -> str:
    """An opaque keyset cursor: base64url of `[kind, *parts]`."""
    raw = json.dumps([kind, *parts], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _matching(pattern: str) -> Callable[[str], str]:
    """A cursor part converter that only lets through what the request schemas would accept."""
    compiled = re.compile(pattern)

    def check(part: str) -> str:
        if len(part) > 100 or not compiled.match(part):
            raise ValueError("unexpected cursor part")
        return part

    return check


def _decode_cursor(cursor: str, *, kind: str, parts: tuple[Callable[[str], Any], ...]) -> list[Any]:
    """The parts of a cursor made by `_encode_cursor(kind, ...)`; InvalidInputError for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = json.loads(raw)
        if (
            not isinstance(decoded, list)
            or len(decoded) != len(parts) + 1
            or decoded[0] != kind
            or not all(isinstance(part, str) for part in decoded[1:])
        ):
            raise ValueError("unexpected cursor content")
        return [convert(part) for convert, part in zip(parts, decoded[1:], strict=True)]
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise InvalidInputError(
            "invalid cursor: pass back the next_cursor of the previous page", loc=("query", "cursor")
        ) from error
