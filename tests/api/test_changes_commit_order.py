"""The feed delivers a change whose transaction commits after others that wrote later (issue 28): the
cursor never moves past a change that is not committed yet. A real uvicorn process serves the other
writers and the reads; the held transaction goes through the service's own crud layer, stopped just
before its commit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from api import schemas
from api.core.db import make_engine, make_session_factory
from api.crud import customers as customer_crud
from tests.support.service import LiveService, live_service


@pytest.fixture
def service(database_url: str) -> Iterator[LiveService]:
    with live_service(database_url) as running:
        yield running


class HeldWrite:
    """`POST /customer` as the service runs it (`crud.customers.create_customer`), in a thread that
    stops right before its COMMIT until `release()`."""

    def __init__(self, database_url: str, customer_id: str) -> None:
        self.engine = make_engine(database_url)
        self.session = make_session_factory(self.engine)()
        self.written = threading.Event()
        self.released = threading.Event()
        self.error: BaseException | None = None
        self.change_id: int | None = None

        @event.listens_for(self.session, "before_commit")
        def _hold(session: Session) -> None:
            # Its own row of the feed, seen from inside the open transaction.
            self.change_id = session.execute(text("SELECT max(id) FROM change_feed")).scalar_one()
            self.written.set()
            assert self.released.wait(60), "the test never released the held transaction"

        def run() -> None:
            try:
                customer = schemas.CustomerCreate(customer_id=customer_id, country="Held")
                customer_crud.create_customer(self.session, customer=customer)
            except BaseException as error:  # reported by the test, not lost in the thread
                self.error = error
                self.written.set()

        self.thread = threading.Thread(target=run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        assert self.written.wait(30), "the held write never got to its commit"
        assert self.error is None, self.error

    def release(self) -> None:
        self.released.set()
        self.thread.join(30)
        assert self.error is None, self.error
        self.session.close()
        self.engine.dispose()


def read_to_end(client: httpx.Client, after: str) -> tuple[list[dict[str, Any]], str]:
    changes: list[dict[str, Any]] = []
    while True:
        response = client.get("/changes", params={"after": after, "limit": 2})
        assert response.status_code == 200, response.text
        page = response.json()
        changes += page["changes"]
        after = page["next_cursor"]
        if not page["more"]:
            return changes, after


def post_customer(client: httpx.Client, customer_id: str) -> None:
    response = client.post("/customer", json={"customer_id": customer_id, "country": "France"})
    assert response.status_code == 201, response.text


def test_a_change_committed_after_later_ones_is_still_delivered(
    service: LiveService, database_url: str
) -> None:
    with httpx.Client(base_url=service.url, headers=service.headers, timeout=60) as client:
        post_customer(client, "before")
        seen, cursor = read_to_end(client, "0")
        assert [change["id"] for change in seen] == ["before"]

        held = HeldWrite(database_url, "held")
        held.start()
        if database_url.startswith("sqlite"):
            # SQLite has one writer: a transaction that read before others committed cannot write after
            # them (SQLITE_BUSY_SNAPSHOT), so the held one writes first and holds the write lock; the
            # others wait for it over HTTP, in threads.
            others = [threading.Thread(target=post_customer, args=(client, f"later{n}")) for n in range(2)]
            for thread in others:
                thread.start()
            # The feed answers meanwhile (nothing committed to stamp: no lock to wait for).
            during, cursor = read_to_end(client, cursor)
            assert during == []
            held.release()
            for thread in others:
                thread.join(60)
            expected_after_release = {"held", "later0", "later1"}
        else:
            # PostgreSQL: the held transaction took its feed row id first; two later ones commit first.
            post_customer(client, "later0")
            post_customer(client, "later1")
            during, cursor = read_to_end(client, cursor)
            assert [change["id"] for change in during] == ["later0", "later1"]
            held.release()
            expected_after_release = {"held"}

        after, cursor = read_to_end(client, cursor)
        assert {change["id"] for change in after} == expected_after_release
        # Read from the start: each change exactly once, in position order, positions without a gap.
        everything, _end = read_to_end(client, "0")
        ids = [change["id"] for change in everything]
        assert sorted(ids) == sorted(["before", "held", "later0", "later1"])
        assert [change["position"] for change in everything] == [1, 2, 3, 4]

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = dict(connection.execute(text("SELECT resource_id, id FROM change_feed")).all())
    finally:
        engine.dispose()
    assert held.change_id == rows["held"]
    if not database_url.startswith("sqlite"):
        # The premise: an id (or insert-time) cursor would have skipped the held change for good.
        assert rows["held"] < rows["later0"] < rows["later1"]
        assert ids.index("held") > ids.index("later1")
