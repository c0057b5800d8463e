"""The warehouse: the lake's days as SQL tables, in an embedded DuckDB file or in PostgreSQL.

    invoice_lines  one row per line    key (invoice_day, invoice_no, line_no)
    invoices       one row per invoice key (invoice_day, invoice_no)
    customers      one row per customer (the country the service stores), upserted

Each day is replaced in one transaction: delete the day's lines and invoices, insert the day's, upsert its
customers, commit. A rerun leaves the same rows; a failure leaves the day as it was. Money is DECIMAL
(NUMERIC in PostgreSQL), never a float. Rows travel as Arrow: DuckDB scans the Arrow tables directly;
PostgreSQL receives them with COPY (CSV written by pyarrow), not row by row.

URLs: `postgresql://user@host:5432/db` (also `postgres://`, `postgresql+psycopg://`) is PostgreSQL,
through SQLAlchemy and psycopg 3; `duckdb:///relative/path.duckdb`, `duckdb:////absolute/path.duckdb`
(SQLAlchemy's convention, as for SQLite) or a plain file path is a DuckDB file, created when missing.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import pyarrow as pa
import pyarrow.csv as pa_csv

from etl.destinations.base import (
    DayReceipt,
    DayTables,
    DayTotals,
    check_day,
    connection_retrying,
    one_line,
    redact,
)
from etl.errors import DestinationError, DestinationUrlError

T = TypeVar("T")

#: The warehouse's columns per table, in insert order; the same names as the lake's.
COLUMNS: dict[str, tuple[str, ...]] = {
    "invoice_lines": (
        "invoice_day",
        "invoice_no",
        "line_no",
        "stock_code",
        "description",
        "quantity",
        "unit_price",
        "invoice_date",
        "customer_id",
        "country",
    ),
    "invoices": (
        "invoice_day",
        "invoice_no",
        "invoice_date",
        "customer_id",
        "country",
        "line_count",
        "total_quantity",
        "total_amount",
    ),
    "customers": ("customer_id", "country"),
}

#: The same DDL for both engines: types both spell alike, money as DECIMAL with the lake's scale.
DDL = (
    """CREATE TABLE IF NOT EXISTS invoice_lines (
        invoice_day DATE NOT NULL,
        invoice_no VARCHAR NOT NULL,
        line_no INTEGER NOT NULL,
        stock_code VARCHAR NOT NULL,
        description VARCHAR,
        quantity BIGINT NOT NULL,
        unit_price DECIMAL(12, 3) NOT NULL,
        invoice_date TIMESTAMP NOT NULL,
        customer_id VARCHAR,
        country VARCHAR NOT NULL,
        PRIMARY KEY (invoice_day, invoice_no, line_no)
    )""",
    """CREATE TABLE IF NOT EXISTS invoices (
        invoice_day DATE NOT NULL,
        invoice_no VARCHAR NOT NULL,
        invoice_date TIMESTAMP NOT NULL,
        customer_id VARCHAR,
        country VARCHAR NOT NULL,
        line_count INTEGER NOT NULL,
        total_quantity BIGINT NOT NULL,
        total_amount DECIMAL(18, 3) NOT NULL,
        PRIMARY KEY (invoice_day, invoice_no)
    )""",
    """CREATE TABLE IF NOT EXISTS customers (
        customer_id VARCHAR NOT NULL PRIMARY KEY,
        country VARCHAR NOT NULL
    )""",
)

#: A day's totals as the warehouse holds them (parameter `:day`), in `DayTotals` field order.
TOTALS_SQL = """
SELECT
    (SELECT count(*) FROM invoice_lines WHERE invoice_day = :day),
    (SELECT coalesce(sum(quantity), 0) FROM invoice_lines WHERE invoice_day = :day),
    (SELECT coalesce(sum(quantity * unit_price), 0) FROM invoice_lines WHERE invoice_day = :day),
    (SELECT count(*) FROM invoices WHERE invoice_day = :day),
    (SELECT coalesce(sum(total_amount), 0) FROM invoices WHERE invoice_day = :day),
    (SELECT count(DISTINCT l.customer_id)
       FROM invoice_lines l JOIN customers c ON c.customer_id = l.customer_id
      WHERE l.invoice_day = :day)
