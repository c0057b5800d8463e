"""The real job against a real service with a tight rate limit: it is refused with 429, waits, reconciles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.test_job import lake_rows, run_job, source_rows
from tests.support.service import live_service


def test_the_job_reconciles_under_a_tight_rate_limit(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small requests, so the job sends a few hundred of them and meets the limit for sure.
    monkeypatch.setenv("RETAIL_LINES_PER_REQUEST", "100")
    monkeypatch.setenv("RETAIL_PAGE_SIZE", "50")
    lake = tmp_path / "lake"
    with live_service(
        sqlite_url, extra_env={"RATE_LIMIT": "20/second", "LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"}
    ) as service:
        result = run_job(service, lake)
        service_log = [json.loads(line) for line in service.log_path.read_text().splitlines() if line.strip()]
    assert result.returncode == 0, result.stderr[-4000:]

    report = json.loads(next((lake / "_runs").glob("*.json")).read_text())
    assert report["status"] == "reconciled"
    assert report["retries"].get("429", 0) > 0, report["retries"]
    assert report["counts"]["lines_created"] == 8326
    expected = source_rows()
    assert sorted(lake_rows(lake), key=repr) == sorted(expected, key=repr)

    refused = [line for line in service_log if line["logger"] == "api.access" and line["status"] == 429]
    assert len(refused) == report["retries"]["429"]
    # Each invoice can be followed: the bulk line that created it (at DEBUG) carries the job's request id.
    created = [line for line in service_log if line.get("invoices_created")]
    assert sum(len(line["invoices_created"]) for line in created) == len({row[0] for row in expected})
    assert all(line["request_id"] for line in created)
