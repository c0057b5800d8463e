"""Read back what the service holds for the run's invoice days, as exact Arrow tables.

The days are cut into spans of consecutive days; each span is walked with its own cursor chain, several
spans at once. JSON values are gathered column by column and converted with Arrow casts: prices from
their decimal strings straight to `decimal128(12, 3)` (a float never holds a price), timestamps from
their ISO strings.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from etl.client import RetailClient, gather_bounded
from etl.errors import ServiceError
from etl.schema import (
    CUSTOMER_SCHEMA,
    LINE_SCHEMA,
    TIMESTAMP_TYPE,
    ServiceSnapshot,
    in_line_order,
)
from retail_contract.wire import MAX_PAGE_SIZE, PRICE_TYPE

#: Longest span of days walked by one cursor chain: short enough that a long run of consecutive days
#: still gives several chains to walk at once, long enough that a typical span is one page.
MAX_DAYS_PER_SPAN = 7
#: Customers are read over calendar spans of up to this many days, gaps included: a whole year is then
#: 5 cursor chains instead of one per run of consecutive invoice days (56 for the full data, which
#: took 0.29-0.34 s against 0.06-0.07 s; each customer comes once per span it has invoices in).
CUSTOMER_DAYS_PER_SPAN = 92


async def read_back(
    client: RetailClient,
    days: Sequence[dt.date],
    *,
    concurrency: int = 4,
    page_size: int = 1000,
) -> ServiceSnapshot:
    """The service's lines for the invoice days `days`, and its customers invoiced on them.

    `lines` follows LINE_SCHEMA sorted by `(invoice_day, invoice_no, line_no)`; `customers` follows
    CUSTOMER_SCHEMA sorted by `customer_id`, each customer once. Customers are read over whole calendar
    spans (`calendar_spans`), so a customer invoiced only on a day between two of `days` may be listed
    too; the lake takes from them just the customers of the lines it writes.
    """
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be within 1..{MAX_PAGE_SIZE}")
    spans = day_spans(days)
    line_jobs = [partial(_read_lines, client, start, end, page_size) for start, end in spans]
    customer_jobs = [
        partial(_read_customers, client, start, end, page_size) for start, end in calendar_spans(days)
    ]
    line_tables = await gather_bounded(line_jobs, concurrency)
    customer_pages = await gather_bounded(customer_jobs, concurrency)

    lines = in_line_order(pa.concat_tables([LINE_SCHEMA.empty_table(), *line_tables]))
    return ServiceSnapshot(lines=lines, customers=_customer_table(customer_pages))


def day_spans(days: Sequence[dt.date], max_days: int = MAX_DAYS_PER_SPAN) -> list[tuple[dt.date, dt.date]]:
    """Cut the distinct `days` into `(start, end)` spans of consecutive days, each at most `max_days`
    long, so that a span's range holds no day that was not asked for."""
    spans: list[tuple[dt.date, dt.date]] = []
    for day in sorted(set(days)):
        if spans:
            start, end = spans[-1]
            if day == end + dt.timedelta(days=1) and (day - start).days < max_days:
                spans[-1] = (start, day)
                continue
        spans.append((day, day))
    return spans


def calendar_spans(
    days: Sequence[dt.date], max_days: int = CUSTOMER_DAYS_PER_SPAN
) -> list[tuple[dt.date, dt.date]]:
    """Cut the calendar from the first to the last of `days` into `(start, end)` spans of at most
    `max_days` days, gaps included (none for no days)."""
    if not days:
        return []
    spans: list[tuple[dt.date, dt.date]] = []
    start, last = min(days), max(days)
    while start <= last:
        end = min(last, start + dt.timedelta(days=max_days - 1))
        spans.append((start, end))
        start = end + dt.timedelta(days=1)
    return spans


async def _read_lines(client: RetailClient, start: dt.date, end: dt.date, page_size: int) -> pa.Table:
    columns = _LineColumns()
    tables: list[pa.Table] = []
    async for page in client.iter_invoice_tables(start, end, limit=page_size):
        if isinstance(page, pa.Table):
            tables.append(arrow_page_lines(page, start, end))
        else:
            for invoice in page:
                columns.add_invoice(invoice, start, end)
    return pa.concat_tables([columns.to_table(), *tables])


def arrow_page_lines(page: pa.Table, start: dt.date, end: dt.date) -> pa.Table:
    """The lines of an Arrow invoice page (invoices with a `lines` list column) as a LINE_SCHEMA table:
    each line with its invoice's number, customer, country and day, with the job's exact types."""
    try:
        lines = page.column("lines").combine_chunks()
        flat = pc.list_flatten(lines)
        parents = pc.list_parent_indices(lines)
        day = pc.take(page.column("invoice_day"), parents)
        if len(day) and (pc.min(day).as_py() < start or pc.max(day).as_py() > end):
            outside = pc.filter(day, pc.or_(pc.less(day, start), pc.greater(day, end)))[0]
            raise ServiceError(f"the service returned an invoice of {outside} when asked for {start}..{end}")
        arrays = {
            "invoice_no": pc.take(page.column("invoice_no"), parents),
            "line_no": flat.field("line_no"),
            "stock_code": flat.field("stock_code"),
            "description": flat.field("description"),
            "quantity": flat.field("quantity"),
            "unit_price": flat.field("unit_price"),
            # A safe cast: a real fraction of a second fails instead of being truncated.
            "invoice_date": flat.field("invoice_date"),
            "customer_id": pc.take(page.column("customer_id"), parents),
            "country": pc.take(page.column("country"), parents),
            "invoice_day": day,
        }
        table = pa.Table.from_pydict(arrays)
        return table.cast(LINE_SCHEMA)
    except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise ServiceError(
            f"the service returned an Arrow page that does not fit LINE_SCHEMA: {exc}"
        ) from exc


