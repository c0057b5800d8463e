"""Delimited text read block by block, so that a source of any size passes through a bounded amount of
memory: a plain file, a gzip file, or the one data file of a zip, read by Arrow's streaming CSV reader.

The blocks hold what the whole-file readers hold (`etl.sources.delimited`): the eight source columns as
text, nothing interpreted, and `source_row`, the 1-based data row. What needs the whole file (the date
order, the decimal mark, the fingerprint) is decided by the caller from what it saw of every block.

Only the usual shapes stream. A workbook (Excel stops at 1,048,576 rows), a UTF-16 or a named
`--encoding` file, a nested archive, or anything odd in the first bytes returns None from
`open_delimited`, and the caller reads the file whole as before, which also gives the exact error.
"""

from __future__ import annotations

import codecs
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from etl.dialect import SourceOptions
from etl.errors import SourceError
from etl.schema import SOURCE_COLUMNS
from etl.sources.common import one_line, shorten
from etl.sources.delimited import read_header
from etl.sources.header import Header

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UTF8_BOM = codecs.BOM_UTF8
_SNIFF_BYTES = 64 * 1024
# 4 MiB of text is ~40,000 rows of the data set. Arrow's reader parses blocks ahead on its threads and
# keeps them: with 16 MiB blocks it held ~600 MiB on the 10x file, with 4 MiB ~160 MiB (and was faster).
_BLOCK_BYTES = 4 * 1024 * 1024
#: Tried in this order when no `--encoding` is given, as the whole-file reader decides (`_to_utf8`).
ENCODINGS = ("utf-8", "cp1252", "iso8859-1")


class WrongEncoding(Exception):
    """The text is not in the encoding it was read with: the caller starts again with the next one."""


@dataclass(frozen=True)
class DelimitedStream:
    """A delimited text file to read in blocks: where it is, its header and its containers."""

    path: Path
    name: str
    header: Header
    #: The containers around the text, innermost first ("+gzip", "+zip").
    wrappers: tuple[str, ...]
    #: The zip member that holds the text, when it is in a zip.
    member: str | None = None

    def blocks(self, encoding: str) -> Iterator[pa.Table]:
        """The rows, a block at a time: `SOURCE_COLUMNS` as strings and `source_row` (int64, 1-based).
        Raises `WrongEncoding` when a block is not valid in `encoding` (blocks before it were already
        given: start again), `SourceError` for a malformed or truncated file."""
        read_options = pa_csv.ReadOptions(
            column_names=self.header.column_names,
            skip_rows=1,
            block_size=_BLOCK_BYTES,
            encoding="utf8" if encoding == "utf-8" else encoding,
        )
        parse_options = pa_csv.ParseOptions(delimiter=self.header.delimiter, newlines_in_values=True)
        convert_options = pa_csv.ConvertOptions(
            column_types={c: pa.string() for c in self.header.column_names},
            include_columns=list(SOURCE_COLUMNS),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            null_values=[],
        )
        rows = 0
        with ExitStack() as stack:
            stream = self._open(stack)
            try:
                reader = pa_csv.open_csv(
                    stream,
                    read_options=read_options,
                    parse_options=parse_options,
                    convert_options=convert_options,
                )
                for batch in reader:
                    if batch.num_rows == 0:
                        continue
                    numbers = np.arange(rows + 1, rows + batch.num_rows + 1, dtype=np.int64)
                    rows += batch.num_rows
                    yield pa.Table.from_batches([batch]).append_column("source_row", pa.array(numbers))
            except UnicodeError as exc:
                raise WrongEncoding(str(exc)) from exc
            except pa.ArrowInvalid as exc:
                if "UTF8" in str(exc) or "decode" in str(exc):
                    raise WrongEncoding(str(exc)) from exc
                raise SourceError(f"{self.name}: malformed CSV: {shorten(one_line(exc), 200)}") from exc
            except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
                kind = "zip member" if self.member else "gzip file"
                raise SourceError(f"{self.name}: truncated or corrupt {kind} ({one_line(exc)})") from exc
        if rows == 0:
            raise SourceError(f"{self.name}: has a header but no data rows")

    def _open(self, stack: ExitStack) -> pa.NativeFile:
        if self.member is not None:
            archive = stack.enter_context(zipfile.ZipFile(self.path))
            handle = stack.enter_context(archive.open(self.member))
            return stack.enter_context(pa.PythonFile(handle, mode="r"))
        compression = "gzip" if "+gzip" in self.wrappers else None
        return stack.enter_context(pa.input_stream(str(self.path), compression=compression))


def open_delimited(path: Path, name: str, options: SourceOptions) -> DelimitedStream | None:
    """The file as a `DelimitedStream` when it is a delimited text that can be read in blocks (plain,
    gzip, or the one data file of a zip; UTF-8 or 8-bit, no `--encoding` given), else None: the caller
    then reads it whole. Raises `SourceError` for a header that names no Online Retail columns, as the
    whole-file reader does."""
    if options.encoding is not None:
        return None
    try:
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return None  # the whole-file reader says why
    wrappers: tuple[str, ...] = ()
    member: str | None = None
    if head.startswith(_GZIP_MAGIC):
        try:
            head = zlib.decompressobj(wbits=31).decompress(head, _SNIFF_BYTES)
        except zlib.error:
            return None
        wrappers = ("+gzip",)
    elif head.startswith(_ZIP_MAGICS):
        opened = _zip_member(path, name)
        if opened is None:
            return None
        member, head = opened
        wrappers = ("+zip",)
    odd = head.startswith((_GZIP_MAGIC, *_ZIP_MAGICS, _OLE2_MAGIC, *_UTF16_BOMS)) or b"\x00" in head
    text = head.removeprefix(_UTF8_BOM)
    if odd or not text.strip() or b"\n" not in text:
        return None
    header = read_header(text, name, options)
    return DelimitedStream(path=path, name=name, header=header, wrappers=wrappers, member=member)


def _zip_member(path: Path, name: str) -> tuple[str, bytes] | None:
    """The zip's one data file and its first bytes; None for a workbook, several files, or a bad zip
    (the whole-file reader gives those their answer)."""
    from etl.sources.containers import pick_member

    try:
        with zipfile.ZipFile(path) as archive:
            if "xl/workbook.xml" in archive.namelist():
                return None
            member = pick_member(archive, name)
            with archive.open(member) as handle:
                return member, handle.read(_SNIFF_BYTES)
    except (SourceError, zipfile.BadZipFile, OSError, EOFError, zlib.error):
        return None
