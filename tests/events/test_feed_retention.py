"""The change feed's rows live and die with the outbox: written in the change's transaction (rolled back
with it), deleted by the relay's retention as a prefix of positions, after which older cursors expire."""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, insert, select

from api.events import feed, outbox
from api.events.relay import Relay
from api.main import create_app
from api.models import Change, Customer
from tests.api.conftest import make_settings


@pytest.fixture
def app(database_url: str) -> FastAPI:
    # No RABBITMQ_URL: no relay thread; the test drives the relay's retention itself.
    return create_app(make_settings(database_url, RABBITMQ_URL=None))


def change_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(Change)).scalar_one())


def test_relay_retention_deletes_old_changes_and_their_cursors_expire(
    app: FastAPI, client: TestClient, engine: Engine, database_url: str
) -> None:
    for customer_id in ("old1", "old2"):
        assert (
            client.post("/customer", json={"customer_id": customer_id, "country": "France"}).status_code
            == 201
        )
    # Stamped two days ago, as if nobody had read the feed since.
    assert feed.stamp(engine, now=outbox.utcnow() - dt.timedelta(days=2)) == 2
    assert client.post("/customer", json={"customer_id": "recent", "country": "France"}).status_code == 201
    assert [c["id"] for c in client.get("/changes").json()["changes"]] == ["old1", "old2", "recent"]
    # A change committed but not stamped yet must survive retention whatever its age.
    assert client.post("/customer", json={"customer_id": "unstamped", "country": "France"}).status_code == 201

    settings = make_settings(
        database_url, RABBITMQ_URL="amqp://guest:guest@127.0.0.1:1/", OUTBOX_RETENTION_DAYS=1
    )
    Relay(settings, app.state.sessions)._purge_old()

    assert change_count(engine) == 2
    expired = client.get("/changes", params={"after": "1"})
    assert expired.status_code == 410, expired.text
    assert expired.json()["detail"][0]["loc"] == ["query", "after"]
    rest = client.get("/changes", params={"after": "2"}).json()["changes"]
    assert [(c["position"], c["id"]) for c in rest] == [(3, "recent"), (4, "unstamped")]
    assert client.get("/changes/head").json()["purged_through"] == 2


def test_a_rolled_back_change_leaves_no_row(app: FastAPI, client: TestClient, engine: Engine) -> None:
    with pytest.raises(RuntimeError), app.state.sessions() as session, session.begin():
        session.execute(insert(Customer), [{"customer_id": "gone", "country": "France"}])
        outbox.record(session, [outbox.customer_created("gone", "France")])
        raise RuntimeError("the write fails after recording its change")
    assert change_count(engine) == 0
    assert client.get("/changes").json()["changes"] == []
