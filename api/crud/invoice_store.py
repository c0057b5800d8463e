"""Storing invoices with their lines, all or nothing: the core of POST /invoice, of the bulk write (JSON
and Arrow bodies) and of PUT /invoice/{no}.

Invoices carry `content_hash` (the contract's), so a replayed invoice is compared with one indexed
read instead of reading and comparing all its lines.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from api import schemas
from api.crud import common
from api.errors import ConflictError, InvalidInputError, ServiceError
from api.events import outbox
from api.models import Change, Customer, Invoice
from retail_contract.content_hash import content_hash, money_text


def unknown_bulk_customer(index: int, customer_id: str) -> InvalidInputError:
    """The error for an unknown customer at position `index` of a bulk body."""
    return unknown_customer(customer_id, loc=("body", "invoices", index, "customer_id"))


def unknown_customer(customer_id: str, *, loc: tuple[str | int, ...]) -> InvalidInputError:
    return InvalidInputError(
        f"customer {customer_id} not found: create it first",
        loc=loc,
        error_type="unknown_customer",
        # A well-formed id the stored data lacks: a conflict with the current state, not a bad value.
        status_code=409,
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

    `lines` holds their lines either per invoice as `common.LineTuple` lists (a JSON body, parsed into Python
    objects anyway) or as one flat Arrow table (an Arrow body: `arrow_writes.STORED_LINE_SCHEMA`, whose
    `invoice` column is the position of the line's invoice in `invoices`), so an Arrow body's lines reach
    the database without a Python object per value.
    """

    invoices: Sequence[InvoiceToStore]
    lines: Sequence[Sequence[common.LineTuple]] | pa.Table


def line_tuples(lines: Sequence[schemas.LineCreate], invoice_date: dt.datetime) -> list[common.LineTuple]:
    """Validated lines of a body as `LineTuple`s."""
    # The request schema has already numbered the lines and filled in their timestamps.
    return [
        (
            line.get("line_no") or 0,
            line["stock_code"],
            line.get("description"),
            line["quantity"],
            line["unit_price"],
            line.get("invoice_date") or invoice_date,
        )
        for line in lines
    ]


def duplicate_line_no(line_no: int, loc: tuple[str | int, ...]) -> InvalidInputError:
    """The 409 for lines of one invoice that share `line_no` (as an invoice repeated in a request with
    other content is): each part is valid, together they contradict each other."""
    return InvalidInputError(
        f"line_no {line_no} appears more than once", loc=loc, error_type="line_no_duplicate", status_code=409
    )


def check_line_numbers(lines: Sequence[common.LineTuple], loc: tuple[str | int, ...]) -> None:
    """Raise `duplicate_line_no` for the first line number used twice in `lines`."""
    seen: set[int] = set()
    for line in lines:
        if line[0] in seen:
            raise duplicate_line_no(line[0], loc)
        seen.add(line[0])


def invoices_to_store(
    entries: Sequence[tuple[schemas.InvoiceCreate, str | None]], *, single: bool = False
) -> InvoicesToStore:
    """Validated JSON invoices (each with its customer id, and a country) as `InvoicesToStore`; lines
    sharing a number are a 409 (`single`: a body of one invoice, whose lines are `body.lines`)."""
    # Each invoice's lines as tuples once: they are hashed, then (when new) copied into the table.
    per_invoice = [line_tuples(invoice.lines, invoice.invoice_date) for invoice, _customer_id in entries]
    for index, lines in enumerate(per_invoice):
        check_line_numbers(lines, ("body", "lines") if single else ("body", "invoices", index, "lines"))
    invoices = []
    for (invoice, customer_id), lines in zip(entries, per_invoice, strict=True):
        if invoice.country is None:  # the callers fill it in from the customer first
            raise ValueError(f"invoice {invoice.invoice_no} has no country")
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
    return InvoicesToStore(invoices=invoices, lines=per_invoice)


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

    with common.writing(session):
        require_customers(session, [invoice.customer_id for invoice in invoices], unknown_customer)
        stored = stored_hashes(session, list(first_index))
        conflicts.update(
            no
            for no, index in first_index.items()
            if stored.get(no, invoices[index].content_hash) != invoices[index].content_hash
        )
        if conflicts:
            raise invoice_conflict(conflicts)

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
            inserted = insert_invoice_headers(session, headers)
            # Another request stored some of them in the meantime: identical is fine, other is 409.
            raced = [no for no, _index in new if no not in inserted]
            raced_hashes = stored_hashes(session, raced)
            conflicts.update(
                no for no in raced if raced_hashes.get(no) != invoices[first_index[no]].content_hash
            )
            if conflicts:
                raise invoice_conflict(conflicts)

        created = [index for no, index in new if no in inserted]
        lines_created = _insert_lines_of(session, batch, created)
        # One invoice.created per invoice inserted now: a replay (unchanged) emits nothing.
        contents = invoice_contents(batch, created)
        outbox.record(
            session,
            [
                outbox.invoice_created_from(event_data(invoices[i]), content=content)
                for i, content in zip(created, contents, strict=True)
            ],
        )

    result = schemas.BulkInvoicesResult(
        created=len(inserted), unchanged=len(first_index) - len(inserted), lines_created=lines_created
    )
    result._created_nos = sorted(inserted)
    result._unchanged_nos = sorted(no for no in first_index if no not in inserted)
    return result


