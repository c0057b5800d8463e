"""`retail-etl run --source` on days other clients wrote to: it succeeds, the source's invoices are in
the service as the source says, and the lake shows the service's whole days (issue 28, item 5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq

from tests.api.helpers import invoice, line
from tests.e2e.test_job import assert_one_line_error, run_job_at
from tests.support.service import live_service

DAY = "2010-12-01"


def newest_report(lake: Path) -> dict[str, Any]:
    newest = max((lake / "_runs").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    report: dict[str, Any] = json.loads(newest.read_text())
    return report


def test_a_rerun_after_other_clients_wrote_to_its_day_succeeds_and_the_lake_shows_their_writes(
    database_url: str, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    with live_service(database_url) as service:
        first = run_job_at(service.url, service.api_key, lake, "--start", DAY, "--end", DAY)
        assert first.returncode == 0, first.stderr
        source_lines = newest_report(lake)["counts"]["lines"]

        with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
            theirs = invoice("999001", invoice_date=f"{DAY}T10:00:00", lines=[line("85123A", line_no=1)])
            assert client.post("/customer/17850/invoice", json=theirs).status_code == 201
            assert client.patch("/customer/17850", json={"country": "France"}).status_code == 200

        again = run_job_at(service.url, service.api_key, lake, "--start", DAY, "--end", DAY)
        assert again.returncode == 0, again.stderr

    report = newest_report(lake)
    assert report["status"] == "reconciled"
    assert report["counts"]["invoices_created"] == 0  # the source's invoices were all there already
    assert report["counts"]["other_clients_lines"] == 1
    service_check, lake_check = report["reconciliation"]["service"], report["reconciliation"]["lake"]
    assert service_check["ok"] is True and service_check["totals"]["other"]["lines"] == source_lines
    # The lake holds the service's whole day: the source's lines and the other client's invoice.
    assert lake_check["ok"] is True and lake_check["totals"]["other"]["lines"] == source_lines + 1
    lines = pq.read_table(lake / "invoice_lines").to_pylist()
    assert len(lines) == source_lines + 1
    assert {row["invoice_no"] for row in lines if row["invoice_no"] == "999001"} == {"999001"}
    countries = {
        row["country"]
        for row in pq.read_table(lake / "customers").to_pylist()
        if row["customer_id"] == "17850"
    }
    assert countries == {"France"}


def test_an_invoice_another_client_deleted_is_named_not_posted_again_unless_replacing(
    sqlite_url: str, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    with live_service(sqlite_url) as service:
        first = run_job_at(service.url, service.api_key, lake, "--start", DAY, "--end", DAY)
        assert first.returncode == 0, first.stderr
        with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
            assert client.delete("/invoice/536370").status_code == 204

            refused = run_job_at(service.url, service.api_key, lake, "--start", DAY, "--end", DAY)
            assert refused.returncode == 3
            error = assert_one_line_error(
                refused.stderr, "536370", "deleted by a client", "--on-conflict replace"
            )
            assert "no invoice was stored" in error
            assert client.get("/invoice/536370").status_code == 404  # not resurrected

            replaced = run_job_at(
                service.url, service.api_key, lake, "--start", DAY, "--end", DAY, "--on-conflict", "replace"
            )
            assert replaced.returncode == 0, replaced.stderr
            assert client.get("/invoice/536370").status_code == 200
    report = newest_report(lake)
    assert report["replaced_invoices"] == ["536370"] and report["replaced_days"] == [DAY]
    assert "536370" in set(pq.read_table(lake / "invoice_lines").column("invoice_no").to_pylist())
