"""`dags/`: every file parses, and `retail_etl` is wired the way docs/airflow.md says."""

from __future__ import annotations

import datetime as dt
import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.dags.conftest import DAGS_FOLDER, POOL_SLOTS, REPO

TASKS = ["load_and_validate", "post", "read_back_and_reconcile", "write_lake", "load_warehouse", "notify"]


def load_dag_module() -> ModuleType:
    """`dags/retail_etl.py` as a module, for its helpers (Airflow puts the DAG folder on sys.path itself)."""
    spec = importlib.util.spec_from_file_location("retail_etl_dag_under_test", DAGS_FOLDER / "retail_etl.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_file_in_dags_imports_without_errors(dagbag) -> None:
    python_files = sorted(p.name for p in DAGS_FOLDER.glob("*.py"))
    assert python_files, "dags/ is empty"
    assert dagbag.import_errors == {}
    parsed = sorted({Path(dag.fileloc).name for dag in dagbag.dags.values()})
    assert parsed == python_files
    # The daily ingest of a source, and the lake following the service's changes.
    assert sorted(dagbag.dags) == ["retail_etl", "retail_sync"]


def test_parsing_the_dag_imports_nothing_heavy() -> None:
    # The dag-processor parses the file every few minutes; pandas, pyarrow and etl.pipeline are for tasks.
    probe = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pandas', 'pyarrow', 'etl')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(DAGS_FOLDER / "retail_etl.py")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_tasks_run_in_pipeline_order(retail_dag) -> None:
    assert sorted(retail_dag.task_ids) == sorted(TASKS)
    for upstream, downstream in itertools.pairwise(TASKS):
        assert retail_dag.get_task(upstream).downstream_task_ids == {downstream}
    assert retail_dag.get_task("load_and_validate").upstream_task_ids == set()
    assert retail_dag.get_task("notify").downstream_task_ids == set()


def test_the_schedule_fills_the_data_set_once_per_day(retail_dag) -> None:
    from airflow.sdk import CronDataIntervalTimetable

    assert isinstance(retail_dag.timetable, CronDataIntervalTimetable)
    assert retail_dag.start_date == dt.datetime(2010, 12, 1, tzinfo=dt.UTC)
    assert retail_dag.end_date == dt.datetime(2011, 12, 9, tzinfo=dt.UTC)
    assert retail_dag.catchup is True
    assert retail_dag.max_active_runs == 4


def test_every_task_retries_with_backoff_and_has_a_timeout(retail_dag) -> None:
    for task in retail_dag.tasks:
        assert task.retries >= 2, task.task_id
        assert dt.timedelta(seconds=1) <= task.retry_delay <= dt.timedelta(seconds=20), task.task_id
        assert task.retry_exponential_backoff >= 2, task.task_id
        # The shortest waits of all retries together still outlast a service restart of a few minutes.
        shortest = sum(task.retry_delay.total_seconds() * 2**n for n in range(task.retries))
        assert shortest >= 120, task.task_id
        assert task.max_retry_delay is not None and task.max_retry_delay > task.retry_delay, task.task_id
        assert task.execution_timeout is not None, task.task_id
        assert dt.timedelta(minutes=5) <= task.execution_timeout <= dt.timedelta(hours=3), task.task_id


def test_only_the_service_calls_take_a_slot_of_the_retail_api_pool(retail_dag) -> None:
    pools = {task.task_id: task.pool for task in retail_dag.tasks}
    assert pools == {
        "load_and_validate": "default_pool",
        "post": "retail_api",
        "read_back_and_reconcile": "retail_api",
        "write_lake": "default_pool",
        "load_warehouse": "default_pool",
        "notify": "default_pool",
    }


def test_the_pool_exists_after_setup_and_a_missing_one_is_reported(airflow_db) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.pool import Pool

    pool = Pool.get_pool("retail_api")
    assert pool is not None and pool.slots == POOL_SLOTS
    # What the dag-processor would warn about on a stack whose init step did not create it.
    without = DagBag(dag_folder=str(DAGS_FOLDER), known_pools={"default_pool"})
    assert sorted(w.message for w in without.dag_warnings) == [
        f"Dag '{dag_id}' references non-existent pools: ['retail_api']"
        for dag_id in ("retail_etl", "retail_sync")
    ]
    assert (
        DagBag(dag_folder=str(DAGS_FOLDER), known_pools={"default_pool", "retail_api"}).dag_warnings == set()
    )


def test_write_lake_updates_one_asset_per_lake_table(retail_dag) -> None:
    outlets = retail_dag.get_task("write_lake").outlets
    assert {(a.name, a.uri) for a in outlets} == {
        (f"retail_lake_{table}", f"x-retail-lake://{table}")
        for table in ("invoice_lines", "invoices", "customers", "rejects")
    }
    for task_id in set(TASKS) - {"write_lake"}:
        assert retail_dag.get_task(task_id).outlets == []


def test_tasks_pass_one_small_xcom_not_one_per_key(retail_dag) -> None:
    for task in retail_dag.tasks:
        assert task.multiple_outputs is False, task.task_id


def test_the_dag_documents_itself_in_the_ui(retail_dag) -> None:
    assert retail_dag.doc_md and retail_dag.doc_md.lstrip().startswith("### Online Retail")
    for word in (
        "retail_api",
        "backfill",
        "start",
        "retail_source",
        "RETAIL_LAKE",
        "RETAIL_WAREHOUSE_URL",
        *TASKS,
    ):
        assert word in retail_dag.doc_md, word


def test_params_are_optional_and_dates_are_validated(retail_dag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    params = retail_dag.params
    assert set(params) == {
        "start",
        "end",
        "source",
        "lake",
        "warehouse",
        "notify",
        "notify_exchange",
        "date_format",
        "delimiter",
        "decimal",
        "on_conflict",
    }
    assert {name: params[name] for name in params} == {**dict.fromkeys(params, None), "on_conflict": "fail"}
    on_conflict = params.get_param("on_conflict")
    assert [on_conflict.resolve(value) for value in ("fail", "replace")] == ["fail", "replace"]
    for bad in ("overwrite", None):
        with pytest.raises(ParamValidationError):
            on_conflict.resolve(bad)
    for name in ("start", "end"):
        param = params.get_param(name)
        assert param.resolve("2010-12-02") == "2010-12-02"
        assert param.resolve(None) is None
        for bad in ("2010-13-01", "02/12/2010", 20101202):
            with pytest.raises(ParamValidationError):
                param.resolve(bad)


@pytest.mark.parametrize(
    ("connection", "url"),
    [
        ({"conn_type": "http", "host": "api", "port": 8000, "schema": "http"}, "http://api:8000"),
        (
            {"conn_type": "http", "host": "retail.example.com", "schema": "https"},
            "https://retail.example.com",
        ),
        (
            {"conn_type": "https", "host": "retail.example.com", "port": 8443},
            "https://retail.example.com:8443",
        ),
        ({"conn_type": "http", "host": "127.0.0.1", "port": 8000}, "http://127.0.0.1:8000"),
        ({"conn_type": "generic", "host": "http://127.0.0.1/", "port": 8000}, "http://127.0.0.1:8000"),
    ],
)
def test_the_service_url_comes_from_the_connection(connection: dict[str, object], url: str) -> None:
    from airflow.sdk import Connection

    module = load_dag_module()
    conn = Connection.from_json(json.dumps({**connection, "password": "k"}), conn_id="retail_api")
    assert module.service_url(conn) == url


def test_the_uri_form_of_the_connection_gives_the_same_url() -> None:
    from airflow.sdk import Connection

    module = load_dag_module()
    conn = Connection.from_uri("http://:s3cr%2Ft@api:8000/https", conn_id="retail_api")
    assert (module.service_url(conn), conn.password) == ("https://api:8000", "s3cr/t")


@pytest.mark.parametrize(
    ("connection", "message"),
    [
        ({"conn_type": "http"}, "no host"),
        ({"conn_type": "http", "host": "api", "schema": "ftp"}, "http or https"),
    ],
)
def test_an_unusable_connection_fails_without_retry(connection: dict[str, object], message: str) -> None:
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowFailException

    module = load_dag_module()
    with pytest.raises(AirflowFailException, match=message):
        module.service_url(Connection.from_json(json.dumps(connection), conn_id="retail_api"))
