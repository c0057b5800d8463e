"""The message queue on the real broker: one confirmed, persistent JSON message per day, naming the
day's files by their hashes, with a stable id; bad or unreachable brokers fail in one line."""

from __future__ import annotations

import dataclasses
import hashlib
from decimal import Decimal
from pathlib import Path

import pytest

from etl.destinations.base import DayTables
from etl.destinations.fanout import notify_days
from etl.destinations.queue import PUBLISHED, REPLACED, QueueDestination, check_notify_url
from etl.errors import DestinationError, ReconciliationError
from tests.events.forwarder import TcpForwarder
from tests.events.support import BROKER_HOST, BROKER_PORT, EventConsumer, broker_url
from tests.support.service import free_port


def test_one_message_per_day_with_counts_hashes_and_totals(
    rabbitmq: str, consumer: EventConsumer, sample_lake: Path, lake_days: list[DayTables]
) -> None:
    sent = notify_days(
        rabbitmq, lake_days, exchange=consumer.exchange, lake=str(sample_lake), run_id="run-1", warehouse=None
    )
    assert (sent["messages"], sent["exchange"]) == (4, consumer.exchange)
    assert consumer.collect(lambda c: len(c.messages) >= 4, timeout=10)
    consumer.drain(0.3)  # nothing more arrives
    assert len(consumer.messages) == 4

    by_day = {m.event["day"]: m for m in consumer.messages}
    assert sorted(by_day) == [d.day.isoformat() for d in lake_days]
    for day in lake_days:
        message = by_day[day.day.isoformat()]
        assert message.routing_key == PUBLISHED
        assert message.properties.delivery_mode == 2
        assert message.properties.content_type == "application/json"
        body = message.event
        assert (body["type"], body["run_id"], body["lake"], body["warehouse"]) == (
            PUBLISHED,
            "run-1",
            str(sample_lake),
            None,
        )
        for table in ("invoice_lines", "invoices", "customers"):
            described = body["tables"][table]
            assert described["rows"] == day.tables[table].num_rows > 0
            # The hash is of the file a reader finds at that path in the lake.
            assert (
                described["sha256"]
                == hashlib.sha256((sample_lake / described["file"]).read_bytes()).hexdigest()
            )
        assert body["tables"]["rejects"] == {"rows": 0, "file": None, "sha256": None}
        assert Decimal(body["totals"]["amount"]) == day.totals().amount
        assert body["totals"]["lines"] == day.rows["invoice_lines"]


def test_the_same_day_again_has_the_same_message_id_and_a_replacement_says_so(
    rabbitmq: str, consumer: EventConsumer, sample_lake: Path, lake_days: list[DayTables]
) -> None:
    day = lake_days[0]
    notify_days(rabbitmq, [day], exchange=consumer.exchange, lake=str(sample_lake), run_id="a")
    notify_days(rabbitmq, [day], exchange=consumer.exchange, lake=str(sample_lake), run_id="b")
    notify_days(
        rabbitmq, [day], exchange=consumer.exchange, lake=str(sample_lake), run_id="c", replaced={day.day}
    )
    assert consumer.collect(lambda c: len(c.messages) >= 3, timeout=10)

    first, again, replaced = consumer.messages
    assert first.properties.message_id == again.properties.message_id
    assert [m.event["run_id"] for m in consumer.messages] == ["a", "b", "c"]
    assert (replaced.routing_key, replaced.event["type"]) == (REPLACED, REPLACED)
    assert replaced.properties.message_id != first.properties.message_id


def test_verify_day_needs_a_confirmed_message_with_the_days_totals(
    rabbitmq: str, consumer: EventConsumer, sample_lake: Path, lake_days: list[DayTables]
) -> None:
    queue = QueueDestination(rabbitmq, lake=str(sample_lake), run_id="r", exchange=consumer.exchange)
    try:
        first, second = lake_days[0], lake_days[1]
        with pytest.raises(ReconciliationError, match="no confirmed message for 2010-12-01"):
            queue.verify_day(first.day, first.totals())
        queue.publish_day(first)
        queue.verify_day(first.day, first.totals())
        wrong = dataclasses.replace(first.totals(), invoices=first.totals().invoices + 1)
        with pytest.raises(ReconciliationError, match="invoices 144 expected, 143 found"):
            queue.verify_day(first.day, wrong)
        with pytest.raises(ReconciliationError):
            queue.verify_day(second.day, second.totals())
    finally:
        queue.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:5672/", "127.0.0.1:5672", "redis://127.0.0.1:6379/0", ""])
def test_a_notify_url_that_is_not_amqp_is_refused(url: str) -> None:
    with pytest.raises(DestinationError, match="unsupported notify URL") as failure:
        check_notify_url(url)
    assert "\n" not in str(failure.value)


def test_an_unreachable_broker_fails_after_retries_in_one_line(sample_lake: Path) -> None:
    port = free_port()
    with pytest.raises(DestinationError) as failure:
        QueueDestination(f"amqp://guest:secret@127.0.0.1:{port}/", lake=str(sample_lake), run_id="r")
    message = str(failure.value)
    assert message.startswith(f"cannot reach the broker at amqp://guest:***@127.0.0.1:{port}/")
    assert "secret" not in message and "\n" not in message


def test_a_connection_cut_between_two_days_is_retried_on_a_new_one(
    rabbitmq: str, consumer: EventConsumer, sample_lake: Path, lake_days: list[DayTables]
) -> None:
    broker = TcpForwarder((BROKER_HOST, BROKER_PORT))
    broker.open()
    try:
        queue = QueueDestination(
            broker_url(broker.port), lake=str(sample_lake), run_id="r", exchange=consumer.exchange
        )
        try:
            queue.publish_day(lake_days[0])
            broker.close()  # the broker "crashes": the open connection is cut
            broker.open()  # and is back
            queue.publish_day(lake_days[1])  # the first attempt fails on the dead connection
            queue.verify_day(lake_days[1].day, lake_days[1].totals())
        finally:
            queue.close()
        assert broker.connections == 2
    finally:
        broker.close()
    assert consumer.collect(lambda c: len(c.messages) >= 2, timeout=10)
    assert [m.event["day"] for m in consumer.messages] == ["2010-12-01", "2010-12-02"]


def test_a_broker_gone_for_good_fails_the_day_in_one_line(
    rabbitmq: str, consumer: EventConsumer, sample_lake: Path, lake_days: list[DayTables]
) -> None:
    broker = TcpForwarder((BROKER_HOST, BROKER_PORT))
    broker.open()
    queue = QueueDestination(
        broker_url(broker.port), lake=str(sample_lake), run_id="r", exchange=consumer.exchange
    )
    broker.close()  # and never back
    try:
        with pytest.raises(DestinationError, match="the message for 2010-12-01 was not confirmed") as failure:
            queue.publish_day(lake_days[0])
    finally:
        queue.close()
    assert "\n" not in str(failure.value)
    with pytest.raises(ReconciliationError):
        queue.verify_day(lake_days[0].day, lake_days[0].totals())
