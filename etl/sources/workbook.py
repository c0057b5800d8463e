"""UCI's workbook, `Online Retail.xlsx`: typed cells (read with calamine) turned into the very text the
CSV export writes for the same cell, so that validation sees one spelling whatever the shape."""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.errors import SourceError
from etl.schema import SOURCE_COLUMNS
from etl.sources.common import Read, one_line, shorten
from etl.sources.header import canonical_columns

SHEET_NAME = "Online Retail"


def read_workbook(data: bytes, name: str) -> Read:
    """The sheet `Online Retail` of an .xlsx workbook, each typed cell as the text the CSV export writes
    for it. Raises `SourceError` for a damaged workbook, a missing sheet or missing columns."""
    import pandas as pd  # only workbooks need it (read_excel with calamine); CSV runs skip the import

    try:
        with pd.ExcelFile(io.BytesIO(data), engine="calamine") as book:
            sheets = [str(s) for s in book.sheet_names]
            if SHEET_NAME not in sheets:
                raise SourceError(
                    f"{name}: workbook has no sheet {SHEET_NAME!r} (sheets: {', '.join(sheets) or 'none'})"
                )
            # dtype=object keeps each cell's own type (int, float, datetime, str), which the
            # converters below need; na_filter=False keeps "NA" and "" as the text they are.
            cells = pd.read_excel(
                book, sheet_name=SHEET_NAME, header=0, dtype=object, na_filter=False, keep_default_na=False
            )
    except SourceError:
        raise
    except Exception as exc:  # calamine and zipfile raise their own types for a damaged workbook
        raise SourceError(f"{name}: cannot read workbook: {shorten(one_line(exc), 200)}") from exc

    cells.columns = pd.Index(canonical_columns([str(c) for c in cells.columns], name))
    table = pa.table(
        {
            **{c: pa.array(_convert(cells[c].tolist(), _CELL_TEXT[c]), pa.string()) for c in SOURCE_COLUMNS},
            "source_row": pa.array(np.arange(1, len(cells) + 1, dtype=np.int64)),
        }
    )
    blank = np.ones(table.num_rows, dtype=bool)
    for c in SOURCE_COLUMNS:
        blank &= pc.equal(table.column(c), "").to_numpy(zero_copy_only=False)
    table = table.filter(pa.array(~blank))  # formatting-only rows at the end of a sheet
    if table.num_rows == 0:
        raise SourceError(f"{name}: sheet {SHEET_NAME!r} has a header but no data rows")
    return Read(table.combine_chunks(), kind="uci-xlsx")


def _convert(values: list[Any], cell_text: Callable[[Any], str]) -> list[str]:
    if cell_text is _date_cell and values and all(type(v) is dt.datetime for v in values):
        return _datetimes_text(values)
    return [cell_text(v) for v in values]


def _datetimes_text(values: list[dt.datetime]) -> list[str]:
    """`_date_cell` for a column of plain datetimes, in numpy: per-cell strftime takes seconds here."""
    micros = np.array(values, dtype="datetime64[us]")
    # Round to the second (see `_date_cell`), then numpy's ISO text with a space for the "T".
    seconds = (micros + np.timedelta64(500_000, "us")).astype("datetime64[s]")
    return [text.replace("T", " ") for text in np.datetime_as_string(seconds, unit="s").tolist()]


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text_cell(value: Any) -> str:
    """A text column (InvoiceNo, StockCode, Description, Country) that Excel typed as a number."""
    if isinstance(value, str):
        return value
    if _is_blank(value):
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 536365.0 -> "536365": the number was typed, not the ".0"
    if isinstance(value, dt.datetime | dt.date):
        return _date_cell(value)
    return str(value)


def _integer_cell(value: Any) -> str:
    """Quantity: calamine returns integral numbers as int; a fractional one is kept for validate."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _text_cell(value)


def _float_cell(value: Any) -> str:
    """UnitPrice and CustomerID, which the export writes as floats: `2.55`, `1.0`, `17850.0`.

    Python's repr is the shortest text that round-trips the binary float, which is exactly the
    decimal typed into the spreadsheet (2.55, not 2.54999999999999982236431605997495353221893310546875).
    """
    if isinstance(value, bool) or _is_blank(value):
        return "" if _is_blank(value) else str(value)
    if isinstance(value, int):
        return f"{value}.0"  # calamine hands back 17850.0 as the int 17850
    if isinstance(value, float):
        return repr(value)
    return _text_cell(value)


_EXCEL_EPOCH = dt.datetime(1899, 12, 30)


def _date_cell(value: Any) -> str:
    """InvoiceDate as the export writes it, `YYYY-MM-DD HH:MM:SS`."""
    if hasattr(value, "to_pydatetime"):  # a pandas Timestamp: nanoseconds dropped, as datetime does
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        # Excel stores times as fractions of a day; round away float noise like 08:25:59.999998.
        value = (value + dt.timedelta(microseconds=500_000)).replace(microsecond=0)
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return f"{value.isoformat()} 00:00:00"
    # A number here is an Excel serial date in a cell that was not formatted as a date.
    is_number = isinstance(value, int | float) and not isinstance(value, bool) and not _is_blank(value)
    if is_number and 0 < value < 2_958_466:
        return _date_cell(_EXCEL_EPOCH + dt.timedelta(days=float(value)))
    return _text_cell(value)


_CELL_TEXT: dict[str, Callable[[Any], str]] = {
    "InvoiceNo": _text_cell,
    "StockCode": _text_cell,
    "Description": _text_cell,
    "Quantity": _integer_cell,
    "InvoiceDate": _date_cell,
    "UnitPrice": _float_cell,
    "CustomerID": _float_cell,
    "Country": _text_cell,
}
