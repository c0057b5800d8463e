"""A corpus of bad sources through the real `retail-etl` command.

Row-level problems become rejects (with a reason) and the run still exits 0 for the good rows;
file-level problems are one `error:` line, a non-zero exit and no lake partition.
"""

from __future__ import annotations

import csv
import functools
import gzip
import http.server
import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import openpyxl
import pytest

from etl.lake import read_lake_table
from tests.faults.report import FaultReport, Scenario
from tests.faults.support import DAY, SAMPLE, assert_one_line_error, run_job
from tests.support.service import LiveService, live_service

Rows = list[list[str]]


def day_rows() -> Rows:
    """The header and the first 40 lines of DAY, as CSV cells."""
    with SAMPLE.open(newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    return [header, *[row for row in rows if row[4].startswith(DAY)][:40]]


def to_csv(rows: Rows) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def mutated(row: int, column: int, value: str) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        rows = day_rows()
        rows[row][column] = value
        path = directory / "source.csv"
        path.write_text(to_csv(rows), encoding="utf-8")
        return path

    return make


#: Row-level problems: (make the source, the reject reason must mention this).
ROW_PROBLEMS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "text in a number column": (mutated(3, 3, "six"), "quantity"),
    "unparseable date": (mutated(4, 4, "not a date"), "date"),
    "empty invoice number": (mutated(5, 0, ""), "invoice"),
}


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    return make


def _missing_column(directory: Path) -> Path:
    rows = [[cell for i, cell in enumerate(row) if i != 3] for row in day_rows()]
    return _write("source.csv", to_csv(rows).encode())(directory)


def _truncated_gzip(directory: Path) -> Path:
    data = gzip.compress(to_csv(day_rows()).encode())
    return _write("source.csv.gz", data[: len(data) // 2])(directory)


def _utf16(directory: Path) -> Path:
    return _write("source.csv", to_csv(day_rows()).encode("utf-16"))(directory)


def _workbook_without_sheet(directory: Path) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Sheet1"
    for row in day_rows():
        sheet.append(row)
    path = directory / "source.xlsx"
    book.save(path)
    return path


#: File-level problems: (make the source, the error line must mention this).
FILE_PROBLEMS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing column": (_missing_column, "Quantity"),
    "empty file": (_write("source.csv", b""), "empty"),
    "header only": (_write("source.csv", to_csv(day_rows()[:1]).encode()), "no data rows"),
    "truncated gzip": (_truncated_gzip, "gzip"),
    "UTF-16 file": (_utf16, "UTF-16"),
    "xlsx without the expected sheet": (_workbook_without_sheet, "sheet"),
}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[LiveService]:
    # One per test: each source holds its invoices with other lines, which a shared service answers with 409.
    with live_service(f"sqlite:///{tmp_path / 'retail.db'}") as running:
        yield running


@pytest.fixture(scope="module")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local http.server over an empty directory: every file is a 404."""
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tmp_path_factory.mktemp("www"))
    )
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize("problem", list(ROW_PROBLEMS))
def test_a_bad_row_is_rejected_and_the_good_rows_run(
    problem: str, service: LiveService, tmp_path: Path, fault_report: FaultReport
) -> None:
    make, reason = ROW_PROBLEMS[problem]
    lake = tmp_path / "lake"
    result = run_job(service.url, service.api_key, lake, source=make(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    rejects = read_lake_table(str(lake), "rejects").to_pylist()
    assert len(rejects) == 1, rejects
    assert reason in rejects[0]["reason"].lower(), rejects[0]
    lines = read_lake_table(str(lake), "invoice_lines")
    assert lines.num_rows == 39
    fault_report.add(Scenario(f"bad input: {problem}", {"bad_rows": 1}, {}, "exit 0, 1 reject, 39 lines"))


@pytest.mark.parametrize("problem", list(FILE_PROBLEMS))
def test_a_bad_file_is_one_line_and_no_partition(
    problem: str, tmp_path: Path, fault_report: FaultReport
) -> None:
    make, needle = FILE_PROBLEMS[problem]
    lake = tmp_path / "lake"
    # The source is read before the service is called: an unreachable URL proves it.
    result = run_job(
        "http://127.0.0.1:9", "k", lake, source=make(tmp_path), env={"RETAIL_RETRY_BUDGET_SECONDS": "1"}
    )
    assert result.returncode not in (0, 3), result.stderr[-3000:]
    assert needle in assert_one_line_error(result.stderr)
    assert not list(lake.rglob("*.parquet"))
    fault_report.add(
        Scenario(f"bad input: {problem}", {"bad_files": 1}, {}, f"exit {result.returncode}, one line")
    )


def test_a_source_url_answering_404_is_one_line(
    http_root: str, tmp_path: Path, fault_report: FaultReport
) -> None:
    lake = tmp_path / "lake"
    result = run_job(
        "http://127.0.0.1:9",
        "k",
        lake,
        source=f"{http_root}/online_retail.csv",
        env={"RETAIL_RETRY_BUDGET_SECONDS": "1"},
    )
    assert result.returncode not in (0, 3), result.stderr[-3000:]
    assert "404" in assert_one_line_error(result.stderr)
    assert not list(lake.rglob("*.parquet"))
    fault_report.add(
        Scenario("bad input: URL answering 404", {"bad_files": 1}, {}, f"exit {result.returncode}, one line")
    )
