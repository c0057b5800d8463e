"""The real-scheduler path: the year's catch-up and a one-run range backfill through Airflow's
CeleryExecutor on the local stack, against `retail-etl run` and against the scheduler's own floor.

    .venv/bin/python benchmarks/scheduler_path.py [--source PATH] [--days N] [--keep]

One benchmark run starts one stack (`deploy/stack/stack.py up`: 2 Celery workers on RabbitMQ, 2 service
replicas behind nginx on PostgreSQL, the lake on moto's S3), with scheduling on and a DAG folder holding
`dags/retail_etl.py` and `benchmarks/dags/retail_etl_floor.py` (the same six tasks, empty). Then, each
from an empty service and an empty lake prefix:

1. **floor**: `retail_etl_floor` unpaused; its catch-up of the DAG's range (374 runs);
2. **cli**: `retail-etl run` over the same days, through nginx, into `s3://retail-lake/cli`;
3. **catch-up**: `retail_etl` unpaused; its catch-up into the stack's lake `s3://retail-lake/lake`;
4. **range**: one triggered run of `retail_etl` with `--conf {"start", "end", "lake"}` over every day,
   into `s3://retail-lake/range`.

Walls are from the unpause (or the trigger, or the command's start) to the last run's end in Airflow's
metadata database. Both lakes the DAG wrote are compared, table by table and row by row, with the CLI's:
a difference fails the benchmark. Per task it prints the mean task-instance duration of the floor and of
the job, the job's own seconds inside the task (its XCom `seconds`), and their difference: the
per-task overhead. Peak memory is the sum of every stack process' PSS (sampled every 0.5 s) and, for
the CLI, its own.

`--days N` stops each catch-up after its first N runs (pausing the DAG, letting the running tasks end)
and skips the range run, which needs the whole catch-up done (a run of a paused DAG never starts): for
trying the benchmark out. The README quotes full runs only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from etl.lake import TABLES, read_lake_table  # noqa: E402
from etl.schedule import FIRST_INVOICE_DAY, LAST_INVOICE_DAY  # noqa: E402

DEFAULT_SOURCE = ROOT.parent / "shared" / "datasets" / "online_retail" / "online_retail.csv.gz"
STACK = ROOT / "deploy" / "stack" / "stack.py"
FLOOR_DAG = ROOT / "benchmarks" / "dags" / "retail_etl_floor.py"
TASKS = ("load_and_validate", "post", "read_back_and_reconcile", "write_lake", "load_warehouse", "notify")
#: The stages each task times into its XCom `seconds` (etl.pipeline's `_dag_task`).
STAGES_OF_TASK = {
    "load_and_validate": ("load", "validate"),
    "post": ("post",),
    "read_back_and_reconcile": ("read back", "reconcile"),
    "write_lake": ("write lake",),
    "load_warehouse": ("load warehouse",),
    "notify": ("notify",),
}
ALL_DAYS = (LAST_INVOICE_DAY - FIRST_INVOICE_DAY).days + 1
#: Bounds on waits, never asserted on: a phase that takes longer than this is stuck.
PHASE_TIMEOUT_SECONDS = 3 * 3600


class BenchmarkError(Exception):
    """The benchmark could not measure what it should (a failed run, a lake that differs)."""


@dataclass
class Phase:
    """One measured phase."""

    name: str
    wall_seconds: float
    runs: int
    peak_stack_pss_mb: float
    peak_own_pss_mb: float | None = None
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)


class Stack:
    """The benchmark's stack: its env file, its metadata database, the `airflow` command."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.state = json.loads((directory / "state.json").read_text())
        self.env: dict[str, str] = {}
        for line in (directory / "stack.env").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                (item,) = shlex.split(line)  # KEY='value', as stack.py writes it
                key, _, value = item.partition("=")
                self.env[key] = value

    @property
    def name(self) -> str:
        return str(self.state["name"])

    def subprocess_env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        return {**os.environ, **self.env, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}

    def airflow(self, *args: str) -> str:
        result = subprocess.run(
            [str(Path(sys.executable).with_name("airflow")), *args],
            capture_output=True,
            text=True,
            env=self.subprocess_env(),
            cwd=ROOT,
            timeout=300,
        )
        if result.returncode != 0:
            raise BenchmarkError(f"airflow {' '.join(args)}: {result.stderr[-2000:]}")
        return result.stdout

    def airflow_db(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            f"host=127.0.0.1 port=5432 user=postgres dbname=airflow_{self.name}", autocommit=True
        )

    def pids(self) -> list[int]:
        return [int(part["pid"]) for part in self.state["parts"].values() if part.get("pid")]


