"""`retail-etl sync` SIGKILLed while it writes the lake, then run again: the rerun takes the dead sync's
lock over at once and the lake comes out equal to the service, row for row, no change lost or kept twice.

Nothing is mocked: uvicorn on a fresh database, the job as a child process, the lake on disk. Where the
sync is killed is decided by the lake's own commit lock (`_lake/.commit.lock`, an flock that a write of
the lake takes for its commits, etl/lake/commit.py): the test holds it, so the sync blocks at a commit
with that batch's objects staged; the kernel's lock table (/proc/locks) says when it waits. No sleep,
no hook in the job.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from tests.e2e.test_job import run_job_at
from tests.e2e.test_sync import lake_lines, last_report, service_lines, sync
from tests.support.job import ROOT, sync_command
from tests.support.service import LiveService, live_service
from tests.support.waiting import wait_for

pytestmark = pytest.mark.skipif(not Path("/proc/locks").exists(), reason="reads Linux's /proc/locks")

#: 1,122 and 1,987 lines: with batches of at most 1,000 lines (RETAIL_LINES_PER_BATCH), one batch each.
DAYS = ("2011-08-12", "2011-09-25")
BATCHES = {"RETAIL_LINES_PER_BATCH": "1000"}


@pytest.fixture(params=["sqlite", "postgres"])
def service(request: pytest.FixtureRequest) -> Any:
    url = request.getfixturevalue(f"{request.param}_url")
    with live_service(url) as running:
        yield running


def waits_for_lock(pid: int, lock: Path) -> bool:
    """Whether process `pid` is blocked waiting for the flock on `lock` (a `->` line of /proc/locks)."""
    inode = os.stat(lock).st_ino
    # "1: -> FLOCK  ADVISORY  WRITE <pid> <major>:<minor>:<inode> 0 EOF"
    waiting = (entry.split() for entry in Path("/proc/locks").read_text().splitlines())
    return any(
        fields[1:3] == ["->", "FLOCK"] and int(fields[5]) == pid and int(fields[6].split(":")[2]) == inode
        for fields in waiting
        if len(fields) > 6
    )


def blocked_at_a_commit(process: subprocess.Popen[str], lock: Path) -> bool:
    if process.poll() is not None:
        _, err = process.communicate()
        pytest.fail(f"the sync ended (exit {process.returncode}) before it was killed:\n{err[-3000:]}")
    return waits_for_lock(process.pid, lock)


def manifest(lake: Path, day: str) -> bytes:
    """The day's committed manifest (it changes when a write commits the day)."""
    return (lake / "_lake" / "manifests" / f"invoice_day={day}.json").read_bytes()


def day_figures(service: LiveService) -> dict[str, tuple[int, int, Decimal]]:
    with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
        days = client.get("/invoice-days").json()["days"]
    return {d["invoice_day"]: (d["lines"], d["invoices"], Decimal(d["amount"])) for d in days}


def lake_figures(lake: Path) -> dict[str, tuple[int, int, Decimal]]:
    figures: dict[str, tuple[int, set[str], Decimal]] = {}
    for row in pq.read_table(lake / "invoice_lines").to_pylist():
        lines, invoices, amount = figures.get(str(row["invoice_day"]), (0, set(), Decimal(0)))
        invoices.add(row["invoice_no"])
        figures[str(row["invoice_day"])] = (lines + 1, invoices, amount + row["quantity"] * row["unit_price"])
    return {day: (lines, len(invoices), amount) for day, (lines, invoices, amount) in figures.items()}


def feed_positions(service: LiveService, after: str) -> list[int]:
    positions: list[int] = []
    with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
        while True:
            page = client.get("/changes", params={"after": after}).json()
            positions += [change["position"] for change in page["changes"]]
            after = page["next_cursor"]
            if not page["more"]:
                return positions


