"""The machine's real RabbitMQ stopped (`rabbitmqctl stop_app`) while invoices are created, then started:
every event arrives, none is lost.

The other relay tests model an unreachable broker with a closed port; this one stops the broker itself,
so the relay meets what it meets in production: connections refused, then a broker that comes back with
its durable exchange and queue. The broker is started again whatever happens (`finally`), and `./dev`
starts it with `rabbitmqctl start_app` if a killed run ever left it stopped.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pika
import pytest

from tests.events.support import BROKER_URL, broker_url, outbox_counts, unique_exchange
from tests.events.test_relay import FAST_RELAY, database, invoices, wait_until
from tests.support.service import live_service

INVOICES = 20

# Every other test that uses the broker (and the stack's Celery workers) would fail while it is stopped.
pytestmark = pytest.mark.exclusive


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def _broker_answers() -> bool:
    try:
        pika.BlockingConnection(pika.URLParameters(BROKER_URL)).close()
    except (pika.exceptions.AMQPError, OSError):
        return False
    return True


@pytest.fixture
def durable_queue(rabbitmq: str) -> Iterator[tuple[str, str]]:
    """A durable exchange and a durable queue bound to it with `#`: they outlive the broker's restart."""
    exchange, queue = unique_exchange(), f"{unique_exchange()}_q"
    with pika.BlockingConnection(pika.URLParameters(BROKER_URL)) as connection:
        channel = connection.channel()
        channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, exchange, routing_key="#")
    yield exchange, queue
    if _broker_answers():
        with pika.BlockingConnection(pika.URLParameters(BROKER_URL)) as connection:
            channel = connection.channel()
            channel.queue_delete(queue)
            channel.exchange_delete(exchange)


def _consume(queue: str, wanted: int, timeout: float) -> list[dict[str, object]]:
    """Events from `queue` until `wanted` distinct invoice events came, or `timeout` passed."""
    events: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    with pika.BlockingConnection(pika.URLParameters(BROKER_URL)) as connection:
        channel = connection.channel()
        while time.monotonic() < deadline:
            method, _properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                if len({e["event_id"] for e in events if e["type"] == "invoice.created"}) >= wanted:
                    break
                time.sleep(0.1)
                continue
            events.append(json.loads(body))
    return events


def test_invoices_created_while_the_real_broker_is_stopped_all_arrive_once_it_is_started(
    postgres_url: str, durable_queue: tuple[str, str]
) -> None:
    database_url = postgres_url  # once, on the production database: each run restarts the broker
    exchange, queue = durable_queue
    env = {"RABBITMQ_URL": broker_url(), "RABBITMQ_EXCHANGE": exchange, **FAST_RELAY}
    customers = ["13047", "17850"]
    with live_service(database_url, extra_env=env) as service, database(database_url) as engine:
        _rabbitmqctl("stop_app")
        try:
            assert not _broker_answers()
            with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
                body = {"customers": [{"customer_id": c, "country": "United Kingdom"} for c in customers]}
                assert client.post("/bulk/customers", json=body).json()["created"] == 2
                body = {"invoices": invoices(range(INVOICES), customers)}
                assert client.post("/bulk/invoices", json=body).json()["created"] == INVOICES
            time.sleep(1.0)  # the relay tries, and must keep every event
            assert outbox_counts(engine)["unpublished"] == INVOICES + 2
        finally:
            _rabbitmqctl("start_app")
            _rabbitmqctl("await_startup")
        assert wait_until(lambda: outbox_counts(engine)["unpublished"] == 0, 30), service.log_tail()

    events = _consume(queue, INVOICES, timeout=20)
    kinds = Counter(e["type"] for e in {e["event_id"]: e for e in events}.values())
    assert kinds == {"invoice.created": INVOICES, "customer.created": 2}
    numbers = {e["data"]["invoice_no"] for e in events if e["type"] == "invoice.created"}  # type: ignore[index]
    assert numbers == {f"5{n:05d}" for n in range(INVOICES)}
