"""The benchmark's floor DAG (`benchmarks/dags/retail_etl_floor.py`) has `retail_etl`'s shape, so that
benchmarks/scheduler_path.py compares the job's tasks with empty ones and nothing else."""

from __future__ import annotations

from typing import Any

from tests.dags.conftest import REPO

FLOOR_FOLDER = REPO / "benchmarks" / "dags"


def _shape(dag: Any) -> dict[str, Any]:
    tasks = {
        task.task_id: (
            sorted(task.upstream_task_ids),
            task.pool,
            task.retries,
            task.retry_delay,
            task.retry_exponential_backoff,
            task.max_retry_delay,
            task.execution_timeout,
        )
        for task in dag.tasks
    }
    return {
        "tasks": tasks,
        "timetable": (type(dag.timetable).__name__, dag.timetable.expression, str(dag.timetable.timezone)),
        "start_date": dag.start_date,
        "end_date": dag.end_date,
        "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs,
        "max_active_tasks": dag.max_active_tasks,
        "dagrun_timeout": dag.dagrun_timeout,
    }


def test_the_floor_dag_has_the_real_dags_shape(airflow_db: Any, retail_dag: Any) -> None:
    from airflow.dag_processing.dagbag import DagBag

    floor_bag = DagBag(dag_folder=str(FLOOR_FOLDER))
    assert floor_bag.import_errors == {}
    assert list(floor_bag.dags) == ["retail_etl_floor"]
    floor = floor_bag.dags["retail_etl_floor"]
    assert _shape(floor) == _shape(retail_dag)
    assert len(floor.tasks) == 6
