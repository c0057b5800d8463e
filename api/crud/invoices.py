"""One invoice and its lines: create, read, replace, patch, delete; add, read and delete the lines of a
stock code.

Reads answer JSON bytes (`invoice_json`, `lines_json`), spelled as `InvoicePublic` / `LinePublic` spell
them; the ETag of a resource is of those bytes (`api.core.etag`), and a conditional write compares the
client's tag with the tag of the state it locked.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from api import schemas
from api.core import etag
from api.core.merge_patch import apply_merge_patch
from api.crud import common, invoice_store
from api.errors import ConflictError, InvalidInputError, NotFoundError, ServiceError
from api.events import outbox
from api.models import Customer, Invoice, InvoiceLine
from retail_contract.content_hash import content_hash, money_text


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return money_text(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def to_json(value: Any) -> bytes:
    """Stored rows as JSON, spelled as the response models spell them (prices as `money_text`, naive ISO
    timestamps): the bytes a GET sends and its ETag is computed from."""
    return orjson.dumps(value, default=_json_default)


def _header(session: Session, invoice_no: str, *, for_update: bool = False) -> common.AnyRow | None:
    stmt = select(*common.INVOICE_COLUMNS).where(Invoice.invoice_no == invoice_no)
    if for_update:
        # The row lock serialises writes to one invoice on PostgreSQL (SQLite locks the file).
        stmt = stmt.with_for_update()
    return session.connection().execute(stmt).first()


def _invoice_document(session: Session, header: common.AnyRow) -> dict[str, Any]:
    """The invoice of `header` with its lines, as an `InvoicePublic`-shaped dict."""
    return common.invoices_with_lines(session, [header])[0]


# The resource GET's statements, built once: building a select per request cost about as much as
# running it on SQLite.
_INVOICE_BY_NO = select(*common.INVOICE_COLUMNS).where(Invoice.invoice_no == bindparam("invoice_no"))
_LINES_OF_INVOICE = (
    select(*common.LINE_COLUMNS)
    .where(InvoiceLine.invoice_no == bindparam("invoice_no"))
    .order_by(InvoiceLine.line_no)
)


def read_invoice_json(db: Session | Connection, *, invoice_no: str) -> bytes | None:
    """The stored invoice with its lines as JSON (`InvoicePublic`, the bytes `_invoice_document`
    gives), or None. Both reads are in one transaction, so the lines match the header.

    The resource GET passes a plain pooled connection (`api.deps.reading_rows`); the cache keeps
    these bytes.
    """
    connection = common.connection_of(db)
    header = connection.execute(_INVOICE_BY_NO, {"invoice_no": invoice_no}).first()
    if header is None:
        return None
    lines = [
        common.line_public(row) for row in connection.execute(_LINES_OF_INVOICE, {"invoice_no": invoice_no})
    ]
    return to_json(common.invoice_dict(header, lines))


def _touch(session: Session, touched: common.Touched | None, invoice_no: str) -> None:
    """Add the stored invoice's customer and its lines' stock codes to `touched` (if given)."""
    if touched is None:
        return
    header = _header(session, invoice_no)
    if header is None:
        return
    touched.customer_ids.add(header.customer_id)
    touched.stock_codes.update(
        session.scalars(select(InvoiceLine.stock_code).where(InvoiceLine.invoice_no == invoice_no).distinct())
    )


def _require_precondition(
    session: Session,
    header: common.AnyRow | None,
    *,
    if_match: str | None,
    if_none_match: str | None = None,
) -> None:
    """Check a write's `If-Match` / `If-None-Match` against the invoice's current ETag (computed only
    when the request is conditional: it reads the lines)."""
    if if_match is None and if_none_match is None:
        return
    current = etag.etag_of(to_json(_invoice_document(session, header))) if header is not None else None
    etag.require_match(if_match, current)
    etag.require_none_match(if_none_match, current)


def _customer_country(
    session: Session, customer_id: str | None, country: str | None, *, unknown: ServiceError | None
) -> str:
    """The invoice's country: `country` when given, else its customer's. Raises `unknown` when the
    customer is not stored, InvalidInputError on `body.country` when there is neither."""
    if customer_id is not None:
        stored = session.scalar(select(Customer.country).where(Customer.customer_id == customer_id))
        if stored is None:
            raise unknown or invoice_store.unknown_customer(customer_id, loc=("body", "customer_id"))
        if country is None:
            return stored
    if country is None:
        raise InvalidInputError(
            "country is required when the invoice has no customer_id",
            loc=("body", "country"),
            error_type="missing",
        )
    return country


def create_invoice(
    session: Session,
    *,
    invoice: schemas.InvoiceCreate,
    customer_id: str | None,
    customer_in_path: bool = False,
) -> tuple[bytes, bool]:
    """Store one invoice with its lines; returns the stored invoice as JSON and whether it was created.

    Without `country` the invoice has its customer's. An identical replay stores nothing (False). Raises
    ConflictError when the number is stored with other content; an unknown customer is a NotFoundError
    when it came in the path, else an InvalidInputError on the body's `customer_id`.
    """
    unknown: ServiceError | None = (
        NotFoundError(f"customer {customer_id} not found") if customer_in_path else None
    )
    if invoice.country is None:
        invoice = invoice.model_copy(
            update={"country": _customer_country(session, customer_id, None, unknown=unknown)}
        )
        session.rollback()  # the read ends here: the write's transaction begins with its own lock

    def unknown_customer(_index: int, customer_id: str) -> ServiceError:
        return unknown or invoice_store.unknown_customer(customer_id, loc=("body", "customer_id"))

    result = invoice_store.store_invoices(
        session,
        invoice_store.invoices_to_store([(invoice, customer_id)], single=True),
        unknown_customer=unknown_customer,
    )
    stored = read_invoice_json(session, invoice_no=invoice.invoice_no)
    assert stored is not None  # just stored, or stored before
    return stored, result.created == 1


def replace_invoice(
    session: Session,
    *,
    invoice_no: str,
    invoice: schemas.InvoiceReplace,
    if_match: str | None = None,
    if_none_match: str | None = None,
    touched: common.Touched | None = None,
) -> tuple[bytes, bool]:
    """PUT: store the invoice as given, its lines replacing the stored ones as a whole; creates it when
    missing. Returns the invoice as JSON and whether it was created; `touched` gets the customers and
    stock codes of the invoice before and after.

    The content hash is recomputed; a change emits `invoice.updated`, a creation `invoice.created`, an
    identical PUT changes and emits nothing.
    """
    common.require_path_identifier("invoice_no", invoice.invoice_no, invoice_no)
    with common.writing(session):
        header = _header(session, invoice_no, for_update=True)
        _require_precondition(session, header, if_match=if_match, if_none_match=if_none_match)
        _touch(session, touched, invoice_no)
        created = _replace_locked(session, invoice_no, header, invoice, kind=outbox.REPLACED)
        _touch(session, touched, invoice_no)
    stored = read_invoice_json(session, invoice_no=invoice_no)
    assert stored is not None
    return stored, created


def _replace_locked(
    session: Session,
    invoice_no: str,
    header: common.AnyRow | None,
    invoice: schemas.InvoiceReplace,
    *,
    kind: str,
) -> bool:
    """Write `invoice` over the locked `header` (None: create it) in the open transaction; returns
    whether it was created. A change of a stored invoice is `kind` (replaced or patched) in the feed."""
    country = _customer_country(session, invoice.customer_id, invoice.country, unknown=None)
    lines = invoice_store.line_tuples(invoice.lines, invoice.invoice_date)
    invoice_store.check_line_numbers(lines, ("body", "lines"))
    invoice_day = invoice.invoice_date.date()
    values = {
        "customer_id": invoice.customer_id,
        "invoice_date": invoice.invoice_date,
        "invoice_day": invoice_day,
        "country": country,
    }
    hashed = content_hash(
        invoice_no=invoice_no,
        customer_id=invoice.customer_id,
        invoice_date=invoice.invoice_date,
        country=country,
        lines=lines,
    )
    data = outbox.invoice_data(
        invoice_no=invoice_no,
        customer_id=invoice.customer_id,
        invoice_date=invoice.invoice_date,
        country=country,
        lines=((line[3], line[4]) for line in lines),
    )
    if header is None:
        session.execute(
            insert(common.INVOICES), [{"invoice_no": invoice_no, **values, "content_hash": hashed}]
        )
    else:
        stored_hash = session.scalar(select(Invoice.content_hash).where(Invoice.invoice_no == invoice_no))
        if stored_hash == hashed:
            return False
        session.execute(delete(InvoiceLine).where(InvoiceLine.invoice_no == invoice_no))
        session.execute(
            update(Invoice).where(Invoice.invoice_no == invoice_no).values(**values, content_hash=hashed)
        )
    if lines:
        invoice_store.insert_lines(session, [(invoice_no, *line) for line in lines])
    # The feed carries the invoice as its GET answers it after the change, read in this transaction.
    content = read_invoice_json(session, invoice_no=invoice_no)
    assert content is not None
    if header is None:
        event = outbox.invoice_created_from(data, content=content)
    else:
        change = outbox.invoice_change(
            kind, invoice_no, invoice_day, content, previous_invoice_day=header.invoice_day
        )
        event = outbox.invoice_updated(data, change=change)
    outbox.record(session, [event])
    return header is None


#: Members of an invoice's representation a merge patch does not apply to: the number (the path names
#: the invoice; a patch setting it is refused) and the derived `invoice_day` and `customer`.
_NOT_PATCHED = ("invoice_no", "invoice_day", "customer")


def patch_invoice(
    session: Session,
    *,
    invoice_no: str,
    patch: Any,
    if_match: str | None = None,
    touched: common.Touched | None = None,
) -> bytes:
    """PATCH: merge `patch` (RFC 7396) into the stored invoice's representation and store the result as
    PUT would (`lines`, an array, is replaced whole); returns the invoice as JSON, and `touched` gets the
    customers and stock codes before and after.

    The result must be a valid invoice (InvalidBodyError / InvalidInputError naming the field);
    `invoice_day` and `customer` follow `invoice_date` and `customer_id`.
    """
    with common.writing(session):
        header = _header(session, invoice_no, for_update=True)
        if header is None:
            raise NotFoundError(f"invoice {invoice_no} not found")
        document = _invoice_document(session, header)
        target = {name: value for name, value in document.items() if name not in _NOT_PATCHED}
        merged = apply_merge_patch(target, patch)
        if isinstance(merged, dict):
            # Derived members sent along (a client patching what it read) are ignored; the number must be
            # the path's (checked below).
            for name in ("invoice_day", "customer"):
                merged.pop(name, None)
            if merged.get("country") is None and merged.get("customer_id") is None:
                # No customer to take the country from: the invoice keeps the country it has.
                merged["country"] = header.country
        # The body is checked first: a bad patch is 422 whatever its If-Match.
        invoice = common.validate_body(schemas.InvoiceReplace, merged)
        common.require_path_identifier("invoice_no", invoice.invoice_no, invoice_no)
        _require_precondition(session, header, if_match=if_match)
        _touch(session, touched, invoice_no)
        _replace_locked(session, invoice_no, header, invoice, kind=outbox.PATCHED)
        _touch(session, touched, invoice_no)
    stored = read_invoice_json(session, invoice_no=invoice_no)
    assert stored is not None
    return stored


def delete_invoice(
    session: Session, *, invoice_no: str, if_match: str | None = None, touched: common.Touched | None = None
) -> None:
    """DELETE: remove the invoice with its lines and emit `invoice.deleted` (its header as it was);
    `touched` gets its customer and stock codes."""
    with common.writing(session):
        header = _header(session, invoice_no, for_update=True)
        if header is None:
            raise NotFoundError(f"invoice {invoice_no} not found")
        _require_precondition(session, header, if_match=if_match)
        _touch(session, touched, invoice_no)
        totals = session.execute(
            select(InvoiceLine.quantity, InvoiceLine.unit_price).where(InvoiceLine.invoice_no == invoice_no)
        )
        data = outbox.invoice_data(
            invoice_no=invoice_no,
            customer_id=header.customer_id,
            invoice_date=header.invoice_date,
            country=header.country,
            lines=((row[0], row[1]) for row in totals),
        )
        session.execute(delete(InvoiceLine).where(InvoiceLine.invoice_no == invoice_no))
        session.execute(delete(Invoice).where(Invoice.invoice_no == invoice_no))
        outbox.record(session, [outbox.invoice_deleted(data)])


def add_line(
    session: Session, *, invoice_no: str, stock_code: str, line: schemas.LineFields
) -> tuple[schemas.LinePublic, bool]:
    """Add a line to a stored invoice; returns the line and whether it was created.

    Without `line_no` the line gets the next number. With one, an identical stored line is a replay
    (False) and a different one a ConflictError. The invoice's content hash follows the new line.
    """
    with common.writing(session):
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
                return common.line_public(stored), False
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
            common.line_tuple(row)
            for row in session.execute(
                select(*common.LINE_COLUMNS).where(InvoiceLine.invoice_no == invoice_no)
            )
        ]
        header: dict[str, Any] = {
            "invoice_no": invoice.invoice_no,
            "customer_id": invoice.customer_id,
            "invoice_date": invoice.invoice_date,
            "country": invoice.country,
        }
        invoice.content_hash = content_hash(**header, lines=lines)
        data = outbox.invoice_data(**header, lines=((line[3], line[4]) for line in lines))
        change = outbox.line_change(
            outbox.CREATED,
            invoice_no,
            stock_code,
            invoice.invoice_day,
            to_json(_lines_with_code(session, invoice_no, stock_code)),
        )
        outbox.record(session, [outbox.invoice_changed(data, line_no=line_no, change=change)])
    return common.line_public(new_line), True


def _lines_with_code(session: Session, invoice_no: str, stock_code: str) -> list[schemas.LinePublic]:
    rows = session.connection().execute(
        select(*common.LINE_COLUMNS)
        .where(InvoiceLine.invoice_no == invoice_no, InvoiceLine.stock_code == stock_code)
        .order_by(InvoiceLine.line_no)
    )
    return [common.line_public(row) for row in rows]


def lines_json(session: Session, *, invoice_no: str, stock_code: str) -> bytes:
    """The lines of one invoice that carry `stock_code`, in `line_no` order, as JSON (`[LinePublic]`).

    NotFoundError when the invoice, or its lines with this code, do not exist.
    """
    if _header(session, invoice_no) is None:
        raise NotFoundError(f"invoice {invoice_no} not found")
    lines = _lines_with_code(session, invoice_no, stock_code)
    if not lines:
        raise NotFoundError(f"invoice {invoice_no} has no line with stock code {stock_code!r}")
    return to_json(lines)


def delete_lines(
    session: Session, *, invoice_no: str, stock_code: str, if_match: str | None = None
) -> list[int]:
    """DELETE the invoice's lines that carry `stock_code`; returns their line numbers.

    `If-Match` is compared with the ETag of GET /invoice/{no}/{stockcode}/. The invoice's content hash
    follows; `invoice.updated` carries the header after the change and `removed_line_nos`.
    """
    with common.writing(session):
        header = _header(session, invoice_no, for_update=True)
        if header is None:
            raise NotFoundError(f"invoice {invoice_no} not found")
        lines = _lines_with_code(session, invoice_no, stock_code)
        if not lines:
            raise NotFoundError(f"invoice {invoice_no} has no line with stock code {stock_code!r}")
        if if_match is not None:
            etag.require_match(if_match, etag.etag_of(to_json(lines)))
        removed = [line["line_no"] for line in lines]
        session.execute(
            delete(InvoiceLine).where(
                InvoiceLine.invoice_no == invoice_no, InvoiceLine.stock_code == stock_code
            )
        )
        change = outbox.line_change(outbox.DELETED, invoice_no, stock_code, header.invoice_day, None)
        _rehash(
            session,
            header,
            event=lambda data: outbox.invoice_updated(data, removed_line_nos=removed, change=change),
        )
    return removed


def _rehash(session: Session, header: common.AnyRow, *, event: Any) -> None:
    """Recompute the content hash of the invoice of `header` from its stored lines and record
    `event(data)`, `data` being the invoice's header after the change."""
    lines = [
        common.line_tuple(row)
        for row in session.execute(
            select(*common.LINE_COLUMNS).where(InvoiceLine.invoice_no == header.invoice_no)
        )
    ]
    fields: dict[str, Any] = {
        "invoice_no": header.invoice_no,
        "customer_id": header.customer_id,
        "invoice_date": header.invoice_date,
        "country": header.country,
    }
    session.execute(
        update(Invoice)
        .where(Invoice.invoice_no == header.invoice_no)
        .values(content_hash=content_hash(**fields, lines=lines))
    )
    data = outbox.invoice_data(**fields, lines=((line[3], line[4]) for line in lines))
    outbox.record(session, [event(data)])
