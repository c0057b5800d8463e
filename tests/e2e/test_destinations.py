"""End to end: `retail-etl run --warehouse ... --notify ...` against the real service process, a real
warehouse (PostgreSQL, DuckDB) and the real broker.

The ordering test consumes while the job runs, in a thread of its own: each message, the moment it arrives,
is checked against the lake (the file it names is there, with that hash and those rows) and against the
warehouse (the day's rows are committed), so a message sent before its day was published would fail it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pyarrow.parquet as pq
import pytest

from tests.e2e.test_job import assert_one_line_error, run_job, run_job_at, service_invoice_count
from tests.events.support import BROKER_URL
from tests.support.service import LiveService, free_port, live_service

SAMPLE_DAYS = ["2010-12-01", "2010-12-02", "2011-08-12", "2011-09-25"]
EXIT_DESTINATION = 6
#: The summary table as wide as its longest line: URLs and counts on one line each.
WIDE = {"COLUMNS": "200"}


@pytest.fixture
def service(sqlite_url: str) -> Iterator[LiveService]:
    with live_service(sqlite_url) as running:
        yield running


@dataclass
class CheckingConsumer:
    """Consumes `exchange` in its own thread and, for each message as it arrives, records what the lake
    and the warehouse (`warehouse_rows(day)`) hold for the message's day at that moment."""

    exchange: str
    lake: Path
    warehouse_rows: Callable[[str], int] | None
    seen: list[dict[str, Any]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the consumer did not start"

    def _run(self) -> None:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
            channel = connection.channel()
            channel.exchange_declare(exchange=self.exchange, exchange_type="topic", durable=True)
            queue = channel.queue_declare(queue="", exclusive=True).method.queue
            channel.queue_bind(queue=queue, exchange=self.exchange, routing_key="day.*")
            self._ready.set()
            for method, properties, body in channel.consume(queue, inactivity_timeout=0.05):
                if method is not None:
                    self.seen.append(self._check(method.routing_key, properties, json.loads(body)))
                    channel.basic_ack(method.delivery_tag)
                if self._stop.is_set():
                    break
            channel.cancel()
            channel.exchange_delete(self.exchange)
            connection.close()
        except BaseException as error:  # reported by the test, not lost in the thread
            self.errors.append(error)
            self._ready.set()

    def _check(self, routing_key: str, properties: Any, message: dict[str, Any]) -> dict[str, Any]:
        day = message["day"]
        lines = message["tables"]["invoice_lines"]
        path = self.lake / lines["file"]
        data = path.read_bytes() if path.is_file() else b""
        return {
            "day": day,
            "routing_key": routing_key,
            "message_id": properties.message_id,
            "rows": lines["rows"],
            "file_hash_matches": hashlib.sha256(data).hexdigest() == lines["sha256"],
            "lake_rows": pq.ParquetFile(path).metadata.num_rows if data else None,
            "warehouse_rows": self.warehouse_rows(day) if self.warehouse_rows else None,
            "message": message,
        }

    def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.seen) < count and not self.errors and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.errors:
            raise self.errors[0]


def unique_exchange() -> str:
    return f"retail_test_lake_{secrets.token_hex(6)}"


