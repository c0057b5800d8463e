"""The read-back: pages of invoices (JSON or Arrow) in (invoice_day, invoice_no) order."""

from __future__ import annotations

import calendar
import datetime as dt
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import ColumnElement, select, true, tuple_
from sqlalchemy.orm import Session

from api import arrow_pages, schemas
from api.crud import common
from api.models import Invoice


def read_invoices_page(
    session: Session, *, start: dt.date | None, end: dt.date | None, limit: int, cursor: str | None
) -> bytes:
    """Invoices whose day is in [start, end] ordered by (invoice_day, invoice_no), with their lines:
    an `InvoicePage` as JSON.

    Two queries per page: the invoice headers (keyset on the index), then all their lines with `IN`.
    The page is serialised straight from the rows (see `_page_json`), not through `InvoicePage`.
    """
    headers, next_cursor = _invoice_page_headers(session, start=start, end=end, limit=limit, cursor=cursor)
    return _page_json({"items": common.invoices_with_lines(session, headers), "next_cursor": next_cursor})


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
        common.look_lines_up_by_key(session)
        columns = ", ".join(column.name for column in common.LINE_COPY_COLUMNS)
        query = (
            f"COPY (SELECT {columns} FROM {common.INVOICE_LINES.name} WHERE invoice_no = ANY(%s::varchar[])) "
            "TO STDOUT (FORMAT csv)"
        )
        with driver.cursor() as db_cursor, db_cursor.copy(query, [invoice_nos]) as copy:
            lines = arrow_pages.flat_lines_from_csv(b"".join(bytes(chunk) for chunk in copy))
    else:
        lines = arrow_pages.flat_lines_from_rows(common.lines_of(session, invoice_nos))
    return arrow_pages.invoice_page_stream(headers, lines), next_cursor


def _invoice_page_headers(
    session: Session, *, start: dt.date | None, end: dt.date | None, limit: int, cursor: str | None
) -> tuple[list[common.AnyRow], str | None]:
    """One keyset page of invoice headers ordered by (invoice_day, invoice_no), and the next cursor."""
    stmt = select(*common.INVOICE_COLUMNS).where(*common.invoice_days(start, end))
    if cursor is not None:
        stmt = stmt.where(_after(cursor))
    headers = list(session.execute(stmt.order_by(Invoice.invoice_day, Invoice.invoice_no).limit(limit + 1)))
    next_cursor = None
    if len(headers) > limit:
        last = headers[limit - 1]
        next_cursor = f"{last.invoice_day.isoformat()}_{last.invoice_no}"
    return headers[:limit], next_cursor


def _after(cursor: str) -> ColumnElement[bool]:
    """The invoices after the keyset position `cursor`, `<invoice_day>_<invoice_no>`
    (`schemas.INVOICE_CURSOR_PATTERN`, which the query parameter has checked).

    Every value the pattern lets through is a position: a day past its month's end (`2011-02-30`) is
    after that month's last day, and year 0000 is before every invoice.
    """
    day_text, invoice_no = cursor.split("_", 1)
    year, month, day = (int(part) for part in day_text.split("-"))
    try:
        after_day = dt.date(year, month, day)
    except ValueError:
        if year == 0:
            return true()
        return Invoice.invoice_day > dt.date(year, month, calendar.monthrange(year, month)[1])
    return tuple_(Invoice.invoice_day, Invoice.invoice_no) > tuple_(after_day, invoice_no)


def _page_json(page: dict[str, Any]) -> bytes:
    """A page of stored rows as JSON, spelled as `InvoicePage` spells it (prices as `money_text`,
    naive ISO timestamps, keys in the model's order).

    A page holds up to ~100,000 lines whose values come from the database's typed columns; validating
    them into pydantic models only to dump them again took about a fifth of the read-back's time.
    """
    return orjson.dumps(page, default=_json_default)


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return schemas.money_text(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
