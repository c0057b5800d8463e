"""The stack as `./dev stack up` starts it: every part healthy, nginx in front of both replicas, one Redis
for the rate limits, Prometheus on each replica, and a backfill through the Celery workers that writes the
same lake as the command line.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from tests.stack.support import (
    DAYS,
    LINES_ON_DAYS,
    REPO,
    STACK,
    Stack,
    backfill,
    lake_rows,
    wait_for,
    wait_until_finished,
)

pytestmark = pytest.mark.stack


def test_up_waits_until_every_part_is_healthy_and_prints_the_urls(stack: Stack) -> None:
    status = stack.stack_command("status")
    assert status.returncode == 0, status.stdout + status.stderr
    parts = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines() if " pid " in line}
    assert parts == {
        name: "healthy"
        for name in (
            "s3", "pushgateway", "prometheus", "api-1", "api-2", "nginx", "airflow-api-server",
            "airflow-scheduler", "airflow-dag-processor", "worker-1", "worker-2",
        )
    }  # fmt: skip
    for label, part in (
        ("service (nginx)", "nginx"),
        ("Airflow UI", "airflow"),
        ("object store (S3)", "s3"),
        ("Prometheus", "prometheus"),
    ):
        assert f"{label:20} {stack.url(part)}" in stack.up_output
    assert (
        httpx.get(f"{stack.url('airflow')}/api/v2/monitor/health", timeout=5).json()["scheduler"]["status"]
        == "healthy"
    )
    # Each process writes its own log in the one folder.
    logs = {p.stem for p in (stack.dir / "logs").glob("*.log")}
    assert {"nginx-access", "api-1", "api-2", "worker-1", "worker-2", "airflow-scheduler"} <= logs


def test_the_job_and_the_dag_are_given_nginx_only(stack: Stack) -> None:
    import json

    env = stack.env
    assert env["RETAIL_API_URL"] == stack.url("nginx")
    connection = json.loads(env["AIRFLOW_CONN_RETAIL_API"])
    assert f"http://{connection['host']}:{connection['port']}" == stack.url("nginx")
    replicas = {stack.url("api-1"), stack.url("api-2")}
    assert not any(url in value for value in env.values() for url in replicas)


def test_nginx_spreads_requests_over_both_replicas_that_count_in_one_redis(stack: Stack) -> None:
    env = stack.env
    key = env["RETAIL_API_KEY"]
    with httpx.Client(base_url=stack.url("nginx"), headers={"X-API-Key": key}, timeout=10) as client:
        answers = [client.get(f"/invoice/{900000 + n}") for n in range(20)]
    assert {answer.status_code for answer in answers} == {404}
    upstreams = {answer.headers["X-Retail-Upstream"] for answer in answers}
    assert upstreams == {f"127.0.0.1:{stack.state['ports'][r]}" for r in ("api-1", "api-2")}
    # Both replicas counted the same key's requests in the same Redis counters (a window's key lives
    # for two windows: all 20 requests are still counted there).
    with redis.Redis.from_url(env["REDIS_URL"]) as client:
        keys = list(client.scan_iter(match=f"{env['REDIS_KEY_PREFIX']}:*"))
        assert sum(int(client.get(k) or 0) for k in keys) >= 20


def test_prometheus_scrapes_each_replica_under_its_own_label(stack: Stack) -> None:
    def replicas_up() -> dict[str, str] | None:
        answer = httpx.get(
            f"{stack.url('prometheus')}/api/v1/query", params={"query": 'up{job="retail-api"}'}, timeout=5
        ).json()
        found = {r["metric"]["replica"]: r["value"][1] for r in answer["data"]["result"]}
        return found if found == {"api-1": "1", "api-2": "1"} else None

    found = wait_for("both replicas scraped", replicas_up, 60)
    assert found == {"api-1": "1", "api-2": "1"}
    # The service's own counters, per replica: the aggregate is a PromQL sum over `replica`.
    answer = httpx.get(
        f"{stack.url('prometheus')}/api/v1/query",
        params={"query": "sum by (replica) (retail_http_requests_total)"},
        timeout=5,
    ).json()
    assert {r["metric"]["replica"] for r in answer["data"]["result"]} == {"api-1", "api-2"}


def test_the_dashboards_per_replica_panels_show_each_replica(stack: Stack) -> None:
    import json

    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "retail.json").read_text())
    titles = {"Replicas up", "Request rate per replica", "Database pool per replica"}
    exprs = [t["expr"] for p in dashboard["panels"] if p["title"] in titles for t in p["targets"]]
    assert len(exprs) == len(titles)

    def replicas_of(expr: str) -> set[str]:
        query = expr.replace("$__rate_interval", "1m")
        answer = httpx.get(f"{stack.url('prometheus')}/api/v1/query", params={"query": query}, timeout=5)
        return {r["metric"].get("replica", "") for r in answer.json()["data"]["result"]}

    for expr in exprs:
        found = wait_for(f"both replicas in {expr}", lambda e=expr: replicas_of(e) >= {"api-1", "api-2"}, 60)
        assert found


@pytest.mark.timeout(600)
def test_a_backfill_through_the_celery_workers_writes_the_lake_the_command_line_writes(
    stack: Stack, unpaused_dag: str, reference_lake: str
) -> None:
    # The lake: the stack's Variable (s3://retail-lake/lake). An explicit conf, because a reprocessed
    # run would otherwise keep the conf of the run it replaces (another test's lake).
    backfill_id = backfill(stack, conf={"lake": None})
    states = wait_until_finished(stack, backfill_id)
    assert set(states.values()) == {"success"}, states
    with stack.airflow_db() as db:
        tasks = db.execute(
            "SELECT ti.task_id, ti.state FROM task_instance ti JOIN dag_run dr "
            "ON dr.dag_id = ti.dag_id AND dr.run_id = ti.run_id WHERE dr.backfill_id = %s",
            (backfill_id,),
        ).fetchall()
        (executor,) = db.execute("SELECT DISTINCT executor FROM task_instance").fetchone() or (None,)
    # Every task of the DAG ran once for each day, and succeeded.
    task_ids = {task_id for task_id, _ in tasks}
    assert task_ids >= {"load_and_validate", "post", "read_back_and_reconcile", "write_lake"}, tasks
    assert len(tasks) == len(DAYS) * len(task_ids) and {state for _, state in tasks} == {"success"}, tasks
    # The tasks went through Celery: each worker's log shows the workloads it ran.
    ran = sum(stack.log(f"worker-{i}").count("retail_etl") for i in (1, 2))
    assert ran >= len(tasks), (stack.log("worker-1")[-2000:], executor)
    from_dag = lake_rows(stack, stack.env["RETAIL_LAKE"])
    assert len(from_dag["invoice_lines"]) == LINES_ON_DAYS
    assert from_dag == lake_rows(stack, reference_lake)


def test_down_without_a_stack_is_a_no_op(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(STACK), "down", "--dir", str(tmp_path / f"none-{secrets.token_hex(3)}")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0 and "nothing to stop" in result.stderr


def _maps_pyarrow(pid: int) -> bool:
    try:
        return "libarrow" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:  # ended meanwhile
        return False


def test_each_workers_pool_processes_have_the_job_imported_before_any_task(stack: Stack) -> None:
    # deploy/airflow/retail_celery_config.py: the pool processes import etl.pipeline when they start, so
    # that the task processes they fork find pyarrow & co. loaded. pyarrow's C++ library mapped into a
    # pool process shows it; the worker's main process, which forks the pool, does not import it.
    import psutil

    for worker in ("worker-1", "worker-2"):
        pid = stack.pid(worker)
        assert pid is not None
        main = psutil.Process(pid)
        preloaded = [child.pid for child in main.children() if _maps_pyarrow(child.pid)]
        assert len(preloaded) >= 4, f"{worker}: {len(preloaded)} pool processes with pyarrow, want 4"
        assert not _maps_pyarrow(pid), f"{worker}: the main process imported pyarrow itself"
