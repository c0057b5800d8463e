"""`dag.test()` runs of `retail_etl`: one invoice day end to end against a live service process, and the
run that cannot know its day.

Nothing is mocked: the tasks call `etl.pipeline`, which talks HTTP to uvicorn on a SQLite file, and write a
real lake under tmp_path. The connection comes the way a deployment gives it, through the environment
(`AIRFLOW_CONN_RETAIL_API`), and the source and the lake through the DAG params.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.dags.conftest import DAGS_FOLDER, REPO
from tests.support.job import SAMPLE, job_command

DAY = "2010-12-02"
TABLES = ("invoice_lines", "invoices", "customers", "rejects")
DATA_TABLES = TABLES[:3]
API_KEY = "dag-test-key"


def source_day(day: str, path: Path = SAMPLE) -> tuple[int, Decimal, int]:
    """Lines, exact sum of quantity * unit price, and invoices of `day` in the source, read here with the
    csv module and Decimal, independently of the job's loader."""
    lines, amount, invoices = 0, Decimal(0), set()
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["InvoiceDate"][:10] == day:
                lines += 1
                amount += int(row["Quantity"]) * Decimal(row["UnitPrice"])
                invoices.add(row["InvoiceNo"])
    return lines, amount, len(invoices)


def partition(lake: Path, table: str, day: str = DAY) -> Path:
    return lake / table / f"invoice_day={day}" / "part-0.parquet"


def read_partition(lake: Path, table: str, day: str = DAY) -> Any:
    import pyarrow.parquet as pq

    # A single file, read as it is: no partition discovery from the path.
    return pq.ParquetFile(partition(lake, table, day)).read()


@pytest.fixture
def fresh_dag(airflow_db: Path) -> Any:
    """`retail_etl` parsed anew for each run: `dag.test()` runs the tasks in this process, and resolving
    the params of one run writes their values into the DAG object's Params, which the next run would
    take as defaults. (A deployment parses the DAG in each task's own process.)"""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER)).dags["retail_etl"]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Any]:
    from tests.support.service import live_service

    with live_service(f"sqlite:///{tmp_path / 'service.db'}", api_key=API_KEY) as running:
        yield running


