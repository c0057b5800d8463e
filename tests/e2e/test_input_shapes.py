"""End to end, every input shape a shop exports gives the very lake the canonical CSV gives.

Each shape is the sample converted (tests/support/shapes.py) and run by the real `retail-etl` command
against its own fresh service (a real uvicorn process on a new SQLite file), so that the lake is built
from that shape alone; its four tables are then compared with the canonical run's, row for row.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from etl.lake import TABLES, read_lake_table
from tests.e2e.test_job import assert_one_line_error, run_job
from tests.support.job import SAMPLE
from tests.support.service import live_service
from tests.support.shapes import SHAPES, day_first, delimited, sample_rows


def _run_on_fresh_service(directory: Path, source: Path, *args: str) -> tuple[Path, dict[str, Any]]:
    lake = directory / "lake"
    with live_service(f"sqlite:///{directory / 'retail.db'}") as service:
        result = run_job(service, lake, *args, source=source)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (report_path,) = (lake / "_runs").glob("*.json")
    report: dict[str, Any] = json.loads(report_path.read_text())
    assert report["status"] == "reconciled"
    # The summary on stdout says what the run report says about the dates.
    assert re.search(rf"date format\W+{re.escape(report['dialect']['date_format'])} \(", result.stdout)
    return lake, report


def _lake_tables(lake: Path) -> dict[str, pa.Table]:
    return {table: read_lake_table(str(lake), table) for table in TABLES}


@pytest.fixture(scope="module")
def canonical(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pa.Table]:
    """The lake of the sample CSV itself."""
    lake, report = _run_on_fresh_service(tmp_path_factory.mktemp("canonical"), SAMPLE)
    assert report["shape"] == "export-csv"
    tables = _lake_tables(lake)
    assert tables["invoice_lines"].num_rows == 8326
    return tables


def assert_same_rows(table: str, got: pa.Table, expected: pa.Table) -> None:
    assert got.schema == expected.schema, table
    assert got.num_rows == expected.num_rows, f"{table}: {got.num_rows} rows, canonical {expected.num_rows}"
    if not got.equals(expected):
        mismatched = next(i for i in range(got.num_rows) if got.slice(i, 1) != expected.slice(i, 1))
        raise AssertionError(
            f"{table} row {mismatched}: {got.slice(mismatched, 1).to_pylist()} != "
            f"{expected.slice(mismatched, 1).to_pylist()}"
        )


@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_every_shape_gives_the_canonical_lake(
    shape_name: str, canonical: dict[str, pa.Table], tmp_path: Path
) -> None:
    shape = SHAPES[shape_name]
    source = tmp_path / shape.file_name
    source.write_bytes(shape.build(sample_rows()))

    lake, report = _run_on_fresh_service(tmp_path, source)

    dialect = report["dialect"]
    assert {key: dialect.get(key) for key in shape.dialect} == shape.dialect
    assert str(dialect["date_format_basis"]).startswith(("detected", "ISO"))
    for table, rows in _lake_tables(lake).items():
        assert_same_rows(table, rows, canonical[table])


def test_a_date_format_given_reads_a_source_that_cannot_tell(
    canonical: dict[str, pa.Table], tmp_path: Path
) -> None:
    # 2010-12-01 and 2010-12-02 only: written day-first every date has both fields <= 12.
    rows = [row for row in sample_rows() if row["InvoiceDate"].startswith("2010-12")]
    source = tmp_path / "uk-excel-december.csv"
    source.write_bytes(delimited(day_first(rows)))

    with live_service(f"sqlite:///{tmp_path / 'refused.db'}") as service:
        refused = run_job(service, tmp_path / "refused-lake", source=source)
    assert refused.returncode == 2
    assert_one_line_error(refused.stderr, "ambiguous", "--date-format")
    assert not list((tmp_path / "refused-lake").rglob("*.parquet"))

    lake, report = _run_on_fresh_service(tmp_path, source, "--date-format", "%d/%m/%Y %H:%M")

    assert report["dialect"]["date_format"] == "%d/%m/%Y %H:%M"
    assert report["dialect"]["date_format_basis"] == "given (--date-format)"
    assert report["days"] == ["2010-12-01", "2010-12-02"]
    for table, got in _lake_tables(lake).items():
        expected = canonical[table]
        december = expected.filter(pc.less(expected["invoice_day"], pa.scalar(dt.date(2011, 1, 1))))
        assert_same_rows(table, got, december)
