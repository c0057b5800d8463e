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
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.dialect import DateFormat, SourceDialect, SourceOptions
from etl.schema import RawSource
from etl.sources.common import Read
from etl.sources.containers import read_bytes
from etl.sources.dates import all_iso_like, decide_date_format, detect_date_format
from etl.sources.download import DEFAULT_CACHE_DIR, source_bytes, source_path
from etl.sources.numbers import decide_decimal, detect_decimal
from etl.sources.stream import ENCODINGS, WrongEncoding, open_delimited

__all__ = [
    "DEFAULT_CACHE_DIR",
    "BlockSink",
    "SourceFingerprint",
    "SourceOptions",
    "SourceSummary",
    "load_source",
    "read_in_blocks",
    "source_fingerprint",
]


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
    return _shape_name(read.kind, read.delimiter, read.wrappers, dialect)


def _shape_name(kind: str, delimiter: str | None, wrappers: tuple[str, ...], dialect: SourceDialect) -> str:
    """The shape's name: the two CSV flavours people hold by name, `csv` for every other dialect."""
    if kind == "csv" and delimiter == "," and dialect.decimal == ".":
        if dialect.date_format.is_iso:
            kind = "export-csv"
        elif dialect.date_format.order == "mdy":
            kind = "kaggle-csv"
    return kind + "".join(wrappers)


# --- a source of any size, in blocks ---------------------------------------------------------------


class BlockSink(Protocol):
    """Where `read_in_blocks` hands the source's blocks."""

    def add(self, block: pa.Table) -> None:
        """Take one block: `SOURCE_COLUMNS` as strings and `source_row`, in source order."""

    def discard(self) -> None:
        """Forget every block taken: the source is read again from its start (another encoding)."""


Sink = TypeVar("Sink", bound=BlockSink)


@dataclass(frozen=True)
class SourceSummary:
    """What reading the whole source decided and saw: `RawSource` without its rows."""

    name: str
    shape: str
    dialect: SourceDialect
    fingerprint: str
    source_rows: int


def read_in_blocks(
    source: str | os.PathLike[str],
    new_sink: Callable[[], Sink],
    *,
    cache_dir: Path | None = None,
    options: SourceOptions | None = None,
) -> tuple[Sink, SourceSummary]:
    """Read `source` block by block into a sink from `new_sink`, so that a file of any size passes
    through bounded memory; the dialect is decided, as `load_source` decides it, from every block.

    The usual shapes (delimited text, plain, gzip or in a zip) stream. Others (a workbook, a named
    `--encoding`) are read whole by `load_source` and handed over as one block. A text that turns out
    not to be UTF-8 is read again as Windows-1252 (then ISO-8859-1), after `sink.discard()`.
    Raises `SourceError` as `load_source` does.
    """
    name = os.fspath(source)
    options = options or SourceOptions()
    stream = open_delimited(source_path(name, cache_dir), name, options)
    if stream is None:
        raw = load_source(name, cache_dir=cache_dir, options=options)
        sink = new_sink()
        sink.add(raw.table)
        return sink, SourceSummary(name, raw.shape, raw.dialect, source_fingerprint(raw.table), raw.num_rows)
    for encoding in ENCODINGS:
        sink = new_sink()
        evidence = _DialectEvidence()
        rows = 0
        with SourceFingerprint() as fingerprint:
            try:
                for block in stream.blocks(encoding):
                    evidence.add(block)
                    fingerprint.update(block)
                    sink.add(block)
                    rows += block.num_rows
            except WrongEncoding:
                sink.discard()
                continue
            digest = fingerprint.hexdigest()
        dialect = evidence.dialect(name, options, stream.header.delimiter, encoding)
        shape = _shape_name("csv", stream.header.delimiter, stream.wrappers, dialect)
        return sink, SourceSummary(name, shape, dialect, digest, rows)
    raise AssertionError("ISO-8859-1 decodes every byte")  # pragma: no cover


class _DialectEvidence:
    """The distinct dates and prices of every block, counted, for the decisions `load_source` takes
    over the whole column. Blocks of ISO dates add none (the usual source keeps nothing); prices are a
    few thousand distinct texts."""

    def __init__(self) -> None:
        self._dates: list[pa.Table] = []
        self._prices: list[pa.Table] = []

    def add(self, block: pa.Table) -> None:
        dates = block.column("InvoiceDate")
        if not all_iso_like(dates):
            self._dates = _merged(self._dates, pc.value_counts(dates))
        self._prices = _merged(self._prices, pc.value_counts(block.column("UnitPrice")))

    def dialect(self, name: str, options: SourceOptions, delimiter: str, encoding: str) -> SourceDialect:
        if options.date_format is not None:
            date_format = options.date_format.because("given (--date-format)")
        elif not self._dates:
            date_format = detect_date_format(pa.array([], pa.string()), name)
        else:
            dates = _counts(self._dates)
            date_format = decide_date_format(
                dates.column("values").combine_chunks(), dates.column("counts").combine_chunks(), name
            )
        if options.decimal is not None:
            decimal, decimal_basis = options.decimal, "given (--decimal)"
        else:
            prices = _counts(self._prices)
            decimal, decimal_basis = decide_decimal(
                prices.column("values").combine_chunks(), prices.column("counts").combine_chunks(), name
            )
        return SourceDialect(
            date_format=date_format,
            decimal=decimal,
            delimiter=delimiter,
            encoding=encoding,
            decimal_basis=decimal_basis,
        )