@pytest.mark.postgres
@pytest.mark.rabbitmq
def test_each_message_arrives_once_its_day_is_in_the_lake_and_the_warehouse(
    service: LiveService, tmp_path: Path, postgres_url: str
) -> None:
    import psycopg

    warehouse = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)

    def committed_rows(day: str) -> int:
        with psycopg.connect(warehouse) as connection:
            row = connection.execute(
                "SELECT count(*) FROM invoice_lines WHERE invoice_day = %s", (day,)
            ).fetchone()
            assert row is not None
            return int(row[0])

    lake = tmp_path / "lake"
    exchange = unique_exchange()
    consumer = CheckingConsumer(exchange, lake, committed_rows)
    try:
        result = run_job_at(
            service.url,
            service.api_key,
            lake,
            *("--warehouse", warehouse, "--notify", BROKER_URL, "--notify-exchange", exchange),
            extra_env=WIDE,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        consumer.wait_for(len(SAMPLE_DAYS))
    finally:
        consumer.stop()

    assert [seen["day"] for seen in consumer.seen] == SAMPLE_DAYS
    for seen in consumer.seen:
        assert seen["routing_key"] == "day.published"
        assert seen["file_hash_matches"], seen["day"]
        assert seen["rows"] == seen["lake_rows"] == seen["warehouse_rows"] > 0, seen["day"]
        assert seen["message"]["warehouse"] == warehouse
    assert sum(seen["rows"] for seen in consumer.seen) == 8326

    # The summary says what each destination received; the run report keeps it.
    assert "warehouse" in result.stdout and "notify" in result.stdout
    assert "4 days: 8,326 invoice lines, 449 invoices, 313 customers" in result.stdout
    assert (
        "4 messages for 4 days: 8,326 invoice lines, 449 invoices, 331 customers, 0 rejects" in result.stdout
    )
    [report_path] = (lake / "_runs").glob("*.json")
    report = json.loads(report_path.read_text())
    assert report["destinations"]["warehouse"]["rows"] == {
        "invoice_lines": 8326,
        "invoices": 449,
        "customers": 313,
    }
    assert report["destinations"]["notify"]["messages"] == 4
    assert report["counts"]["warehouse_lines"] == 8326 and report["counts"]["messages_published"] == 4
    assert {"load warehouse", "notify"} <= set(report["seconds"])


@pytest.mark.rabbitmq
def test_a_rerun_from_the_environment_leaves_the_same_duckdb_rows_and_sends_the_same_ids(
    service: LiveService, tmp_path: Path
) -> None:
    import duckdb

    lake, warehouse, exchange = tmp_path / "lake", tmp_path / "wh" / "retail.duckdb", unique_exchange()

    def duckdb_rows() -> list[tuple[Any, ...]]:
        with duckdb.connect(str(warehouse), read_only=True) as con:
            return (
                con.execute(
                    "SELECT * FROM invoice_lines ORDER BY invoice_day, invoice_no, line_no"
                ).fetchall()
                + con.execute("SELECT * FROM customers ORDER BY customer_id").fetchall()
            )

    env = {
        **WIDE,
        "RETAIL_WAREHOUSE_URL": str(warehouse),
        "RETAIL_NOTIFY_URL": BROKER_URL,
        "RETAIL_NOTIFY_EXCHANGE": exchange,
    }
    consumer = CheckingConsumer(exchange, lake, None)
    try:
        first = run_job_at(service.url, service.api_key, lake, extra_env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        consumer.wait_for(4)
        after_first = duckdb_rows()
        second = run_job_at(service.url, service.api_key, lake, extra_env=env)
        assert second.returncode == 0, second.stderr[-3000:]
        consumer.wait_for(8)
    finally:
        consumer.stop()

    # Every line, and each of the sample's 313 customers once (331 customer-days were upserted).
    assert len(after_first) == 8326 + 313
    assert duckdb_rows() == after_first
    ids = [seen["message_id"] for seen in consumer.seen]
    assert len(ids) == 8 and ids[:4] == ids[4:] and len(set(ids)) == 4
    assert f"duckdb:///{warehouse}" in second.stdout


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--warehouse", "mysql://root@127.0.0.1/shop", "unsupported warehouse URL scheme 'mysql'"),
        ("--warehouse", "postgresql://postgres:pw@127.0.0.1:{port}/retail", "cannot open the warehouse"),
        ("--notify", "http://127.0.0.1:15672/", "unsupported notify URL"),
        ("--notify", "amqp://guest:pw@127.0.0.1:{port}/", "cannot reach the broker"),
    ],
)
def test_a_bad_destination_is_one_line_and_nothing_is_written_or_posted(
    service: LiveService, tmp_path: Path, option: str, value: str, needle: str
) -> None:
    lake = tmp_path / "lake"
    result = run_job(service, lake, option, value.format(port=free_port()))

    assert result.returncode == EXIT_DESTINATION, result.stderr[-3000:]
    line = assert_one_line_error(result.stderr, needle)
    assert ":pw@" not in line
    assert not lake.exists(), "no lake, not even a run report"
    assert service_invoice_count(service, "2010-12-01", "2011-12-09") == (0, 0)


@pytest.mark.rabbitmq
def test_days_the_warehouse_refuses_are_never_announced(service: LiveService, tmp_path: Path) -> None:
    import duckdb

    lake, warehouse, exchange = tmp_path / "lake", tmp_path / "retail.duckdb", unique_exchange()
    # A warehouse whose own rule refuses the first day's first stock code: opening it works (its tables
    # exist), loading the run's days (one transaction) fails.
    with duckdb.connect(str(warehouse)) as con:
        con.execute(
            "CREATE TABLE invoice_lines (invoice_day DATE NOT NULL, invoice_no VARCHAR NOT NULL,"
            " line_no INTEGER NOT NULL, stock_code VARCHAR NOT NULL CHECK (stock_code <> '85123A'),"
            " description VARCHAR, quantity BIGINT NOT NULL, unit_price DECIMAL(12, 3) NOT NULL,"
            " invoice_date TIMESTAMP NOT NULL, customer_id VARCHAR, country VARCHAR NOT NULL)"
        )
    consumer = CheckingConsumer(exchange, lake, None)
    try:
        result = run_job(
            service,
            lake,
            "--warehouse",
            str(warehouse),
            "--notify",
            BROKER_URL,
            "--notify-exchange",
            exchange,
        )
        consumer.wait_for(1, timeout=2)  # would any message come, it comes now: none may
    finally:
        consumer.stop()

    assert result.returncode == EXIT_DESTINATION, result.stderr[-3000:]
    assert_one_line_error(result.stderr, "loading 2010-12-01..2011-09-25 failed", "85123A")
    assert consumer.seen == []
    # The lake was published first and stays (a rerun after fixing the warehouse completes the run).
    assert sorted(p.name for p in (lake / "invoice_lines").iterdir()) == [
        f"invoice_day={d}" for d in SAMPLE_DAYS
    ]
