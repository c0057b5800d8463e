"""Arrow schemas and the typed values passed between the job's stages.

Money is `decimal128(12, 3)` everywhere: the source has at most three decimals and unit prices up to
38,970, so every price and every line amount is exact.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from etl.dialect import SourceDialect
from retail_contract.wire import line_struct

if TYPE_CHECKING:  # pandas is only needed by a caller that asks for a frame
    import pandas as pd

# quantity * unit_price summed over the whole data set fits comfortably in 18 digits.
AMOUNT_TYPE = pa.decimal128(18, 3)
TIMESTAMP_TYPE = pa.timestamp("s")

#: The eight columns of the source file, in its order.
SOURCE_COLUMNS: tuple[str, ...] = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)

#: One invoice line, as validated from the source and as read back from the service: the wire's line
#: (`retail_contract.wire.line_struct`, with the job's timestamps) between its invoice's fields.
LINE_SCHEMA = pa.schema(
    [
        pa.field("invoice_no", pa.string(), nullable=False),
        *line_struct(TIMESTAMP_TYPE),
        pa.field("customer_id", pa.string()),
        pa.field("country", pa.string(), nullable=False),
        pa.field("invoice_day", pa.date32(), nullable=False),
    ]
)

#: One invoice (header) in the lake.
INVOICE_SCHEMA = pa.schema(
    [
        pa.field("invoice_no", pa.string(), nullable=False),
        pa.field("invoice_date", TIMESTAMP_TYPE, nullable=False),
        pa.field("customer_id", pa.string()),
        pa.field("country", pa.string(), nullable=False),
        pa.field("line_count", pa.int32(), nullable=False),
        pa.field("total_quantity", pa.int64(), nullable=False),
        pa.field("total_amount", AMOUNT_TYPE, nullable=False),
        pa.field("invoice_day", pa.date32(), nullable=False),
    ]
)

#: One customer as stored by the service (its first-posted country).
CUSTOMER_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
    ]
)

#: A source row that cannot be represented, kept as it was read, with the reason.
REJECT_SCHEMA = pa.schema(
    [
        pa.field("source_row", pa.int64(), nullable=False),
        *[pa.field(name, pa.string()) for name in SOURCE_COLUMNS],
        pa.field("reason", pa.string(), nullable=False),
        pa.field("invoice_day", pa.date32()),
    ]
)


@dataclass(frozen=True)
class DayRange:
    """Invoice days to process, both ends inclusive; `None` leaves that end open."""

    start: dt.date | None = None
    end: dt.date | None = None

    def __post_init__(self) -> None:
        if self.start and self.end and self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")

    def contains(self, day: dt.date) -> bool:
        """Whether `day` falls in the range."""
        return (self.start is None or day >= self.start) and (self.end is None or day <= self.end)


@dataclass(frozen=True)
class RawSource:
    """The source as read: the eight `SOURCE_COLUMNS` as non-null strings (empty string for an empty
    cell), plus `source_row` (int64), the 1-based data row number in the file, for tracing a reject back
    to its line. Arrow, not pandas: the job never needs a frame, and importing and converting to one
    was a fixed cost of every run. `dialect` is how the cells are written (date order, decimal mark),
    as the loader decided it; `validate` reads the cells by it."""

    table: pa.Table
    name: str
    shape: str  # "uci-xlsx", "kaggle-csv", "export-csv", "csv", ... (+gzip, +zip)
    dialect: SourceDialect = field(default_factory=SourceDialect)

    @property
    def num_rows(self) -> int:
        """Data rows read from the source."""
        return int(self.table.num_rows)

    def to_pandas(self) -> pd.DataFrame:
        """The rows as a pandas frame (`str` columns, int64 `source_row`), for exploring a source."""
        import pandas as pd  # imported here: the job itself never needs pandas

        frame = self.table.to_pandas()
        for name in SOURCE_COLUMNS:
            frame[name] = frame[name].astype("str")
        return pd.DataFrame(frame)


@dataclass(frozen=True)
class ValidatedSource:
    """The representable lines (`LINE_SCHEMA`) and the rejects (`REJECT_SCHEMA`) of the run's days."""

    lines: pa.Table
    rejects: pa.Table
    days: tuple[dt.date, ...]  # the invoice days present in `lines` or `rejects`, sorted


@dataclass(frozen=True)
class ServiceSnapshot:
    """What the service holds for the run's days: lines (`LINE_SCHEMA`) and customers (`CUSTOMER_SCHEMA`)."""

    lines: pa.Table
    customers: pa.Table


#: The order of lines after validation, everywhere: posting, the read-back, the lake, reconciliation.
#: An invoice has one day, so each invoice is one run of rows in this order.
LINE_ORDER: tuple[str, ...] = ("invoice_day", "invoice_no", "line_no")


def is_sorted(table: pa.Table, keys: Sequence[str]) -> bool:
    """Whether the rows of `table` are already in ascending order of `keys` (False when a key has nulls)."""
    count = table.num_rows
    if count < 2:
        return True
    if any(table[key].null_count for key in keys):
        return False  # where nulls go is the sort's business
    before: pa.ChunkedArray | None = None  # per neighbouring pair: "in order" by an earlier key
    tied: pa.ChunkedArray | None = None  # per pair: equal on every key so far
    for key in keys:
        previous, following = table[key].slice(0, count - 1), table[key].slice(1)
        less, equal = pc.less(previous, following), pc.equal(previous, following)
        before = less if before is None or tied is None else pc.or_(before, pc.and_(tied, less))
        tied = equal if tied is None else pc.and_(tied, equal)
    assert before is not None and tied is not None
    return bool(pc.all(pc.or_(before, tied)).as_py())


def in_line_order(lines: pa.Table) -> pa.Table:
    """`lines` sorted by `LINE_ORDER`, or `lines` itself when already so: a check is a few vector
    comparisons, a sort of the full data set a tenth of a second per copy."""
    if is_sorted(lines, LINE_ORDER):
        return lines
    return lines.sort_by([(key, "ascending") for key in LINE_ORDER])
