"""The format of the bytes, told from their leading bytes (never from the file name), and the containers
around them: gzip, zip (one data file inside, or an .xlsx workbook, which is a zip itself).

A new input format is one reader module and one line in `read_bytes`.
"""

from __future__ import annotations

import codecs
import gzip
import io
import zipfile
import zlib
from pathlib import Path

import pyarrow as pa

from etl.dialect import SourceOptions
from etl.errors import SourceError
from etl.sources.common import Read, one_line, source_table
from etl.sources.delimited import parse, read_delimited, read_header
from etl.sources.workbook import read_workbook

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members / an empty zip
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy .xls (and other Office 97 files)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UTF8_BOM = codecs.BOM_UTF8
# Containers may nest once (a CSV.gz inside a zip); deeper nesting is not a shape anyone ships.
_MAX_NESTING = 2
_SNIFF_BYTES = 64 * 1024


def read_bytes(data: bytes, name: str, options: SourceOptions, *, depth: int = 0) -> Read:
    """Dispatch on the leading bytes to the reader of that format, unwrapping containers."""
    if not data or data.isspace():
        raise SourceError(f"{name}: file is empty")
    if data.startswith(_GZIP_MAGIC):
        fast = _read_gzipped_csv(data, name, options)
        if fast is not None:
            return fast
        inner = _gunzip(data, name)
        del data  # the compressed bytes are not needed any more; keep peak memory down
        return read_bytes(inner, name, options, depth=_nested(depth, name)).wrapped("+gzip")
    if data.startswith(_ZIP_MAGICS):
        return _read_zip(data, name, options, depth=depth)
    if data.startswith(_OLE2_MAGIC):
        raise SourceError(f"{name}: legacy Excel .xls workbook is not supported; save it as .xlsx or CSV")
    if data.startswith(_UTF16_BOMS) and options.encoding is None:
        raise SourceError(
            f"{name}: text is UTF-16 encoded; expected a UTF-8 or ISO-8859-1 CSV (or pass --encoding utf-16)"
        )
    return read_delimited(data, name, options)


def _nested(depth: int, name: str) -> int:
    if depth + 1 >= _MAX_NESTING:
        raise SourceError(f"{name}: archives nested too deeply; expected one CSV or workbook inside")
    return depth + 1


def _read_gzipped_csv(data: bytes, name: str, options: SourceOptions) -> Read | None:
    """The usual shape, a gzip-compressed UTF-8 CSV, read with Arrow inflating the file while it parses
    (on two cores the full data set took 0.14-0.20 s instead of 0.27-0.45 s for inflating it first).

    None when the content is anything else (another archive, a workbook, a BOM, UTF-16, not UTF-8,
    another `--encoding`, no data rows) or anything at all goes wrong: the general path then reads the
    file, and gives the exact error. Arrow reads every member of a multi-member file, and fails on a
    truncated one.
    """
    if options.encoding not in (None, "utf-8"):
        return None
    try:
        head = zlib.decompressobj(wbits=31).decompress(data[:_SNIFF_BYTES], _SNIFF_BYTES)
    except zlib.error:
        return None
    looks_other = head.startswith((_GZIP_MAGIC, *_ZIP_MAGICS, _OLE2_MAGIC, *_UTF16_BOMS, _UTF8_BOM))
    if not head or looks_other or b"\x00" in head:
        return None
    try:
        header = read_header(head, name, options)
        table = parse(pa.input_stream(pa.BufferReader(data), compression="gzip"), header, name)
    except (SourceError, OSError, pa.ArrowException):
        return None
    if table.num_rows == 0:
        return None
    read = Read(source_table(table), kind="csv", delimiter=header.delimiter, encoding="utf-8")
    return read.wrapped("+gzip")


def _gunzip(data: bytes, name: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as exc:
        raise SourceError(f"{name}: truncated or corrupt gzip file ({one_line(exc)})") from exc


def _read_zip(data: bytes, name: str, options: SourceOptions, *, depth: int) -> Read:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise SourceError(f"{name}: truncated or corrupt zip archive ({one_line(exc)})") from exc
    with archive:
        members = archive.namelist()
        if "xl/workbook.xml" in members:  # the zip *is* an .xlsx workbook
            return read_workbook(data, name)
        member = pick_member(archive, name)
        inner_name = f"{name} [{member}]"
        try:
            inner = archive.read(member)
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
            raise SourceError(f"{inner_name}: truncated or corrupt zip member ({one_line(exc)})") from exc
    del data
    return read_bytes(inner, inner_name, options, depth=_nested(depth, name)).wrapped("+zip")


def pick_member(archive: zipfile.ZipFile, name: str) -> str:
    """The one data file of the archive, ignoring directories and macOS/hidden clutter."""
    files = [
        info.filename
        for info in archive.infolist()
        if not info.is_dir()
        and not info.filename.startswith("__MACOSX/")
        and not Path(info.filename).name.startswith(".")
    ]
    if len(files) == 1:
        return files[0]
    known = [f for f in files if f.lower().endswith((".csv", ".xlsx", ".gz", ".txt", ".tsv"))]
    if len(known) == 1:
        return known[0]
    if not files:
        raise SourceError(f"{name}: zip archive holds no files")
    listed = ", ".join(files[:5]) + (", ..." if len(files) > 5 else "")
    raise SourceError(f"{name}: zip archive holds {len(files)} files ({listed}); expected one data file")