"""

UPSERT_CUSTOMERS = (
    "INSERT INTO customers (customer_id, country) SELECT customer_id, country FROM day_customers "
    "ON CONFLICT (customer_id) DO UPDATE SET country = excluded.country"
)

_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class WarehouseTarget:
    """A parsed `--warehouse` value: which engine, where (a file path or a SQLAlchemy URL), and how
    to show it (password hidden)."""

    engine: Literal["duckdb", "postgresql"]
    location: str
    display: str


def parse_warehouse_url(url: str) -> WarehouseTarget:
    """Which warehouse `url` names; `DestinationUrlError` for an empty value or an unknown scheme."""
    value = url.strip()
    if not value:
        raise DestinationUrlError("--warehouse is empty: give a DuckDB file path or a postgresql:// URL")
    match = _SCHEME.match(value)
    if match is None:
        return WarehouseTarget("duckdb", value, f"duckdb:///{value}")
    scheme = match.group(1).lower()
    if scheme == "duckdb":
        path = value[len("duckdb:///") :] if value.lower().startswith("duckdb:///") else ""
        if not path:
            raise DestinationUrlError(
                f"warehouse URL {value!r} names no file: use duckdb:///path/warehouse.duckdb"
            )
        return WarehouseTarget("duckdb", path, value)
    if scheme in _POSTGRES_SCHEMES:
        location = "postgresql+psycopg://" + value[match.end() :]
        return WarehouseTarget("postgresql", location, redact(value))
    raise DestinationUrlError(
        f"unsupported warehouse URL scheme {scheme!r} in {redact(value)}: use postgresql://..., "
        "duckdb:///path/warehouse.duckdb or a file path"
    )


def open_warehouse(url: str) -> Warehouse:
    """Connect to the warehouse `url` names (retrying connection errors) and create its tables when
    missing. `DestinationError` when it stays unreachable or refuses."""
    target = parse_warehouse_url(url)
    if target.engine == "duckdb":
        return DuckDBWarehouse(target)
    return PostgresWarehouse(target)


class Warehouse:
    """What both engines share: the day's replace as one transaction, and its verification."""

    name = "warehouse"

    def __init__(self, target: WarehouseTarget) -> None:
        self.target = target

    @property
    def display(self) -> str:
        """The warehouse's URL without its password."""
        return self.target.display

    def publish_day(self, day: DayTables) -> DayReceipt:
        """Replace the day's lines and invoices and upsert its customers, in one transaction."""
        rows = {table: day.tables[table].num_rows for table in COLUMNS}
        self._guard(f"loading {day.day}", lambda: self._replace(day))
        return DayReceipt(self.name, day.day, rows)

    def replace_day(self, day: DayTables) -> DayReceipt:
        """A correction replaces the day as a rerun does."""
        receipt = self.publish_day(day)
        return DayReceipt(receipt.destination, receipt.day, receipt.rows, True, receipt.detail)

    def day_totals(self, day: dt.date) -> DayTotals:
        """What the warehouse holds for `day`, queried."""
        row = self._guard(f"reading {day}", lambda: self._query_one(TOTALS_SQL, day))
        lines, quantity, amount, invoices, invoice_amount, customers = row
        return DayTotals(int(lines), int(quantity), amount, int(invoices), invoice_amount, int(customers))

    def verify_day(self, day: dt.date, expected: DayTotals) -> None:
        """Raise `ReconciliationError` unless the warehouse's day has `expected` counts and money."""
        check_day(f"warehouse {self.display}", day, expected, self.day_totals(day))

    def close(self) -> None:
        """Release the connection."""

    # --- per engine ---

    def _replace(self, day: DayTables) -> None:
        raise NotImplementedError

    def _query_one(self, sql: str, day: dt.date) -> Sequence[Any]:
        raise NotImplementedError

    def _guard(self, doing: str, action: Callable[[], T]) -> T:
        raise NotImplementedError


def _columns(day: DayTables, table: str) -> pa.Table:
    return day.tables[table].select(list(COLUMNS[table]))


