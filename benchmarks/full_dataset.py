"""The full data set through the service on PostgreSQL, against the no-HTTP floor.

    .venv/bin/python benchmarks/full_dataset.py [--source PATH] [--workers N] [--repeat 3]

Each repeat measures, each on a fresh PostgreSQL database:

- the floor: the same source rows read from the file, stored with COPY, read back with COPY and written
  as Parquet, with no HTTP and no service in between;
- the full job (`retail-etl run` as a child process against the real service, uvicorn) from the source
  file to a reconciled, empty-at-start lake, then the same run again (everything already stored);
- the job over the first quarter and the first half of the invoice days (`--start/--end`), for
  seconds per 100,000 lines at three sizes;
- the job over one calendar day without invoices: the fixed cost of a run, which the three sizes also
  print less of (not a target, a diagnosis of where the spread comes from);
- one invoice day (the unit the DAG runs) on a warm service: a warm-up day first, then another day; its
  job time is the sum of the stage seconds of the run report.

Prints every repeat, then the medians against the targets.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.job import job_command  # noqa: E402
from tests.support.postgres import temporary_database  # noqa: E402
from tests.support.service import live_service  # noqa: E402

DEFAULT_SOURCE = ROOT.parent / "shared" / "datasets" / "online_retail" / "online_retail.csv.gz"
API_KEY = "bench-key"

# The floor's table: the source's eight columns with the types the service stores.
FLOOR_TYPES = {
    "InvoiceNo": pa.string(),
    "StockCode": pa.string(),
    "Description": pa.string(),
    "Quantity": pa.int64(),
    "InvoiceDate": pa.timestamp("s"),
    "UnitPrice": pa.decimal128(12, 3),
    "CustomerID": pa.string(),
    "Country": pa.string(),
}
FLOOR_DDL = """
CREATE TABLE floor_lines (
    invoice_no text NOT NULL, stock_code text NOT NULL, description text, quantity bigint NOT NULL,
    invoice_date timestamp NOT NULL, unit_price numeric(12, 3) NOT NULL, customer_id text,
    country text NOT NULL
)
"""
COPY_CHUNK = 1 << 20


class PeakRss:
    """Samples the resident memory of a process tree until stopped; keeps the peak of the sum of the
    processes' RSS (`peak`) and of their PSS (`peak_pss`: each shared page divided among the processes
    that map it, so the sum counts the libraries the workers share once, not once per process)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_pss = 0
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
                self.peak_pss = max(self.peak_pss, sum(_pss(p.pid) for p in tree))
            except (psutil.Error, OSError):
                pass
            time.sleep(self.interval)


