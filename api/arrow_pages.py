"""Read-back pages as Apache Arrow IPC streams: the same invoices as the JSON page, typed and columnar.

A client that sends `Accept: application/vnd.apache.arrow.stream` on `GET /invoices` gets one Arrow
record batch per page instead of JSON. Each row is an invoice with its lines as a list of structs, so the
page holds exactly what the JSON page holds (an invoice without lines included), minus the derived
`customer` link. Prices are `decimal128(12, 3)` and timestamps `timestamp[us]`: exact, and no per-value
text to format on the service or to parse in the job, which made JSON the largest cost of reading back
the full data set. The next page's cursor travels in the `X-Next-Cursor` header (absent on the last page).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from retail_contract.wire import (
    ARROW_STREAM,
    INVOICE_PAGE_SCHEMA,
    LINE_STRUCT,
    PAGE_TIMESTAMP_TYPE,
)

# The service's Arrow buffers come from the C library's allocator, not Arrow's own pool (mimalloc or
# jemalloc), which kept what read-back pages had used: with it each uvicorn worker's resident memory grew
# by ~100 MiB over a full-data read-back, and the service's peak passed its 600 MB budget.
pa.set_memory_pool(pa.system_memory_pool())

#: The lines of a page, flat, before they are nested under their invoices.
FLAT_LINE_SCHEMA = pa.schema([pa.field("invoice_no", pa.string(), nullable=False), *LINE_STRUCT])

#: (line_no, stock_code, description, quantity, unit_price, invoice_date) as read from the database.
LineRow = tuple[int, str, str | None, int, Decimal, dt.datetime]


def wants_arrow(accept: str | None) -> bool:
    """Whether an `Accept` header asks for the Arrow stream (any mention with a non-zero quality)."""
    if not accept:
        return False
    for part in accept.split(","):
        media_type, *parameters = (piece.strip() for piece in part.split(";"))
        if media_type.lower() == ARROW_STREAM:
            return not any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in parameters)
    return False


def flat_lines_from_rows(lines: dict[str, list[LineRow]]) -> pa.Table:
    """Lines read as Python rows (by invoice number) as a FLAT_LINE_SCHEMA table."""
    numbers = [invoice_no for invoice_no, rows in lines.items() for _ in rows]
    flat = [row for rows in lines.values() for row in rows]
    columns = list(zip(*flat, strict=True)) if flat else [()] * len(LINE_STRUCT)
    return pa.Table.from_arrays(
        [pa.array(numbers, pa.string())]
        + [pa.array(values, type=field.type) for values, field in zip(columns, LINE_STRUCT, strict=True)],
        schema=FLAT_LINE_SCHEMA,
    )


def flat_lines_from_csv(data: bytes) -> pa.Table:
    """Lines exported by PostgreSQL's `COPY ... TO STDOUT (FORMAT csv)` in FLAT_LINE_SCHEMA's column
    order, as a FLAT_LINE_SCHEMA table: Arrow parses it in C++, with no Python object per value.

    COPY writes NULL unquoted and an empty string quoted, which the options below keep apart.
    """
    if not data:
        return FLAT_LINE_SCHEMA.empty_table()
    table = pacsv.read_csv(
        io.BytesIO(data),
        # One thread: the service already runs one request per worker thread.
        read_options=pacsv.ReadOptions(column_names=FLAT_LINE_SCHEMA.names, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={field.name: field.type for field in FLAT_LINE_SCHEMA},
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    return table.cast(FLAT_LINE_SCHEMA)


def invoice_page_stream(headers: Sequence[Any], lines: pa.Table) -> bytes:
    """The page of `headers` (rows with invoice_no, invoice_date, invoice_day, country, customer_id) and
    their `lines` (FLAT_LINE_SCHEMA, any order) as an Arrow IPC stream of INVOICE_PAGE_SCHEMA."""
    numbers = pa.array([h.invoice_no for h in headers], pa.string())
    # Each line's position among the page's invoices, then the lines in page order, line_no within.
    parent = pc.index_in(lines.column("invoice_no"), value_set=numbers)
    ordered = lines.append_column("parent", parent).sort_by(
        [("parent", "ascending"), ("line_no", "ascending")]
    )
    counts = np.bincount(ordered.column("parent").to_numpy(), minlength=len(headers))
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int32())
    line_array = pa.StructArray.from_arrays(
        [ordered.column(field.name).combine_chunks() for field in LINE_STRUCT], fields=list(LINE_STRUCT)
    )
    batch = pa.record_batch(
        [
            numbers,
            pa.array([h.invoice_date for h in headers], PAGE_TIMESTAMP_TYPE),
            pa.array([h.invoice_day for h in headers], pa.date32()),
            pa.array([h.country for h in headers], pa.string()),
            pa.array([h.customer_id for h in headers], pa.string()),
            pa.ListArray.from_arrays(offsets, line_array).cast(INVOICE_PAGE_SCHEMA.field("lines").type),
        ],
        schema=INVOICE_PAGE_SCHEMA,
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, INVOICE_PAGE_SCHEMA) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


class _Header(NamedTuple):
    invoice_no: str
    invoice_date: dt.datetime
    invoice_day: dt.date
    country: str
    customer_id: str | None


def warm_up() -> None:
    """Build one tiny page, so that Arrow's one-time set-up (~0.2 s) is not paid by a request."""
    lines = flat_lines_from_csv(b"0,1,X,,1,1.000,2010-12-01 00:00:00\n")
    header = _Header("0", dt.datetime(2010, 12, 1), dt.date(2010, 12, 1), "-", None)
    pa.ipc.open_stream(invoice_page_stream([header], lines)).read_all()
