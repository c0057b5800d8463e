"""The warehouse on a real DuckDB file and a real PostgreSQL database: exact rows and types, an
idempotent replace per day in one transaction, and verification that fails loudly on any difference."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from etl.destinations.base import DayTables
from etl.destinations.fanout import deliver, load_warehouse
from etl.destinations.warehouse import COLUMNS, open_warehouse, parse_warehouse_url
from etl.errors import DestinationError, ReconciliationError
from tests.support.service import free_port

DAY = dt.date(2010, 12, 2)


@dataclasses.dataclass
class Warehouse:
    """A warehouse under test: its `--warehouse` value, and a way to run SQL on it from outside."""

    url: str
    query: Callable[[str], list[tuple[Any, ...]]]
    execute: Callable[[str], None]


def duckdb_warehouse(path: Path) -> Warehouse:
    import duckdb

    def query(sql: str) -> list[tuple[Any, ...]]:
        with duckdb.connect(str(path), read_only=True) as con:
            return con.execute(sql).fetchall()

    def execute(sql: str) -> None:
        with duckdb.connect(str(path)) as con:
            con.execute(sql)

    return Warehouse(f"duckdb:///{path}", query, execute)


def postgres_warehouse(url: str) -> Warehouse:
    import psycopg

    def query(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url) as con:
            return list(con.execute(sql).fetchall())

    def execute(sql: str) -> None:
        with psycopg.connect(url) as con:
            con.execute(sql)

    return Warehouse(url, query, execute)


@pytest.fixture(params=["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)])
def warehouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Warehouse]:
    if request.param == "duckdb":
        yield duckdb_warehouse(tmp_path / "wh" / "warehouse.duckdb")
    else:
        yield postgres_warehouse(request.getfixturevalue("plain_postgres_url"))


def rows_of(warehouse: Warehouse, table: str) -> list[tuple[Any, ...]]:
    names = ", ".join(COLUMNS[table])
    return warehouse.query(f"SELECT {names} FROM {table} ORDER BY {names}")


def lake_rows(days: list[DayTables], table: str) -> list[tuple[Any, ...]]:
    rows = [tuple(row[c] for c in COLUMNS[table]) for day in days for row in day.tables[table].to_pylist()]
    if table == "customers":  # the lake has one row per customer and day, the warehouse one per customer
        rows = list(set(rows))
    return sorted(rows)


def test_every_day_loads_exactly_with_decimal_money(warehouse: Warehouse, lake_days: list[DayTables]) -> None:
    summary = load_warehouse(warehouse.url, lake_days)

    assert summary["days"] == 4
    assert summary["rows"] == {"invoice_lines": 8326, "invoices": 449, "customers": 313}
    for table in COLUMNS:
        assert rows_of(warehouse, table) == lake_rows(lake_days, table), table
    # Exact: the money comes back as Decimal, and the whole sample sums to the lake's total.
    [(amount, kind)] = warehouse.query(
        "SELECT sum(quantity * unit_price), (SELECT data_type FROM information_schema.columns"
        " WHERE table_name = 'invoice_lines' AND column_name = 'unit_price') FROM invoice_lines"
    )
    assert isinstance(amount, Decimal)
    assert amount == sum((d.totals().amount for d in lake_days), Decimal(0))
    assert kind.upper().startswith(("DECIMAL", "NUMERIC"))


def test_a_rerun_leaves_the_same_rows(warehouse: Warehouse, lake_days: list[DayTables]) -> None:
    load_warehouse(warehouse.url, lake_days)
    before = {table: rows_of(warehouse, table) for table in COLUMNS}
    load_warehouse(warehouse.url, lake_days)
    load_warehouse(warehouse.url, lake_days[1:2])  # one day alone, again

    assert {table: rows_of(warehouse, table) for table in COLUMNS} == before
    [(lines, distinct)] = warehouse.query(
        "SELECT count(*), count(DISTINCT (invoice_day, invoice_no, line_no)) FROM invoice_lines"
    )
    assert lines == distinct == 8326


def test_replacing_a_day_changes_that_day_only(warehouse: Warehouse, lake_days: list[DayTables]) -> None:
    load_warehouse(warehouse.url, lake_days)
    day = next(d for d in lake_days if d.day == DAY)
    lines, invoices = day.tables["invoice_lines"], day.tables["invoices"]
    gone = lines["invoice_no"][0]
    kept_lines = lines.filter(pc.not_equal(lines["invoice_no"], gone))
    customers = day.tables["customers"]
    corrected = dataclasses.replace(
        day,
        tables={
            **day.tables,
            "invoice_lines": kept_lines,
            "invoices": invoices.filter(pc.not_equal(invoices["invoice_no"], gone)),
            # The day's customers as the lake derives them: those invoiced by the remaining lines.
            "customers": customers.filter(pc.is_in(customers["customer_id"], kept_lines["customer_id"])),
        },
    )
    summary = load_warehouse(warehouse.url, [corrected], replaced={DAY})
    assert (summary["days"], summary["replaced_days"]) == (1, 1)
    other_days = [d for d in lake_days if d.day != DAY]

    per_day = dict(warehouse.query("SELECT invoice_day, count(*) FROM invoice_lines GROUP BY invoice_day"))
    assert per_day[DAY] == corrected.tables["invoice_lines"].num_rows < lines.num_rows
    assert {d.day: per_day[d.day] for d in other_days} == {d.day: d.rows["invoice_lines"] for d in other_days}
    assert warehouse.query(f"SELECT count(*) FROM invoices WHERE invoice_no = '{gone.as_py()}'") == [(0,)]


def test_tampering_between_load_and_verify_fails_loudly(
    warehouse: Warehouse, lake_days: list[DayTables]
) -> None:
    load_warehouse(warehouse.url, lake_days)
    day = lake_days[0]
    # Someone changes one price by a tenth of a penny after the load.
    warehouse.execute(
        "UPDATE invoice_lines SET unit_price = unit_price + 0.001"
        f" WHERE invoice_day = DATE '{day.day}' AND line_no = 1 AND invoice_no ="
        f" (SELECT min(invoice_no) FROM invoice_lines WHERE invoice_day = DATE '{day.day}')"
    )
    target = open_warehouse(warehouse.url)
    try:
        with pytest.raises(ReconciliationError) as failure:
            target.verify_day(day.day, day.totals())
        for other in lake_days[1:]:
            target.verify_day(other.day, other.totals())
    finally:
        target.close()
    message = str(failure.value)
    assert "differs from the lake on 2010-12-01" in message and "amount" in message
    assert "\n" not in message


def test_a_mismatch_right_after_loading_fails_the_delivery(
    warehouse: Warehouse, lake_days: list[DayTables]
) -> None:
    # What reaches the warehouse lacks one line of the day the lake holds: verifying against the lake's
    # totals must catch it.
    day = lake_days[0]
    short = dataclasses.replace(
        day, tables={**day.tables, "invoice_lines": day.tables["invoice_lines"].slice(1)}
    )
    target = open_warehouse(warehouse.url)
    try:
        target.publish_day(short)
        with pytest.raises(ReconciliationError, match=r"lines 3108 expected, 3107 found"):
            target.verify_day(day.day, day.totals())
        # `deliver` loads a day and verifies it at once against the totals the lake's day claims.
        with pytest.raises(ReconciliationError, match=r"warehouse .* differs from the lake on 2010-12-01"):
            deliver(target, [_with_totals_of(short, day)])
    finally:
        target.close()


def _with_totals_of(tables: DayTables, claimed: DayTables) -> DayTables:
    """`tables` whose `totals()` claim what `claimed` holds: a day whose rows and totals disagree."""

    class Claiming(DayTables):
        def totals(self):  # type: ignore[no-untyped-def]
            return claimed.totals()

    return Claiming(tables.day, tables.tables, tables.files)


def test_a_day_that_fails_halfway_is_rolled_back(warehouse: Warehouse, lake_days: list[DayTables]) -> None:
    load_warehouse(warehouse.url, lake_days)
    day = lake_days[0]
    before = {table: rows_of(warehouse, table) for table in COLUMNS}
    # The lines are fine; one invoice has no country, which the table refuses (NOT NULL) after the
    # day's lines were already deleted and inserted again.
    invoices = day.tables["invoices"]
    countries = pa.array([None, *invoices["country"].to_pylist()[1:]], pa.string())
    at = invoices.schema.get_field_index("country")
    broken = dataclasses.replace(
        day,
        tables={
            **day.tables,
            "invoice_lines": day.tables["invoice_lines"].slice(5),
            "invoices": invoices.set_column(at, pa.field("country", pa.string()), countries),
        },
    )
    target = open_warehouse(warehouse.url)
    try:
        with pytest.raises(DestinationError, match="loading 2010-12-01 failed"):
            target.publish_day(broken)
    finally:
        target.close()
    assert {table: rows_of(warehouse, table) for table in COLUMNS} == before


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@127.0.0.1/shop", "unsupported warehouse URL scheme 'mysql'"),
        ("sqlite:///warehouse.db", "unsupported warehouse URL scheme 'sqlite'"),
        ("duckdb://", "names no file"),
        ("  ", "--warehouse is empty"),
    ],
)
def test_a_bad_url_is_one_line_naming_it(url: str, message: str) -> None:
    with pytest.raises(DestinationError, match=message) as failure:
        parse_warehouse_url(url)
    assert "\n" not in str(failure.value)


def test_urls_name_the_engine_and_hide_the_password() -> None:
    assert parse_warehouse_url("warehouse.duckdb").engine == "duckdb"
    assert parse_warehouse_url("duckdb:////data/wh.duckdb").location == "/data/wh.duckdb"
    assert parse_warehouse_url("duckdb:///wh.duckdb").location == "wh.duckdb"
    target = parse_warehouse_url("postgresql://etl:s3cret@db.example:5432/retail")
    assert (target.engine, target.location) == (
        "postgresql",
        "postgresql+psycopg://etl:s3cret@db.example:5432/retail",
    )
    assert "s3cret" not in target.display and target.display == "postgresql://etl:***@db.example:5432/retail"


@pytest.mark.postgres
def test_an_unreachable_postgres_fails_after_retries_in_one_line() -> None:
    port = free_port()
    with pytest.raises(DestinationError) as failure:
        open_warehouse(f"postgresql://postgres:secret@127.0.0.1:{port}/retail")
    message = str(failure.value)
    assert message.startswith(f"cannot open the warehouse postgresql://postgres:***@127.0.0.1:{port}/retail")
    assert "secret" not in message and "\n" not in message


def test_a_duckdb_file_held_by_another_process_fails_after_retries_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "held.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('ready', flush=True);"
            " sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(
            DestinationError, match=r"cannot open the warehouse .*Could not set lock"
        ) as failure:
            open_warehouse(str(path))
        assert "\n" not in str(failure.value)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)
    open_warehouse(str(path)).close()  # free again once the other process is gone


@pytest.mark.postgres
def test_a_postgres_connection_killed_between_loads_is_replaced(
    plain_postgres_url: str, lake_days: list[DayTables]
) -> None:
    import psycopg

    target = open_warehouse(plain_postgres_url)
    try:
        target.publish_days(lake_days[:1])
        with psycopg.connect(plain_postgres_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert killed is not None and killed[0] >= 1  # the warehouse's pooled connection
        target.publish_days(lake_days)
        target.verify_days({day.day: day.totals() for day in lake_days})
    finally:
        target.close()
