"""The change feed (issue 28): every verb and bulk path records its change, in commit order, paged by a
keyset cursor; unknown, malformed and expired cursors are refused; a transaction that commits after
others that began later is still delivered, once (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from api import schemas
from api.events import feed
from tests.api.helpers import invoice, line
from tests.api.test_bulk_arrow import arrow_body, post_arrow


def read_all(client: TestClient, after: str = "0", limit: int = 1000) -> tuple[list[dict[str, Any]], str]:
    """Every change after `after`, page by page; and the cursor after the last."""
    changes: list[dict[str, Any]] = []
    while True:
        response = client.get("/changes", params={"after": after, "limit": limit})
        assert response.status_code == 200, response.text
        page = response.json()
        changes += page["changes"]
        assert page["next_cursor"] == (str(page["changes"][-1]["position"]) if page["changes"] else after)
        after = page["next_cursor"]
        if not page["more"]:
            return changes, after


def summary(change: dict[str, Any]) -> tuple[str, str, str, str | None, str | None]:
    return (
        change["kind"],
        change["resource"],
        change["id"],
        change["invoice_day"],
        change["previous_invoice_day"],
    )


def test_every_verb_and_bulk_path_records_its_change(client: TestClient, engine: Engine) -> None:
    # What each GET answered right after each write: the feed's content must be exactly that.
    expected_content: list[Any] = []

    def write(method: str, path: str, status: int, get: str | None = None, **kwargs: Any) -> None:
        response = client.request(method, path, **kwargs)
        assert response.status_code == status, response.text
        expected_content.append(client.get(get).json() if get else None)

    write(
        "POST",
        "/customer",
        201,
        "/customer/17850",
        json={"customer_id": "17850", "country": "United Kingdom"},
    )
    write("PUT", "/customer/17850", 200, "/customer/17850", json={"country": "France"})
    write("PATCH", "/customer/17850", 200, "/customer/17850", json={"country": "Germany"})
    write("PUT", "/customer/999", 201, "/customer/999", json={"country": "Spain"})
    write("DELETE", "/customer/999", 204)
    write(
        "POST",
        "/bulk/customers",
        200,
        "/customer/12346",
        json={"customers": [{"customer_id": "12346", "country": "Iceland"}]},
    )
    write("POST", "/customer/17850/invoice", 201, "/invoice/536365", json=invoice("536365"))
    write("POST", "/invoice", 201, "/invoice/536366", json=invoice("536366", customer_id=None))
    write(
        "POST",
        "/bulk/invoices",
        200,
        "/invoice/536367",
        json={"invoices": [invoice("536367", customer_id="12346", invoice_date="2010-12-02T09:00:00")]},
    )
    body = arrow_body([invoice("536368", customer_id=None, invoice_date="2010-12-03T10:00:00")])
    response = post_arrow(client, body)
    assert response.status_code == 200, response.text
    expected_content.append(client.get("/invoice/536368").json())
    # PUT moves 536366 to another day: the feed names both days.
    write(
        "PUT",
        "/invoice/536366",
        200,
        "/invoice/536366",
        json={
            k: v
            for k, v in invoice("536366", invoice_date="2010-12-05T08:00:00").items()
            if k != "invoice_no"
        },
    )
    write(
        "PUT",
        "/invoice/536369",
        201,
        "/invoice/536369",
        json={k: v for k, v in invoice("536369").items() if k != "invoice_no"},
    )
    write("PATCH", "/invoice/536365", 200, "/invoice/536365", json={"country": "France"})
    write(
        "POST",
        "/invoice/536365/22633/",
        201,
        "/invoice/536365/22633/",
        json=line("22633", description="HAND WARMER", unit_price="1.85"),
    )
    write("DELETE", "/invoice/536365/85123A/", 204)
    write("DELETE", "/invoice/536369", 204)

    # Replays store nothing and record nothing.
    assert client.post("/customer", json={"customer_id": "17850", "country": "Germany"}).status_code == 200
    assert client.put("/customer/17850", json={"country": "Germany"}).status_code == 200
    assert (
        client.post(
            "/bulk/invoices",
            json={"invoices": [invoice("536367", customer_id="12346", invoice_date="2010-12-02T09:00:00")]},
        ).json()["created"]
        == 0
    )
    assert post_arrow(client, body).json()["created"] == 0

    changes, cursor = read_all(client, limit=3)
    assert [summary(change) for change in changes] == [
        ("created", "customer", "17850", None, None),
        ("replaced", "customer", "17850", None, None),
        ("patched", "customer", "17850", None, None),
        ("created", "customer", "999", None, None),
        ("deleted", "customer", "999", None, None),
        ("created", "customer", "12346", None, None),
        ("created", "invoice", "536365", "2010-12-01", None),
        ("created", "invoice", "536366", "2010-12-01", None),
        ("created", "invoice", "536367", "2010-12-02", None),
        ("created", "invoice", "536368", "2010-12-03", None),
        ("replaced", "invoice", "536366", "2010-12-05", "2010-12-01"),
        ("created", "invoice", "536369", "2010-12-01", None),
        ("patched", "invoice", "536365", "2010-12-01", None),
        ("created", "line", "536365/22633", "2010-12-01", None),
        ("deleted", "line", "536365/85123A", "2010-12-01", None),
        ("deleted", "invoice", "536369", "2010-12-01", None),
    ]
    assert [change["content"] for change in changes] == expected_content
    assert [change["position"] for change in changes] == list(range(1, 17))
    assert cursor == "16"
    for change in changes:
        committed = dt.datetime.fromisoformat(change["committed_at"].removesuffix("Z"))
        assert abs(dt.datetime.now(dt.UTC).replace(tzinfo=None) - committed) < dt.timedelta(minutes=5)
        schemas.ChangePublic.model_validate(change)
    # Each change names its event on the queue.
    with engine.connect() as connection:
        event_ids = set(connection.execute(text("SELECT event_id FROM outbox_events")).scalars())
    assert {change["event_id"] for change in changes} <= event_ids

    # Nothing new: the same cursor gives nothing, and says so.
    again = client.get("/changes", params={"after": cursor}).json()
    assert again == {"changes": [], "next_cursor": cursor, "more": False}
    assert client.get("/changes/head").json() == {"position": 16, "cursor": "16", "purged_through": 0}


def test_pages_follow_the_keyset(client: TestClient) -> None:
    body = {"customers": [{"customer_id": str(n), "country": "France"} for n in range(1, 8)]}
    assert client.post("/bulk/customers", json=body).status_code == 200
    first = client.get("/changes", params={"limit": 3}).json()
    assert [c["id"] for c in first["changes"]] == ["1", "2", "3"]
    assert (first["next_cursor"], first["more"]) == ("3", True)
    second = client.get("/changes", params={"after": "3", "limit": 4}).json()
    assert [c["id"] for c in second["changes"]] == ["4", "5", "6", "7"]
    assert (second["next_cursor"], second["more"]) == ("7", False)
    assert client.head("/changes", params={"after": "3"}).status_code == 200


def test_a_large_bulk_write_records_every_change(client: TestClient) -> None:
    # From 100 events on, PostgreSQL records them (and their changes) with COPY.
    body = {"invoices": [invoice(f"5{n:05}", invoice_date="2011-01-02T10:00:00") for n in range(150)]}
    assert client.post("/bulk/invoices", json=body).json()["created"] == 150
    changes, cursor = read_all(client, limit=40)
    assert [(c["kind"], c["resource"], c["id"]) for c in changes] == [
        ("created", "invoice", f"5{n:05}") for n in range(150)
    ]
    assert cursor == "150"
    assert changes[-1]["content"] == client.get("/invoice/500149").json()


def test_an_arrow_body_s_content_is_what_get_answers(client: TestClient) -> None:
    odd_lines = [
        line("B", line_no=3, quantity=-2, unit_price="-0.001", description=None),
        line("A", line_no=1, unit_price="999999999.999", invoice_date="2010-12-01T08:26:00.123456"),
        line("C", line_no=2, quantity=0, unit_price="0"),
    ]
    invoices = [
        invoice("7001", lines=odd_lines, customer_id=None),
        invoice("7002", lines=[], customer_id=None, invoice_date="2010-12-04T23:59:59.5"),
        invoice("7003", customer_id=None),
    ]
    assert post_arrow(client, arrow_body(invoices)).json()["created"] == 3
    changes, _cursor = read_all(client)
    assert [c["id"] for c in changes] == ["7001", "7002", "7003"]
    for change in changes:
        assert change["content"] == client.get(f"/invoice/{change['id']}").json()


@pytest.mark.parametrize(
    ("after", "status", "named"),
    [
        ("abc", 422, ["query", "after"]),
        ("-1", 422, ["query", "after"]),
        ("1" * 20, 422, ["query", "after"]),
        ("", 422, ["query", "after"]),
        ("2", 400, ["query", "after"]),
        ("9" * 19, 400, ["query", "after"]),
    ],
)
def test_a_bad_cursor_is_refused_naming_after(
    client: TestClient, after: str, status: int, named: list[str]
) -> None:
    assert client.post("/customer", json={"customer_id": "1", "country": "France"}).status_code == 201
    response = client.get("/changes", params={"after": after})
    assert response.status_code == status, response.text
    assert response.json()["detail"][0]["loc"] == named
    if status == 400:
        assert "after=" in response.json()["detail"][0]["msg"]


def test_a_cursor_before_what_retention_deleted_has_expired(client: TestClient, engine: Engine) -> None:
    for n in range(3):
        assert client.post("/customer", json={"customer_id": str(n), "country": "France"}).status_code == 201
    changes, _cursor = read_all(client)
    assert len(changes) == 3
    # Everything stamped so far is older than a cutoff in the future: retention deletes it all.
    assert feed.purge_stamped_before(engine, dt.datetime.now() + dt.timedelta(days=1)) == 3
    assert client.post("/customer", json={"customer_id": "new", "country": "France"}).status_code == 201
    for after in ("0", "2"):
        response = client.get("/changes", params={"after": after})
        assert response.status_code == 410, response.text
        assert response.json()["detail"][0]["loc"] == ["query", "after"]
        assert "expired" in response.json()["detail"][0]["msg"]
    # From the last position deleted on, nothing was lost, and positions never go back.
    rest = client.get("/changes", params={"after": "3"}).json()["changes"]
    assert [(c["position"], c["id"]) for c in rest] == [(4, "new")]
    assert client.get("/changes/head").json() == {"position": 4, "cursor": "4", "purged_through": 3}


def test_the_feed_and_its_head_need_credentials_and_read_scope(client: TestClient) -> None:
    for path in ("/changes", "/changes/head", "/invoice-days"):
        assert client.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
    operations = client.get("/openapi.json").json()["paths"]
    for path in ("/changes", "/changes/head", "/invoice-days"):
        assert operations[path]["get"]["security"], path
    assert {"400", "410", "422"} <= set(operations["/changes"]["get"]["responses"])
