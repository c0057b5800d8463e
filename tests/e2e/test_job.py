"""End to end: the real service process (SQLite and PostgreSQL), the real `retail-etl` command, the lake.

Nothing here is mocked: the job talks HTTP to uvicorn, which writes to a real database file or server.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pyarrow.dataset as ds
import pytest

from tests.support.job import ROOT, SAMPLE, job_command
from tests.support.service import LiveService, live_service


def source_rows(path: Path = SAMPLE) -> list[tuple[object, ...]]:
    """The sample's rows, parsed here independently of the job's loader, in the lake's terms."""
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            customer = row["CustomerID"]
            rows.append(
                (
                    row["InvoiceNo"],
                    row["StockCode"],
                    row["Description"] or None,
                    int(row["Quantity"]),
                    dt.datetime.fromisoformat(row["InvoiceDate"]),
                    Decimal(row["UnitPrice"]),
                    str(int(Decimal(customer))) if customer else None,
                    row["Country"],
                )
            )
    return rows


def lake_rows(lake: Path) -> list[tuple[object, ...]]:
    table = ds.dataset(lake / "invoice_lines", format="parquet", partitioning="hive").to_table()
    columns = [
        "invoice_no",
        "stock_code",
        "description",
        "quantity",
        "invoice_date",
        "unit_price",
        "customer_id",
        "country",
    ]
    data = table.select(columns).to_pydict()
    return list(zip(*(data[c] for c in columns), strict=True))


def run_job(
    service: LiveService, lake: Path, *args: str, source: Path = SAMPLE
) -> subprocess.CompletedProcess[str]:
    return run_job_at(service.url, service.api_key, lake, *args, source=source)


def run_job_at(
    api_url: str,
    api_key: str,
    lake: Path,
    *args: str,
    source: Path = SAMPLE,
    extra_env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RETAIL_API_KEY": api_key, "RETAIL_CACHE_DIR": str(lake.parent / "cache")}
    return subprocess.run(
        job_command(api_url, lake, *args, source=source),
        capture_output=True,
        text=True,
        env={**env, **(extra_env or {})},
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(stderr: str, *needles: str) -> str:
    """Off a terminal the job logs JSON lines to stderr; an error is one plain line after them."""
    assert "Traceback" not in stderr
    *log_lines, last = stderr.strip().splitlines()
    for line in log_lines:
        json.loads(line)
    assert last.startswith("error:"), last
    for needle in needles:
        assert needle in last
    return last


def lake_files(lake: Path) -> dict[str, bytes]:
    """The lake's Parquet files and their bytes; not `_staging/`, where the job keeps each source it read
    (validated, by day) for later runs: a new source's staging is not a change of the lake."""
    return {
        str(p.relative_to(lake)): p.read_bytes()
        for p in sorted(lake.rglob("*.parquet"))
        if "_staging" not in p.relative_to(lake).parts
    }


def service_invoice_count(service: LiveService, start: str, end: str) -> tuple[int, int]:
    invoices = lines = 0
    cursor = None
    with httpx.Client(base_url=service.url, headers={"X-API-Key": service.api_key}, timeout=30) as client:
        while True:
            params = {"start": start, "end": end, "limit": 1000, **({"cursor": cursor} if cursor else {})}
            page = client.get("/invoices", params=params).raise_for_status().json()
            invoices += len(page["items"])
            lines += sum(len(item["lines"]) for item in page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                return invoices, lines


@pytest.fixture
def service(database_url: str) -> Iterator[LiveService]:
    with live_service(database_url) as running:
        yield running


def test_sample_runs_to_an_exact_lake_and_reruns_change_nothing(service: LiveService, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    first = run_job(service, lake)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr

    # invoice_lines reproduces every source row, duplicates included.
    expected = source_rows()
    assert len(expected) == 8326
    assert sorted(lake_rows(lake), key=repr) == sorted(expected, key=repr)
    invoices_before = service_invoice_count(service, "2010-12-01", "2011-12-09")
    assert invoices_before[1] == 8326

    reports = sorted((lake / "_runs").glob("*.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert report["status"] == "reconciled"
    assert report["counts"]["lines"] == 8326
    assert report["counts"]["rejects"] == 0
    assert report["counts"]["lines_created"] == 8326

    files_before = lake_files(lake)
    second = run_job(service, lake)
    assert second.returncode == 0, second.stderr
    assert lake_files(lake) == files_before
    assert service_invoice_count(service, "2010-12-01", "2011-12-09") == invoices_before
    rerun = json.loads(sorted((lake / "_runs").glob("*.json"))[-1].read_text())
    assert rerun["counts"]["lines_created"] == 0
    assert rerun["counts"]["invoices_created"] == 0
    assert rerun["counts"]["invoices_unchanged"] == report["counts"]["invoices_created"]


def test_a_day_range_touches_only_its_days(sqlite_url: str, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    with live_service(sqlite_url) as service:
        result = run_job(service, lake, "--start", "2010-12-02", "--end", "2010-12-02")
        assert result.returncode == 0, result.stderr
        days = sorted(p.name for p in (lake / "invoice_lines").iterdir())
        assert days == ["invoice_day=2010-12-02"]
        assert service_invoice_count(service, "2010-12-01", "2011-12-09")[1] == 2109
        assert len(lake_rows(lake)) == 2109


def test_dry_run_posts_nothing_and_writes_no_lake(sqlite_url: str, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    with live_service(sqlite_url) as service:
        result = run_job(service, lake, "--dry-run")
        assert result.returncode == 0, result.stderr
        assert service_invoice_count(service, "2010-12-01", "2011-12-09") == (0, 0)
    assert not (lake / "invoice_lines").exists()


def test_missing_source_is_one_line_and_exit_2(sqlite_url: str, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    with live_service(sqlite_url) as service:
        result = run_job(service, lake, source=tmp_path / "nope.csv")
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "nope.csv")
    assert not lake.exists() or not any(lake.rglob("*.parquet"))


def test_unreachable_service_is_one_line_and_exit_3(tmp_path: Path) -> None:
    result = run_job_at(
        "http://127.0.0.1:9",
        "k",
        tmp_path / "lake",
        *("--start", "2010-12-02", "--end", "2010-12-02"),
        extra_env={"RETAIL_RETRY_BUDGET_SECONDS": "2"},
        timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert_one_line_error(result.stderr)
    # The source is staged under `_staging/` before anything is posted (readers skip `_` folders);
    # no table of the lake has a file.
    assert not [p for p in (tmp_path / "lake").rglob("*.parquet") if "_staging" not in p.parts]


def test_wrong_api_key_is_one_line_and_nonzero(sqlite_url: str, tmp_path: Path) -> None:
    with live_service(sqlite_url) as service:
        result = run_job_at(service.url, "wrong", tmp_path / "lake", timeout=120)
    assert result.returncode == 3
    assert_one_line_error(result.stderr, "API key")
