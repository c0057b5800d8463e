"""The outbox without a broker: one row per change, in the change's transaction; depth and lag."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text

from api.core.db import make_engine, make_session_factory, migrate
from api.events import outbox
from api.main import create_app
from api.models import OutboxEvent
from tests.api.conftest import make_settings
from tests.api.helpers import invoice, line
from tests.events.support import outbox_counts
from tests.support.service import REPO_ROOT


@pytest.fixture
def app(database_url: str) -> FastAPI:
    # No RABBITMQ_URL: the embedded default.
    return create_app(make_settings(database_url, RABBITMQ_URL=None))


def stored_events(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT event_id, event_type, payload FROM outbox_events ORDER BY seq")
        )
        events = []
        for event_id, event_type, payload in rows:
            event = json.loads(payload)
            assert event["event_id"] == event_id
            assert event["type"] == event_type
            events.append(event)
        return events


def bulk_invoices(count: int, *, prefix: str = "5") -> dict[str, Any]:
    return {
        "invoices": [
            invoice(
                f"{prefix}{number:05d}",
                customer_id=str(12000 + number % 5),
                lines=[line("85123A", line_no=1, quantity=2, unit_price="2.55"), line("22423", line_no=2)],
            )
            for number in range(count)
        ]
    }


def test_no_broker_the_outbox_fills_and_no_relay_runs(
    app: FastAPI, client: TestClient, engine: Engine
) -> None:
    assert app.state.relay is None
    assert (
        client.post("/customer", json={"customer_id": "17850", "country": "United Kingdom"}).status_code
        == 201
    )
    created = client.post("/customer/17850/invoice", json=invoice("536365"))
    assert created.status_code == 201
    assert client.get("/health").status_code == 200

    customer_event, invoice_event = stored_events(engine)
    assert customer_event["type"] == "customer.created"
    assert customer_event["data"] == {"customer_id": "17850", "country": "United Kingdom"}
    assert uuid.UUID(customer_event["event_id"]).version == 4
    occurred = dt.datetime.fromisoformat(customer_event["occurred_at"])
    assert occurred.tzinfo is not None and occurred.utcoffset() == dt.timedelta(0)
    assert invoice_event["type"] == "invoice.created"
    # 6 x 2.55 + 6 x 3.39, exact, as a string with three decimals.
    assert invoice_event["data"] == {
        "invoice_no": "536365",
        "customer_id": "17850",
        "invoice_date": "2010-12-01T08:26:00",
        "invoice_day": "2010-12-01",
        "country": "United Kingdom",
        "line_count": 2,
        "amount": "35.640",
    }
    assert outbox_counts(engine)["unpublished"] == 2


def test_replays_emit_nothing(client: TestClient, engine: Engine) -> None:
    customers = {"customers": [{"customer_id": str(12000 + n), "country": "France"} for n in range(5)]}
    assert client.post("/bulk/customers", json=customers).json()["created"] == 5
    assert client.post("/bulk/invoices", json=bulk_invoices(40)).json()["created"] == 40
    before = outbox_counts(engine)
    assert before == {"customer.created": 5, "invoice.created": 40, "total": 45, "unpublished": 45}

    # The same requests again: all existing / unchanged, not one new event.
    assert client.post("/bulk/customers", json=customers).json()["created"] == 0
    replay = client.post("/bulk/invoices", json=bulk_invoices(40)).json()
    assert replay == {"created": 0, "unchanged": 40, "lines_created": 0}
    assert client.post("/customer", json={"customer_id": "12000", "country": "France"}).status_code == 200
    one = bulk_invoices(1)["invoices"][0]
    assert client.post("/invoice", json=one).status_code == 200
    # A request that overlaps: only the new invoices emit.
    assert client.post("/bulk/invoices", json=bulk_invoices(45)).json()["created"] == 5
    # A refused request (409: other content) stores nothing, events included.
    changed = bulk_invoices(50)
    changed["invoices"][0]["country"] = "Spain"
    assert client.post("/bulk/invoices", json=changed).status_code == 409

    after = outbox_counts(engine)
    assert after == {"customer.created": 5, "invoice.created": 45, "total": 50, "unpublished": 50}
    invoice_nos = [e["data"]["invoice_no"] for e in stored_events(engine) if e["type"] == "invoice.created"]
    assert sorted(invoice_nos) == [f"5{n:05d}" for n in range(45)]


def test_an_added_line_emits_invoice_changed(client: TestClient, engine: Engine) -> None:
    assert client.post("/invoice", json=invoice("536365")).status_code == 201
    added = client.post("/invoice/536365/22423/", json={"quantity": -1, "unit_price": "12.75"})
    assert added.status_code == 201
    # Replaying the same numbered line is not a change.
    replay = client.post("/invoice/536365/22423/", json={"line_no": 3, "quantity": -1, "unit_price": "12.75"})
    assert replay.status_code == 200

    created, changed = stored_events(engine)
    assert created["type"] == "invoice.created" and created["data"]["customer_id"] is None
    assert changed["type"] == "invoice.changed"
    assert changed["data"]["line_count"] == 3
    assert changed["data"]["amount"] == "22.890"  # 35.640 - 12.750
    assert changed["data"]["added_line_no"] == 3


@pytest.fixture
def sessions(database_url: str) -> Iterator[Any]:
    engine = make_engine(database_url)
    migrate(engine)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def test_depth_and_lag(sessions: Any) -> None:
    now = dt.datetime(2026, 11, 27, 12, 0, 0)
    with sessions() as session:
        assert outbox.outbox_depth(session) == 0
        assert outbox.relay_lag_seconds(session, now=now) == 0.0

    with sessions() as session, session.begin():
        outbox.record(
            session,
            [
                outbox.customer_created("1", "France", now=now - dt.timedelta(seconds=90)),
                outbox.customer_created("2", "France", now=now - dt.timedelta(seconds=30)),
                outbox.customer_created("3", "France", now=now - dt.timedelta(seconds=5)),
            ],
        )
    with sessions() as session:
        assert outbox.outbox_depth(session) == 3
        assert outbox.relay_lag_seconds(session, now=now) == pytest.approx(90.0)
        # Without `now`: the age against the clock, a positive number of seconds.
        assert outbox.relay_lag_seconds(session) > 0

    with sessions() as session, session.begin():
        claimed = outbox.claim_unpublished(session, 2)
        assert [event.event_type for event in claimed] == ["customer.created"] * 2
        assert [json.loads(event.payload)["data"]["customer_id"] for event in claimed] == ["1", "2"]
        outbox.mark_published(session, [event.seq for event in claimed], now=now)
    with sessions() as session:
        assert outbox.outbox_depth(session) == 1
        assert outbox.relay_lag_seconds(session, now=now) == pytest.approx(5.0)

    with sessions() as session, session.begin():
        outbox.mark_published(
            session, [event.seq for event in outbox.claim_unpublished(session, 10)], now=now
        )
    with sessions() as session:
        assert outbox.outbox_depth(session) == 0
        assert outbox.relay_lag_seconds(session, now=now) == 0.0

    # Retention deletes published rows by the time they were published.
    with sessions() as session, session.begin():
        assert outbox.delete_published_before(session, now) == 0
        assert outbox.delete_published_before(session, now + dt.timedelta(days=1)) == 3
    with sessions() as session:
        assert session.scalars(select(OutboxEvent)).all() == []


def test_a_failed_transaction_leaves_no_event(sessions: Any) -> None:
    with pytest.raises(RuntimeError), sessions() as session, session.begin():
        outbox.record(session, [outbox.customer_created("1", "France")])
        raise RuntimeError("the change failed")
    with sessions() as session:
        assert outbox.outbox_depth(session) == 0


def test_standalone_relay_needs_rabbitmq_url(sqlite_url: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": sqlite_url, "RABBITMQ_URL": ""}
    result = subprocess.run(
        [sys.executable, "-m", "api.events.relay"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "RABBITMQ_URL" in result.stderr
