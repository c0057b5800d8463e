"""The real RabbitMQ broker for the event tests, and a consumer of a test's own exchange."""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
from sqlalchemy import Engine, text

# The consumer's pika narrates every connection at INFO: keep failures readable.
logging.getLogger("pika").setLevel(logging.WARNING)

BROKER_HOST = "127.0.0.1"
BROKER_PORT = 5672
BROKER_URL = f"amqp://guest:guest@{BROKER_HOST}:{BROKER_PORT}/"


def broker_url(port: int = BROKER_PORT) -> str:
    return f"amqp://guest:guest@{BROKER_HOST}:{port}/"


def broker_problem() -> str | None:
    """None when the broker accepts guest/guest on 127.0.0.1:5672, else why not."""
    parameters = pika.URLParameters(BROKER_URL)
    parameters.socket_timeout = 3
    parameters.connection_attempts = 1
    try:
        pika.BlockingConnection(parameters).close()
    except (pika.exceptions.AMQPError, OSError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def unique_exchange() -> str:
    return f"retail_test_{secrets.token_hex(6)}"


@dataclass
class Message:
    routing_key: str
    properties: Any
    event: dict[str, Any]

    @property
    def event_id(self) -> str:
        return str(self.event["event_id"])


@dataclass
class EventConsumer:
    """An exclusive queue bound with `#` to the (durable topic) `exchange`; collects what arrives."""

    exchange: str
    messages: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        self.channel = self.connection.channel()
        # The same declaration as the relay's, so whichever comes first, both agree.
        self.channel.exchange_declare(exchange=self.exchange, exchange_type="topic", durable=True)
        self.queue = self.channel.queue_declare(queue="", exclusive=True).method.queue
        self.channel.queue_bind(queue=self.queue, exchange=self.exchange, routing_key="#")

    def collect(self, until: Callable[[EventConsumer], bool], timeout: float) -> bool:
        """Receive until `until(self)` holds (True) or `timeout` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        if until(self):
            return True
        for method, properties, body in self.channel.consume(
            self.queue, auto_ack=True, inactivity_timeout=0.05
        ):
            if method is not None:
                self.messages.append(Message(method.routing_key, properties, json.loads(body)))
            if until(self) or time.monotonic() > deadline:
                break
        self.channel.cancel()
        return until(self)

    def drain(self, seconds: float) -> None:
        """Receive whatever arrives during `seconds`."""
        self.collect(lambda _consumer: False, seconds)

    def ids(self, event_type: str) -> set[str]:
        return {m.event_id for m in self.messages if m.event["type"] == event_type}

    def keys(self, event_type: str, key: str) -> set[str]:
        return {m.event["data"][key] for m in self.messages if m.event["type"] == event_type}

    def duplicates(self) -> int:
        return sum(count - 1 for count in Counter(m.event_id for m in self.messages).values())

    def close(self) -> None:
        try:
            self.channel.exchange_delete(self.exchange)
        finally:
            self.connection.close()


def outbox_counts(engine: Engine) -> dict[str, int]:
    """Rows of `outbox_events` by state: `total`, `unpublished`, and per event type."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT event_type, count(*), sum(CASE WHEN published_at IS NULL THEN 1 ELSE 0 END)"
                " FROM outbox_events GROUP BY event_type"
            )
        ).all()
    counts = {event_type: int(total) for event_type, total, _unpublished in rows}
    counts["total"] = sum(int(total) for _type, total, _unpublished in rows)
    counts["unpublished"] = sum(int(unpublished) for _type, _total, unpublished in rows)
    return counts


def running_in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"
