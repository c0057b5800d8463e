"""Faults in the topology (issue 17 item 4, 7): a replica SIGKILLed while the job runs, a Celery worker
SIGKILLed while a backfill runs, a failed day; each seen through the lake and Prometheus' alerts.

The lake after each fault must equal a fault-free run's (`reference_lake`), line for line. The durations
printed (kill to detection, kill to the rerun) are measurements for docs/scale.md, never assertions.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from pathlib import Path

import pytest

from tests.stack.support import (
    LINES_ON_DAYS,
    Stack,
    backfill,
    lake_rows,
    run_job,
    wait_for,
    wait_until_finished,
)
from tests.support.service import free_port

pytestmark = pytest.mark.stack


def posts_in_access_log(stack: Stack) -> int:
    """Bulk posts nginx has answered so far."""
    return len(re.findall(r'"POST /bulk/', stack.log("nginx-access")))


@pytest.mark.timeout(420)
def test_a_replica_killed_mid_run_costs_retries_not_rows_and_prometheus_says_it_is_down(
    stack: Stack, reference_lake: str, tmp_path: Path
) -> None:
    lake = f"s3://retail-lake/replica-killed-{secrets.token_hex(3)}"
    posts_before = posts_in_access_log(stack)
    # Small requests and pages: the run makes many of them, so the kill lands in the middle of it.
    job = run_job(stack, lake, tmp_path, RETAIL_LINES_PER_REQUEST="100", RETAIL_PAGE_SIZE="50")
    try:
        wait_for(
            "the job's first bulk posts", lambda: posts_in_access_log(stack) >= posts_before + 3, 120, 0.05
        )
        stack.kill("api-1")
        _, err = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, err[-4000:]
    dead = f"127.0.0.1:{stack.state['ports']['api-1']}"
    # nginx saw the replica die (refused or cut connections) and answered from the other one.
    assert dead in stack.log("nginx-error"), stack.log("nginx-error")[-2000:]
    # Each request that met the dead replica was either retried on the other one by nginx
    # ("upstream=dead, other") or answered 502 to the job, whose retries sent it again.
    met_the_dead = [
        line
        for line in stack.log("nginx-access").splitlines()
        if re.search(rf"upstream=[^ ]*{re.escape(dead)}", line)
        and (f"{dead}, " in line or re.search(r'" 50[23] upstream=', line))
    ]
    assert met_the_dead, stack.log("nginx-access")[-3000:]
    rows = lake_rows(stack, lake)
    assert len(rows["invoice_lines"]) == LINES_ON_DAYS
    assert rows == lake_rows(stack, reference_lake)
    try:
        (alert,) = wait_for(
            "RetailApiReplicaDown firing for api-1",
            lambda: stack.firing("RetailApiReplicaDown", replica="api-1"),
            90,
        )
        assert alert["labels"]["instance"] == dead
        assert not stack.firing("RetailApiReplicaDown", replica="api-2")
    finally:
        stack.start("api-1")
    wait_for("api-1 back: the alert resolves", lambda: not stack.firing("RetailApiReplicaDown"), 90)


@pytest.mark.timeout(300)
def test_a_failed_day_raises_retail_job_failed(stack: Stack, tmp_path: Path) -> None:
    # A service that is not there: the run fails after its (short) retry budget and pushes `failed`.
    lake = f"s3://retail-lake/failed-{secrets.token_hex(3)}"
    job = run_job(
        stack,
        lake,
        tmp_path,
        RETAIL_API_URL=f"http://127.0.0.1:{free_port()}",
        RETAIL_RETRY_BUDGET_SECONDS="2",
    )
    _, err = job.communicate(timeout=240)
    assert job.returncode != 0 and "error:" in err.splitlines()[-1], err[-2000:]
    (alert,) = wait_for("RetailJobFailed firing", lambda: stack.firing("RetailJobFailed"), 90)
    assert alert["labels"]["severity"] == "warning"


@pytest.mark.timeout(600)
def test_a_worker_killed_mid_backfill_the_task_is_rerun_elsewhere_and_the_lake_is_exact(
    stack: Stack, unpaused_dag: str, reference_lake: str
) -> None:
    lake = f"s3://retail-lake/worker-killed-{secrets.token_hex(3)}"
    backfill_id = backfill(stack, conf={"lake": lake})
    workers = {stack.pid(f"worker-{i}"): f"worker-{i}" for i in (1, 2)}

    def running_task() -> tuple[str, str, int, int, str] | None:
        # A try's id is its own in Airflow 3: the task is (run_id, task_id), its tries are numbered.
        with stack.airflow_db() as db:
            rows = db.execute(
                "SELECT ti.run_id, ti.task_id, ti.try_number, ti.pid FROM task_instance ti "
                "JOIN dag_run dr ON dr.dag_id = ti.dag_id AND dr.run_id = ti.run_id "
                "WHERE dr.backfill_id = %s AND ti.state = 'running' AND ti.pid IS NOT NULL",
                (backfill_id,),
            ).fetchall()
        for run_id, task_id, try_number, pid in rows:
            worker = worker_running(pid, workers)
            if worker is not None:
                return run_id, task_id, try_number, pid, worker
        return None

    run_id, task_id, try_number, _, worker = wait_for("a running task", running_task, 180, 0.2)
    killed_at = dt.datetime.now(dt.UTC)
    stack.kill(worker)
    try:
        states = wait_until_finished(stack, backfill_id)
        assert set(states.values()) == {"success"}, states
        with stack.airflow_db() as db:
            key = ("retail_etl", run_id, task_id)
            state, tries, started = db.execute(
                "SELECT state, try_number, start_date FROM task_instance "
                "WHERE dag_id = %s AND run_id = %s AND task_id = %s",
                key,
            ).fetchone()
            history = db.execute(
                "SELECT try_number, state, end_date FROM task_instance_history "
                "WHERE dag_id = %s AND run_id = %s AND task_id = %s ORDER BY try_number",
                key,
            ).fetchall()
        # The lost try was failed by the scheduler (no heartbeat) and the task ran again, on the worker
        # that is left: the killed one is still down.
        assert state == "success" and tries > try_number, (state, tries, history)
        assert any(t == try_number and s in ("failed", "up_for_retry") for t, s, _ in history), history
        assert stack.stack_command("status").stdout.count(f"{worker} ") == 1
        assert f"{worker:24} down" in stack.stack_command("status").stdout
        lost_end = next(end for t, _, end in history if t == try_number) or started
        print(
            f"\nworker kill: {task_id} try {try_number} on {worker}; detected (try failed) after "
            f"{(lost_end - killed_at).total_seconds():.1f} s, rerun started after "
            f"{(started - killed_at).total_seconds():.1f} s"
        )
        rows = lake_rows(stack, lake)
        assert len(rows["invoice_lines"]) == LINES_ON_DAYS
        assert rows == lake_rows(stack, reference_lake)
    finally:
        stack.start(worker)


def worker_running(pid: int, workers: dict[int | None, str]) -> str | None:
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