class DuckDBWarehouse(Warehouse):
    """An embedded DuckDB file: one process may hold it at a time (DuckDB's own file lock), so a second
    writer waits through the connection retries and then fails loudly."""

    def __init__(self, target: WarehouseTarget) -> None:
        import duckdb  # only a run with a DuckDB warehouse pays for the import

        super().__init__(target)
        self._errors: tuple[type[BaseException], ...] = (duckdb.Error,)
        path = Path(target.location)

        def connect() -> duckdb.DuckDBPyConnection:
            path.parent.mkdir(parents=True, exist_ok=True)
            return duckdb.connect(str(path))

        try:
            # IOException: the file is locked by another process, or its folder is not writable.
            self.connection = connection_retrying((duckdb.IOException,), f"warehouse {target.display}")(
                connect
            )
            for statement in DDL:
                self.connection.execute(statement)
        except (duckdb.Error, OSError) as exc:
            raise DestinationError(f"cannot open the warehouse {target.display}: {one_line(exc)}") from exc

    def _replace(self, day: DayTables) -> None:
        con = self.connection
        con.execute("BEGIN TRANSACTION")
        try:
            for table in ("invoice_lines", "invoices"):
                con.execute(f"DELETE FROM {table} WHERE invoice_day = $day", {"day": day.day})
                con.register("day_rows", _columns(day, table))
                names = ", ".join(COLUMNS[table])
                con.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM day_rows")
                con.unregister("day_rows")
            con.register("day_customers", _columns(day, "customers"))
            con.execute(UPSERT_CUSTOMERS)
            con.unregister("day_customers")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _query_one(self, sql: str, day: dt.date) -> Sequence[Any]:
        row = self.connection.execute(sql.replace(":day", "$day"), {"day": day}).fetchone()
        assert row is not None  # a SELECT of scalar subqueries has one row
        return row

    def _guard(self, doing: str, action: Callable[[], T]) -> T:
        try:
            return action()
        except self._errors as exc:
            raise DestinationError(f"warehouse {self.display}: {doing} failed: {one_line(exc)}") from exc

    def close(self) -> None:
        """Close the file (releasing DuckDB's lock on it)."""
        self.connection.close()


class PostgresWarehouse(Warehouse):
    """PostgreSQL through a SQLAlchemy engine; rows go in with psycopg's COPY inside the day's
    transaction. A connection lost mid-day rolls the day back and the day is retried (it is idempotent)."""

    def __init__(self, target: WarehouseTarget) -> None:
        import psycopg
        import sqlalchemy
        from sqlalchemy.exc import OperationalError, SQLAlchemyError

        super().__init__(target)
        # The COPY runs on psycopg's own connection: its errors arrive unwrapped by SQLAlchemy.
        self._errors: tuple[type[BaseException], ...] = (SQLAlchemyError, psycopg.Error)
        self._retried: tuple[type[BaseException], ...] = (OperationalError, psycopg.OperationalError)
        self._text = sqlalchemy.text
        self.engine = sqlalchemy.create_engine(
            target.location, pool_pre_ping=True, connect_args={"connect_timeout": 5}
        )

        def create_tables() -> None:
            with self.engine.begin() as connection:
                for statement in DDL:
                    connection.execute(sqlalchemy.text(statement))

        try:
            connection_retrying(self._retried, f"warehouse {target.display}")(create_tables)
        except self._errors as exc:
            self.engine.dispose()
            raise DestinationError(
                f"cannot open the warehouse {target.display}: {one_line(getattr(exc, 'orig', None) or exc)}"
            ) from exc

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self.engine.begin() as connection:
            yield connection

    def _replace(self, day: DayTables) -> None:
        with self._transaction() as connection:
            for table in ("invoice_lines", "invoices"):
                connection.execute(
                    self._text(f"DELETE FROM {table} WHERE invoice_day = :day"), {"day": day.day}
                )
                _copy(connection, table, _columns(day, table))
            connection.execute(
                self._text(
                    "CREATE TEMPORARY TABLE day_customers (customer_id VARCHAR, country VARCHAR)"
                    " ON COMMIT DROP"
                )
            )
            _copy(connection, "day_customers", _columns(day, "customers"))
            connection.execute(self._text(UPSERT_CUSTOMERS))

    def _query_one(self, sql: str, day: dt.date) -> Sequence[Any]:
        with self.engine.connect() as connection:
            return tuple(connection.execute(self._text(sql), {"day": day}).one())

    def _guard(self, doing: str, action: Callable[[], T]) -> T:
        try:
            return connection_retrying(self._retried, f"warehouse {self.display}: {doing}")(action)
        except self._errors as exc:
            detail = one_line(getattr(exc, "orig", None) or exc)
            raise DestinationError(f"warehouse {self.display}: {doing} failed: {detail}") from exc

    def close(self) -> None:
        """Close the engine's pooled connections."""
        self.engine.dispose()


def _copy(connection: Any, table: str, rows: pa.Table) -> None:
    """COPY `rows` into `table` on the transaction's own psycopg connection, as CSV that pyarrow
    writes (nulls unquoted and empty, every value quoted, so an empty string stays one)."""
    if rows.num_rows == 0:
        return
    buffer = io.BytesIO()
    pa_csv.write_csv(rows, buffer, pa_csv.WriteOptions(include_header=False, quoting_style="all_valid"))
    names = ", ".join(rows.column_names)
    raw = connection.connection.driver_connection  # psycopg.Connection, inside the same transaction
    with raw.cursor() as cursor, cursor.copy(f"COPY {table} ({names}) FROM STDIN WITH (FORMAT csv)") as copy:
        copy.write(buffer.getvalue())
