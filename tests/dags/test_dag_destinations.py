"""`dag.test()` runs of `retail_etl` with the other destinations as params: a real DuckDB warehouse and
the real broker, after the lake, through the same functions as the command line."""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.dags.test_dag_run import DAY, fresh_dag, retail_api_connection, service, source_day
from tests.events.conftest import consumer, rabbitmq
from tests.events.support import BROKER_URL, EventConsumer
from tests.support.job import SAMPLE

__all__ = ["consumer", "fresh_dag", "rabbitmq", "retail_api_connection", "service"]

TASKS = ["load_and_validate", "post", "read_back_and_reconcile", "write_lake", "load_warehouse", "notify"]


def logical_date() -> dt.datetime:
    return dt.datetime.fromisoformat(DAY).replace(tzinfo=dt.UTC)


@pytest.mark.rabbitmq
def test_the_params_load_the_warehouse_and_announce_the_day_after_the_lake(
    fresh_dag,
    retail_api_connection: Any,
    consumer: EventConsumer,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    import duckdb

    lake, warehouse = tmp_path / "lake", tmp_path / "warehouse.duckdb"
    run = fresh_dag.test(
        logical_date=logical_date(),
        run_conf={
            "source": str(SAMPLE),
            "lake": str(lake),
            "warehouse": str(warehouse),
            "notify": BROKER_URL,
            "notify_exchange": consumer.exchange,
        },
    )
    output = capfd.readouterr()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", (states, output.out[-4000:], output.err[-4000:])
    assert states == dict.fromkeys(TASKS, "success")

    # The warehouse holds the day exactly as the source has it.
    lines, amount, invoices = source_day(DAY)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        held = con.execute(
            "SELECT count(*), sum(quantity * unit_price), (SELECT count(*) FROM invoices) FROM invoice_lines"
            " WHERE invoice_day = DATE '2010-12-02'"
        ).fetchone()
    assert held == (lines, amount, invoices)
    assert isinstance(amount, Decimal)

    # One message for the day, naming the lake's file by its hash, sent by this run.
    assert consumer.collect(lambda c: len(c.messages) >= 1, timeout=10)
    consumer.drain(0.3)
    [message] = consumer.messages
    body = message.event
    assert (message.routing_key, body["day"], body["run_id"]) == ("day.published", DAY, run.run_id)
    assert body["warehouse"] == f"duckdb:///{warehouse}"
    described = body["tables"]["invoice_lines"]
    assert described["rows"] == lines
    assert described["sha256"] == hashlib.sha256((lake / described["file"]).read_bytes()).hexdigest()
    assert Decimal(body["totals"]["amount"]) == amount


def test_a_misnamed_warehouse_fails_the_first_task_before_anything_is_written(
    fresh_dag, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    lake = tmp_path / "lake"
    run = fresh_dag.test(
        logical_date=logical_date(),
        run_conf={"source": str(SAMPLE), "lake": str(lake), "warehouse": "mysql://root@127.0.0.1/shop"},
    )
    output = capfd.readouterr()
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    assert run.state == "failed"
    assert tis["load_and_validate"].state == "failed"
    assert tis["load_and_validate"].try_number == 1, "a misnamed destination is not retried"
    assert {tis[t].state for t in TASKS[1:]} == {"upstream_failed"}
    assert "DestinationUrlError: unsupported warehouse URL scheme 'mysql'" in output.out + output.err
    assert not lake.exists()
