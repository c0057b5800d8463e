"""What a Celery worker's death costs a backfill: a month of daily runs through the stack's scheduler,
once fault-free and once with one of the two workers SIGKILLed in the middle (issue 17 item 4).

    .venv/bin/python benchmarks/worker_death.py [--source PATH] [--days 31] [--kill-after 10] [--rounds 1]

One stack (`deploy/stack/stack.py up --no-schedule`: 2 Celery workers, 2 service replicas behind nginx,
the lake on moto's S3). Each round runs two backfills of `retail_etl` over the first `--days` invoice days
(December 2010 by default, as the issue measured it), each from an empty service into a lake prefix of its
own, each with no earlier run of the DAG (deleted through the REST API), so every task starts at try 1:

1. **fault-free**: `airflow backfill create` over the days; its wall is from the command to the last run's
   end in Airflow's metadata database;
2. **worker killed**: the same backfill; once `--kill-after` runs have succeeded, the worker that runs a
   task at that moment is SIGKILLed with every process it started (`stack.py kill`, a machine's sudden
   death) and stays down until the backfill ends: the rest of the month runs on the other worker.

For every task the kill cut short, it prints when the scheduler failed the lost try (detection: the
stack's 30 s heartbeat timeout) and when its rerun started (detection plus the DAG's first retry delay of
5-10 s), both from the kill. **The cost of the death** is the second wall minus the first. Both lakes are
compared table by table and row by row: a difference, or a run that fails, fails the benchmark. Goals
(issue 17): a lost task rerun within 60 s of the kill, the death costing under 2 minutes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from scheduler_path import (
    DEFAULT_SOURCE,
    ROOT,
    BenchmarkError,
    Stack,
    benchmark_stack,
    compare_lakes,
    reset_service,
    wait_for,
)

from etl.schedule import FIRST_INVOICE_DAY

#: Bound on one backfill's wait, never asserted on: a month takes 1-3 minutes here.
BACKFILL_TIMEOUT_SECONDS = 1800
RERUN_GOAL_SECONDS = 60.0
COST_GOAL_SECONDS = 120.0


@dataclass
class LostTask:
    """A task whose try died with the worker."""

    run_id: str
    task_id: str
    try_number: int
    detected_after: float | None  # kill → the lost try failed by the scheduler
    queued_after: float | None  # kill → the next try queued (sent to Celery)
    rerun_after: float | None  # kill → the next try started


@dataclass
class Backfill:
    """One measured backfill."""

    lake: str
    wall_seconds: float
    runs: int
    killed: str | None = None
    killed_after_runs: int | None = None
    lost: list[LostTask] | None = None


def create_backfill(stack: Stack, first: dt.date, last: dt.date, lake: str) -> int:
    """`airflow backfill create` over [first, last] into `lake` (the DAG has no runs then); its id."""

    def none_running() -> bool:
        # One backfill per DAG at a time; the scheduler marks a finished one complete within ~30 s.
        with stack.airflow_db() as db:
            (running,) = db.execute(
                "SELECT count(*) FROM backfill WHERE dag_id = 'retail_etl' AND completed_at IS NULL"
            ).fetchone() or (0,)
        return int(running) == 0

    wait_for("the previous backfill marked complete", none_running, 300, 1.0)
    stack.airflow(
        "backfill", "create", "--dag-id", "retail_etl",
        "--from-date", first.isoformat(), "--to-date", last.isoformat(),
        "--dag-run-conf", json.dumps({"lake": lake}),
    )  # fmt: skip
    with stack.airflow_db() as db:
        (backfill_id,) = db.execute("SELECT max(id) FROM backfill WHERE dag_id = 'retail_etl'").fetchone()
    return int(backfill_id)


def run_rows(stack: Stack, backfill_id: int) -> list[tuple[str, str, dt.datetime | None]]:
    """(run_id, state, end_date) of the backfill's runs."""
    with stack.airflow_db() as db:
        return db.execute(
            "SELECT run_id, state, end_date FROM dag_run WHERE backfill_id = %s", (backfill_id,)
        ).fetchall()


def wait_for_backfill(stack: Stack, backfill_id: int, days: int) -> dt.datetime:
    """Wait until the backfill's `days` runs succeeded; the last one's end."""

    def done() -> dt.datetime | None:
        rows = run_rows(stack, backfill_id)
        failed = [run_id for run_id, state, _ in rows if state == "failed"]
        if failed:
            raise BenchmarkError(f"backfill {backfill_id}: runs failed: {failed[:5]}")
        ends = [end for _, state, end in rows if state == "success" and end is not None]
        return max(ends) if len(ends) == days else None

    ended: dt.datetime = wait_for(f"backfill {backfill_id}", done, BACKFILL_TIMEOUT_SECONDS, 1.0)
    return ended


