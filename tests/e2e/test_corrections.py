"""End to end: a source that corrects invoices already stored, with `--on-conflict fail` and `replace`.

The real service process on a real SQLite file, the real `retail-etl` command, the real lake.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from etl.lake import read_lake_table
from tests.e2e.test_job import assert_one_line_error, lake_files, run_job
from tests.support.job import SAMPLE
from tests.support.service import LiveService, live_service

HEADER_AND_ROWS = tuple[list[str], list[list[str]]]


def read_sample() -> HEADER_AND_ROWS:
    with SAMPLE.open(newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


def corrected_source(path: Path) -> tuple[str, str]:
    """The sample with one line's quantity changed in its first invoice and a line added to its last
    invoice (another day); returns the two invoice numbers."""
    header, rows = read_sample()
    changed, extended = rows[0][0], rows[-1][0]
    assert changed != extended and rows[0][4][:10] != rows[-1][4][:10]
    rows[0][3] = str(int(rows[0][3]) + 1)
    last = max(i for i, row in enumerate(rows) if row[0] == extended)
    added = list(rows[last])
    added[3] = str(int(added[3]) + 5)
    rows.insert(last + 1, added)
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return changed, extended


def invoice(service: LiveService, invoice_no: str) -> dict[str, Any]:
    response = httpx.get(f"{service.url}/invoice/{invoice_no}", headers=service.headers, timeout=30)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def outbox_events(database: Path) -> list[tuple[str, dict[str, Any]]]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT event_type, payload FROM outbox_events ORDER BY seq").fetchall()
    return [(event_type, json.loads(payload)) for event_type, payload in rows]


def lake_tables(lake: Path) -> dict[str, list[dict[str, Any]]]:
    """Every row of the lake's day tables, as committed, in the lake's order."""
    return {
        table: read_lake_table(str(lake), table).to_pylist()
        for table in ("invoice_lines", "invoices", "customers")
    }


def last_report(lake: Path) -> dict[str, Any]:
    reports = sorted((lake / "_runs").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    report: dict[str, Any] = json.loads(reports[-1].read_text())
    return report


@pytest.fixture
def service(tmp_path: Path) -> Any:
    with live_service(f"sqlite:///{tmp_path / 'retail.db'}") as running:
        yield running


def test_corrections_fail_by_default_and_are_replaced_on_request(
    service: LiveService, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    first = run_job(service, lake)
    assert first.returncode == 0, first.stderr

    corrected = tmp_path / "corrected.csv"
    changed_no, extended_no = corrected_source(corrected)
    changed_before, extended_before = invoice(service, changed_no), invoice(service, extended_no)
    files_before = lake_files(lake)
    events_before = outbox_events(tmp_path / "retail.db")

    # Default: the corrections stop the run, name both invoices, suggest the option, change nothing.
    refused = run_job(service, lake, source=corrected)
    assert refused.returncode != 0
    error = assert_one_line_error(refused.stderr, changed_no, extended_no, "--on-conflict replace")
    assert "other content" in error
    assert invoice(service, changed_no) == changed_before
    assert invoice(service, extended_no) == extended_before
    assert outbox_events(tmp_path / "retail.db") == events_before
    assert lake_files(lake) == files_before

    # replace: both invoices PUT, an invoice.updated each, their days rewritten, the run reconciled.
    replaced = run_job(service, lake, "--on-conflict", "replace", source=corrected)
    assert replaced.returncode == 0, replaced.stderr
    assert "invoices replaced" in replaced.stdout
    report = last_report(lake)
    assert report["status"] == "reconciled"
    assert report["on_conflict"] == "replace"
    assert report["counts"]["invoices_replaced"] == 2
    assert report["replaced_invoices"] == sorted([changed_no, extended_no])
    assert report["replaced_days"] == sorted({changed_before["invoice_day"], extended_before["invoice_day"]})
    assert report["reconciliation"]["service"]["ok"] is True
    assert report["reconciliation"]["lake"]["ok"] is True

    changed_after, extended_after = invoice(service, changed_no), invoice(service, extended_no)
    assert changed_after["lines"][0]["quantity"] == changed_before["lines"][0]["quantity"] + 1
    assert changed_after["lines"][1:] == changed_before["lines"][1:]
    assert len(extended_after["lines"]) == len(extended_before["lines"]) + 1
    assert extended_after["lines"][-1]["quantity"] == extended_before["lines"][-1]["quantity"] + 5

    new_events = outbox_events(tmp_path / "retail.db")[len(events_before) :]
    assert sorted((kind, event["data"]["invoice_no"]) for kind, event in new_events) == sorted(
        [("invoice.updated", changed_no), ("invoice.updated", extended_no)]
    )
    by_invoice = {event["data"]["invoice_no"]: event["data"] for _, event in new_events}
    assert by_invoice[extended_no]["line_count"] == len(extended_after["lines"])

    # The lake equals a fresh run of the corrected source into an empty service and lake, row for row.
    fresh_lake = tmp_path / "fresh-lake"
    with live_service(f"sqlite:///{tmp_path / 'fresh.db'}") as fresh_service:
        fresh = run_job(fresh_service, fresh_lake, source=corrected)
        assert fresh.returncode == 0, fresh.stderr
    assert lake_tables(lake) == lake_tables(fresh_lake)

    # A rerun with replace finds nothing left to replace and changes nothing.
    files_after = lake_files(lake)
    again = run_job(service, lake, "--on-conflict", "replace", source=corrected)
    assert again.returncode == 0, again.stderr
    assert last_report(lake)["counts"]["invoices_replaced"] == 0
    assert outbox_events(tmp_path / "retail.db")[len(events_before) :] == new_events
    assert lake_files(lake) == files_after


@pytest.mark.rabbitmq
def test_replaced_days_reach_the_warehouse_and_the_broker_as_replaced(
    service: LiveService, tmp_path: Path
) -> None:
    import duckdb

    from tests.e2e.test_destinations import CheckingConsumer, unique_exchange
    from tests.e2e.test_job import run_job_at
    from tests.events.support import BROKER_URL

    lake, warehouse, exchange = tmp_path / "lake", tmp_path / "retail.duckdb", unique_exchange()
    env = {"RETAIL_WAREHOUSE_URL": str(warehouse), "RETAIL_NOTIFY_URL": BROKER_URL}
    corrected = tmp_path / "corrected.csv"
    changed_no, extended_no = corrected_source(corrected)

    def warehouse_lines(invoice_no: str) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(warehouse), read_only=True) as con:
            query = "SELECT line_no, quantity FROM invoice_lines WHERE invoice_no = ? ORDER BY line_no"
            return con.execute(query, [invoice_no]).fetchall()

    consumer = CheckingConsumer(exchange, lake, None)
    try:
        args = ("--notify-exchange", exchange)
        first = run_job_at(service.url, service.api_key, lake, *args, extra_env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        consumer.wait_for(4)
        before = {no: warehouse_lines(no) for no in (changed_no, extended_no)}
        replaced = run_job_at(
            service.url,
            service.api_key,
            lake,
            *args,
            "--on-conflict",
            "replace",
            source=corrected,
            extra_env=env,
        )
        assert replaced.returncode == 0, replaced.stderr[-3000:]
        consumer.wait_for(8)
    finally:
        consumer.stop()

    report = last_report(lake)
    replaced_days = set(report["replaced_days"])
    assert len(replaced_days) == 2
    second_run = consumer.seen[4:]
    assert len(consumer.seen) == 8
    assert {seen["day"] for seen in second_run if seen["routing_key"] == "day.replaced"} == replaced_days
    assert all(seen["routing_key"] == "day.published" for seen in consumer.seen[:4])
    assert all(
        seen["routing_key"] == "day.published" for seen in second_run if seen["day"] not in replaced_days
    )
    assert all(seen["file_hash_matches"] for seen in consumer.seen)
    assert report["destinations"]["warehouse"]["replaced_days"] == 2
    after = {no: warehouse_lines(no) for no in (changed_no, extended_no)}
    assert (
        after[changed_no][0][1] == before[changed_no][0][1] + 1
        and after[changed_no][1:] == before[changed_no][1:]
    )
    assert (
        after[extended_no][:-1] == before[extended_no]
        and len(after[extended_no]) == len(before[extended_no]) + 1
    )
