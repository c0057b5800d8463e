"""Events reach RabbitMQ, nothing lost: the real service and relay against the real broker.

"Broker down" is modelled by the relay's broker address: a loopback port where nothing listens (connection
refused, as from a stopped broker) until the test opens a TCP forwarder there to the real broker on
127.0.0.1:5672 (the broker started). The shared broker itself is never stopped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.core.db import make_engine
from api.events import relay
from api.main import create_app
from tests.api.conftest import make_settings
from tests.api.helpers import AUTH, invoice, line
from tests.events.forwarder import TcpForwarder
from tests.events.support import BROKER_HOST, BROKER_PORT, EventConsumer, broker_url, outbox_counts
from tests.support.service import REPO_ROOT, live_service

pytestmark = pytest.mark.rabbitmq

#: Quick retries, so a test does not wait out the production backoff (30 s).
FAST_RELAY = {"RELAY_BACKOFF_MAX_SECONDS": "0.3", "OUTBOX_POLL_SECONDS": "0.1"}


def invoices(numbers: range, customers: list[str]) -> list[dict[str, Any]]:
    return [
        invoice(
            f"5{number:05d}",
            customer_id=customers[number % len(customers)] if customers else None,
            lines=[
                line("85123A", line_no=1, quantity=number + 1),
                line("22423", line_no=2, unit_price="12.75"),
            ],
        )
        for number in numbers
    ]


@contextmanager
def database(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def wait_until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_events_created_while_the_broker_is_down_arrive_once_it_is_up(
    database_url: str, consumer: EventConsumer
) -> None:
    broker = TcpForwarder((BROKER_HOST, BROKER_PORT))  # not listening yet: the broker is down
    env = {"RABBITMQ_URL": broker_url(broker.port), "RABBITMQ_EXCHANGE": consumer.exchange, **FAST_RELAY}
    customers = [str(12000 + n) for n in range(10)]
    try:
        with live_service(database_url, extra_env=env) as service, database(database_url) as engine:
            with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
                bulk_customers = {"customers": [{"customer_id": c, "country": "France"} for c in customers]}
                assert client.post("/bulk/customers", json=bulk_customers).json()["created"] == 10
                assert (
                    client.post("/customer", json={"customer_id": "17850", "country": "UK"}).status_code
                    == 201
                )
                body = {"invoices": invoices(range(45), customers)}
                assert client.post("/bulk/invoices", json=body).json()["created"] == 45
                assert client.post("/bulk/invoices", json=body).json()["unchanged"] == 45  # a replay
                for number in range(45, 50):
                    one = invoices(range(number, number + 1), ["17850"])[0]
                    del one["customer_id"]
                    assert client.post("/customer/17850/invoice", json=one).status_code == 201

            # The relay keeps trying; nothing is published, nothing is lost, the outage is logged once.
            time.sleep(1.5)
            consumer.drain(0.2)
            assert consumer.messages == []
            assert outbox_counts(engine)["unpublished"] == 61
            assert service.log_tail(200).count("broker unavailable") == 1, service.log_tail()

            broker.open()  # the broker is up
            arrived = consumer.collect(
                lambda c: len(c.ids("invoice.created")) >= 50 and len(c.ids("customer.created")) >= 11,
                timeout=20,
            )
            assert arrived, f"{len(consumer.messages)} events arrived; log:\n{service.log_tail()}"
            consumer.drain(0.3)  # anything more would arrive now
            assert wait_until(lambda: outbox_counts(engine)["unpublished"] == 0, 5)

            assert consumer.keys("invoice.created", "invoice_no") == {f"5{n:05d}" for n in range(50)}
            assert consumer.keys("customer.created", "customer_id") == {*customers, "17850"}
            assert len(consumer.ids("invoice.created")) == 50
            assert len(consumer.messages) == 61 and consumer.duplicates() == 0
            for message in consumer.messages:
                assert message.routing_key == message.event["type"]
                assert message.properties.message_id == message.event_id
                assert message.properties.content_type == "application/json"
                assert message.properties.delivery_mode == 2
            first = next(m.event["data"] for m in consumer.messages if m.event["type"] == "invoice.created")
            assert first["invoice_no"] == "500000"
            assert first["amount"] == "79.050"  # 1 x 2.55 + 6 x 12.75
            assert first["line_count"] == 2

            # The relay thread stops with the service: a graceful shutdown, not a kill after the timeout.
            service.stop()
            assert service.process.returncode in (0, -signal.SIGTERM), service.log_tail()
            assert "Application shutdown complete" in service.log_tail(), service.log_tail()
    finally:
        broker.close()


def spawn_relay(
    database_url: str, exchange: str, log: Path, url: str = broker_url()
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "RABBITMQ_URL": url,
        "RABBITMQ_EXCHANGE": exchange,
        "OUTBOX_BATCH_SIZE": "50",
        "PYTHONUNBUFFERED": "1",
        **FAST_RELAY,
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "api.events.relay"], cwd=REPO_ROOT, env=env, stdout=out, stderr=out
        )


def test_a_relay_killed_mid_stream_loses_nothing(
    database_url: str, consumer: EventConsumer, tmp_path: Path
) -> None:
    count = 1000
    customers = [str(12000 + n) for n in range(20)]
    # The service without a relay fills the outbox.
    app = create_app(make_settings(database_url, RABBITMQ_URL=None))
    with TestClient(app, headers=AUTH) as client:
        bulk_customers = {"customers": [{"customer_id": c, "country": "France"} for c in customers]}
        assert client.post("/bulk/customers", json=bulk_customers).status_code == 200
        body = {"invoices": invoices(range(count), customers)}
        assert client.post("/bulk/invoices", json=body).json()["created"] == count

    log = tmp_path / "relay.log"
    # The first relay reaches the broker through a hop that delays each confirm by 5 ms (<= 200 events/s),
    # so the kill lands mid-stream however busy the machine is; its successor connects directly.
    slow = TcpForwarder((BROKER_HOST, BROKER_PORT), latency_seconds=0.005)
    slow.open()
    with database(database_url) as engine:
        process = spawn_relay(database_url, consumer.exchange, log, broker_url(slow.port))
        try:
            assert consumer.collect(lambda c: len(c.messages) >= 300, timeout=20), log.read_text()
            process.kill()  # SIGKILL: no shutdown, a batch may be published but not marked
            process.wait(10)
            assert process.returncode == -signal.SIGKILL
            slow.close()
            left = outbox_counts(engine)["unpublished"]
            assert left > 0, "the relay finished before it was killed: nothing tested"

            process = spawn_relay(database_url, consumer.exchange, log)
            arrived = consumer.collect(
                lambda c: len(c.ids("invoice.created")) >= count and len(c.ids("customer.created")) >= 20,
                timeout=30,
            )
            assert arrived, f"{len(consumer.ids('invoice.created'))} of {count}; log:\n{log.read_text()}"
            assert wait_until(lambda: outbox_counts(engine)["unpublished"] == 0, 5)
            consumer.drain(0.3)
        finally:
            slow.close()
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(10)
        assert process.returncode == 0, log.read_text()  # SIGTERM: a clean stop

    assert consumer.keys("invoice.created", "invoice_no") == {f"5{n:05d}" for n in range(count)}
    assert len(consumer.ids("invoice.created")) == count
    assert len(consumer.ids("customer.created")) == 20
    # At least once: what the killed relay published but had not marked comes again (at most one batch).
    duplicates = consumer.duplicates()
    print(f"killed with {left} unpublished; {duplicates} duplicate deliveries")
    assert 0 <= duplicates <= 50


def test_two_relays_publish_each_event_once(
    database_url: str, consumer: EventConsumer, tmp_path: Path
) -> None:
    count = 1000
    app = create_app(make_settings(database_url, RABBITMQ_URL=None))
    with TestClient(app, headers=AUTH) as client:
        assert client.post("/bulk/invoices", json={"invoices": invoices(range(count), [])}).status_code == 200

    log = tmp_path / "relay.log"
    processes = [spawn_relay(database_url, consumer.exchange, log) for _ in range(2)]
    try:
        arrived = consumer.collect(lambda c: len(c.ids("invoice.created")) >= count, timeout=30)
        assert arrived, log.read_text()
        consumer.drain(0.5)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(10)
    # FOR UPDATE SKIP LOCKED on PostgreSQL, the write lock on SQLite: disjoint batches, no event twice.
    assert len(consumer.messages) == count and consumer.duplicates() == 0
    assert [process.returncode for process in processes] == [0, 0], log.read_text()
    # Each relay says how many it published: together, each event once.
    published = [
        int(n) for n in re.findall(r"outbox relay stopped after publishing (\d+) events", log.read_text())
    ]
    print(f"the two relays published {published}")
    assert len(published) == 2 and sum(published) == count


def test_a_broker_lost_mid_stream_loses_nothing(database_url: str, consumer: EventConsumer) -> None:
    count = 1000
    # Cut once the relay sent ~150 kB (about 300 of the ~470 kB it has to send): mid-stream, by design.
    broker = TcpForwarder((BROKER_HOST, BROKER_PORT), cut_after_bytes=150_000)
    settings = make_settings(
        database_url,
        RABBITMQ_URL=broker_url(broker.port),
        RABBITMQ_EXCHANGE=consumer.exchange,
        RELAY_IN_SERVICE=False,  # this test runs the relay itself, in a thread
        OUTBOX_BATCH_SIZE=100,
        RELAY_BACKOFF_MAX_SECONDS=0.3,
        OUTBOX_POLL_SECONDS=0.1,
    )
    app = create_app(settings)
    with TestClient(app, headers=AUTH) as client:
        assert app.state.relay is None
        assert client.post("/bulk/invoices", json={"invoices": invoices(range(count), [])}).status_code == 200
        thread = relay.Relay(settings, app.state.sessions)
        broker.open()
        thread.start()
        try:
            assert broker.cut.wait(20), "the relay published nothing"  # the broker went away mid-batch
            time.sleep(0.5)  # the relay retries against a closed port meanwhile
            with database(database_url) as engine:
                assert outbox_counts(engine)["unpublished"] > 0
            broker.open()  # and comes back
            assert consumer.collect(lambda c: len(c.ids("invoice.created")) >= count, timeout=30)
            with database(database_url) as engine:
                assert wait_until(lambda: outbox_counts(engine)["unpublished"] == 0, 5)
        finally:
            thread.stop()
            broker.close()
    assert consumer.keys("invoice.created", "invoice_no") == {f"5{n:05d}" for n in range(count)}
    assert broker.connections >= 2  # it reconnected
    print(f"{consumer.duplicates()} duplicate deliveries after the broker was lost mid-stream")
    assert consumer.duplicates() <= 100  # at most the batch in flight