async def _read_customers(
    client: RetailClient, start: dt.date, end: dt.date, page_size: int
) -> list[dict[str, Any]]:
    customers: list[dict[str, Any]] = []
    async for page in client.iter_customer_pages(start, end, limit=page_size):
        customers.extend(page)
    return customers


class _LineColumns:
    """Lines of read-back invoices, gathered as one Python list per LINE_SCHEMA column."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in LINE_SCHEMA.names}

    def add_invoice(self, invoice: dict[str, Any], start: dt.date, end: dt.date) -> None:
        """Append the lines of one `Invoice` object, each carrying its invoice's fields."""
        try:
            invoice_no = invoice["invoice_no"]
            day = invoice["invoice_day"]
            lines = invoice["lines"]
            header = (invoice_no, invoice.get("customer_id"), invoice["country"], day)
            invoice_date = invoice["invoice_date"]
            # A day outside the asked range means the service's filter and ours disagree: say so
            # here rather than let it surface as an "extra line" in reconciliation.
            if not start.isoformat() <= str(day) <= end.isoformat():
                raise ServiceError(
                    f"the service returned invoice {invoice_no} of {day} when asked for {start}..{end}"
                )
            columns = self.columns
            for line in lines:
                columns["line_no"].append(line["line_no"])
                columns["stock_code"].append(line["stock_code"])
                columns["description"].append(line.get("description"))
                columns["quantity"].append(line["quantity"])
                columns["unit_price"].append(line["unit_price"])
                # A line without its own timestamp has the invoice's (the service's LineIn default).
                columns["invoice_date"].append(line.get("invoice_date") or invoice_date)
            n = len(lines)
            for name, value in zip(
                ("invoice_no", "customer_id", "country", "invoice_day"), header, strict=True
            ):
                columns[name].extend([value] * n)
        except (KeyError, TypeError) as exc:
            raise ServiceError(
                f"the service returned a malformed invoice {invoice.get('invoice_no', '?')!s}: missing {exc}"
            ) from exc

    def to_table(self) -> pa.Table:
        """The gathered lines as a LINE_SCHEMA table, with exact types."""
        columns = self.columns
        try:
            arrays = {
                "invoice_no": pa.array(columns["invoice_no"], pa.string()),
                "line_no": pa.array(columns["line_no"], pa.int32()),
                "stock_code": pa.array(columns["stock_code"], pa.string()),
                "description": pa.array(columns["description"], pa.string()),
                "quantity": pa.array(columns["quantity"], pa.int64()),
                # Strings to decimal directly: a cast that would drop a digit fails instead of rounding.
                "unit_price": pc.cast(pa.array(columns["unit_price"], pa.string()), PRICE_TYPE),
                # Through microseconds, so that "08:26:00.000" is accepted and a real fraction of a
                # second fails the (safe) cast to whole seconds instead of being truncated.
                "invoice_date": pc.cast(
                    pc.cast(pa.array(columns["invoice_date"], pa.string()), pa.timestamp("us")),
                    TIMESTAMP_TYPE,
                ),
                "customer_id": pa.array(columns["customer_id"], pa.string()),
                "country": pa.array(columns["country"], pa.string()),
                "invoice_day": pc.cast(pa.array(columns["invoice_day"], pa.string()), pa.date32()),
            }
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ServiceError(f"the service returned lines that do not fit LINE_SCHEMA: {exc}") from exc
        return pa.Table.from_pydict(arrays, schema=LINE_SCHEMA)


def _customer_table(pages: list[list[dict[str, Any]]]) -> pa.Table:
    """Customers of all spans, each once (a customer with invoices in two spans is listed by both)."""
    countries: dict[str, str] = {}
    for page in pages:
        for customer in page:
            try:
                customer_id, country = str(customer["customer_id"]), customer["country"]
            except (KeyError, TypeError) as exc:
                raise ServiceError(f"the service returned a malformed customer {customer!r:.200}") from exc
            if countries.setdefault(customer_id, country) != country:
                raise ServiceError(
                    f"the service returned customer {customer_id} with two countries: "
                    f"{countries[customer_id]} and {country}"
                )
    ids = sorted(countries)
    return pa.Table.from_pydict(
        {"customer_id": ids, "country": [countries[i] for i in ids]}, schema=CUSTOMER_SCHEMA
    )
