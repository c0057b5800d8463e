"""Engine, sessions and migrate-on-start for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

logger = logging.getLogger(__name__)

#: The packaged Alembic configuration; its `script_location` is relative to this file.
ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"

#: Execution option asking for a write transaction: on SQLite it begins with `BEGIN IMMEDIATE`.
WRITE_OPTION = "retail_write"

#: Key of the PostgreSQL advisory lock that serialises migrations of processes starting together.
MIGRATION_LOCK_KEY = 0x7265_7461_696C  # "retail"

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(database_url: str) -> Engine:
    """Create the engine for `database_url`, tuned for the service's dialects."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        _configure_sqlite(engine)
        return engine
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        # A database that went away must fail fast (health answers 503), not hang a worker.
        connect_args["connect_timeout"] = 5
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args)


def _configure_sqlite(engine: Engine) -> None:
    """WAL, busy timeout and foreign keys on every connection; SQLAlchemy, not sqlite3, emits BEGIN."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # sqlite3's legacy mode skips BEGIN before SELECT, so a read-then-write is not one transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _use_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A writer takes the write lock up front: upgrading a read snapshot later can fail at once
        # (SQLITE_BUSY_SNAPSHOT) instead of waiting for the busy timeout.
        if connection.get_execution_options().get(WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")


def _use_wal(cursor: Any) -> None:
    """Switch the database file to WAL (a persistent setting) unless it already is.

    Switching needs an exclusive lock and SQLite answers "database is locked" at once, without the busy
    timeout, when processes open a new file together: retry for as long as the busy timeout.
    """
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def reads_on_the_event_loop(engine: Engine) -> bool:
    """Whether a point read (one row by its key, or an invoice's lines) runs on the event loop itself.

    On SQLite it does: the file is in-process, a WAL reader never waits for a writer's lock, and such a
    read costs tens of µs from the page cache, less than handing it to the thread pool and back (the
    hop, ~100-200 µs under load, was the largest single cost of an uncached GET: docs/benchmarks.md).
    PostgreSQL's reads are network round trips: they stay in the thread pool.
    """
    return engine.dialect.name == "sqlite"


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to `engine`; objects stay readable after commit (handlers return them)."""
    return sessionmaker(engine, expire_on_commit=False)


def begin_write(session: Session) -> None:
    """Start `session`'s transaction as a write transaction; call before its first statement."""
    session.connection(execution_options={WRITE_OPTION: True})


def alembic_config(connection: Connection | None = None) -> Config:
    """The packaged Alembic configuration, optionally bound to an open connection."""
    config = Config(str(ALEMBIC_INI))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def lock_for_migrations(connection: Connection) -> None:
    """Serialise migrations across processes for the rest of the current transaction.

    PostgreSQL: a transaction-scoped advisory lock, so a second process waits, then finds the schema at
    head. SQLite needs nothing here: the migration transaction began with `BEGIN IMMEDIATE`.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


def migrate(engine: Engine, *, wait_seconds: float = 0.0) -> None:
    """Apply pending migrations, waiting up to `wait_seconds` for the database to answer."""
    for attempt in Retrying(
        stop=stop_after_delay(wait_seconds),
        wait=wait_fixed(1),
        retry=retry_if_exception_type(OperationalError),
        reraise=True,
    ):
        with attempt, engine.connect() as connection:
            connection.execution_options(**{WRITE_OPTION: True})
            command.upgrade(alembic_config(connection), "head")
            connection.commit()
