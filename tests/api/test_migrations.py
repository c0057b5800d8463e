"""Schema owned by Alembic: applied on start, runnable as a command, safe when processes start together."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from alembic.script import ScriptDirectory
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, inspect, text

from api.core.db import alembic_config, make_engine, migrate
from api.main import create_app
from tests.api.conftest import make_settings
from tests.api.helpers import AUTH, invoice, line

REPO_ROOT = Path(__file__).resolve().parents[2]
ALEMBIC = [sys.executable, "-m", "alembic", "-c", "api/alembic.ini"]
TABLES = {
    "alembic_version",
    "customers",
    "invoices",
    "invoice_lines",
    "outbox_events",
    "api_keys",
    "oauth_clients",
    "change_feed",
    "change_feed_state",
}


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def stored_revision(engine: Engine) -> str:
    with engine.connect() as connection:
        revision: str = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        return revision


def test_migrations_are_applied_when_the_service_starts(database_url: str, app: FastAPI) -> None:
    engine = make_engine(database_url)
    try:
        assert inspect(engine).get_table_names() == []
        with TestClient(app):
            pass
        assert set(inspect(engine).get_table_names()) == TABLES
        assert stored_revision(engine) == head_revision()
        indexes = {index["name"]: index for index in inspect(engine).get_indexes("invoices")}
        assert indexes["ix_invoices_invoice_day_invoice_no"]["column_names"] == ["invoice_day", "invoice_no"]
        line_pk = inspect(engine).get_pk_constraint("invoice_lines")
        assert line_pk["constrained_columns"] == ["invoice_no", "line_no"]
        assert "ix_invoice_lines_stock_code" in {
            i["name"] for i in inspect(engine).get_indexes("invoice_lines")
        }

        # A second start finds nothing to do and keeps the data.
        with TestClient(app, headers={"X-API-Key": "test-key"}) as client:
            assert client.post("/customer", json={"customer_id": "1", "country": "X"}).status_code == 201
        with TestClient(app, headers={"X-API-Key": "test-key"}) as client:
            assert client.get("/customer/1").status_code == 200
    finally:
        engine.dispose()


def test_alembic_upgrade_head_as_a_command(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    upgrade = subprocess.run(
        [*ALEMBIC, "upgrade", "head"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert upgrade.returncode == 0, upgrade.stderr
    assert "Running upgrade  -> 0001" in upgrade.stderr

    engine = make_engine(database_url)
    try:
        assert set(inspect(engine).get_table_names()) == TABLES
        assert stored_revision(engine) == head_revision()
    finally:
        engine.dispose()

    # The models and the migrations describe the same schema.
    check = subprocess.run([*ALEMBIC, "check"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout


def test_processes_migrating_at_once_all_succeed(database_url: str) -> None:
    # Separate processes, as when several service processes start together (Alembic's context is global
    # to a process, so threads would not model this).
    script = (
        "import sys, time\n"
        "from api.core.db import make_engine, migrate\n"
        "engine = make_engine(sys.argv[1])\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "migrate(engine)\n"
    )
    start_at = str(time.time() + 1.5)  # every process imports first, then all migrate at the same moment
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, database_url, start_at],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=60)[0] for process in processes]

    assert [process.returncode for process in processes] == [0, 0, 0, 0], "\n".join(outputs)
    engine = make_engine(database_url)
    try:
        assert stored_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys_and_exact_prices(sqlite_url: str) -> None:
    with TestClient(create_app(make_settings(sqlite_url)), headers=AUTH) as client:
        client.post("/invoice", json=invoice("1", lines=[line(line_no=1, unit_price="-11062.06")]))
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
            # Integer thousandths, not a float.
            assert connection.exec_driver_sql("SELECT unit_price FROM invoice_lines").scalar() == -11062060
            orphan = "INSERT INTO invoice_lines VALUES ('nope', 1, 'A', NULL, 1, 1, '2010-12-01 08:26:00')"
            try:
                connection.exec_driver_sql(orphan)
            except Exception as error:  # the foreign key refuses a line without its invoice
                assert "FOREIGN KEY" in str(error)
            else:
                raise AssertionError("a line without an invoice was accepted")
    finally:
        engine.dispose()


def test_postgres_stores_prices_as_numeric_12_3(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        migrate(engine)
        with engine.connect() as connection:
            column = connection.execute(
                text(
                    "SELECT data_type, numeric_precision, numeric_scale FROM information_schema.columns "
                    "WHERE table_name = 'invoice_lines' AND column_name = 'unit_price'"
                )
            ).one()
        assert tuple(column) == ("numeric", 12, 3)
    finally:
        engine.dispose()
