"""Stage 1: load the source, in whichever shape the user holds it, into an all-string Arrow table.

The shape is detected from the content, not the file name:

| shape                | what it is                                                              |
| -------------------- | ----------------------------------------------------------------------- |
| `uci-xlsx`           | UCI's `Online Retail.xlsx` (sheet `Online Retail`, typed cells)         |
| `uci-xlsx+zip`       | UCI's download `online+retail.zip` holding that workbook                |
| `export-csv`         | the by-day CSV export: UTF-8, `2010-12-01 08:26:00`, `17850.0`          |
| `kaggle-csv`         | Kaggle's `data.csv`: ISO-8859-1, `12/1/2010 8:26`, `17850`              |
| `<csv>+gzip`, `+zip` | either CSV flavour gzip-compressed or as the one file of a zip          |

Nothing is interpreted here: every cell stays text (an empty cell is `""`, the text `NA` stays `NA`,
trailing spaces stay), so `validate` sees exactly what the file holds and a reject shows it verbatim.
Workbook cells are typed, so they are turned into the text the CSV export writes for the same cell.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import email.utils
import gzip
import hashlib
import io
import math
import os
import re
import uuid
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from etl.errors import SourceError
from etl.schema import SOURCE_COLUMNS, RawSource

__all__ = ["load_source"]

SHEET_NAME = "Online Retail"
DEFAULT_CACHE_DIR = Path("~/.cache/retail-etl")

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members / an empty zip
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy .xls (and other Office 97 files)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UTF8_BOM = codecs.BOM_UTF8
# Containers may nest once (a CSV.gz inside a zip); deeper nesting is not a shape anyone ships.
_MAX_NESTING = 2
_SNIFF_BYTES = 64 * 1024

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}")
_NON_SPACE = re.compile(rb"\S")
_KAGGLE_DATE = re.compile(r"^\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}")

# Download policy: transport errors, 429 and 5xx are retried; other 4xx are the user's to fix.
_DOWNLOAD_ATTEMPTS = 5
_RETRY_MIN_WAIT = 0.5  # seconds; also the floor for `Retry-After: 0`, so a retry never spins
_RETRY_MAX_WAIT = 30.0
_DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
_CHUNK = 1024 * 1024


def load_source(source: str | os.PathLike[str], *, cache_dir: Path | None = None) -> RawSource:
    """Read `source` (a local path or an http(s) URL) into a `RawSource`.

    The table holds the eight `SOURCE_COLUMNS` as strings, in that order, plus `source_row` (int64,
    the 1-based data row of the line in the file; for a workbook, sheet row = `source_row + 1`).
    A URL is downloaded once into `cache_dir` (default `~/.cache/retail-etl`) and read from there.

    Raises `SourceError` with a one-line message naming the source for every file-level problem:
    missing or empty file, no data rows, missing columns, truncated archive, unexpected encoding,
    missing sheet, unknown format, failed download.
    """
    text = os.fspath(source)
    scheme = urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        path = _download(text, (cache_dir or DEFAULT_CACHE_DIR).expanduser())
    elif scheme == "file":
        path = Path(unquote(urlsplit(text).path))
    else:
        path = Path(text).expanduser()

    if not path.exists():
        raise SourceError(f"{text}: file not found")
    if path.is_dir():
        raise SourceError(f"{text}: is a directory, not a data file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{text}: cannot read: {_one_line(exc)}") from exc

    table, shape = _read_bytes(data, text, depth=0)
    return RawSource(table=table, name=text, shape=shape)


# --- shape detection ---------------------------------------------------------------------------


def _read_bytes(data: bytes, name: str, *, depth: int) -> tuple[pa.Table, str]:
    """Dispatch on the leading bytes; returns the table and the shape name."""
    if not data or data.isspace():
        raise SourceError(f"{name}: file is empty")
    if data.startswith(_GZIP_MAGIC):
        fast = _read_gzipped_csv(data, name)
        if fast is not None:
            return fast
        inner = _gunzip(data, name)
        del data  # the compressed bytes are not needed any more; keep peak memory down
        table, shape = _read_bytes(inner, name, depth=_nested(depth, name))
        return table, f"{shape}+gzip"
    if data.startswith(_ZIP_MAGICS):
        return _read_zip(data, name, depth=depth)
    if data.startswith(_OLE2_MAGIC):
        raise SourceError(f"{name}: legacy Excel .xls workbook is not supported; save it as .xlsx or CSV")
    if data.startswith(_UTF16_BOMS):
        raise SourceError(f"{name}: text is UTF-16 encoded; expected a UTF-8 or ISO-8859-1 CSV")
    return _read_csv(data, name)


def _nested(depth: int, name: str) -> int:
    if depth + 1 >= _MAX_NESTING:
        raise SourceError(f"{name}: archives nested too deeply; expected one CSV or workbook inside")
    return depth + 1


def _read_gzipped_csv(data: bytes, name: str) -> tuple[pa.Table, str] | None:
    """The usual shape, a gzip-compressed UTF-8 CSV, read with Arrow inflating the file while it parses
    (on two cores the full data set took 0.14-0.20 s instead of 0.27-0.45 s for inflating it first).

    None when the content is anything else (another archive, a workbook, a BOM, UTF-16, not UTF-8,
    no data rows) or anything at all goes wrong: the general path then reads the file, and gives the
    exact error. Arrow reads every member of a multi-member file, and fails on a truncated one.
    """
    try:
        head = zlib.decompressobj(wbits=31).decompress(data[:_SNIFF_BYTES], _SNIFF_BYTES)
    except zlib.error:
        return None
    looks_other = head.startswith((_GZIP_MAGIC, *_ZIP_MAGICS, _OLE2_MAGIC, *_UTF16_BOMS, _UTF8_BOM))
    if not head or looks_other or b"\x00" in head:
        return None
    try:
        columns = _csv_header(head, name)
        table = _parse_csv(pa.input_stream(pa.BufferReader(data), compression="gzip"), columns, name)
    except (SourceError, OSError, pa.ArrowException):
        return None
    if table.num_rows == 0:
        return None
    table = _source_table(table)
    return table, f"{_csv_flavour(table)}+gzip"


def _gunzip(data: bytes, name: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as exc:
        raise SourceError(f"{name}: truncated or corrupt gzip file ({_one_line(exc)})") from exc


def _read_zip(data: bytes, name: str, *, depth: int) -> tuple[pa.Table, str]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise SourceError(f"{name}: truncated or corrupt zip archive ({_one_line(exc)})") from exc
    with archive:
        members = archive.namelist()
        if "xl/workbook.xml" in members:  # the zip *is* an .xlsx workbook
            return _read_xlsx(data, name), "uci-xlsx"
        member = _pick_member(archive, name)
        inner_name = f"{name} [{member}]"
        try:
            inner = archive.read(member)
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
            raise SourceError(f"{inner_name}: truncated or corrupt zip member ({_one_line(exc)})") from exc
    del data
    table, shape = _read_bytes(inner, inner_name, depth=_nested(depth, name))
    return table, f"{shape}+zip"


def _pick_member(archive: zipfile.ZipFile, name: str) -> str:
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
    known = [f for f in files if f.lower().endswith((".csv", ".xlsx", ".gz", ".txt"))]
    if len(known) == 1:
        return known[0]
    if not files:
        raise SourceError(f"{name}: zip archive holds no files")
    listed = ", ".join(files[:5]) + (", ..." if len(files) > 5 else "")
    raise SourceError(f"{name}: zip archive holds {len(files)} files ({listed}); expected one data file")


# --- CSV ---------------------------------------------------------------------------------------


def _read_csv(data: bytes, name: str) -> tuple[pa.Table, str]:
    data = data.removeprefix(_UTF8_BOM)
    head = data[:_SNIFF_BYTES]
    if b"\x00" in head:
        # ASCII text in UTF-16 without a BOM has a NUL in every other byte.
        if head[1::2].count(0) > len(head) // 4 or head[0::2].count(0) > len(head) // 4:
            raise SourceError(f"{name}: text looks UTF-16 encoded; expected a UTF-8 or ISO-8859-1 CSV")
        raise SourceError(f"{name}: not a recognised format (binary data, not a CSV or workbook)")

    columns = _csv_header(data, name)
    table = _parse_csv(_to_utf8(data), columns, name)
    del data
    if table.num_rows == 0:
        raise SourceError(f"{name}: has a header but no data rows")
    table = _source_table(table)
    return table, _csv_flavour(table)


def _csv_header(data: bytes, name: str) -> list[str]:
    """Column names from the first line; checks that the eight source columns are there."""
    end = data.find(b"\n")
    first = data if end < 0 else data[:end]
    # The header is ASCII in every known shape; Latin-1 never fails, so garbage shows as garbage.
    text = first.decode("latin-1").rstrip("\r")
    if any(ord(ch) < 32 and ch != "\t" for ch in text):
        raise SourceError(f"{name}: not a recognised format (binary data, not a CSV or workbook)")
    try:
        columns = next(csv.reader([text]))
    except (csv.Error, StopIteration) as exc:
        raise SourceError(f"{name}: not a recognised format (unreadable first line)") from exc
    columns = [c.strip() for c in columns]
    _check_columns(columns, name)
    if end < 0 or _NON_SPACE.search(data, end + 1) is None:
        raise SourceError(f"{name}: has a header but no data rows")
    return columns


def _check_columns(columns: list[str], name: str) -> None:
    present = set(columns)
    missing = [c for c in SOURCE_COLUMNS if c not in present]
    if len(missing) == len(SOURCE_COLUMNS):
        shown = _shorten(",".join(columns), 80)
        raise SourceError(
            f"{name}: not a recognised format: first line {shown!r} is not the Online Retail header "
            f"({','.join(SOURCE_COLUMNS)})"
        )
    if missing:
        raise SourceError(f"{name}: missing column(s) {', '.join(missing)}")
    duplicated = sorted({c for c in columns if c in SOURCE_COLUMNS and columns.count(c) > 1})
    if duplicated:
        raise SourceError(f"{name}: duplicate column(s) {', '.join(duplicated)}")


def _to_utf8(data: bytes) -> bytes:
    """The bytes as UTF-8.

    UTF-8 is tried first (the export); anything that is not valid UTF-8 is read as Windows-1252,
    which agrees with ISO-8859-1 (Kaggle's encoding) on every printable character and also covers a
    file re-saved by Excel on Windows; the few bytes undefined there fall back to ISO-8859-1.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return data
    try:
        return data.decode("cp1252").encode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1").encode("utf-8")


def _parse_csv(data: bytes | pa.NativeFile, columns: list[str], name: str) -> pa.Table:
    # pyarrow's multi-threaded parser. Blocks of 1 MiB: the full data set's 45 MB then parse in ~46
    # blocks spread over the cores (0.09-0.12 s here) rather than 3 (0.12-0.26 s with 16 MiB blocks).
    # Every column is typed `string` up front, and nothing counts as null, so "" and "NA" stay text.
    read_options = pa_csv.ReadOptions(column_names=columns, skip_rows=1, block_size=1024 * 1024)
    parse_options = pa_csv.ParseOptions(newlines_in_values=True)
    convert_options = pa_csv.ConvertOptions(
        column_types={c: pa.string() for c in columns},
        include_columns=list(SOURCE_COLUMNS),
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
        null_values=[],
    )
    try:
        return pa_csv.read_csv(
            pa.BufferReader(data) if isinstance(data, bytes) else data,
            read_options=read_options,
            parse_options=parse_options,
            convert_options=convert_options,
        )
    except pa.ArrowInvalid as exc:
        raise SourceError(f"{name}: malformed CSV: {_shorten(_one_line(exc), 200)}") from exc


def _source_table(table: pa.Table) -> pa.Table:
    """The eight source columns in order, one chunk each, plus `source_row`."""
    columns = {c: table.column(c).combine_chunks() for c in SOURCE_COLUMNS}
    return pa.table({**columns, "source_row": pa.array(np.arange(1, table.num_rows + 1, dtype=np.int64))})


def _csv_flavour(table: pa.Table) -> str:
    """`kaggle-csv` when the dates are month/day/year, `export-csv` when ISO (the first dated rows decide)."""
    sample = [d.strip() for d in table.column("InvoiceDate").slice(0, 200).to_pylist() if d.strip()]
    kaggle = sum(1 for d in sample if _KAGGLE_DATE.match(d))
    iso = sum(1 for d in sample if _ISO_DATE.match(d))
    return "kaggle-csv" if kaggle > iso else "export-csv"


# --- workbook ----------------------------------------------------------------------------------


def _read_xlsx(data: bytes, name: str) -> pa.Table:
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
        raise SourceError(f"{name}: cannot read workbook: {_shorten(_one_line(exc), 200)}") from exc

    columns = [str(c).strip() for c in cells.columns]
    _check_columns(columns, name)
    cells.columns = pd.Index(columns)
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
    return table.combine_chunks()


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


# --- download ----------------------------------------------------------------------------------


class _RetryableStatus(Exception):
    """A 429 or 5xx answer: worth another attempt, honouring Retry-After."""

    def __init__(self, status_code: int, reason: str, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status_code} {reason}".strip())
        self.status_code = status_code
        self.retry_after = retry_after


def _download(url: str, cache_dir: Path) -> Path:
    """The cached copy of `url`, downloading it first if there is none.

    The body is streamed to a hidden temporary file in the cache and renamed into place only when
    complete, so an interrupted download is never mistaken for a cached one.
    """
    target = cache_dir / _cache_name(url)
    if target.is_file():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in cache_dir.glob(f".{target.name}.*.part"):
            stale.unlink(missing_ok=True)
    except OSError as exc:
        raise SourceError(f"{url}: cannot use cache directory {cache_dir}: {_one_line(exc)}") from exc
    partial = cache_dir / f".{target.name}.{uuid.uuid4().hex}.part"
    try:
        _fetch(url, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _cache_name(url: str) -> str:
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]
    base = re.sub(r"[^A-Za-z0-9._+-]", "_", unquote(Path(urlsplit(url).path).name))[:80]
    return f"{digest}-{base}" if base else digest


def _fetch(url: str, destination: Path) -> None:
    retrying = Retrying(
        retry=retry_if_exception(lambda exc: isinstance(exc, _RetryableStatus | httpx.TransportError)),
        stop=stop_after_attempt(_DOWNLOAD_ATTEMPTS),
        wait=_retry_wait,
        reraise=True,
    )
    try:
        with httpx.Client(timeout=_DOWNLOAD_TIMEOUT, follow_redirects=True) as client:
            for attempt in retrying:
                with attempt:
                    _fetch_once(client, url, destination)
    except _RetryableStatus as exc:
        raise SourceError(f"{url}: download failed: {exc} after {_DOWNLOAD_ATTEMPTS} attempts") from exc
    except httpx.TransportError as exc:
        detail = _one_line(exc) or type(exc).__name__
        raise SourceError(f"{url}: download failed after {_DOWNLOAD_ATTEMPTS} attempts: {detail}") from exc
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise SourceError(f"{url}: invalid URL: {_one_line(exc)}") from exc
    except OSError as exc:
        raise SourceError(f"{url}: cannot write download to {destination.parent}: {_one_line(exc)}") from exc


def _fetch_once(client: httpx.Client, url: str, destination: Path) -> None:
    with client.stream("GET", url) as response:
        status = response.status_code
        if status == 429 or status >= 500:
            raise _RetryableStatus(status, response.reason_phrase, _retry_after(response))
        if status >= 400:
            raise SourceError(f"{url}: download failed: HTTP {status} {response.reason_phrase}".strip())
        with destination.open("wb") as out:
            # iter_bytes undoes a Content-Encoding; the format is detected from the bytes afterwards.
            for chunk in response.iter_bytes(_CHUNK):
                out.write(chunk)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return (when - dt.datetime.now(dt.UTC)).total_seconds()


_exponential = wait_exponential(multiplier=_RETRY_MIN_WAIT, min=_RETRY_MIN_WAIT, max=_RETRY_MAX_WAIT)


def _retry_wait(state: RetryCallState) -> float:
    """Exponential backoff, or the server's Retry-After clamped to [min, max] so 0 never spins."""
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, _RetryableStatus) and exc.retry_after is not None:
        return min(max(exc.retry_after, _RETRY_MIN_WAIT), _RETRY_MAX_WAIT)
    return float(_exponential(state))


# --- helpers -----------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
