"""The full data set through the service on PostgreSQL into a fresh lake.

    .venv/bin/python benchmarks/full_dataset.py [--source PATH] [--workers N]

Creates a fresh PostgreSQL database, starts the real service (uvicorn) on it, runs `retail-etl run` over all
541,909 lines into an empty lake, then runs it again over the same data (everything already stored).
Prints wall time per stage from the run report, the job's wall time and peak RSS, and the service's
peak RSS (sampled, including its worker processes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.postgres import temporary_database  # noqa: E402
from tests.support.service import live_service  # noqa: E402

DEFAULT_SOURCE = ROOT.parent / "shared" / "datasets" / "online_retail" / "online_retail.csv.gz"


class PeakRss:
    """Samples the resident memory of a process tree until stopped; keeps the peak of the sum."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(self.interval)


def run_job(source: Path, url: str, key: str, lake: Path) -> tuple[float, int, dict[str, Any]]:
    """Runs `retail-etl run` as a child process; returns wall seconds, peak RSS bytes and the run report."""
    env = {**os.environ, "RETAIL_API_KEY": key}
    started = time.perf_counter()
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "etl.cli",
            "run",
            "--source",
            str(source),
            "--api-url",
            url,
            "--lake",
            str(lake),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert job.stderr is not None
    stderr = job.stderr.read()
    # wait4 gives this child's own rusage: its peak RSS, not the service's.
    _, status, usage = os.wait4(job.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"the job failed with exit {code}:\n{stderr.decode(errors='replace')[-2000:]}")
    report = json.loads(sorted((lake / "_runs").glob("*.json"))[-1].read_text())
    return seconds, usage.ru_maxrss * 1024, report


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes for the service")
    args = parser.parse_args()

    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}"
    )
    print(f"source: {args.source}")
    with temporary_database("retail_bench") as database_url, tempfile.TemporaryDirectory() as tmp:
        lake = Path(tmp) / "lake"
        with (
            live_service(database_url, api_key="bench-key", workers=args.workers) as service,
            PeakRss(service.process.pid) as service_rss,
        ):
            first_s, first_rss, first = run_job(args.source, service.url, service.api_key, lake)
            second_s, second_rss, second = run_job(args.source, service.url, service.api_key, lake)
        print()
        print(f"{'stage':<12} {'first run s':>12} {'rerun s':>10}")
        for stage, seconds in first["seconds"].items():
            print(f"{stage:<12} {seconds:>12.2f} {second['seconds'].get(stage, 0.0):>10.2f}")
        print()
        lines = first["counts"]["lines"]
        print(
            f"lines: {lines:,} (rejects {first['counts']['rejects']:,}), "
            f"invoices created {first['counts']['invoices_created']:,}, "
            f"rerun created {second['counts']['invoices_created']:,}"
        )
        print(
            f"job, first run: {first_s:.1f} s wall, {lines / first_s:,.0f} lines/s, "
            f"peak RSS {first_rss / 2**20:,.0f} MiB"
        )
        print(f"job, rerun:     {second_s:.1f} s wall, peak RSS {second_rss / 2**20:,.0f} MiB")
        print(f"service ({args.workers} worker(s)): peak RSS {service_rss.peak / 2**20:,.0f} MiB")


if __name__ == "__main__":
    main()