@pytest.mark.timeout(300)
def test_a_sync_killed_while_it_writes_is_taken_over_and_finished_by_the_next(
    service: LiveService, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    ran = run_job_at(service.url, service.api_key, lake, "--start", DAYS[0], "--end", DAYS[-1])
    assert ran.returncode == 0, ran.stderr
    first = sync(service, lake)  # the snapshot: the lake has a cursor from here on
    assert first.returncode == 0, first.stderr
    state_path = lake / "_sync" / "state.json"
    cursor = json.loads(state_path.read_text())["cursor"]

    # Other clients write on both days: the sync has two batches to write.
    with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
        assert client.delete("/invoice/563103").status_code == 204
        assert client.patch("/customer/12381", json={"country": "Sweden"}).status_code == 200
        added = client.post("/invoice/568137/85123A/", json={"quantity": 4, "unit_price": "2.55"})
        assert added.status_code == 201, added.text
        moved = client.get("/invoice/563097").json()
        body = {k: v for k, v in moved.items() if k not in ("invoice_no", "invoice_day")}
        body["invoice_date"] = f"{DAYS[1]}T09:00:00"
        for row in body["lines"]:
            row.pop("invoice_date", None)
        put = client.put("/invoice/563097", json=body)
        assert put.status_code == 200, put.text
        assert client.delete("/invoice/568140").status_code == 204
    before = {day: manifest(lake, day) for day in DAYS}

    env = {**os.environ, "RETAIL_API_KEY": service.api_key, **BATCHES}
    commit_lock = lake / "_lake" / ".commit.lock"
    sync_lock = lake / "_sync" / "lock"
    with commit_lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        killed = subprocess.Popen(
            sync_command(service.url, lake), cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
        )
        try:
            # The first batch (the first day) is staged; its commit waits for the lock.
            wait_for(
                "the sync waiting to commit its first batch",
                lambda: blocked_at_a_commit(killed, commit_lock),
                120,
                0.02,
            )
            holder = json.loads(sync_lock.read_text())
            assert holder["pid"] == killed.pid

            # Its lock names a live process on this host: a second sync leaves the lake alone.
            busy = sync(service, lake)
            assert busy.returncode == 0, busy.stderr
            assert f"another sync ({holder['owner']}) holds the lake" in busy.stderr
            assert json.loads(sync_lock.read_text()) == holder

            # Let the first batch commit, then hold the lock again: the sync blocks at the second.
            fcntl.flock(held, fcntl.LOCK_UN)
            wait_for("the first day committed", lambda: manifest(lake, DAYS[0]) != before[DAYS[0]], 60, 0.005)
            fcntl.flock(held, fcntl.LOCK_EX)
            wait_for(
                "the sync waiting to commit its second batch",
                lambda: blocked_at_a_commit(killed, commit_lock),
                120,
                0.02,
            )
            # Killed here: one day written anew, the other not yet, the cursor not saved.
            assert manifest(lake, DAYS[1]) == before[DAYS[1]]
            assert json.loads(state_path.read_text())["cursor"] == cursor
            killed.send_signal(signal.SIGKILL)
            killed.wait(timeout=30)
        finally:
            if killed.poll() is None:
                killed.kill()
                killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert json.loads(sync_lock.read_text()) == holder  # the dead sync's lock stays behind
    assert lake_lines(lake) != service_lines(service)  # half written

    # The rerun takes the dead process's lock over at once (its lease has most of an hour to go),
    # reads the same changes from the saved cursor and writes both days.
    rerun = subprocess.run(
        sync_command(service.url, lake), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"taking over the sync lock of {holder['owner']}: its process is gone" in rerun.stderr
    report = last_report(lake)
    assert report["status"] == "reconciled" and report["sync"]["snapshot"] is None
    assert report["sync"]["cursor_before"] == cursor and report["sync"]["changes"] == 5
    assert report["days"] == list(DAYS)
    assert not sync_lock.exists()

    # The lake equals the service, line by line and per day (lines, invoices, money).
    held_lines = lake_lines(lake)
    assert held_lines == service_lines(service)
    assert lake_figures(lake) == day_figures(service)
    assert not any(number in ("563103", "568140") for number, _ in held_lines)
    assert held_lines[("563097", 1)][4] == DAYS[1]
    customers = pq.read_table(lake / "customers").to_pylist()
    assert {row["country"] for row in customers if row["customer_id"] == "12381"} == {"Sweden"}

    # Each change is kept once, though the killed sync had kept them already: the feed's positions.
    kept = pq.read_table(lake / "changes").column("position").to_pylist()
    assert sorted(kept) == feed_positions(service, cursor) and len(kept) == 5
    versions = [
        v for v in pq.read_table(lake / "customer_history").to_pylist() if v["customer_id"] == "12381"
    ]
    assert sorted((v["country"], v["valid_to"] is None) for v in versions) == [
        ("Norway", False),
        ("Sweden", True),
    ]
