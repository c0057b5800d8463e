"""The wire formats of the service's bulk path, as the service answers and the job sends and reads them.

Media types and the cursor header, the limits on one bulk request and one read-back page, and the Arrow
schemas of the read-back page (`GET /invoices` with `Accept: application/vnd.apache.arrow.stream`) and
of the Arrow body of `POST /bulk/invoices`. docs/design.md ("Bulk write", "Paged read-back").
"""

from __future__ import annotations

import pyarrow as pa

from retail_contract.limits import PRICE_PRECISION, PRICE_SCALE

#: Arrow IPC stream: the read-back page's `Accept`, the invoice body's `Content-Type`.
ARROW_STREAM = "application/vnd.apache.arrow.stream"
#: The next read-back page's cursor in an Arrow answer (absent on the last page).
NEXT_CURSOR_HEADER = "X-Next-Cursor"

#: The most items one `POST /bulk/customers` or `POST /bulk/invoices` request may carry.
MAX_BULK_CUSTOMERS = 10_000
MAX_BULK_INVOICES = 5_000
MAX_BULK_LINES = 50_000
#: The most invoices one read-back page holds (`limit`).
MAX_PAGE_SIZE = 5_000

#: Prices on the wire: exact, never a float.
PRICE_TYPE = pa.decimal128(PRICE_PRECISION, PRICE_SCALE)
#: Timestamps of a read-back page (naive local time); an invoice body may also send `timestamp[s]`.
PAGE_TIMESTAMP_TYPE = pa.timestamp("us")

#: The columns of an invoice row of the body, and of a line struct, in the contract's order.
INVOICE_FIELDS = ("invoice_no", "invoice_date", "customer_id", "country", "lines")
LINE_FIELDS = ("line_no", "stock_code", "description", "quantity", "unit_price", "invoice_date")


def line_struct(timestamp_type: pa.DataType = PAGE_TIMESTAMP_TYPE) -> pa.StructType:
    """One line inside an invoice row, with `timestamp_type` for its `invoice_date`."""
    return pa.struct(
        [
            pa.field("line_no", pa.int32(), nullable=False),
            pa.field("stock_code", pa.string(), nullable=False),
            pa.field("description", pa.string()),
            pa.field("quantity", pa.int64(), nullable=False),
            pa.field("unit_price", PRICE_TYPE, nullable=False),
            pa.field("invoice_date", timestamp_type, nullable=False),
        ]
    )


def _lines_field(timestamp_type: pa.DataType) -> pa.Field:
    item = pa.field("item", line_struct(timestamp_type), nullable=False)
    return pa.field("lines", pa.list_(item), nullable=False)


def invoice_body_schema(timestamp_type: pa.DataType = PAGE_TIMESTAMP_TYPE) -> pa.Schema:
    """The Arrow body of `POST /bulk/invoices`: one row per invoice (`INVOICE_FIELDS`), its lines in
    `line_no` order; the read-back page's shape without the derived `invoice_day`. The service takes
    `timestamp[s]` or `timestamp[us]`; the job sends its own seconds."""
    return pa.schema(
        [
            pa.field("invoice_no", pa.string(), nullable=False),
            pa.field("invoice_date", timestamp_type, nullable=False),
            pa.field("customer_id", pa.string()),
            pa.field("country", pa.string(), nullable=False),
            _lines_field(timestamp_type),
        ]
    )


#: One line of a read-back page.
LINE_STRUCT = line_struct()

#: A read-back page: one row per invoice of the page, in the page's order.
INVOICE_PAGE_SCHEMA = pa.schema(
    [
        pa.field("invoice_no", pa.string(), nullable=False),
        pa.field("invoice_date", PAGE_TIMESTAMP_TYPE, nullable=False),
        pa.field("invoice_day", pa.date32(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("customer_id", pa.string()),
        _lines_field(PAGE_TIMESTAMP_TYPE),
    ]
)
