"""What the service holds per invoice day (invoices, lines, money), computed by the database: the figures
a consumer of the feed compares its copy with (issue 28: the lake equals the service)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Numeric, func, select, type_coerce
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from api import schemas
from api.crud import common
from api.models import PRICE_SCALE, Invoice, InvoiceLine


def invoice_day_totals(
    session: Session, *, start: dt.date | None, end: dt.date | None
) -> list[schemas.InvoiceDayTotals]:
    """Per invoice day in [start, end] that has an invoice: its invoices, lines and amount (the sum of
    quantity x unit_price over its lines, exact), in day order; one GROUP BY.

    On SQLite prices are integer thousandths, and a product or sum past 64 bits would turn into a float
    (a product) or an error (SUM): the days are then summed exactly from their lines instead.
    """
    sqlite = session.get_bind().dialect.name == "sqlite"
    product = InvoiceLine.quantity * InvoiceLine.unit_price
    amount = func.coalesce(func.sum(product), 0)
    columns = [
        Invoice.invoice_day,
        func.count(func.distinct(Invoice.invoice_no)),
        func.count(InvoiceLine.line_no),
        type_coerce(amount, BigInteger() if sqlite else Numeric(asdecimal=True)),
    ]
    if sqlite:
        # How many products SQLite had to make floats: any, and the amounts are not exact.
        columns.append(func.sum(func.typeof(product) == "real"))
    stmt = (
        select(*columns)
        .select_from(Invoice)
        .outerjoin(InvoiceLine, InvoiceLine.invoice_no == Invoice.invoice_no)
        .where(*common.invoice_days(start, end))
        .group_by(Invoice.invoice_day)
        .order_by(Invoice.invoice_day)
    )
    try:
        rows: list[Any] = list(session.execute(stmt))
    except OperationalError as error:
        if not (sqlite and "integer overflow" in str(error.orig)):
            raise
        session.rollback()
        return _summed_from_lines(session, start=start, end=end)
    if sqlite and any(row[4] for row in rows):
        return _summed_from_lines(session, start=start, end=end)
    return [
        schemas.InvoiceDayTotals(
            invoice_day=row[0],
            invoices=row[1],
            lines=row[2],
            amount=Decimal(int(row[3])).scaleb(-PRICE_SCALE) if sqlite else Decimal(row[3]),
        )
        for row in rows
    ]


def _summed_from_lines(
    session: Session, *, start: dt.date | None, end: dt.date | None
) -> list[schemas.InvoiceDayTotals]:
    """The same figures with the amounts summed in Python decimals (SQLite past 64 bits only)."""
    invoices: dict[dt.date, set[str]] = defaultdict(set)
    lines: dict[dt.date, int] = defaultdict(int)
    amounts: dict[dt.date, Decimal] = defaultdict(Decimal)
    stmt = (
        select(Invoice.invoice_day, Invoice.invoice_no, InvoiceLine.quantity, InvoiceLine.unit_price)
        .select_from(Invoice)
        .outerjoin(InvoiceLine, InvoiceLine.invoice_no == Invoice.invoice_no)
        .where(*common.invoice_days(start, end))
    )
    for day, invoice_no, quantity, unit_price in session.execute(stmt):
        invoices[day].add(invoice_no)
        if quantity is not None:
            lines[day] += 1
            amounts[day] += quantity * unit_price
    return [
        schemas.InvoiceDayTotals(
            invoice_day=day, invoices=len(invoices[day]), lines=lines[day], amount=amounts[day]
        )
        for day in sorted(invoices)
    ]