def worker_of(pid: int, workers: dict[int, str]) -> str | None:
    """The worker whose process tree holds `pid` (walking up its parents), if any."""
    current = pid
    for _ in range(20):
        if current in workers:
            return workers[current]
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except OSError:
            return None
        current = int(stat.rsplit(")", 1)[1].split()[1])
        if current <= 1:
            return None
    return None


def running_on_workers(stack: Stack, backfill_id: int) -> list[tuple[str, str, int, str]]:
    """(run_id, task_id, try_number, worker) of the backfill's tasks running now."""
    workers = {int(p["pid"]): name for name, p in stack.state["parts"].items() if name.startswith("worker-")}
    with stack.airflow_db() as db:
        rows = db.execute(
            "SELECT ti.run_id, ti.task_id, ti.try_number, ti.pid FROM task_instance ti "
            "JOIN dag_run dr ON dr.dag_id = ti.dag_id AND dr.run_id = ti.run_id "
            "WHERE dr.backfill_id = %s AND ti.state = 'running' AND ti.pid IS NOT NULL",
            (backfill_id,),
        ).fetchall()
    found = []
    for run_id, task_id, try_number, pid in rows:
        worker = worker_of(int(pid), workers)
        if worker is not None:
            found.append((run_id, task_id, int(try_number), worker))
    return found


def lost_tasks(stack: Stack, killed_at: dt.datetime, lost: list[tuple[str, str, int, str]]) -> list[LostTask]:
    """For each task that was running on the killed worker: when its try was failed, when it ran again."""
    out = []
    with stack.airflow_db() as db:
        for run_id, task_id, try_number, _ in lost:
            key = ("retail_etl", run_id, task_id)
            ended = db.execute(
                "SELECT end_date FROM task_instance_history WHERE dag_id = %s AND run_id = %s "
                "AND task_id = %s AND try_number = %s",
                (*key, try_number),
            ).fetchone()
            tries, queued, started = db.execute(
                "SELECT try_number, queued_dttm, start_date FROM task_instance WHERE dag_id = %s "
                "AND run_id = %s AND task_id = %s",
                key,
            ).fetchone()
            rerun = tries > try_number

            def after(moment: dt.datetime | None, ok: bool = True) -> float | None:
                return (moment - killed_at).total_seconds() if ok and moment is not None else None

            out.append(
                LostTask(
                    run_id,
                    task_id,
                    try_number,
                    after(ended[0] if ended else None),
                    after(queued, rerun),
                    after(started, rerun),
                )
            )
    return out


def delete_runs(stack: Stack) -> None:
    """Delete every run of `retail_etl` through Airflow's REST API, so that the next backfill's tasks
    start at try 1. A reprocessed run's tries go on counting, and the DAG's exponential retry delay grows
    with the try number (5-10 s for try 1, 10-20 s for try 2): the measure would depend on the order."""
    import httpx

    base = f"http://127.0.0.1:{stack.state['ports']['airflow']}/api/v2/dags/retail_etl/dagRuns"
    with httpx.Client(timeout=30) as client:  # the stack's simple auth manager: everyone is admin
        while runs := client.get(base, params={"limit": 100}).raise_for_status().json()["dag_runs"]:
            for run in runs:
                client.delete(f"{base}/{quote(run['dag_run_id'], safe='')}").raise_for_status()


def month(stack: Stack, days: int, lake: str, kill_after: int | None) -> Backfill:
    """One backfill over the first `days` invoice days into `lake`, from an empty service; with
    `kill_after`, the worker running a task once that many runs succeeded is SIGKILLed."""
    first = FIRST_INVOICE_DAY
    last = first + dt.timedelta(days=days - 1)
    reset_service(stack)
    delete_runs(stack)
    started = dt.datetime.now(dt.UTC)
    backfill_id = create_backfill(stack, first, last, lake)
    result = Backfill(lake=lake, wall_seconds=0.0, runs=days)
    if kill_after is not None:

        def ready() -> list[tuple[str, str, int, str]] | None:
            succeeded = sum(state == "success" for _, state, _ in run_rows(stack, backfill_id))
            running = running_on_workers(stack, backfill_id) if succeeded >= kill_after else []
            return running or None

        running = wait_for("a task running after the first runs", ready, BACKFILL_TIMEOUT_SECONDS, 0.2)
        worker = running[0][3]
        # Every task that worker runs now dies with it, not only the one we saw first.
        on_worker = [row for row in running_on_workers(stack, backfill_id) if row[3] == worker] or running[:1]
        killed_at = dt.datetime.now(dt.UTC)
        done_before = sum(state == "success" for _, state, _ in run_rows(stack, backfill_id))
        kill = stack_script(stack, "kill", worker)
        if kill.returncode != 0:
            raise BenchmarkError(f"stack kill {worker}: {kill.stderr[-1000:]}")
        result.killed, result.killed_after_runs = worker, done_before
        print(
            f"  killed {worker} after {done_before} runs, running "
            + ", ".join(f"{task_id}@{run_id}" for run_id, task_id, _, _ in on_worker),
            flush=True,
        )
        ended = wait_for_backfill(stack, backfill_id, days)
        result.lost = lost_tasks(stack, killed_at, on_worker)
        start = stack_script(stack, "start", worker)
        if start.returncode != 0:
            raise BenchmarkError(f"stack start {worker}: {start.stderr[-1000:]}")
    else:
        ended = wait_for_backfill(stack, backfill_id, days)
    result.wall_seconds = (ended - started).total_seconds()
    return result


