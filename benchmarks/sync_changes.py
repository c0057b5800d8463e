"""`retail-etl sync`: its cost after 100, 10,000 and 100,000 changes, against re-reading the service whole.

    .venv/bin/python benchmarks/sync_changes.py [--source PATH] [--changes 100 10000 100000]

On a fresh PostgreSQL database: the source is loaded (`retail-etl run`), a first sync reads the service
whole into an empty lake. Then, for each N, another client writes N new one-line invoices through
`POST /bulk/invoices` (one change each, spread over the invoice days in turn), and:

- `retail-etl sync` brings the lake up to date: its wall time, peak RSS, the changes it read, the days
  it rewrote, and the requests the service answered for it (from its `/metrics`);
- a full re-read of the same service into a fresh lake (a first sync: the feed's head, every day),
  measured the same way, in the same run.

Both lakes are checked against the service by the syncs themselves (per day, GET /invoice-days).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.job import job_command  # noqa: E402
from tests.support.postgres import temporary_database  # noqa: E402
from tests.support.service import LiveService, live_service  # noqa: E402

DEFAULT_SOURCE = ROOT.parent / "shared" / "datasets" / "online_retail" / "online_retail.csv.gz"
API_KEY = "bench-key"
BULK = 5000  # invoices per request: the service's limit


@dataclass
class SyncRun:
    seconds: float
    peak_rss: int
    report: dict[str, Any]
    requests: int


def requests_answered(service: LiveService) -> int:
    """The service's `retail_http_requests_total`, summed over its labels (this request not counted)."""
    text = httpx.get(f"{service.url}/metrics", timeout=30).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("retail_http_requests_total{")
        )
    )


def run_sync(service: LiveService, lake: Path) -> SyncRun:
    """`retail-etl sync` as a child process: wall seconds, peak RSS, its report, the requests it made."""
    before = requests_answered(service)
    env = {**os.environ, "RETAIL_API_KEY": API_KEY}
    command = [sys.executable, "-m", "etl.cli", "sync", "--api-url", service.url, "--lake", str(lake)]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert child.stderr is not None
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"the sync failed:\n{stderr.decode(errors='replace')[-2000:]}")
    report = json.loads(max((lake / "_runs").glob("*.json"), key=lambda p: p.stat().st_mtime_ns).read_text())
    # The /metrics scrape itself is one request after: not the sync's.
    return SyncRun(seconds, usage.ru_maxrss * 1024, report, requests_answered(service) - before - 1)


def write_changes(service: LiveService, count: int, days: list[str], first_number: int) -> None:
    """`count` new one-line invoices, one change each, spread over `days` in turn."""
    invoices = [
        {
            "invoice_no": str(first_number + i),
            "invoice_date": f"{days[i % len(days)]}T12:00:00",
            "customer_id": None,
            "country": "United Kingdom",
            "lines": [
                {
                    "line_no": 1,
                    "stock_code": "85123A",
                    "description": "BENCH",
                    "quantity": 1,
                    "unit_price": "1.00",
                }
            ],
        }
        for i in range(count)
    ]
    with httpx.Client(base_url=service.url, headers={"X-API-Key": API_KEY}, timeout=300) as client:
        for first in range(0, count, BULK):
            client.post(
                "/bulk/invoices", json={"invoices": invoices[first : first + BULK]}
            ).raise_for_status()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--changes", type=int, nargs="+", default=[100, 10_000, 100_000])
    args = parser.parse_args()
    print(
        f"source: {args.source}; changes: {args.changes}; service: uvicorn, 1 worker, PostgreSQL", flush=True
    )
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="sync-bench-") as folder,
        temporary_database("retail_bench") as url,
    ):
        work = Path(folder)
        with live_service(url, api_key=API_KEY, workers=1) as service:
            env = {**os.environ, "RETAIL_API_KEY": API_KEY}
            command = job_command(service.url, work / "loaded", source=args.source)
            loaded = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
            if loaded.returncode != 0:
                sys.exit(f"loading the source failed:\n{loaded.stderr[-2000:]}")
            lake = work / "lake"
            first = run_sync(service, lake)
            print(
                f"first sync (the service whole): {first.seconds:.1f} s, {first.requests} requests",
                flush=True,
            )
            days = sorted(
                day["invoice_day"]
                for day in httpx.get(
                    f"{service.url}/invoice-days", headers={"X-API-Key": API_KEY}, timeout=60
                ).json()["days"]
            )
            number = 9_000_000
            for count in args.changes:
                started = time.perf_counter()
                write_changes(service, count, days, number)
                number += count
                written = time.perf_counter() - started
                incremental = run_sync(service, lake)
                whole = run_sync(service, work / f"whole-{count}")
                rows.append((count, written, incremental, whole))
                print(
                    f"{count:>7,} changes (written in {written:.1f} s): sync {incremental.seconds:.1f} s,"
                    f" {incremental.requests} requests, {len(incremental.report['days'])} days rewritten,"
                    f" peak {incremental.peak_rss / 2**20:.0f} MiB | full re-read {whole.seconds:.1f} s,"
                    f" {whole.requests} requests, peak {whole.peak_rss / 2**20:.0f} MiB",
                    flush=True,
                )
                assert incremental.report["sync"]["changes"] == count, incremental.report["sync"]
    print()
    print("| changes | sync | requests | days rewritten | full re-read | requests | sync ÷ re-read |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for count, _written, incremental, whole in rows:
        days_rewritten = len(incremental.report["days"])
        print(
            f"| {count:,} | {incremental.seconds:.1f} s | {incremental.requests:,} | {days_rewritten}"
            f" | {whole.seconds:.1f} s | {whole.requests:,} | {incremental.seconds / whole.seconds:.2f} |"
        )
    print(f"measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    return 0


if __name__ == "__main__":
    sys.exit(main())
