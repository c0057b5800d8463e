"""Fixtures for the load, validate and lake tests: the sample in every shape users hold it, a local
HTTP server, an S3 API (moto's server, its own process), and a service snapshot built from the validated
sample.

The shapes are built here from the sample CSV, parsed with the `csv` module (independently of the
loader), with one description made non-ASCII so the encodings are really exercised.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import gzip
import io
import threading
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openpyxl
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from etl.load import load_source
from etl.schema import CUSTOMER_SCHEMA, SOURCE_COLUMNS, DayRange, ServiceSnapshot, ValidatedSource
from etl.validate import validate
from tests.support.s3 import S3Server, moto_server

SAMPLE_CSV = Path(__file__).resolve().parents[2] / "sample_data" / "online_retail_sample.csv"
FULL_CSV_GZ = Path("/work/shared/datasets/online_retail/online_retail.csv.gz")
SAMPLE_DAYS = (dt.date(2010, 12, 1), dt.date(2010, 12, 2), dt.date(2011, 8, 12), dt.date(2011, 9, 25))
# Encodable in ISO-8859-1, so the Kaggle shape can carry it; the trailing space must survive too.
NON_ASCII_DESCRIPTION = "CAFÉ CRÈME MUG £5 "
NON_ASCII_ROW = 2  # source_row of the line whose description is replaced


def sample_rows() -> list[dict[str, str]]:
    """The sample's rows as strings, with one description replaced by `NON_ASCII_DESCRIPTION`."""
    with SAMPLE_CSV.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    rows[NON_ASCII_ROW - 1]["Description"] = NON_ASCII_DESCRIPTION
    return rows


def csv_bytes(rows: list[dict[str, str]], *, encoding: str = "utf-8", newline: str = "\n") -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(SOURCE_COLUMNS), lineterminator=newline)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode(encoding)


def kaggle_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Kaggle's `data.csv` conventions: `12/1/2010 8:26` (no padding, no seconds), CustomerID `17850`."""
    converted = []
    for row in rows:
        stamp = dt.datetime.strptime(row["InvoiceDate"], "%Y-%m-%d %H:%M:%S")
        customer = row["CustomerID"]
        converted.append(
            {
                **row,
                "InvoiceDate": f"{stamp.month}/{stamp.day}/{stamp.year} {stamp.hour}:{stamp.minute:02d}",
                "CustomerID": customer.removesuffix(".0"),
            }
        )
    return converted


def typed_cells(row: dict[str, str]) -> list[Any]:
    """One row as UCI's workbook types it: numbers where the text is a number, a real datetime."""

    def number_or_text(text: str) -> int | str:
        return int(text) if text.isdigit() and not text.startswith("0") else text

    return [
        number_or_text(row["InvoiceNo"]),
        number_or_text(row["StockCode"]),
        row["Description"] or None,
        int(row["Quantity"]),
        dt.datetime.strptime(row["InvoiceDate"], "%Y-%m-%d %H:%M:%S"),
        float(row["UnitPrice"]),
        float(row["CustomerID"]) if row["CustomerID"] else None,
        row["Country"],
    ]


def xlsx_bytes(rows: list[dict[str, str]], *, sheet: str = "Online Retail") -> bytes:
    book = openpyxl.Workbook(write_only=True)
    ws = book.create_sheet(sheet)
    ws.append(list(SOURCE_COLUMNS))
    for row in rows:
        ws.append(typed_cells(row))
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def zip_bytes(member: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, data)
    return out.getvalue()


@dataclass(frozen=True)
class Shapes:
    """The sample written in each input shape; `expected` is the loader's shape name for each file."""

    directory: Path
    rows: list[dict[str, str]]
    expected: dict[str, str]

    def path(self, name: str) -> Path:
        return self.directory / name


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Shapes:
    directory = tmp_path_factory.mktemp("shapes")
    rows = sample_rows()
    export = csv_bytes(rows)
    workbook = xlsx_bytes(rows)
    files = {
        "online_retail.csv": (export, "export-csv"),
        "online_retail.csv.gz": (gzip.compress(export, mtime=0), "export-csv+gzip"),
        "online_retail_csv.zip": (zip_bytes("online_retail.csv", export), "export-csv+zip"),
        "data.csv": (csv_bytes(kaggle_rows(rows), encoding="iso-8859-1", newline="\r\n"), "kaggle-csv"),
        "Online Retail.xlsx": (workbook, "uci-xlsx"),
        "online+retail.zip": (zip_bytes("Online Retail.xlsx", workbook), "uci-xlsx+zip"),
        # Named like something else on purpose: the content decides.
        "misnamed.txt": (gzip.compress(export, mtime=0), "export-csv+gzip"),
    }
    for name, (data, _shape) in files.items():
        (directory / name).write_bytes(data)
    return Shapes(directory, rows, {name: shape for name, (_data, shape) in files.items()})


@pytest.fixture(scope="session")
def sample_validated() -> ValidatedSource:
    return validate(load_source(str(SAMPLE_CSV)), DayRange())


def snapshot_of(lines: pa.Table) -> ServiceSnapshot:
    """What the service would hold after the lines were posted: the lines, and each customer with the
    country of its first posted line (source order, as the job posts them)."""
    countries: dict[str, str] = {}
    for customer, country in zip(lines["customer_id"].to_pylist(), lines["country"].to_pylist(), strict=True):
        if customer is not None:
            countries.setdefault(customer, country)
    customers = pa.table(
        {"customer_id": list(countries), "country": list(countries.values())}, schema=CUSTOMER_SCHEMA
    )
    return ServiceSnapshot(lines=lines, customers=customers)


@pytest.fixture(scope="session")
def sample_snapshot(sample_validated: ValidatedSource) -> ServiceSnapshot:
    return snapshot_of(sample_validated.lines)


def lines_of_day(lines: pa.Table, day: dt.date) -> pa.Table:
    return lines.filter(pc.equal(lines["invoice_day"], pa.scalar(day, pa.date32())))


# --- a local HTTP server -------------------------------------------------------------------------


@dataclass
class FileServer:
    base_url: str
    hits: Counter[str]


class _Handler(SimpleHTTPRequestHandler):
    """Serves the shapes directory; `/flaky/<file>` answers 503 (Retry-After: 0) on its first request,
    `/broken/<file>` always answers 500."""

    hits: Counter[str]

    def do_GET(self) -> None:
        self.hits[self.path] += 1
        if self.path.startswith("/flaky/") and self.hits[self.path] == 1:
            self._fail(503)
            return
        if self.path.startswith("/broken/"):
            self._fail(500)
            return
        self.path = self.path.replace("/flaky/", "/", 1)
        super().do_GET()

    def _fail(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def file_server(shapes: Shapes) -> Iterator[FileServer]:
    hits: Counter[str] = Counter()
    handler = type("Handler", (_Handler,), {"hits": hits})
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(shapes.directory))
    )
    # A short poll interval: shutdown() waits for the loop to notice, 0.5 s per test by default.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield FileServer(f"http://127.0.0.1:{server.server_address[1]}", hits)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- an S3 API --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server as its own process on 127.0.0.1 (a real HTTP S3 API, as the stack runs it)."""
    with moto_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3_endpoint(s3_server: S3Server) -> str:
    return s3_server.endpoint


@pytest.fixture
def s3_options(s3_server: S3Server) -> dict[str, Any]:
    """Storage options for s3fs against the moto server; moto accepts any key."""
    return s3_server.storage_options