def stack_script(stack: Stack, *args: str) -> Any:
    """`stack.py <command> <part> --dir <stack>`."""
    import subprocess

    command, *rest = args
    return subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "stack" / "stack.py"), command, *rest, "--dir",
         str(stack.directory)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip


def _lost_task(task: LostTask) -> str:
    """`post (failed +34.0 s, queued +39.9 s, started +40.0 s)`."""
    if task.detected_after is None and task.rerun_after is None:
        # Seen running, yet it reported its end before the SIGKILL landed: nothing was lost.
        return f"{task.task_id} (ended before the kill landed)"
    nan = float("nan")
    return (
        f"{task.task_id} (failed +{task.detected_after or nan:.1f} s, "
        f"queued +{task.queued_after or nan:.1f} s, started +{task.rerun_after or nan:.1f} s)"
    )


def report(rounds: list[tuple[Backfill, Backfill]], days: int) -> dict[str, Any]:
    """Print each round and the medians; return them for --json."""
    import os

    print()
    print(f"{days} daily runs, 2 Celery workers, max_active_runs 4; load {os.getloadavg()}")
    print(f"{'round':6} {'fault-free s':>12} {'worker killed s':>16} {'cost s':>8}  lost tasks")
    costs, reruns = [], []
    for n, (clean, faulty) in enumerate(rounds, 1):
        cost = faulty.wall_seconds - clean.wall_seconds
        costs.append(cost)
        lost = ", ".join(_lost_task(t) for t in faulty.lost or [])
        reruns += [t.rerun_after for t in faulty.lost or [] if t.rerun_after is not None]
        print(f"{n:<6} {clean.wall_seconds:12.1f} {faulty.wall_seconds:16.1f} {cost:8.1f}  {lost}")
    cost = statistics.median(costs)
    print()
    print(f"cost of a worker's death (median): {cost:.1f} s  (goal < {COST_GOAL_SECONDS:.0f} s)")
    if reruns:
        print(f"lost task rerun after (max): {max(reruns):.1f} s  (goal <= {RERUN_GOAL_SECONDS:.0f} s)")
    return {
        "days": days,
        "rounds": [
            {"fault_free": clean.__dict__, "worker_killed": {**faulty.__dict__, "lost": [
                t.__dict__ for t in faulty.lost or []]}}
            for clean, faulty in rounds
        ],
        "median_cost_seconds": cost,
        "max_rerun_after_seconds": max(reruns) if reruns else None,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--days", type=int, default=31, help="days in each backfill (default 31)")
    parser.add_argument(
        "--kill-after", type=int, default=10, help="runs succeeded before the kill (default 10)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="fault-free / killed pairs (default 1)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="leave the stack up afterwards")
    args = parser.parse_args()
    if not 0 <= args.kill_after < args.days:
        parser.error("--kill-after must be below --days")
    source = args.source.resolve()
    if not source.exists():
        print(f"error: no source at {source} (give --source)", file=sys.stderr)
        return 2
    dag = ROOT / "dags" / "retail_etl.py"
    try:
        with benchmark_stack("death", [dag], source, "--no-schedule", keep=args.keep) as stack:
            stack.airflow("dags", "unpause", "retail_etl")  # no scheduled runs: --no-schedule
            rounds = []
            for n in range(1, args.rounds + 1):
                tag = f"r{n}-{secrets.token_hex(2)}"
                print(f"round {n}: fault-free backfill of {args.days} days ...", flush=True)
                clean = month(stack, args.days, f"s3://retail-lake/clean-{tag}", None)
                print(f"  {clean.wall_seconds:.1f} s")
                print(f"round {n}: the same backfill, a worker killed after {args.kill_after} runs ...")
                faulty = month(stack, args.days, f"s3://retail-lake/killed-{tag}", args.kill_after)
                print(f"  {faulty.wall_seconds:.1f} s", flush=True)
                rows = compare_lakes(stack, clean.lake, faulty.lake, args.days)
                print(f"  lake with the kill = fault-free lake, row for row: {rows}", flush=True)
                rounds.append((clean, faulty))
        results = report(rounds, args.days)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
