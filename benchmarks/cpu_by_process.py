"""Where the CPU goes: one job run through the service, with CPU seconds per process.

    .venv/bin/python benchmarks/cpu_by_process.py [--source PATH] [--start DAY --end DAY] [--workers N]

Starts the service (uvicorn) on a fresh PostgreSQL database, runs `retail-etl run` into an empty lake,
then runs it again over the same range (everything stored), and prints for each run: wall seconds, the
job's CPU seconds (its own rusage), the service's (every process of its tree), PostgreSQL's (every
`postgres` process on the machine, sampled while the job runs, so a backend that exits is still counted),
and the stage seconds of the run report. First it measures the no-HTTP floor of `full_dataset.py` the
same way (this process and PostgreSQL), and last it prints the CPU budget: what the first run's CPU
seconds need at least on this machine's cores, against 4 x the floor's wall time.
`benchmarks/full_dataset.py` gives the medians against the targets; this script tells which process to
look at, and whether the cores could run the work in the time at all.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.full_dataset import (  # noqa: E402
    API_KEY,
    DEFAULT_SOURCE,
    compile_project,
    measure_floor,
    run_job,
)
from tests.support.postgres import temporary_database  # noqa: E402
from tests.support.service import live_service  # noqa: E402


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _tree_cpu(root: psutil.Process) -> float:
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a process that ended meanwhile
            total += _cpu(process)
    return total


def _postgres_cpu() -> dict[int, float]:
    seen: dict[int, float] = {}
    for process in psutil.process_iter(["name"]):
        try:
            if (process.info["name"] or "").startswith("postgres"):
                seen[process.pid] = _cpu(process)
        except psutil.Error:
            pass
    return seen


class PostgresCpu:
    """CPU seconds used by PostgreSQL's processes between `__enter__` and `__exit__`."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.before: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PostgresCpu:
        self.before = _postgres_cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.last.update(_postgres_cpu())

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.last.update(_postgres_cpu())
            time.sleep(self.interval)

    @property
    def seconds(self) -> float:
        """CPU seconds of every postgres process seen, less what each had used at the start."""
        return sum(cpu - self.before.get(pid, 0.0) for pid, cpu in self.last.items())


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process (Arrow's too)
    return usage.ru_utime + usage.ru_stime


def floor_once(source: Path) -> tuple[float, str]:
    """The floor of `full_dataset.py` in this process on a fresh database; its wall seconds and line."""
    with temporary_database("retail_cpu_floor") as database_url, tempfile.TemporaryDirectory() as tmp:
        own_before = _own_cpu()
        with PostgresCpu() as postgres:
            seconds, rows = measure_floor(source, database_url, Path(tmp))
        own = _own_cpu() - own_before
    line = (
        f"wall {seconds:.2f} s; CPU s: floor process {own:.2f}, PostgreSQL {postgres.seconds:.2f}; "
        f"{rows:,} rows"
    )
    return seconds, line


def run_once(args: argparse.Namespace, url: str, lake: Path, service: psutil.Process) -> tuple[float, str]:
    """One `retail-etl run`; returns the CPU seconds of all three processes and its line of figures."""
    service_before = _tree_cpu(service)
    with PostgresCpu() as postgres:
        run = run_job(args.source, url, lake, start=args.start, end=args.end)
    service_cpu = _tree_cpu(service) - service_before
    stages = " ".join(f"{name} {seconds:.2f}" for name, seconds in run.report["seconds"].items())
    line = (
        f"wall {run.seconds:.2f} s; CPU s: job {run.cpu_seconds:.2f}, "
        f"service {service_cpu:.2f}, PostgreSQL {postgres.seconds:.2f}; "
        f"{run.lines:,} lines, {run.report['status']}; stages: {stages}"
    )
    return run.cpu_seconds + service_cpu + postgres.seconds, line


def main() -> None:
    """Run the job twice against a fresh service and print CPU seconds per process."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--start", type=dt.date.fromisoformat, default=None)
    parser.add_argument("--end", type=dt.date.fromisoformat, default=None)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes for the service")
    args = parser.parse_args()
    compile_project()
    floor_seconds, floor_line = floor_once(args.source)
    print(f"floor: {floor_line}", flush=True)
    cpu_first = 0.0
    with (
        temporary_database("retail_cpu") as database_url,
        tempfile.TemporaryDirectory() as tmp,
        live_service(database_url, api_key=API_KEY, workers=args.workers) as service,
    ):
        tree = psutil.Process(service.process.pid)
        for label in ("first run", "rerun"):
            cpu, line = run_once(args, service.url, Path(tmp) / "lake", tree)
            cpu_first = cpu_first or cpu
            print(f"{label}: {line}", flush=True)
    # Wall time cannot be less than the CPU work spread perfectly over every core.
    cores = os.cpu_count() or 1
    print(
        f"CPU budget: the first run's {cpu_first:.2f} CPU-s need at least {cpu_first / cores:.2f} s on "
        f"{cores} core(s); 4 x the floor is {4 * floor_seconds:.2f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