def _pss(pid: int) -> int:
    """The process's proportional set size in bytes, from the kernel's summary of its mappings."""
    with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
        for line in rollup:
            if line.startswith(b"Pss:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class JobRun:
    """One `retail-etl run`: wall seconds of the process, its peak RSS, and its run report."""

    seconds: float
    peak_rss: int
    report: dict[str, Any]
    #: User + system CPU seconds of the job process.
    cpu_seconds: float = 0.0

    @property
    def lines(self) -> int:
        return int(self.report["counts"]["lines"])

    @property
    def stage_seconds(self) -> float:
        return float(sum(self.report["seconds"].values()))


def compile_project() -> None:
    """Byte-compile the project's packages, as installing a package does.

    An editable install leaves them as source, and where PYTHONDONTWRITEBYTECODE is set (as on this
    machine) every job process would compile them again, which no installed job does.
    """
    for package in ("api", "etl"):
        if not compileall.compile_dir(ROOT / package, quiet=1):
            sys.exit(f"cannot byte-compile {package}/")


def _pg_conninfo(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://")


def read_source(source: Path) -> pa.Table:
    """The source rows, typed like the service stores them."""
    return pacsv.read_csv(
        source,
        convert_options=pacsv.ConvertOptions(
            column_types=FLOOR_TYPES, strings_can_be_null=True, quoted_strings_can_be_null=False
        ),
    )


def measure_floor(source: Path, database_url: str, out_dir: Path) -> tuple[float, int]:
    """Source → COPY into PostgreSQL → COPY out → Parquet, no HTTP; returns seconds and rows written."""
    started = time.perf_counter()
    table = read_source(source)
    with psycopg.connect(_pg_conninfo(database_url)) as conn:
        conn.execute(FLOOR_DDL)
        buffer = io.BytesIO()
        pacsv.write_csv(table, buffer, pacsv.WriteOptions(include_header=False))
        data = buffer.getbuffer()
        with conn.cursor() as cur, cur.copy("COPY floor_lines FROM STDIN (FORMAT csv)") as copy:
            for offset in range(0, len(data), COPY_CHUNK):
                copy.write(data[offset : offset + COPY_CHUNK])
        del data
        conn.commit()
        out = io.BytesIO()
        with conn.cursor() as cur, cur.copy("COPY floor_lines TO STDOUT (FORMAT csv)") as copy:
            for chunk in copy:
                out.write(chunk)
    out.seek(0)
    names = list(FLOOR_TYPES)
    stored = pacsv.read_csv(
        out,
        read_options=pacsv.ReadOptions(column_names=names),
        convert_options=pacsv.ConvertOptions(
            column_types=FLOOR_TYPES, strings_can_be_null=True, quoted_strings_can_be_null=False
        ),
    )
    pq.write_table(stored, out_dir / "floor_lines.parquet")
    seconds = time.perf_counter() - started
    if stored.num_rows != table.num_rows:
        sys.exit(f"the floor lost rows: {table.num_rows} in, {stored.num_rows} out")
    return seconds, stored.num_rows


def invoice_days(source: Path) -> tuple[list[dt.date], dict[dt.date, int]]:
    """The source's invoice days in order and the lines of each."""
    dates = pacsv.read_csv(
        source,
        convert_options=pacsv.ConvertOptions(
            include_columns=["InvoiceDate"], column_types={"InvoiceDate": pa.timestamp("s")}
        ),
    )["InvoiceDate"]
    counts = pc.value_counts(pc.cast(dates, pa.date32()))
    per_day = {
        day: count
        for day, count in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        )
    }
    return sorted(per_day), per_day


def run_job(
    source: Path, url: str, lake: Path, *, start: dt.date | None = None, end: dt.date | None = None
) -> JobRun:
    """Runs `retail-etl run` as a child process; returns its wall seconds, peak RSS and run report."""
    env = {**os.environ, "RETAIL_API_KEY": API_KEY}
    days = () if start is None or end is None else ("--start", start.isoformat(), "--end", end.isoformat())
    command = job_command(url, lake, *days, source=source)
    before = set((lake / "_runs").glob("*.json")) if (lake / "_runs").exists() else set()
    started = time.perf_counter()
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert job.stderr is not None
    stderr = job.stderr.read()
    # wait4 gives this child's own rusage: its peak RSS, not the service's.
    _, status, usage = os.wait4(job.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"the job failed with exit {code}:\n{stderr.decode(errors='replace')[-2000:]}")
    (report_path,) = set((lake / "_runs").glob("*.json")) - before
    report = json.loads(report_path.read_text())
    if report["status"] != "reconciled":
        sys.exit(f"the job ended {report['status']!r}")
    return JobRun(seconds, usage.ru_maxrss * 1024, report, usage.ru_utime + usage.ru_stime)


def one_repeat(args: argparse.Namespace, days: list[dt.date], per_day: dict[dt.date, int]) -> dict[str, Any]:
    """One pass over every measurement; returns its figures."""
    figures: dict[str, Any] = {}
    with temporary_database("retail_floor") as database_url, tempfile.TemporaryDirectory() as tmp:
        figures["floor_s"], figures["floor_rows"] = measure_floor(args.source, database_url, Path(tmp))
    print(f"  floor: {figures['floor_s']:.2f} s for {figures['floor_rows']:,} rows", flush=True)

    def with_service(action: Any) -> Any:
        with (
            temporary_database("retail_bench") as database_url,
            tempfile.TemporaryDirectory() as tmp,
            live_service(database_url, api_key=API_KEY, workers=args.workers) as service,
            PeakRss(service.process.pid) as service_rss,
        ):
            result = action(service.url, Path(tmp) / "lake")
            return result, service_rss.peak

    def full(url: str, lake: Path) -> tuple[JobRun, JobRun]:
        return run_job(args.source, url, lake), run_job(args.source, url, lake)

    (first, rerun), service_peak = with_service(full)
    figures.update(
        full_s=first.seconds,
        full_lines=first.lines,
        full_rss=first.peak_rss,
        rerun_s=rerun.seconds,
        rerun_rss=rerun.peak_rss,
        service_rss=service_peak,
        stages_first=first.report["seconds"],
        stages_rerun=rerun.report["seconds"],
        rerun_created=rerun.report["counts"].get("invoices_created"),
    )
    print(
        f"  full job: {first.seconds:.1f} s ({first.lines:,} lines), rerun {rerun.seconds:.1f} s, "
        f"job peak RSS {first.peak_rss / 2**20:,.0f} MiB, service peak RSS {service_peak / 2**20:,.0f} MiB",
        flush=True,
    )
    for label, fraction in (("quarter", 4), ("half", 2)):
        end = days[len(days) // fraction - 1]
        part, part_service_peak = with_service(
            lambda url, lake, end=end: run_job(args.source, url, lake, start=days[0], end=end)
        )
        figures[f"{label}_s"], figures[f"{label}_lines"] = part.seconds, part.lines
        figures["service_rss"] = max(figures["service_rss"], part_service_peak)
        print(f"  {label} ({days[0]}..{end}): {part.seconds:.1f} s ({part.lines:,} lines)", flush=True)

    # The fixed cost of a run: a day without invoices (interpreter, imports, reading and scanning the
    # whole source file, an empty read-back, the lake's listing), to tell it from the per-line cost.
    empty_day = next(d for d in (days[0] + dt.timedelta(n) for n in range(366)) if d not in per_day)
    empty, _ = with_service(lambda url, lake: run_job(args.source, url, lake, start=empty_day, end=empty_day))
    figures.update(empty_day=empty_day.isoformat(), empty_s=empty.seconds)
    print(f"  a day without invoices ({empty_day}): {empty.seconds:.2f} s", flush=True)

    # One day of about median size, after a warm-up day, on the same service.
    ranked = sorted(days, key=lambda d: (per_day[d], d))
    day, warm_up = ranked[len(ranked) // 2], ranked[len(ranked) // 2 + 1]

    def per_day_run(url: str, lake: Path) -> JobRun:
        run_job(args.source, url, lake, start=warm_up, end=warm_up)
        return run_job(args.source, url, lake, start=day, end=day)

    single, _ = with_service(per_day_run)
    figures.update(
        day=day.isoformat(),
        day_lines=single.lines,
        day_stage_s=single.stage_seconds,
        day_wall_s=single.seconds,
        day_stages=single.report["seconds"],
    )
    print(
        f"  one day ({day}, {single.lines:,} lines): stages {single.stage_seconds:.2f} s, "
        f"process wall {single.seconds:.2f} s",
        flush=True,
    )
    return figures


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes for the service")
    parser.add_argument("--repeat", type=int, default=3, help="passes; figures are their medians")
    args = parser.parse_args()

    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
        f"PostgreSQL on 127.0.0.1:5432"
    )
    print(f"source: {args.source}; service: uvicorn, {args.workers} worker(s); repeats: {args.repeat}")
    compile_project()
    days, per_day = invoice_days(args.source)
    passes = []
    for index in range(args.repeat):
        print(f"pass {index + 1}/{args.repeat}", flush=True)
        passes.append(one_repeat(args, days, per_day))

    def med(key: str) -> float:
        return float(statistics.median(p[key] for p in passes))

    print()
    print(f"{'stage':<12} {'first run s':>12} {'rerun s':>10}   (medians)")
    for stage in passes[0]["stages_first"]:
        first = statistics.median(p["stages_first"][stage] for p in passes)
        rerun = statistics.median(p["stages_rerun"].get(stage, 0.0) for p in passes)
        print(f"{stage:<12} {first:>12.2f} {rerun:>10.2f}")
    print()
    floor, full, rerun = med("floor_s"), med("full_s"), med("rerun_s")
    lines = passes[0]["full_lines"]
    ratio = full / floor
    per_100k = {
        label: med(f"{label}_s") / passes[0][f"{label}_lines"] * 100_000
        for label in ("quarter", "half", "full")
    }
    spread = max(per_100k.values()) / min(per_100k.values()) - 1
    checks = [
        ("floor (COPY in, COPY out, Parquet)", f"{floor:.2f} s", ""),
        ("job, first run", f"{full:.1f} s, {lines / full:,.0f} lines/s", ""),
        ("job ÷ floor", f"{ratio:.1f}", f"≤ 4: {'holds' if ratio <= 4 else 'MISSED'}"),
        (
            "job peak RSS",
            f"{med('full_rss') / 2**20:,.0f} MiB",
            f"≤ 1.5 GB: {'holds' if med('full_rss') <= 1.5e9 else 'MISSED'}",
        ),
        (
            f"service peak RSS ({args.workers} worker(s))",
            f"{med('service_rss') / 2**20:,.0f} MiB",
            f"≤ 600 MB: {'holds' if med('service_rss') <= 600e6 else 'MISSED'}",
        ),
        (
            "rerun (everything stored)",
            f"{rerun:.1f} s ({rerun / full:.0%} of first)",
            f"≤ 50 %: {'holds' if rerun <= full / 2 else 'MISSED'}",
        ),
    ]
    for label in ("quarter", "half", "full"):
        checks.append(
            (
                f"s per 100,000 lines, {label} ({passes[0][f'{label}_lines']:,} lines)",
                f"{per_100k[label]:.2f}",
                "",
            )
        )
    checks.append(
        (
            "scaling spread (max/min - 1)",
            f"{spread:.0%}",
            f"≤ 25 %: {'holds' if spread <= 0.25 else 'MISSED'}",
        )
    )
    # Not a target: the same figures less the fixed cost of a run, to show how the per-line cost grows.
    empty = med("empty_s")
    net = {
        label: (med(f"{label}_s") - empty) / passes[0][f"{label}_lines"] * 100_000
        for label in ("quarter", "half", "full")
    }
    checks.append(
        (f"fixed cost: a run over a day without invoices ({passes[0]['empty_day']})", f"{empty:.2f} s", "")
    )
    checks.append(
        (
            "s per 100,000 lines less the fixed cost, quarter / half / full",
            " / ".join(f"{net[label]:.2f}" for label in ("quarter", "half", "full"))
            + f" (spread {max(net.values()) / min(net.values()) - 1:.0%})",
            "",
        )
    )
    day_stage = med("day_stage_s")
    checks.append(
        (
            f"one day ({passes[0]['day']}, {passes[0]['day_lines']:,} lines), warm service",
            f"{day_stage:.2f} s stages (process wall {med('day_wall_s'):.2f} s)",
            f"< 1 s: {'holds' if day_stage < 1 else 'MISSED'}",
        )
    )
    print(f"medians of {args.repeat} pass(es):")
    print("| figure | value | target |")
    print("| --- | --- | --- |")
    for figure, value, target in checks:
        print(f"| {figure} | {value} | {target} |")
    day_stages = passes[0]["day_stages"]
    print("one day, stage seconds (pass 1): " + ", ".join(f"{k} {v:.2f}" for k, v in day_stages.items()))


if __name__ == "__main__":
    main()