def _merged(kept: list[pa.Table], counted: pa.StructArray) -> list[pa.Table]:
    """`kept` with one more block's counts; folded into one table of distinct values when it grows."""
    kept = [*kept, pa.table({"values": counted.field("values"), "counts": counted.field("counts")})]
    return [_counts(kept)] if len(kept) > 8 else kept


def _counts(kept: list[pa.Table]) -> pa.Table:
    folded = pa.concat_tables(kept).group_by("values").aggregate([("counts", "sum")])
    return folded.rename_columns(["values", "counts"])


#: Text kept in memory per stream of the fingerprint before it spills to a temporary file.
_SPOOL_BYTES = 1024 * 1024


class SourceFingerprint:
    """`source_fingerprint` of a table seen block by block, equal to the digest of the whole table.

    The digest hashes each column whole, one after another, so every column's bytes are kept (spooled
    to temporary files past 1 MiB) until the last block, then hashed in column order: the same digest,
    at any size, in bounded memory. Use as a context manager, or call `close`.
    """

    def __init__(self) -> None:
        self._folder: str | None = None
        self._columns: dict[str, _ColumnBytes] = {}

    def update(self, table: pa.Table) -> None:
        """Add the next rows (the same columns every time)."""
        for name in table.column_names:
            column = self._columns.get(name)
            if column is None:
                column = self._columns[name] = _ColumnBytes(name, table.column(name).type, self._spool)
            for chunk in table.column(name).chunks:
                column.add(chunk)

    def hexdigest(self) -> str:
        """The digest of every row added (`source_fingerprint`'s 16 hex digits)."""
        digest = hashlib.sha256()
        for column in self._columns.values():
            column.feed(digest)
        return digest.hexdigest()[:16]

    def close(self) -> None:
        """Delete the spooled bytes."""
        for column in self._columns.values():
            column.close()
        self._columns = {}
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> SourceFingerprint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spool(self) -> IO[bytes]:
        if self._folder is None:
            self._folder = tempfile.mkdtemp(prefix="retail-fingerprint-")
        return tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES, dir=self._folder)


class _ColumnBytes:
    """One column's share of the digest: its length and null count, its null mask (only once a null is
    seen), and its bytes: a string column's offsets rebased to 0 and its characters, or a number
    column's values."""

    def __init__(self, name: str, type_: pa.DataType, spool: Callable[[], IO[bytes]]) -> None:
        self.name, self.type = name, type_
        self.is_string = pa.types.is_string(type_)
        if not self.is_string and not pa.types.is_integer(type_):
            raise TypeError(f"column {name}: a source column is text or an integer, not {type_}")
        self.length = self.null_count = 0
        self.chars_so_far = 0
        self._spool = spool
        self.nulls: IO[bytes] | None = None
        self.values = spool()  # offsets, or the numbers
        self.chars = spool() if self.is_string else None

    def add(self, chunk: pa.Array) -> None:
        n = len(chunk)
        if n == 0:
            return
        if chunk.null_count and self.nulls is None:
            self.nulls = self._spool()
            _write_zeros(self.nulls, self.length)
        if self.nulls is not None:
            self.nulls.write(pc.is_null(chunk).to_numpy(zero_copy_only=False).tobytes())
        if self.is_string:
            offsets = np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset : chunk.offset + n + 1]
            rebased = offsets.astype(np.int64) - int(offsets[0]) + self.chars_so_far
            # The whole column's offsets start with one 0; each later chunk adds only its ends. Past
            # 2 GiB of text int32 wraps (the whole-table digest could not combine such a column at all).
            self.values.write((rebased if self.length == 0 else rebased[1:]).astype(np.int32).tobytes())
            data = chunk.buffers()[2]
            if data is not None and self.chars is not None:
                self.chars.write(memoryview(data)[int(offsets[0]) : int(offsets[-1])])
            self.chars_so_far += int(offsets[-1]) - int(offsets[0])
        else:
            if chunk.null_count:
                raise ValueError(f"column {self.name}: a number column of the source has no nulls")
            self.values.write(chunk.to_numpy(zero_copy_only=False).tobytes())
        self.length += n
        self.null_count += chunk.null_count

    def feed(self, digest: hashlib._Hash) -> None:
        digest.update(f"{self.name}:{self.type}:{self.length}:{self.null_count};".encode())
        if self.null_count and self.nulls is not None:
            _copy_into(digest, self.nulls)
        if self.is_string and self.length == 0:
            digest.update(np.zeros(1, np.int32).tobytes())
        _copy_into(digest, self.values)
        if self.chars is not None:
            _copy_into(digest, self.chars)

    def close(self) -> None:
        for spooled in (self.nulls, self.values, self.chars):
            if spooled is not None:
                spooled.close()


def _write_zeros(out: IO[bytes], count: int) -> None:
    block = bytes(_SPOOL_BYTES)
    while count > 0:
        out.write(block[: min(count, len(block))])
        count -= len(block)


def _copy_into(digest: hashlib._Hash, spooled: IO[bytes]) -> None:
    spooled.seek(0)
    while chunk := spooled.read(_SPOOL_BYTES):
        digest.update(chunk)


def source_fingerprint(table: pa.Table) -> str:
    """A short, stable digest of the source's content (`RawSource.table`): names the rejects file that
    has no day. The same rows give the same digest whatever the file's shape or the reader's chunking
    (and whether the rows came whole or in blocks, `SourceFingerprint`)."""
    with SourceFingerprint() as fingerprint:
        fingerprint.update(table)
        return fingerprint.hexdigest()
