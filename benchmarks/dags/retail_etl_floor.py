"""`retail_etl_floor`: the `retail_etl` DAG's shape with tasks that do nothing, for
benchmarks/scheduler_path.py. What a catch-up of it costs is the scheduler's own floor on a stack: the
same six tasks in the same chain, the same pool, schedule, range, `max_active_runs` and retries, each
task receiving its predecessor's small XCom and returning one. `tests/dags/test_floor_dag.py` checks that
the shape stays the same as the real DAG's.

Not in `dags/`: the benchmark starts its stack with a DAG folder holding both files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, dag, task

POOL = "retail_api"
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "retail-etl",
    "retries": 5,
    "retry_delay": dt.timedelta(seconds=5),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=15),
    "execution_timeout": dt.timedelta(minutes=30),
}


def _passed(meta: Mapping[str, Any], step: str) -> dict[str, Any]:
    return {**meta, "steps": [*meta.get("steps", []), step]}


@dag(
    dag_id="retail_etl_floor",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=dt.datetime(2010, 12, 1, tzinfo=dt.UTC),
    end_date=dt.datetime(2011, 12, 9, tzinfo=dt.UTC),
    catchup=True,
    max_active_runs=4,
    dagrun_timeout=dt.timedelta(hours=6),
    default_args=DEFAULT_ARGS,
    tags=["retail", "benchmark"],
)
def retail_etl_floor() -> None:
    """The scheduler's floor: `retail_etl`'s six tasks, empty."""

    @task(task_id="load_and_validate")
    def load_and_validate() -> dict[str, Any]:
        return {"steps": ["load_and_validate"]}

    @task(task_id="post", pool=POOL, execution_timeout=dt.timedelta(hours=2))
    def post(meta: Mapping[str, Any]) -> dict[str, Any]:
        return _passed(meta, "post")

    @task(task_id="read_back_and_reconcile", pool=POOL, execution_timeout=dt.timedelta(hours=1))
    def read_back_and_reconcile(meta: Mapping[str, Any]) -> dict[str, Any]:
        return _passed(meta, "read_back_and_reconcile")

    @task(task_id="write_lake")
    def write_lake(meta: Mapping[str, Any]) -> dict[str, Any]:
        return _passed(meta, "write_lake")

    @task(task_id="load_warehouse")
    def load_warehouse(meta: Mapping[str, Any]) -> dict[str, Any]:
        return _passed(meta, "load_warehouse")

    @task(task_id="notify")
    def notify(meta: Mapping[str, Any]) -> dict[str, Any]:
        return _passed(meta, "notify")

    meta: Any = load_and_validate()
    notify(load_warehouse(write_lake(read_back_and_reconcile(post(meta)))))


retail_etl_floor()
