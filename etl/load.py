"""Stage 1: load the source, in whichever shape the user holds it, into an all-string Arrow table, and
decide its dialect (date order, decimal mark) from its content or from the user's options.

The shape is detected from the content, not the file name (readers in `etl.sources`):

| shape                | what it is                                                              |
| -------------------- | ----------------------------------------------------------------------- |
| `uci-xlsx`           | UCI's `Online Retail.xlsx` (sheet `Online Retail`, typed cells)         |
| `uci-xlsx+zip`       | UCI's download `online+retail.zip` holding that workbook                |
| `export-csv`         | the by-day CSV export: UTF-8, `2010-12-01 08:26:00`, `17850.0`          |
| `kaggle-csv`         | Kaggle's `data.csv`: ISO-8859-1, `12/1/2010 8:26`, `17850`              |
| `csv`                | any other delimited text: `;` tab `|`, day-first dates, decimal commas  |
| `<csv>+gzip`, `+zip` | any of those gzip-compressed or as the one file of a zip                |

Nothing is interpreted here: every cell stays text (an empty cell is `""`, the text `NA` stays `NA`,
trailing spaces stay), so `validate` sees exactly what the file holds and a reject shows it verbatim.
Workbook cells are typed, so they are turned into the text the CSV export writes for the same cell.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.dialect import DateFormat, SourceDialect, SourceOptions
from etl.schema import RawSource
from etl.sources.common import Read
from etl.sources.containers import read_bytes
from etl.sources.dates import detect_date_format
from etl.sources.download import DEFAULT_CACHE_DIR, source_bytes
from etl.sources.numbers import detect_decimal

__all__ = ["DEFAULT_CACHE_DIR", "SourceOptions", "load_source", "source_fingerprint"]


def load_source(
    source: str | os.PathLike[str],
    *,
    cache_dir: Path | None = None,
    options: SourceOptions | None = None,
) -> RawSource:
    """Read `source` (a local path or an http(s) URL) into a `RawSource`.

    The table holds the eight `SOURCE_COLUMNS` as strings, in that order, plus `source_row` (int64,
    the 1-based data row of the line in the file; for a workbook, sheet row = `source_row + 1`).
    A URL is downloaded once into `cache_dir` (default `~/.cache/retail-etl`) and read from there.
    `options` set the delimiter, decimal mark, encoding and date format; what they leave unset is
    detected, and `RawSource.dialect` says what was decided and why.

    Raises `SourceError` with a one-line message naming the source for every file-level problem:
    missing or empty file, no data rows, missing columns, truncated archive, unexpected encoding,
    missing sheet, unknown format, failed download, ambiguous or contradictory dates or decimals.
    """
    name = os.fspath(source)
    options = options or SourceOptions()
    read = read_bytes(source_bytes(name, cache_dir), name, options)
    dialect = _dialect(read, name, options)
    return RawSource(table=read.table, name=name, shape=_shape(read, dialect), dialect=dialect)


def _dialect(read: Read, name: str, options: SourceOptions) -> SourceDialect:
    date_format: DateFormat
    if options.date_format is not None:
        date_format = options.date_format.because("given (--date-format)")
    else:
        date_format = detect_date_format(read.table.column("InvoiceDate"), name)
        if read.kind == "uci-xlsx" and date_format.is_iso:
            date_format = date_format.because("typed workbook cells")
    if options.decimal is not None:
        decimal, decimal_basis = options.decimal, "given (--decimal)"
    else:
        decimal, decimal_basis = detect_decimal(read.table.column("UnitPrice"), name)
    return SourceDialect(
        date_format=date_format,
        decimal=decimal,
        delimiter=read.delimiter,
        encoding=read.encoding,
        decimal_basis=decimal_basis,
    )


def _shape(read: Read, dialect: SourceDialect) -> str:
    """The shape's name: the two CSV flavours people hold by name, `csv` for every other dialect."""
    kind = read.kind
    if kind == "csv" and read.delimiter == "," and dialect.decimal == ".":
        if dialect.date_format.is_iso:
            kind = "export-csv"
        elif dialect.date_format.order == "mdy":
            kind = "kaggle-csv"
    return kind + "".join(read.wrappers)


def source_fingerprint(table: pa.Table) -> str:
    """A short, stable digest of the source's content (`RawSource.table`): names the rejects file that
    has no day. The same rows give the same digest whatever the file's shape or the reader's chunking."""
    digest = hashlib.sha256()
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        digest.update(f"{name}:{column.type}:{len(column)}:{column.null_count};".encode())
        if column.null_count:
            digest.update(pc.is_null(column).to_numpy(zero_copy_only=False).tobytes())
        if pa.types.is_string(column.type):
            # Offsets rebased to 0 and the characters they span: chunking and slicing do not show.
            offsets = np.frombuffer(column.buffers()[1], np.int32)[
                column.offset : column.offset + len(column) + 1
            ]
            digest.update((offsets - offsets[0]).tobytes())
            digest.update(column.buffers()[2][int(offsets[0]) : int(offsets[-1])])
        else:
            digest.update(column.to_numpy(zero_copy_only=False).tobytes())
    return digest.hexdigest()[:16]