def bulk_create_invoices(
    session: Session, *, invoices: Sequence[schemas.BulkInvoiceCreate]
) -> schemas.BulkInvoicesResult:
    """Store many invoices and their lines in one transaction; see `store_invoices`."""
    return store_invoices(
        session,
        invoices_to_store([(invoice, invoice.customer_id) for invoice in invoices]),
        unknown_customer=unknown_bulk_customer,
    )


def event_data(invoice: InvoiceToStore) -> dict[str, Any]:
    return outbox.invoice_summary(
        invoice_no=invoice.invoice_no,
        customer_id=invoice.customer_id,
        invoice_date=invoice.invoice_date,
        country=invoice.country,
        line_count=invoice.line_count,
        amount=invoice.amount,
    )


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return money_text(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def invoice_contents(batch: InvoicesToStore, indexes: Sequence[int]) -> list[bytes]:
    """The invoices at `indexes` of `batch` as GET /invoice/{no} will answer them once stored (the change
    feed's content): built from the batch, not read back, lines in `line_no` order."""
    if isinstance(batch.lines, pa.Table):
        per_invoice = _arrow_line_documents(batch.lines, indexes)
    else:
        per_invoice = {index: _line_documents(batch.lines[index]) for index in indexes}
    contents = []
    for index in indexes:
        invoice = batch.invoices[index]
        document = {
            "invoice_no": invoice.invoice_no,
            "invoice_date": invoice.invoice_date,
            "invoice_day": invoice.invoice_date.date(),
            "country": invoice.country,
            "customer_id": invoice.customer_id,
            "customer": (
                {"url": f"/customer/{invoice.customer_id}"} if invoice.customer_id is not None else None
            ),
            "lines": per_invoice.get(index, []),
        }
        contents.append(orjson.dumps(document, default=_json_default))
    return contents


def _line_documents(lines: Sequence[common.LineTuple]) -> list[dict[str, Any]]:
    """Lines as `LinePublic` dicts in `line_no` order."""
    return [
        dict(zip(common.LINE_NAMES, line, strict=True)) for line in sorted(lines, key=lambda line: line[0])
    ]


def _arrow_line_documents(lines: pa.Table, indexes: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """The lines of an Arrow body's invoices at `indexes` as `LinePublic` dicts in `line_no` order, by
    invoice position. Prices become their text in Arrow (a decimal of scale 3 casts to `money_text`'s
    spelling): a Decimal object per line cost more than the rest of the content together."""
    chosen = lines.filter(pc.is_in(lines.column("invoice"), value_set=pa.array(indexes, pa.int64())))
    if not chosen.num_rows:
        return {}
    chosen = chosen.sort_by([("invoice", "ascending"), ("line_no", "ascending")])
    chosen = chosen.set_column(
        chosen.schema.get_field_index("unit_price"),
        "unit_price",
        pc.cast(chosen.column("unit_price"), pa.string()),
    )
    invoices = chosen.column("invoice").to_numpy()
    # Where each invoice's run of lines starts and ends.
    starts = np.flatnonzero(np.diff(invoices, prepend=-1))
    ends = np.append(starts[1:], len(invoices))
    documents = chosen.select(list(common.LINE_NAMES)).to_pylist()
    return {int(invoices[start]): documents[start:end] for start, end in zip(starts, ends, strict=True)}


def _insert_lines_of(session: Session, batch: InvoicesToStore, indexes: Sequence[int]) -> int:
    """Insert the lines of the invoices at `indexes` of `batch`; returns how many."""
    if isinstance(batch.lines, pa.Table):
        return _insert_arrow_lines(session, batch, indexes)
    rows = [(batch.invoices[index].invoice_no, *line) for index in indexes for line in batch.lines[index]]
    if rows:
        insert_lines(session, rows)
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
        [pc.take(numbers, lines.column("invoice"))]
        + [lines.column(column.name) for column in common.LINE_COLUMNS],
        names=[column.name for column in common.LINE_COPY_COLUMNS],
    )
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        session.execute(insert(common.INVOICE_LINES), table.to_pylist())
        return table.num_rows
    buffer = io.BytesIO()
    # CSV as PostgreSQL reads it: a null is written unquoted-empty (NULL), an empty string quoted ('').
    pacsv.write_csv(table, buffer, pacsv.WriteOptions(include_header=False))
    driver = connection.connection.driver_connection
    assert driver is not None
    statement = f"COPY {common.INVOICE_LINES.name} ({', '.join(table.column_names)}) FROM STDIN (FORMAT csv)"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        copy.write(buffer.getbuffer())
    return table.num_rows


def compare_invoice_hashes(session: Session, *, hashes: dict[str, str]) -> schemas.InvoiceHashComparison:
    """Which of the invoices are stored with exactly the content `hashes` names, stored otherwise, or
    not stored: one indexed read, so a client can skip posting what the service already holds."""
    stored = stored_hashes(session, sorted(hashes))
    unchanged, different, missing = [], [], []
    for invoice_no in sorted(hashes):
        stored_hash = stored.get(invoice_no)
        if stored_hash is None:
            missing.append(invoice_no)
        elif stored_hash == hashes[invoice_no]:
            unchanged.append(invoice_no)
        else:
            different.append(invoice_no)
    deleted = deleted_invoices(session, missing)
    return schemas.InvoiceHashComparison(
        unchanged=unchanged,
        different=different,
        missing=[number for number in missing if number not in deleted],
        deleted=sorted(deleted),
    )


def deleted_invoices(session: Session, invoice_nos: Sequence[str]) -> set[str]:
    """Which of `invoice_nos` (none of them stored now) a client deleted: the change feed keeps each
    deletion until retention removes it (docs/feed.md)."""
    found: set[str] = set()
    for first in range(0, len(invoice_nos), 1000):  # SQLite's bound parameters, in slices
        chunk = invoice_nos[first : first + 1000]
        statement = select(Change.resource_id).where(
            Change.resource == "invoice", Change.kind == "deleted", Change.resource_id.in_(chunk)
        )
        found.update(session.scalars(statement))
    return found


def insert_invoice_headers(session: Session, headers: Sequence[dict[str, Any]]) -> set[str]:
    """Insert invoice headers, skipping numbers another request stored meanwhile; returns those inserted.

    On PostgreSQL this is one `INSERT ... SELECT FROM unnest(<one array per column>)`: the multi-row
    VALUES that SQLAlchemy renders for ~26,000 headers cost a tenth of the service's time in the
    full-data benchmark, mostly in parsing the long statement's placeholders.
    """
    if session.get_bind().dialect.name != "postgresql":
        stmt = common.insert_ignoring_duplicates(session, common.INVOICES).returning(Invoice.invoice_no)
        return set(session.scalars(stmt, headers))
    columns = ", ".join(_HEADER_ARRAY_TYPES)
    arrays = ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in _HEADER_ARRAY_TYPES.items())
    statement = text(
        f"INSERT INTO {common.INVOICES.name} ({columns}) SELECT * FROM unnest({arrays}) "
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


def insert_lines(session: Session, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert new lines (tuples in `common.LINE_COPY_COLUMNS` order) in the session's transaction: COPY on
    PostgreSQL, executemany elsewhere.

    The lines belong to invoices inserted just now in this transaction, so no row can collide and COPY
    (several times faster than INSERT for tens of thousands of rows) changes nothing of what is stored;
    a failure still rolls back the whole request.
    """
    connection = session.connection()
    names = [column.name for column in common.LINE_COPY_COLUMNS]
    if connection.dialect.name != "postgresql":
        session.execute(insert(common.INVOICE_LINES), [dict(zip(names, row, strict=True)) for row in rows])
        return
    driver = connection.connection.driver_connection
    assert driver is not None
    statement = f"COPY {common.INVOICE_LINES.name} ({', '.join(names)}) FROM STDIN (FORMAT BINARY)"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        # Binary COPY with declared types: psycopg's C dumpers, no per-value type lookup or text escaping.
        copy.set_types(_LINE_COPY_TYPES)
        for row in rows:
            copy.write_row(row)


#: PostgreSQL types of `common.LINE_COPY_COLUMNS`, in order (binary COPY needs them exactly).
_LINE_COPY_TYPES = ["varchar", "int4", "varchar", "varchar", "int8", "numeric", "timestamp"]


def invoice_conflict(invoice_nos: Iterable[str]) -> ConflictError:
    ordered = sorted(invoice_nos)
    shown = ", ".join(ordered[:20]) + (", ..." if len(ordered) > 20 else "")
    return ConflictError(
        f"{len(ordered)} invoice(s) already stored with other content: {shown}; nothing was stored",
        invoice_nos=ordered,
    )


def require_customers(
    session: Session,
    customer_ids: Sequence[str | None],
    unknown_customer: Callable[[int, str], ServiceError],
) -> None:
    wanted = sorted({customer_id for customer_id in customer_ids if customer_id is not None})
    known: set[str] = set()
    for chunk in common.key_chunks(session, wanted):
        known.update(
            session.scalars(
                select(Customer.customer_id).where(common.among(session, Customer.customer_id, chunk))
            )
        )
    for index, customer_id in enumerate(customer_ids):
        if customer_id is not None and customer_id not in known:
            raise unknown_customer(index, customer_id)


def stored_hashes(session: Session, invoice_nos: Sequence[str]) -> dict[str, str]:
    return common.stored_values(session, Invoice.invoice_no, Invoice.content_hash, invoice_nos)
