"""`dag.test()` runs of `retail_sync` against a live service process: the lake follows other clients'
writes, and a sync that finds the lake held is skipped, not failed."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from tests.api.helpers import invoice
from tests.dags.conftest import DAGS_FOLDER
from tests.dags.test_dag_run import retail_api_connection, service  # noqa: F401 - fixtures


@pytest.fixture
def sync_dag(airflow_db: Path) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER)).dags["retail_sync"]


def invoice_numbers(lake: Path) -> list[str]:
    return sorted(set(pq.read_table(lake / "invoice_lines").column("invoice_no").to_pylist()))


def test_the_sync_dag_brings_other_clients_writes_into_the_lake(
    sync_dag,
    retail_api_connection: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    running = retail_api_connection
    lake = tmp_path / "lake"
    with httpx.Client(base_url=running.url, headers={"X-API-Key": running.api_key}, timeout=30) as client:
        assert client.post("/customer", json={"customer_id": "17850", "country": "United Kingdom"}).is_success
        for number in ("536365", "536366"):
            assert client.post("/customer/17850/invoice", json=invoice(number)).status_code == 201
    run = sync_dag.test(logical_date=dt.datetime.now(dt.UTC), run_conf={"lake": str(lake)})
    assert run.state == "success"
    assert invoice_numbers(lake) == ["536365", "536366"]

    with httpx.Client(base_url=running.url, headers={"X-API-Key": running.api_key}, timeout=30) as client:
        assert client.delete("/invoice/536365").status_code == 204
    run = sync_dag.test(logical_date=dt.datetime.now(dt.UTC), run_conf={"lake": str(lake)})
    assert run.state == "success"
    assert invoice_numbers(lake) == ["536366"]
    state = json.loads((lake / "_sync" / "state.json").read_text())
    assert int(state["cursor"]) >= 4  # the customer, two invoices, one deletion


def test_a_sync_that_finds_the_lake_held_is_skipped(
    sync_dag,
    retail_api_connection: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    lake = tmp_path / "lake"
    (lake / "_sync").mkdir(parents=True)
    holder = {"owner": "cron:1:x", "since": time.time(), "lease_seconds": 3600}
    (lake / "_sync" / "lock").write_text(json.dumps(holder))
    run = sync_dag.test(logical_date=dt.datetime.now(dt.UTC), run_conf={"lake": str(lake)})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"sync": "skipped"}
    assert not (lake / "invoice_lines").exists()
