"""Running the real `retail-etl` command against a service, and reading what it left behind."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pyarrow as pa

from etl.lake import TABLES, read_lake_table
from tests.support.job import ROOT, SAMPLE, job_command

__all__ = ["ROOT", "SAMPLE", "job_command"]  # re-exported for the fault tests

DAY = "2010-12-02"
DAY_LINES = 2109  # lines of the sample on DAY (tests/e2e counts them independently)

#: Small requests and pages, so that one day makes many requests to fault.
FAULT_ENV = {"RETAIL_LINES_PER_REQUEST": "200", "RETAIL_PAGE_SIZE": "50"}


def job_env(api_key: str, lake: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "RETAIL_API_KEY": api_key,
        "RETAIL_CACHE_DIR": str(lake.parent / "cache"),
        **FAULT_ENV,
        **(extra or {}),
    }


def run_job(
    api_url: str,
    api_key: str,
    lake: Path,
    *args: str,
    source: Path | str = SAMPLE,
    env: dict[str, str] | None = None,
    timeout: float = 240,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        job_command(api_url, lake, *args, source=source),
        capture_output=True,
        text=True,
        env=job_env(api_key, lake, env),
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def start_job(
    api_url: str,
    api_key: str,
    lake: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        job_command(api_url, lake, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=job_env(api_key, lake, env),
        cwd=ROOT,
    )


def lake_tables(lake: Path) -> dict[str, pa.Table]:
    """Every table of the lake, sorted (read_lake_table sorts): equal dicts mean equal lakes."""
    return {table: read_lake_table(str(lake), table) for table in TABLES}


def last_run_report(lake: Path) -> dict[str, object]:
    reports = sorted((lake / "_runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    result: dict[str, object] = json.loads(reports[-1].read_text())
    return result


def service_lines(
    url: str, api_key: str, start: str = "2010-12-01", end: str = "2011-12-09"
) -> list[tuple[str, int]]:
    """`(invoice_no, line_no)` of every line the service holds in the range, read through GET /invoices."""
    keys: list[tuple[str, int]] = []
    cursor: str | None = None
    with httpx.Client(base_url=url, headers={"X-API-Key": api_key}, timeout=30) as client:
        while True:
            params: dict[str, str | int] = {"start": start, "end": end, "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/invoices", params=params).raise_for_status().json()
            for invoice in page["items"]:
                keys.extend((invoice["invoice_no"], line["line_no"]) for line in invoice["lines"])
            cursor = page["next_cursor"]
            if not cursor:
                return keys


def assert_each_row_once(url: str, api_key: str, expected_lines: int = DAY_LINES) -> tuple[int, int]:
    """The service holds `expected_lines` lines, each once; returns (lost, duplicated)."""
    keys = service_lines(url, api_key)
    duplicated = len(keys) - len(set(keys))
    lost = expected_lines - len(set(keys))
    assert (lost, duplicated) == (0, 0), f"{lost} lines lost, {duplicated} duplicated"
    return lost, duplicated


def assert_one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error:"), stderr[-2000:]
    return last
