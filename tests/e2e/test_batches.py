"""A run in bounded batches: the command line holds at most RETAIL_LINES_PER_BATCH lines at once, and the
lake, the service and the report come out as from one batch."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from tests.e2e.test_job import run_job_at
from tests.support.service import live_service

TABLES = ("invoice_lines", "invoices", "customers", "rejects")


def table_files(lake: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(lake)): path.read_bytes()
        for table in TABLES
        for path in sorted((lake / table).glob("*/*.parquet"))
    }


def report_of(lake: Path) -> dict:
    (path,) = (lake / "_runs").glob("*.json")
    return json.loads(path.read_text())


def test_a_run_in_small_batches_gives_the_lake_and_report_of_one_batch(
    sqlite_url: str, tmp_path: Path
) -> None:
    with live_service(sqlite_url) as service:
        small = run_job_at(
            service.url, service.api_key, tmp_path / "small", extra_env={"RETAIL_LINES_PER_BATCH": "1000"}
        )
        assert small.returncode == 0, small.stderr
        whole = run_job_at(service.url, service.api_key, tmp_path / "whole")
        assert whole.returncode == 0, whole.stderr

    in_batches, in_one = report_of(tmp_path / "small"), report_of(tmp_path / "whole")
    assert in_batches["settings"]["lines_per_batch"] == 1000
    assert in_one["settings"]["lines_per_batch"] == 250_000
    days = in_batches["days"]
    # Every day of the sample holds more than 1,000 lines: one batch per day.
    lines_per_day = {
        day["day"]: day["source"]["lines"] for day in in_batches["reconciliation"]["service"]["days"]
    }
    assert sorted(lines_per_day) == days and len(days) > 1 and min(lines_per_day.values()) > 1000

    # The second run found everything posted: the counts that are not about posting agree exactly.
    for name in ("source_rows", "lines", "rejects", "invoices", "customers", "lines_read_back"):
        assert in_batches["counts"][name] == in_one["counts"][name], name
    assert in_batches["counts"]["invoices_created"] == in_batches["counts"]["invoices"]
    assert in_one["counts"]["invoices_unchanged"] == in_one["counts"]["invoices"]
    for side in ("service", "lake"):
        batches_check, one_check = in_batches["reconciliation"][side], in_one["reconciliation"][side]
        assert batches_check["ok"] is True and one_check["ok"] is True
        assert batches_check["totals"] == one_check["totals"]
        assert batches_check["days"] == one_check["days"]
        assert batches_check["rows"] == one_check["rows"]

    # The same lake, byte for byte, table by table.
    assert table_files(tmp_path / "small") == table_files(tmp_path / "whole")
    assert pq.read_table(tmp_path / "small" / "invoice_lines").num_rows == in_one["counts"]["lines"]
