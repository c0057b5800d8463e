"""`retail-etl sync` against a live service: other clients write, the lake follows, row for row.

Nothing is mocked: uvicorn on a fresh database (PostgreSQL and a SQLite file), the job as a child process,
the lake on disk. The lake is checked against what the service answers over HTTP, line by line.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from tests.api.helpers import invoice, line
from tests.e2e.test_job import assert_one_line_error, run_job_at
from tests.support.job import ROOT, sync_command
from tests.support.lines import Lines
from tests.support.lines import lake_lines as lines_of_lake
from tests.support.lines import service_lines as lines_of_service
from tests.support.service import LiveService, live_service

DAY = "2010-12-01"

_spec = importlib.util.spec_from_file_location("history_example", ROOT / "docs" / "examples" / "history.py")
assert _spec is not None and _spec.loader is not None
history = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(history)
TABLES = ("invoice_lines", "invoices", "customers", "rejects")


def sync(service: LiveService, lake: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RETAIL_API_KEY": service.api_key}
    return subprocess.run(
        sync_command(service.url, lake, *args),
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


def last_report(lake: Path) -> dict[str, Any]:
    newest = max((lake / "_runs").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    report: dict[str, Any] = json.loads(newest.read_text())
    return report


def service_lines(service: LiveService) -> Lines:
    """Every line the service holds, by (invoice_no, line_no), as its paged read answers it."""
    return lines_of_service(service.url, service.headers)


def lake_lines(lake: Path) -> Lines:
    return lines_of_lake(pq.read_table(lake / "invoice_lines").to_pylist())


def lake_countries(lake: Path) -> dict[str, set[str]]:
    countries: dict[str, set[str]] = {}
    for row in pq.read_table(lake / "customers").to_pylist():
        countries.setdefault(row["customer_id"], set()).add(row["country"])
    return countries


def table_files(lake: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(lake)): p.read_bytes()
        for t in TABLES
        for p in sorted((lake / t).glob("*/*.parquet"))
    }


@pytest.fixture(params=["sqlite", "postgres"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = request.getfixturevalue(f"{request.param}_url")
    with live_service(url) as running:
        yield running


def test_the_lake_follows_every_clients_changes(service: LiveService, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    ran = run_job_at(service.url, service.api_key, lake, "--start", DAY, "--end", DAY)
    assert ran.returncode == 0, ran.stderr

    # The first sync of a lake written by `run`: no state yet, so the service is read whole once.
    first = sync(service, lake)
    assert first.returncode == 0, first.stderr
    report = last_report(lake)
    assert report["status"] == "reconciled" and report["shape"] == "sync"
    assert report["sync"]["snapshot"]["why"] == "no sync state in the lake"
    assert lake_lines(lake) == service_lines(service)

    # Other clients write: a new invoice on the day, a customer moves, an invoice is deleted, lines of
    # another are added, one invoice moves to another day.
    headers = service.headers
    with httpx.Client(base_url=service.url, headers=headers, timeout=30) as client:
        new = invoice("999001", invoice_date=f"{DAY}T10:00:00", lines=[line("85123A", line_no=1)])
        assert client.post("/customer/17850/invoice", json=new).status_code == 201
        assert client.patch("/customer/17850", json={"country": "France"}).status_code == 200
        assert client.delete("/invoice/536370").status_code == 204
        added = client.post("/invoice/536365/22633/", json={"quantity": 3, "unit_price": "1.85"})
        assert added.status_code == 201, added.text
        moved = client.get("/invoice/536366").json()
        body = {k: v for k, v in moved.items() if k not in ("invoice_no", "invoice_day")}
        body["invoice_date"] = "2010-12-02T09:00:00"
        for row in body["lines"]:
            row.pop("invoice_date", None)
        put = client.put("/invoice/536366", json=body)
        assert put.status_code == 200, put.text

    second = sync(service, lake)
    assert second.returncode == 0, second.stderr
    report = last_report(lake)
    assert report["sync"]["snapshot"] is None
    assert report["sync"]["changes"] == 5
    # The cost follows the changes: the day written and the day the invoice moved to.
    assert report["days"] == [DAY, "2010-12-02"]
    held = lake_lines(lake)
    assert held == service_lines(service)
    assert ("999001", 1) in held and not any(number == "536370" for number, _ in held)
    assert held[("536366", 1)][4] == "2010-12-02"
    assert lake_countries(lake)["17850"] == {"France"}
    assert report["reconciliation"]["service"]["ok"] is True
    # Its page beside it: each day it rewrote, with the service's figures the lake agreed with.
    checked = {day["day"]: day for day in report["reconciliation"]["service"]["days"]}
    assert sorted(checked) == [DAY, "2010-12-02"]
    assert all(day["ok"] and day["source"] == day["other"] for day in checked.values())
    page = (lake / "_runs" / f"{report['run_id']}.html").read_text()
    assert all(f'<tr data-day="{day}">' in page for day in checked)

    # The history: each change as the feed delivered it, in commit order, its content after the change.
    kept = pq.read_table(lake / "changes").sort_by("position").to_pylist()
    assert [(c["resource"], c["kind"], c["id"]) for c in kept] == [
        ("invoice", "created", "999001"),
        ("customer", "patched", "17850"),
        ("invoice", "deleted", "536370"),
        ("line", "created", "536365/22633"),
        ("invoice", "replaced", "536366"),
    ]
    assert json.loads(kept[1]["content"])["country"] == "France" and kept[2]["content"] is None
    assert [str(c["invoice_day"]) for c in kept[4:]] == ["2010-12-02"]
    assert str(kept[4]["previous_invoice_day"]) == DAY

    # The customers' history: the version the first sync saw, closed by the patch, and the current one.
    versions = pq.read_table(lake / "customer_history").to_pylist()
    mine = sorted((v for v in versions if v["customer_id"] == "17850"), key=lambda v: v["valid_to"] is None)
    assert [(v["country"], v["valid_from"] is None, v["valid_to"] is None) for v in mine] == [
        ("United Kingdom", True, False),
        ("France", False, True),
    ]
    assert mine[0]["valid_to"] == mine[1]["valid_from"] == kept[1]["committed_at"]
    assert mine[0]["valid_to_position"] == mine[1]["position"] == kept[1]["position"]

    # docs/lake.md's two questions, as docs/examples/history.py asks them, in DuckDB and in pandas.
    created_at, replaced_at = kept[0]["committed_at"], kept[4]["committed_at"]
    for as_of, country_when_made in (
        (history.invoice_as_of_duckdb, history.country_when_made_duckdb),
        (history.invoice_as_of_pandas, history.country_when_made_pandas),
    ):
        before = as_of(str(lake), "536366", replaced_at - dt.timedelta(microseconds=1))
        assert before is None  # 536366 came with the first sync's snapshot: no change of it before
        after = as_of(str(lake), "536366", replaced_at)
        assert after is not None and after["invoice_day"] == "2010-12-02"
        assert as_of(str(lake), "536370", dt.datetime.now(dt.UTC)) is None  # deleted
        assert as_of(str(lake), "999001", created_at)["invoice_no"] == "999001"
        # 999001 was made before the customer moved to France.
        assert country_when_made(str(lake), "17850", "999001") == "United Kingdom"

    # A sync killed after keeping the changes, before saving its cursor: the rerun reads them again and
    # keeps them once.
    state_path = lake / "_sync" / "state.json"
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({**state, "cursor": report["sync"]["cursor_before"]}))
    again = sync(service, lake)
    assert again.returncode == 0, again.stderr
    assert last_report(lake)["sync"]["changes"] == 5
    assert pq.read_table(lake / "changes").num_rows == 5
    assert pq.read_table(lake / "customer_history").to_pylist() == versions
    assert lake_lines(lake) == service_lines(service)

    # Nothing changed since: a sync reads no change and writes nothing.
    before = table_files(lake)
    third = sync(service, lake)
    assert third.returncode == 0, third.stderr
    assert last_report(lake)["sync"]["changes"] == 0
    assert table_files(lake) == before

    # A lake that lost its sync state is read whole again, and comes out the same.
    (lake / "_sync" / "state.json").unlink()
    fourth = sync(service, lake)
    assert fourth.returncode == 0, fourth.stderr
    assert last_report(lake)["sync"]["snapshot"]["why"] == "no sync state in the lake"
    assert table_files(lake) == before


def test_an_empty_lake_is_a_snapshot_then_follows_the_feed(sqlite_url: str, tmp_path: Path) -> None:
    with live_service(sqlite_url) as service:
        with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
            customer = {"customer_id": "17850", "country": "United Kingdom"}
            assert client.post("/customer", json=customer).status_code == 201
            for number in ("536365", "536366"):
                assert client.post("/customer/17850/invoice", json=invoice(number)).status_code == 201
        lake = tmp_path / "lake"
        assert sync(service, lake).returncode == 0
        assert sorted({n for n, _ in lake_lines(lake)}) == ["536365", "536366"]
        with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
            assert client.delete("/invoice/536365").status_code == 204
        assert sync(service, lake).returncode == 0
        assert lake_lines(lake) == service_lines(service)
        assert sorted({n for n, _ in lake_lines(lake)}) == ["536366"]


def test_a_second_sync_while_one_holds_the_lake_does_nothing_and_says_who(
    sqlite_url: str, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    (lake / "_sync").mkdir(parents=True)
    lock = lake / "_sync" / "lock"
    lock.write_text(json.dumps({"owner": "host:4242:abcd", "since": time.time(), "lease_seconds": 3600}))
    with live_service(sqlite_url) as service:
        with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
            customer = {"customer_id": "17850", "country": "United Kingdom"}
            assert client.post("/customer", json=customer).status_code == 201
            assert client.post("/customer/17850/invoice", json=invoice("536365")).status_code == 201
        busy = sync(service, lake)
        assert busy.returncode == 0, busy.stderr
        assert "another sync (host:4242:abcd) holds the lake" in busy.stderr
        assert not (lake / "invoice_lines").exists()
        assert lock.exists()

        # A lock whose lease is over (its sync was killed) is taken over, and released at the end.
        lock.write_text(
            json.dumps({"owner": "host:4242:abcd", "since": time.time() - 7200, "lease_seconds": 3600})
        )
        taken = sync(service, lake)
        assert taken.returncode == 0, taken.stderr
        assert lake_lines(lake) == service_lines(service)
        assert not lock.exists()


def test_a_wrong_key_is_one_line_and_nonzero(sqlite_url: str, tmp_path: Path) -> None:
    with live_service(sqlite_url) as service:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "etl.cli",
                "sync",
                "--api-url",
                service.url,
                "--lake",
                str(tmp_path / "l"),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "RETAIL_API_KEY": "wrong"},
            cwd=ROOT,
            timeout=120,
            check=False,
        )
    assert result.returncode == 3
    assert_one_line_error(result.stderr, "API key")
