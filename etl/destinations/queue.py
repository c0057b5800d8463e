"""The message queue: one message per day written, to a RabbitMQ exchange, after the day is published.

The job calls it last, once the day is in the lake (and in the warehouse when there is one), so a consumer
never hears of a day it cannot read. Each message is persistent JSON on the durable topic exchange
`RETAIL_NOTIFY_EXCHANGE` (default `retail.lake`), routing key `day.published` (`day.replaced` for a
correction), published with publisher confirms: `publish_day` returns only once the broker has taken it.

    {"type": "day.published", "day": "2010-12-01", "run_id": "...", "lake": "/data/lake",
     "warehouse": "duckdb:///warehouse.duckdb" | null,
     "tables": {"invoice_lines": {"rows": 3108, "file": "invoice_lines/invoice_day=2010-12-01/part-0.parquet",
                                  "sha256": "<sha256 of that file's bytes>"}, ...},   # no file: null, null
     "totals": {"lines": 3108, "quantity": 26814, "amount": "58635.560", "invoices": 127,
                "invoice_amount": "58635.560", "customers": 98}}

`message_id` is a digest of the type, the day and the files' hashes: a rerun that changes nothing sends the
same id again, so a consumer that deduplicates by id sees each version of a day once (delivery is at least
once: a lost connection is retried and the message sent again).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
from typing import Any

from etl.destinations.base import (
    DayReceipt,
    DayTables,
    DayTotals,
    check_day,
    connection_retrying,
    one_line,
    redact,
)
from etl.errors import DestinationError, DestinationUrlError, ReconciliationError

DEFAULT_EXCHANGE = "retail.lake"
PUBLISHED = "day.published"
REPLACED = "day.replaced"
_SCHEMES = ("amqp", "amqps")


def check_notify_url(url: str) -> str:
    """`url` when it is an AMQP URL; `DestinationUrlError` otherwise."""
    value = url.strip()
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme not in _SCHEMES:
        raise DestinationUrlError(
            f"unsupported notify URL {redact(value)!r}: use amqp://user:password@host:5672/vhost (or amqps://)"
        )
    return value


def day_message(
    day: DayTables, *, kind: str, run_id: str, lake: str, warehouse: str | None
) -> tuple[str, dict[str, Any]]:
    """The message announcing `day` (see the module's docstring) and its message id."""
    tables = {
        table: {"rows": file.rows, "file": file.path, "sha256": file.sha256}
        for table, file in day.files.items()
    }
    identity = json.dumps([kind, day.day.isoformat(), tables], sort_keys=True).encode()
    message = {
        "type": kind,
        "day": day.day.isoformat(),
        "run_id": run_id,
        "lake": redact(lake),
        "warehouse": warehouse,
        "tables": tables,
        "totals": day.totals().as_dict(),
    }
    return hashlib.sha256(identity).hexdigest()[:32], message


class QueueDestination:
    """A confirmed channel to the broker at `url`, publishing to `exchange`; opening it connects (with
    retries), so an unreachable broker fails before anything is sent."""

    name = "queue"

    def __init__(
        self,
        url: str,
        *,
        lake: str,
        run_id: str,
        exchange: str = DEFAULT_EXCHANGE,
        warehouse: str | None = None,
    ) -> None:
        import pika
        import pika.exceptions

        self.url = check_notify_url(url)
        if not exchange:
            raise DestinationUrlError("the notify exchange name is empty")
        self.display = redact(self.url)
        self.exchange = exchange
        self.lake = lake
        self.run_id = run_id
        self.warehouse = warehouse
        self._pika = pika
        self._errors: tuple[type[BaseException], ...] = (pika.exceptions.AMQPError, OSError)
        #: The totals of each day's confirmed message: what `verify_day` checks.
        self.confirmed: dict[dt.date, DayTotals] = {}
        # pika logs each failed connection attempt as an error; our retries log one line each.
        logging.getLogger("pika").setLevel(logging.CRITICAL)
        self._connection: Any = None
        self._channel: Any = None
        try:
            connection_retrying(self._errors, f"notify {self.display}")(self._connect)
        except self._errors as exc:
            raise DestinationError(f"cannot reach the broker at {self.display}: {_describe(exc)}") from exc

    def _connect(self) -> None:
        self._disconnect()
        parameters = self._pika.URLParameters(self.url)
        parameters.socket_timeout = 5
        parameters.connection_attempts = 1
        parameters.blocked_connection_timeout = 60
        connection = self._pika.BlockingConnection(parameters)
        try:
            channel = connection.channel()
            # The same declaration as a consumer's: whichever comes first, both agree.
            channel.exchange_declare(exchange=self.exchange, exchange_type="topic", durable=True)
            channel.confirm_delivery()
        except BaseException:
            connection.close()
            raise
        self._connection, self._channel = connection, channel

    def publish_day(self, day: DayTables) -> DayReceipt:
        """Announce `day` as published; returns once the broker confirmed the message."""
        return self._send(day, PUBLISHED)

    def replace_day(self, day: DayTables) -> DayReceipt:
        """Announce `day` as replaced (a correction); returns once the broker confirmed the message."""
        return self._send(day, REPLACED)

    def verify_day(self, day: dt.date, expected: DayTotals) -> None:
        """Raise `ReconciliationError` unless the broker confirmed a message for `day` whose totals are
        `expected`."""
        announced = self.confirmed.get(day)
        if announced is None:
            raise ReconciliationError(f"queue {self.display}: no confirmed message for {day}")
        check_day(f"the message to {self.exchange}", day, expected, announced)

    def close(self) -> None:
        """Close the connection."""
        self._disconnect()

    def _send(self, day: DayTables, kind: str) -> DayReceipt:
        message_id, message = day_message(
            day, kind=kind, run_id=self.run_id, lake=self.lake, warehouse=self.warehouse
        )
        body = json.dumps(message, sort_keys=True).encode()
        properties = self._pika.BasicProperties(
            content_type="application/json",
            delivery_mode=self._pika.DeliveryMode.Persistent,
            message_id=message_id,
            type=kind,
            app_id="retail-etl",
        )

        def attempt() -> None:
            if self._channel is None or not self._channel.is_open:
                self._connect()
            try:
                # With confirms on, basic_publish returns once the broker acked; a nack raises.
                self._channel.basic_publish(
                    exchange=self.exchange, routing_key=kind, body=body, properties=properties
                )
            except BaseException:
                self._disconnect()  # the next attempt starts on a fresh connection
                raise

        try:
            connection_retrying(self._errors, f"notify {self.display}: {day.day}")(attempt)
        except self._errors as exc:
            raise DestinationError(
                f"notify {self.display}: the message for {day.day} was not confirmed: {_describe(exc)}"
            ) from exc
        self.confirmed[day.day] = day.totals()
        return DayReceipt(
            self.name,
            day.day,
            day.rows,
            kind == REPLACED,
            detail={"message_id": message_id, "routing_key": kind},
        )

    def _disconnect(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(*self._errors):  # closing a dead connection
                connection.close()


def _describe(exc: BaseException) -> str:
    # pika's connection errors often have an empty str(); the type then says what happened.
    text = one_line(exc)
    return text if text != type(exc).__name__ else f"{type(exc).__name__} (refused, unreachable or bad login)"
