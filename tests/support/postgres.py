"""Throw-away PostgreSQL databases on the project's server (127.0.0.1:5432, user postgres, trust auth)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

HOST = "127.0.0.1"
PORT = 5432
USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server of the project cannot be reached."""


def _admin_connection() -> psycopg.Connection:
    try:
        return psycopg.connect(
            host=HOST, port=PORT, user=USER, dbname="postgres", autocommit=True, connect_timeout=5
        )
    except psycopg.OperationalError as error:
        raise PostgresUnavailable(
            f"PostgreSQL is not reachable at {HOST}:{PORT} as {USER} ({error}). Start it with: "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        ) from error


@contextmanager
def temporary_database(prefix: str = "retail_test") -> Iterator[str]:
    """Create an empty database `<prefix>_<random>`, yield its SQLAlchemy URL, drop it afterwards.

    Raises PostgresUnavailable (a failure, never a skip) when the server cannot be reached.
    """
    name = f"{prefix}_{secrets.token_hex(6)}"
    with _admin_connection() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql+psycopg://{USER}@{HOST}:{PORT}/{name}"
    finally:
        with _admin_connection() as admin:
            # FORCE: a service process killed by a test may still hold connections.
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