@pytest.fixture
def retail_api_connection(service: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The connection `retail_api` in its JSON form, as the compose file and docs/airflow.md give it."""
    url = urlsplit(service.url)
    connection = {
        "conn_type": "http",
        "host": url.hostname,
        "port": url.port,
        "schema": url.scheme,
        "password": service.api_key,
    }
    monkeypatch.setenv("AIRFLOW_CONN_RETAIL_API", json.dumps(connection))
    return service


def asset_events() -> dict[str, list[dict[str, Any]]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(AssetModel.name, AssetEvent.extra).join(AssetEvent.asset).all()
        events: dict[str, list[dict[str, Any]]] = {}
        for name, extra in rows:
            events.setdefault(name, []).append(extra)
    return events


def test_one_day_runs_end_to_end_into_the_lake(
    fresh_dag,
    retail_api_connection: Any,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    lake = tmp_path / "lake"
    run = fresh_dag.test(
        logical_date=dt.datetime.fromisoformat(DAY).replace(tzinfo=dt.UTC),
        run_conf={"source": str(SAMPLE), "lake": str(lake)},
    )
    output = capfd.readouterr()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", (states, output.out[-4000:], output.err[-4000:])
    assert states == dict.fromkeys(
        ["load_and_validate", "post", "read_back_and_reconcile", "write_lake", "load_warehouse", "notify"],
        "success",
    )
    # Without a warehouse or a broker those two tasks do nothing, and say so.
    assert "no warehouse given: nothing to load" in caplog.text
    assert "no notify URL given: no message sent" in caplog.text

    # The day, and only the day, is in the lake; the day has no rejects, and an empty partition is no file.
    for table in DATA_TABLES:
        assert partition(lake, table).is_file(), table
        assert [p.name for p in (lake / table).iterdir()] == [f"invoice_day={DAY}"], table
    assert not (lake / "rejects").exists() or not any((lake / "rejects").rglob("*.parquet"))
    assert not any((lake / "_work").glob("*")), "write_lake leaves no intermediate files behind"

    # It reconciles with the source: same line count, exactly the same amount.
    expected_lines, expected_amount, expected_invoices = source_day(DAY)
    assert (expected_lines, expected_amount) == (2109, Decimal("46207.28"))
    lines = read_partition(lake, "invoice_lines").to_pydict()
    assert len(lines["invoice_no"]) == expected_lines
    assert sum(q * p for q, p in zip(lines["quantity"], lines["unit_price"], strict=True)) == expected_amount
    assert read_partition(lake, "invoices").num_rows == expected_invoices

    # Downstream DAGs learn where and which days: one event per lake table.
    events = asset_events()
    for table in TABLES:
        assert {"lake": str(lake), "days": [DAY]} in events[f"retail_lake_{table}"], table


def test_the_command_line_writes_the_same_lake_for_the_same_day(
    fresh_dag, retail_api_connection: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    service = retail_api_connection
    dag_lake, cli_lake = tmp_path / "dag-lake", tmp_path / "cli-lake"
    # No params this time: the source comes from the Variable (given by env, as in the compose stack),
    # the lake from the last fallback, env RETAIL_LAKE.
    monkeypatch.setenv("AIRFLOW_VAR_RETAIL_SOURCE", str(SAMPLE))
    monkeypatch.setenv("RETAIL_LAKE", str(dag_lake))
    run = fresh_dag.test(logical_date=dt.datetime.fromisoformat(DAY).replace(tzinfo=dt.UTC))
    assert run.state == "success"
    cli = subprocess.run(
        job_command(service.url, cli_lake, "--start", DAY, "--end", DAY),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "RETAIL_API_KEY": service.api_key, "RETAIL_CACHE_DIR": str(tmp_path / "cache")},
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-4000:]

    def tables(lake: Path) -> dict[str, Any]:
        # The published files (`_lake/` holds the same bytes under names unique to each write).
        # `_staging/` holds the source as the DAG staged it (etl/staging.py), not lake tables.
        skipped = {"_work", "_runs", "_lake", "_staging"}
        files = sorted(p for p in lake.rglob("*.parquet") if not skipped & set(p.parts))
        return {str(p.relative_to(lake)): pq.ParquetFile(p).read() for p in files}

    from_dag, from_cli = tables(dag_lake), tables(cli_lake)
    assert sorted(from_dag) == sorted(from_cli)
    assert {str(partition(Path(""), table)) for table in DATA_TABLES} <= set(from_dag)
    for name, table in from_dag.items():
        assert table.equals(from_cli[name]), name


def test_a_manual_run_without_logical_date_or_params_fails_at_once_saying_why(
    fresh_dag, capfd: pytest.CaptureFixture[str]
) -> None:
    run = fresh_dag.test(logical_date=None)
    output = capfd.readouterr()
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    assert run.state == "failed"
    assert tis["load_and_validate"].state == "failed"
    assert tis["load_and_validate"].try_number == 1, "a run that cannot know its day is not retried"
    downstream = ("post", "read_back_and_reconcile", "write_lake", "load_warehouse", "notify")
    assert {tis[t].state for t in downstream} == {"upstream_failed"}
    assert "RunDaysError: this run has no logical date and no params" in output.out + output.err


def test_with_a_pushgateway_the_dag_pushes_its_run_metrics(
    fresh_dag, retail_api_connection: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.pushgateway import running_pushgateway

    with running_pushgateway() as gateway:
        monkeypatch.setenv("RETAIL_PUSHGATEWAY_URL", gateway.url)
        run = fresh_dag.test(
            logical_date=dt.datetime.fromisoformat(DAY).replace(tzinfo=dt.UTC),
            run_conf={"source": str(SAMPLE), "lake": str(tmp_path / "lake")},
        )
        assert run.state == "success"
        samples = gateway.samples()

    lines, _, _ = source_day(DAY)
    rows = {dict(labels)["stage"]: v for (name, labels), v in samples.items() if name == "retail_job_rows"}
    assert rows == {
        "source": 8326,
        "valid": lines,
        "rejected": 0,
        "posted": lines,
        "created": lines,
        "unchanged": 0,
        "read_back": lines,
        "written": lines,
    }
    stages = {dict(labels)["stage"] for (name, labels) in samples if name == "retail_job_stage_seconds"}
    # The command line's stages (tests/e2e/test_pushgateway.py): one run report, however it ran.
    assert stages == {"load", "validate", "post", "read back", "reconcile", "write lake"}
    status = {dict(labels)["status"]: v for (name, labels), v in samples.items() if name.endswith("_status")}
    assert status == {"reconciled": 1.0, "failed": 0.0}
    assert any(name == "retail_job_last_success_timestamp_seconds" for name, _ in samples)