def _pss_bytes(pid: int) -> int:
    """The process' proportional set size: shared pages (the forked task processes share most of
    theirs) counted once across the processes that share them, not once per process as RSS would."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:  # ended meanwhile
        pass
    return 0


def _with_descendants(roots: list[int]) -> set[int]:
    """`roots` and every process descended from them, from one pass over /proc (psutil's `children()`
    scans all of /proc once per root: with a dozen roots, twice a second, the sampler itself took about a
    tenth of a core from the stack it measures)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # ended meanwhile
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(roots), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@contextmanager
def memory_sampler(roots: Callable[[], list[int]]) -> Iterator[dict[str, float]]:
    """Sample, every 0.5 s, the summed PSS of `roots()` and their descendants; the peak in MB."""
    peak = {"mb": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pids = _with_descendants(roots())
            peak["mb"] = max(peak["mb"], sum(_pss_bytes(pid) for pid in pids) / 1e6)
            stop.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def reset_service(stack: Stack) -> None:
    """An empty service: its invoice tables truncated and its cache entries dropped (keys stay)."""
    with psycopg.connect(
        f"host=127.0.0.1 port=5432 user=postgres dbname=retail_{stack.name}", autocommit=True
    ) as db:
        db.execute("TRUNCATE invoice_lines, invoices, customers, outbox_events RESTART IDENTITY CASCADE")
    import redis

    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    prefix = stack.env["CACHE_KEY_PREFIX"]
    for key in client.scan_iter(f"{prefix}*", count=1000):
        client.delete(key)


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise BenchmarkError(f"timed out waiting for {what}")


def catch_up(stack: Stack, dag_id: str, runs: int) -> tuple[float, list[str]]:
    """Unpause `dag_id`; wait until its first `runs` scheduled runs succeeded; pause it again and let
    what still runs finish. The wall from the unpause to the last of those runs' end; their run ids."""
    last_day = FIRST_INVOICE_DAY + dt.timedelta(days=runs - 1)
    query = (
        "SELECT run_id, state, end_date FROM dag_run WHERE dag_id = %s AND run_type = 'scheduled' "
        "AND logical_date < %s"
    )
    bound = dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    started = dt.datetime.now(dt.UTC)
    stack.airflow("dags", "unpause", dag_id)

    def done() -> list[tuple[str, str, dt.datetime]] | None:
        with stack.airflow_db() as db:
            rows = db.execute(query, (dag_id, bound)).fetchall()
        failed = [row[0] for row in rows if row[1] == "failed"]
        if failed:
            raise BenchmarkError(f"{dag_id}: runs failed: {failed[:5]}")
        ok = [row for row in rows if row[1] == "success"]
        return ok if len(ok) == runs else None

    rows = wait_for(f"{dag_id}'s catch-up", done, PHASE_TIMEOUT_SECONDS, 2.0)
    stack.airflow("dags", "pause", dag_id)
    # With --days, runs past the first N are left as they are: a paused DAG's runs go no further, and
    # only the tasks already sent to a worker finish.
    wait_for(f"{dag_id}'s tasks in flight", lambda: not _in_flight(stack, dag_id), 600, 2.0)
    return (max(row[2] for row in rows) - started).total_seconds(), [row[0] for row in rows]


def _in_flight(stack: Stack, dag_id: str) -> bool:
    with stack.airflow_db() as db:
        (count,) = db.execute(
            "SELECT count(*) FROM task_instance WHERE dag_id = %s AND state IN ('queued', 'running')",
            (dag_id,),
        ).fetchone() or (0,)
    return int(count) > 0


def range_run(stack: Stack, lake: str) -> tuple[float, list[str]]:
    """One triggered run of `retail_etl` over every day; its wall from the trigger to its end."""
    conf = {"start": FIRST_INVOICE_DAY.isoformat(), "end": LAST_INVOICE_DAY.isoformat(), "lake": lake}
    run_id = f"bench_range_{secrets.token_hex(4)}"
    stack.airflow("dags", "unpause", "retail_etl")  # the catch-up is complete: no new scheduled runs
    started = dt.datetime.now(dt.UTC)
    stack.airflow("dags", "trigger", "retail_etl", "--run-id", run_id, "--conf", json.dumps(conf))

    def done() -> tuple[str, dt.datetime] | None:
        with stack.airflow_db() as db:
            row = db.execute(
                "SELECT state, end_date FROM dag_run WHERE dag_id = 'retail_etl' AND run_id = %s", (run_id,)
            ).fetchone()
        if row and row[0] == "failed":
            raise BenchmarkError(f"the range run {run_id} failed")
        return row if row and row[0] == "success" else None

    _, ended = wait_for("the range run", done, PHASE_TIMEOUT_SECONDS, 1.0)
    stack.airflow("dags", "pause", "retail_etl")
    return (ended - started).total_seconds(), [run_id]


def task_stats(stack: Stack, dag_id: str, run_ids: list[str]) -> dict[str, dict[str, float]]:
    """Per task: mean task-instance seconds, mean wait from queued to start, and for the job the mean of
    its own seconds (XCom) and the difference (the overhead Airflow adds to each task)."""
    with stack.airflow_db() as db:
        instances = db.execute(
            "SELECT run_id, task_id, extract(epoch FROM end_date - start_date), "
            "extract(epoch FROM start_date - queued_dttm) FROM task_instance "
            "WHERE dag_id = %s AND run_id = ANY(%s) AND state = 'success'",
            (dag_id, run_ids),
        ).fetchall()
        values = db.execute(
            "SELECT r.run_id, x.value FROM xcom x JOIN dag_run r ON r.id = x.dag_run_id "
            "WHERE x.dag_id = %s AND x.task_id = 'notify' AND x.key = 'return_value' AND r.run_id = ANY(%s)",
            (dag_id, run_ids),
        ).fetchall()
    own: dict[str, dict[str, float]] = {}
    for run_id, value in values:
        result = value if isinstance(value, dict) else json.loads(value)
        own[run_id] = {k: float(v) for k, v in (result.get("seconds") or {}).items()}
    stats: dict[str, dict[str, float]] = {}
    for task in TASKS:
        rows = [row for row in instances if row[1] == task]
        if not rows:
            continue
        entry = {
            "task_seconds": statistics.fmean(float(row[2]) for row in rows),
            "queued_to_start_seconds": statistics.fmean(float(row[3] or 0) for row in rows),
        }
        stages = STAGES_OF_TASK[task]
        # A task whose destination is not configured (warehouse, notify) times no stage: its job did
        # nothing, 0 s. A run without any XCom `seconds` is left out.
        job = [sum(own[row[0]].get(stage, 0.0) for stage in stages) for row in rows if row[0] in own]
        if job:
            entry["job_seconds"] = statistics.fmean(job)
            entry["overhead_seconds"] = entry["task_seconds"] - entry["job_seconds"]
        stats[task] = entry
    return stats


def run_cli(stack: Stack, source: Path, lake: str, days: int) -> tuple[float, float]:
    """`retail-etl run` over the benchmark's days through nginx into `lake`; wall and peak PSS (MB)."""
    last = FIRST_INVOICE_DAY + dt.timedelta(days=days - 1)
    command = [sys.executable, "-m", "etl.cli", "run", "--source", str(source), "--lake", lake]
    command += ["--start", FIRST_INVOICE_DAY.isoformat(), "--end", last.isoformat()]
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=stack.subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with memory_sampler(lambda: [process.pid]) as peak:
        _, err = process.communicate(timeout=PHASE_TIMEOUT_SECONDS)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise BenchmarkError(f"retail-etl run failed ({process.returncode}): {err[-2000:]}")
    return wall, peak["mb"]


def compare_lakes(stack: Stack, expected: str, actual: str, days: int) -> dict[str, int]:
    """Every lake table of `actual` equals `expected`'s, row for row; rows per table."""
    options = {
        "endpoint_url": stack.env["AWS_ENDPOINT_URL"],
        "key": stack.env["AWS_ACCESS_KEY_ID"],
        "secret": stack.env["AWS_SECRET_ACCESS_KEY"],
    }
    day_list = [FIRST_INVOICE_DAY + dt.timedelta(days=i) for i in range(days)]
    rows: dict[str, int] = {}
    for table in TABLES:
        want = read_lake_table(expected, table, day_list, storage_options=options)
        got = read_lake_table(actual, table, day_list, storage_options=options)
        if not got.equals(want):
            raise BenchmarkError(
                f"{actual}: table {table} differs from {expected} ({got.num_rows} vs {want.num_rows})"
            )
        rows[table] = got.num_rows
    return rows


def stack_up(directory: Path, dags: Path, source: Path, name: str, *options: str) -> None:
    """`stack.py up` with this DAG folder and source (and `options`); fails the benchmark if it fails."""
    command = [sys.executable, str(STACK), "up", "--dir", str(directory), "--name", name]
    command += ["--dags-folder", str(dags), "--source", str(source), *options]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise BenchmarkError(f"stack up failed: {result.stderr[-3000:]}")
    print(result.stdout, end="")


def stack_down(directory: Path, purge: bool) -> None:
    command = [sys.executable, str(STACK), "down", "--dir", str(directory)] + (["--purge"] if purge else [])
    subprocess.run(command, cwd=ROOT, capture_output=True, timeout=300)


@contextmanager
def benchmark_stack(
    name: str, dag_files: list[Path], source: Path, *options: str, keep: bool
) -> Iterator[Stack]:
    """A stack of its own for one benchmark run, with a DAG folder holding `dag_files`; stopped and purged
    afterwards, unless `keep`, or unless a BenchmarkError ended the run (its logs and databases stay for
    the post-mortem; the error goes on to the caller)."""
    work = Path(tempfile.mkdtemp(prefix=f"retail-{name}-"))
    dags = work / "dags"
    dags.mkdir()
    for dag_file in dag_files:
        shutil.copy(dag_file, dags)
    directory = work / "stack"
    purge = True
    try:
        stack_up(directory, dags, source, f"{name}{secrets.token_hex(3)}", *options)
        yield Stack(directory)
    except BenchmarkError as error:
        purge = False
        raise BenchmarkError(f"{error} (logs: {directory / 'logs'})") from error
    finally:
        if not keep and (directory / "state.json").exists():
            stack_down(directory, purge=purge)
        if not keep and purge:
            shutil.rmtree(work, ignore_errors=True)


def measure(stack: Stack, source: Path, days: int) -> list[Phase]:
    phases: list[Phase] = []
    wait_for(
        "both DAGs parsed",
        lambda: _parsed(stack, ("retail_etl", "retail_etl_floor")),
        300,
    )

    print(f"floor: retail_etl_floor's catch-up of {days} runs ...", flush=True)
    with memory_sampler(stack.pids) as peak:
        wall, runs = catch_up(stack, "retail_etl_floor", days)
    phases.append(
        Phase("floor", wall, len(runs), peak["mb"], tasks=task_stats(stack, "retail_etl_floor", runs))
    )

    reset_service(stack)
    print(f"cli: retail-etl run over the same {days} days ...", flush=True)
    with memory_sampler(stack.pids) as peak:
        wall, own = run_cli(stack, source, "s3://retail-lake/cli", days)
    phases.append(Phase("cli", wall, 1, peak["mb"], own))

    reset_service(stack)
    print(f"catch-up: retail_etl's catch-up of {days} runs ...", flush=True)
    with memory_sampler(stack.pids) as peak:
        wall, runs = catch_up(stack, "retail_etl", days)
    phases.append(Phase("catch-up", wall, len(runs), peak["mb"], tasks=task_stats(stack, "retail_etl", runs)))
    rows = compare_lakes(stack, "s3://retail-lake/cli", stack.env["RETAIL_LAKE"], days)
    print(f"catch-up lake = CLI lake, row for row: {rows}", flush=True)

    if days == ALL_DAYS:
        reset_service(stack)
        print("range: one run of retail_etl over every day ...", flush=True)
        with memory_sampler(stack.pids) as peak:
            wall, runs = range_run(stack, "s3://retail-lake/range")
        phases.append(Phase("range", wall, 1, peak["mb"], tasks=task_stats(stack, "retail_etl", runs)))
        rows = compare_lakes(stack, "s3://retail-lake/cli", "s3://retail-lake/range", days)
        print(f"range lake = CLI lake, row for row: {rows}", flush=True)
    return phases


def _parsed(stack: Stack, dag_ids: tuple[str, ...]) -> bool:
    with stack.airflow_db() as db:
        found = {row[0] for row in db.execute("SELECT dag_id FROM dag WHERE NOT is_stale").fetchall()}
    return set(dag_ids) <= found


def report(phases: list[Phase], days: int, source: Path) -> dict[str, Any]:
    by = {phase.name: phase for phase in phases}
    print()
    print(f"source {source.name}, {days} days, 2 Celery workers, max_active_runs 4; load {os.getloadavg()}")
    print(f"{'phase':10} {'wall s':>9} {'runs':>5} {'s/day':>7} {'stack PSS MB':>14} {'own PSS MB':>12}")
    for phase in phases:
        own = f"{phase.peak_own_pss_mb:12.0f}" if phase.peak_own_pss_mb else f"{'':12}"
        print(
            f"{phase.name:10} {phase.wall_seconds:9.1f} {phase.runs:5d} {phase.wall_seconds / days:7.3f} "
            f"{phase.peak_stack_pss_mb:14.0f} {own}"
        )
    ratios: dict[str, float] = {}
    floor, cli, catch, ranged = (by.get(n) for n in ("floor", "cli", "catch-up", "range"))
    if floor and catch:
        ratios["catch-up / floor"] = catch.wall_seconds / floor.wall_seconds
    if cli and catch:
        ratios["catch-up / cli"] = catch.wall_seconds / cli.wall_seconds
    if cli and ranged:
        ratios["range / cli"] = ranged.wall_seconds / cli.wall_seconds
    if cli and floor:
        ratios["floor / cli"] = floor.wall_seconds / cli.wall_seconds
    goals = {"catch-up / floor": 1.3, "range / cli": 1.5}
    print()
    for label, value in ratios.items():
        goal = f"  (goal <= {goals[label]})" if label in goals else ""
        print(f"{label:18} {value:6.2f}x{goal}")
    print()
    print(
        f"{'task':26} {'floor s':>8} {'job task s':>10} {'in job s':>9} {'overhead s':>10}"
        f" {'queued->start':>13}"
    )
    nan = float("nan")
    for task in TASKS:
        f = floor.tasks.get(task, {}) if floor else {}
        c = catch.tasks.get(task, {}) if catch else {}
        print(
            f"{task:26} {f.get('task_seconds', nan):8.2f} {c.get('task_seconds', nan):10.2f} "
            f"{c.get('job_seconds', float('nan')):9.3f} {c.get('overhead_seconds', float('nan')):10.2f} "
            f"{c.get('queued_to_start_seconds', float('nan')):13.2f}"
        )
    if ranged:
        print()
        print(
            "range run, per task: "
            + ", ".join(
                f"{task} {entry['task_seconds']:.1f} s (job {entry.get('job_seconds', float('nan')):.1f})"
                for task, entry in ranged.tasks.items()
            )
        )
    return {
        "source": str(source),
        "days": days,
        "phases": [phase.__dict__ for phase in phases],
        "ratios": ratios,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument(
        "--days", type=int, default=ALL_DAYS, help=f"runs per catch-up (default all {ALL_DAYS})"
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the stack up (and its databases) afterwards"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not 1 <= args.days <= ALL_DAYS:
        parser.error(f"--days must be 1..{ALL_DAYS}")
    source = args.source.resolve()
    if not source.exists():
        print(f"error: no source at {source} (give --source)", file=sys.stderr)
        return 2
    try:
        with benchmark_stack(
            "bench", [ROOT / "dags" / "retail_etl.py", FLOOR_DAG], source, keep=args.keep
        ) as stack:
            phases = measure(stack, source, args.days)
            results = report(phases, args.days, source)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
