"""The outbox relay: publishes `outbox_events` to RabbitMQ in order, at least once.

Each batch is one database transaction: claim the oldest unpublished events (`FOR UPDATE SKIP LOCKED` on
PostgreSQL, so several relays take disjoint batches; the write lock on SQLite), publish each with
publisher confirms (persistent, `message_id` = event id), and set `published_at` of those the broker
confirmed. A crash between the confirm and the commit publishes an event again on the next run: consumers
deduplicate by event id. An unreachable broker or database is logged once and retried with a capped,
doubling wait; nothing is dropped.

Runs inside the service (a thread started by the FastAPI lifespan, see `api.main`) when `RABBITMQ_URL` is
set and `RELAY_IN_SERVICE` is true, or standalone: `python -m api.events.relay`.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

import pika
import pika.exceptions
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from api.core.config import Settings
from api.core.db import begin_write, make_engine, make_session_factory
from api.events import feed, outbox

logger = logging.getLogger(__name__)

#: Errors that mean "the broker cannot take messages now": reconnect after a wait.
BROKER_ERRORS: tuple[type[BaseException], ...] = (pika.exceptions.AMQPError, OSError)
#: How often retention runs, at most.
RETENTION_EVERY = dt.timedelta(minutes=10)
#: First wait after a failure; it doubles up to RELAY_BACKOFF_MAX_SECONDS.
BACKOFF_START_SECONDS = 0.25


class Publisher:
    """One confirmed channel to the broker, declaring the durable topic exchange."""

    def __init__(self, url: str, exchange: str) -> None:
        parameters = pika.URLParameters(url)
        # Fail fast on a dead address; a broker that stops answering is noticed by heartbeats.
        parameters.socket_timeout = 5
        parameters.connection_attempts = 1
        parameters.blocked_connection_timeout = 60
        self.exchange = exchange
        self.connection = pika.BlockingConnection(parameters)
        try:
            self.channel = self.connection.channel()
            self.channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
            self.channel.confirm_delivery()
        except BaseException:
            self.close()
            raise

    def publish(self, event: outbox.PendingEvent) -> None:
        """Publish one event; returns once the broker confirmed it, raises if it did not."""
        self.channel.basic_publish(
            exchange=self.exchange,
            routing_key=event.event_type,
            body=event.payload.encode(),
            properties=pika.BasicProperties(
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=event.event_id,
                type=event.event_type,
                app_id="retail-api",
            ),
        )

    def idle(self, seconds: float) -> None:
        """Wait, serving heartbeats meanwhile."""
        self.connection.process_data_events(time_limit=seconds)

    def close(self) -> None:
        try:
            if self.connection.is_open:
                self.connection.close()
        except BROKER_ERRORS:  # closing a dead connection
            pass


class Relay:
    """Publishes the outbox until `stop()`; `run()` blocks (use `start()` for a background thread)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        if not settings.RABBITMQ_URL:
            raise ValueError("the relay needs RABBITMQ_URL")
        self.url = settings.RABBITMQ_URL
        self.exchange = settings.RABBITMQ_EXCHANGE
        self.batch_size = settings.OUTBOX_BATCH_SIZE
        self.poll_seconds = settings.OUTBOX_POLL_SECONDS
        self.backoff_max_seconds = settings.RELAY_BACKOFF_MAX_SECONDS
        self.retention = (
            dt.timedelta(days=settings.OUTBOX_RETENTION_DAYS) if settings.OUTBOX_RETENTION_DAYS else None
        )
        self.sessions = sessions
        self.published = 0
        # pika logs every failed connection attempt as an error; the relay logs an outage once itself.
        logging.getLogger("pika").setLevel(logging.CRITICAL)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._publisher: Publisher | None = None
        self._next_retention = outbox.utcnow()

    # --- lifecycle ---

    def start(self) -> None:
        """Run in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="outbox-relay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to end after the current batch and wait for the thread, if any."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("outbox relay did not stop within %.0f s", timeout)

    def run(self) -> None:
        """Publish until stopped, waiting (with a capped, doubling backoff) while broker or database fail."""
        failing: str | None = None
        backoff = BACKOFF_START_SECONDS
        logger.info("outbox relay publishing to exchange %r", self.exchange)
        try:
            while not self._stop.is_set():
                try:
                    published = self.publish_batch()
                    if failing is not None:
                        logger.info("outbox relay: %s back, publishing again", failing)
                        failing = None
                    backoff = BACKOFF_START_SECONDS
                    self._purge_old()
                    if published < self.batch_size:
                        self._idle()
                    continue
                except BROKER_ERRORS as error:
                    self._drop_publisher()
                    failing = self._failed(failing, "broker", error, backoff)
                except SQLAlchemyError as error:
                    failing = self._failed(failing, "database", error, backoff)
                except Exception:
                    # A bug must not end the relay silently: the events stay in the outbox meanwhile.
                    logger.exception("outbox relay: unexpected error, retrying")
                    self._drop_publisher()
                    failing = "relay"
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_seconds)
        finally:
            self._drop_publisher()
            logger.info("outbox relay stopped after publishing %d events", self.published)

    def _failed(self, failing: str | None, what: str, error: BaseException, backoff: float) -> str:
        # Logged once per outage; the retries after it are debug lines.
        if failing != what:
            logger.warning(
                "outbox relay: %s unavailable (%r); events wait in the outbox, retrying every <= %g s",
                what,
                error,
                self.backoff_max_seconds,
            )
        else:
            logger.debug("outbox relay: %s still unavailable (%s), next try in %.2f s", what, error, backoff)
        return what

    def _idle(self) -> None:
        if self._publisher is not None:
            self._publisher.idle(self.poll_seconds)  # serves heartbeats while waiting
        else:
            self._stop.wait(self.poll_seconds)

    def _drop_publisher(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None

    # --- the work ---

    def publish_batch(self) -> int:
        """Claim, publish and mark one batch; returns how many events it published.

        Events confirmed before a broker failure are still marked (and committed) before it is raised.
        """
        failure: BaseException | None = None
        done: list[int] = []
        with self.sessions() as session:
            # A cheap read first: an idle relay must not take SQLite's write lock twice a second.
            if not outbox.has_unpublished(session):
                return 0
        with self.sessions() as session, session.begin():
            begin_write(session)
            pending = outbox.claim_unpublished(session, self.batch_size)
            if not pending:
                return 0
            try:
                publisher = self._connected()
                for event in pending:
                    publisher.publish(event)
                    done.append(event.seq)
            except BROKER_ERRORS as error:
                failure = error
            outbox.mark_published(session, done)
        self.published += len(done)
        if failure is not None:
            raise failure
        return len(done)

    def _connected(self) -> Publisher:
        if self._publisher is None:
            self._publisher = Publisher(self.url, self.exchange)
        return self._publisher

    def _purge_old(self) -> None:
        if self.retention is None or outbox.utcnow() < self._next_retention:
            return
        self._next_retention = outbox.utcnow() + RETENTION_EVERY
        cutoff = outbox.utcnow() - self.retention
        with self.sessions() as session, session.begin():
            begin_write(session)
            deleted = outbox.delete_published_before(session, cutoff)
        if deleted:
            logger.info("outbox relay: deleted %d events published over %s ago", deleted, self.retention)
        with self.sessions() as session:
            engine = session.get_bind()
        assert isinstance(engine, Engine)
        # The change feed keeps its changes as long as the outbox keeps its events; a change without a
        # position yet is never deleted.
        purged = feed.purge_stamped_before(engine, cutoff)
        if purged:
            logger.info(
                "outbox relay: deleted %d changes of the feed stamped over %s ago", purged, self.retention
            )


def start_in_service(settings: Settings, sessions: sessionmaker[Session]) -> Relay | None:
    """Start the relay thread of a service; None when RABBITMQ_URL is unset or RELAY_IN_SERVICE is off."""
    if not settings.RABBITMQ_URL:
        logger.info("RABBITMQ_URL is not set: events wait in the outbox, no relay runs")
        return None
    if not settings.RELAY_IN_SERVICE:
        return None
    service_relay = Relay(settings, sessions)
    service_relay.start()
    return service_relay


def main() -> int:
    """`python -m api.events.relay`: publish the outbox of DATABASE_URL to RABBITMQ_URL until SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    if not settings.RABBITMQ_URL:
        print("error: set RABBITMQ_URL (e.g. amqp://guest:guest@127.0.0.1:5672/)", file=sys.stderr)
        return 2
    engine = make_engine(settings.DATABASE_URL)
    relay = Relay(settings, make_session_factory(engine))

    def _stop(signum: int, _frame: FrameType | None) -> Any:
        logger.info("outbox relay: %s, stopping", signal.Signals(signum).name)
        relay.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        relay.run()
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
