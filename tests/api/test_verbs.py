"""PUT, PATCH and DELETE on customers, invoices and an invoice's lines of a stock code: what is stored,
the events in the outbox, and refusals that store nothing."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from retail_contract.content_hash import content_hash
from tests.api.helpers import invoice, line, row_counts

MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


def events(engine: Engine) -> list[dict[str, Any]]:
    """The outbox's events, oldest first, as `{"type", "data"}`."""
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT payload FROM outbox_events ORDER BY seq"))
        return [{"type": e["type"], "data": e["data"]} for e in (json.loads(row[0]) for row in rows)]


def stored_hash(engine: Engine, invoice_no: str) -> str:
    with engine.connect() as connection:
        return str(
            connection.execute(
                text("SELECT content_hash FROM invoices WHERE invoice_no = :no"), {"no": invoice_no}
            ).scalar_one()
        )


@pytest.fixture
def customer(client: TestClient) -> str:
    assert (
        client.post("/customer", json={"customer_id": "17850", "country": "United Kingdom"}).status_code
        == 201
    )
    return "17850"


# --- customers ------------------------------------------------------------------------------------


def test_put_creates_a_missing_customer_then_replaces_it(client: TestClient, engine: Engine) -> None:
    created = client.put("/customer/22ff32f22f", json={"country": "Germany"})
    assert created.status_code == 201
    assert created.json() == {"customer_id": "22ff32f22f", "country": "Germany"}
    replaced = client.put("/customer/22ff32f22f", json={"country": "France"})
    assert replaced.status_code == 200
    assert client.get("/customer/22ff32f22f").json() == {"customer_id": "22ff32f22f", "country": "France"}
    # The same PUT again changes nothing and emits nothing.
    assert client.put("/customer/22ff32f22f", json={"country": "France"}).status_code == 200
    assert events(engine) == [
        {"type": "customer.created", "data": {"customer_id": "22ff32f22f", "country": "Germany"}},
        {"type": "customer.updated", "data": {"customer_id": "22ff32f22f", "country": "France"}},
    ]


@pytest.mark.parametrize(("body_id", "status"), [("99999", 422), (17850, 200), ("17850", 200), (None, 200)])
def test_put_takes_an_id_in_the_body_only_when_it_is_the_paths(
    client: TestClient, customer: str, body_id: str | int | None, status: int
) -> None:
    assert customer == "17850"
    response = client.put(f"/customer/{customer}", json={"customer_id": body_id, "country": "France"})
    assert response.status_code == status, response.text
    if status == 422:
        assert response.json()["detail"][0]["loc"] == ["body", "customer_id"]
    stored = client.get(f"/customer/{customer}").json()["country"]
    assert stored == ("United Kingdom" if status == 422 else "France")


@pytest.mark.parametrize("content_type", ["application/merge-patch+json", "application/json"])
def test_patch_merges_into_the_customer(
    client: TestClient, customer: str, engine: Engine, content_type: str
) -> None:
    response = client.patch(
        f"/customer/{customer}", content=b'{"country": "EIRE"}', headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"customer_id": customer, "country": "EIRE"}
    assert events(engine)[-1] == {
        "type": "customer.updated",
        "data": {"customer_id": customer, "country": "EIRE"},
    }


@pytest.mark.parametrize(
    ("patch", "field"),
    [({"country": None}, "country"), ({"country": ""}, "country"), ({"customer_id": "1"}, "customer_id")],
)
def test_a_patch_giving_an_invalid_customer_is_422_naming_the_field(
    client: TestClient, customer: str, engine: Engine, patch: dict[str, Any], field: str
) -> None:
    before = events(engine)
    response = client.patch(f"/customer/{customer}", json=patch, headers=MERGE_PATCH)
    assert response.status_code == 422
    assert ["body", field] in [error["loc"] for error in response.json()["detail"]]
    assert client.get(f"/customer/{customer}").json()["country"] == "United Kingdom"
    assert events(engine) == before


def test_an_unknown_customer_in_put_or_patch_is_409_naming_it(
    client: TestClient, customer: str, engine: Engine
) -> None:
    assert client.post(f"/customer/{customer}/invoice", json=invoice("536365")).status_code == 201
    before, count = client.get("/invoice/536365").json(), len(events(engine))
    for response in (
        client.put("/invoice/536365", json={"invoice_date": "2010-12-01", "customer_id": "404"}),
        client.patch("/invoice/536365", json={"customer_id": "404"}),
    ):
        assert response.status_code == 409
        assert response.json()["detail"][0]["loc"] == ["body", "customer_id"]
    assert client.get("/invoice/536365").json() == before
    assert len(events(engine)) == count


def test_patch_and_delete_of_a_missing_customer_are_404(client: TestClient) -> None:
    assert client.patch("/customer/404", json={"country": "X"}).status_code == 404
    assert client.delete("/customer/404").status_code == 404


def test_delete_of_a_customer_with_invoices_is_409_naming_them(
    client: TestClient, customer: str, engine: Engine
) -> None:
    for number in range(25):
        body = invoice(f"5{number:05d}", invoice_date=f"2010-12-{1 + number:02d}T08:00:00")
        assert client.post(f"/customer/{customer}/invoice", json=body).status_code == 201
    response = client.delete(f"/customer/{customer}")
    assert response.status_code == 409
    answer = response.json()
    assert answer["invoice_count"] == 25
    assert answer["invoice_nos"] == [f"5{number:05d}" for number in range(20)]  # bounded, oldest first
    assert "25 invoice(s)" in answer["detail"] and "500000" in answer["detail"]
    assert client.get(f"/customer/{customer}").status_code == 200
    assert "customer.deleted" not in [event["type"] for event in events(engine)]


def test_delete_of_a_customer_without_invoices_emits_customer_deleted(
    client: TestClient, customer: str, engine: Engine
) -> None:
    assert client.delete(f"/customer/{customer}").status_code == 204
    assert client.get(f"/customer/{customer}").status_code == 404
    assert events(engine)[-1] == {
        "type": "customer.deleted",
        "data": {"customer_id": customer, "country": "United Kingdom"},
    }


# --- invoices -------------------------------------------------------------------------------------


def test_put_replaces_the_invoice_and_its_lines_as_a_whole(
    client: TestClient, customer: str, engine: Engine
) -> None:
    assert client.post(f"/customer/{customer}/invoice", json=invoice("536365")).status_code == 201
    body = {
        "invoice_date": "2010-12-02",
        "customer_id": customer,
        "lines": [line("22423", quantity=-1, unit_price="12.75", description=None)],
    }
    response = client.put("/invoice/536365", json=body)
    assert response.status_code == 200, response.text
    stored = client.get("/invoice/536365").json()
    assert stored == response.json()
    assert stored["invoice_date"] == "2010-12-02T00:00:00" and stored["invoice_day"] == "2010-12-02"
    assert stored["country"] == "United Kingdom"  # the customer's
    assert stored["lines"] == [
        {
            "line_no": 1,
            "stock_code": "22423",
            "description": None,
            "quantity": -1,
            "unit_price": "12.750",
            "invoice_date": "2010-12-02T00:00:00",
        }
    ]
    assert row_counts(engine)["invoice_lines"] == 1
    # The content hash follows: the one definition of it gives the stored hash.
    midnight = dt.datetime(2010, 12, 2)
    expected = content_hash(
        invoice_no="536365",
        customer_id=customer,
        invoice_date=midnight,
        country="United Kingdom",
        lines=[(1, "22423", None, -1, Decimal("12.75"), midnight)],
    )
    assert stored_hash(engine, "536365") == expected
    compared = client.post("/bulk/invoices/compare", json={"invoices": {"536365": expected}})
    assert compared.json()["unchanged"] == ["536365"]
    updated = events(engine)[-1]
    assert updated["type"] == "invoice.updated"
    assert updated["data"]["line_count"] == 1 and updated["data"]["amount"] == "-12.750"
    # An identical PUT changes nothing and emits nothing.
    count = len(events(engine))
    assert client.put("/invoice/536365", json=body).status_code == 200
    assert len(events(engine)) == count


def test_what_get_returned_can_be_put_back_unchanged(
    client: TestClient, customer: str, engine: Engine
) -> None:
    assert client.post(f"/customer/{customer}/invoice", json=invoice("536365")).status_code == 201
    count = len(events(engine))
    for path in (f"/customer/{customer}", "/invoice/536365"):
        read = client.get(path)
        put = client.put(path, json=read.json())  # the usual read-modify-write, with nothing modified
        assert put.status_code == 200, put.text
        assert put.json() == read.json() and put.headers["etag"] == read.headers["etag"]
        patched = client.patch(
            path, json=read.json(), headers={"Content-Type": "application/merge-patch+json"}
        )
        assert patched.status_code == 200, patched.text
        assert patched.json() == read.json()
    assert len(events(engine)) == count  # nothing changed, nothing emitted

    # Modified, as a client does: the id stays, the change is stored.
    changed = {**client.get(f"/customer/{customer}").json(), "country": "France"}
    assert client.put(f"/customer/{customer}", json=changed).json()["country"] == "France"


@pytest.mark.parametrize(
    ("path", "field", "other"),
    [("/customer/{customer}", "customer_id", "99999"), ("/invoice/536365", "invoice_no", "536366")],
)
def test_a_body_naming_another_resource_than_its_path_is_422_naming_the_field(
    client: TestClient, customer: str, engine: Engine, path: str, field: str, other: str
) -> None:
    assert client.post(f"/customer/{customer}/invoice", json=invoice("536365")).status_code == 201
    path = path.format(customer=customer)
    before, count = client.get(path).json(), len(events(engine))
    for method, headers in (("PUT", {}), ("PATCH", {"Content-Type": "application/merge-patch+json"})):
        response = client.request(method, path, json={**before, field: other}, headers=headers)
        assert response.status_code == 422, (method, response.text)
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", field] and error["type"] == "identifier_mismatch"
    assert client.get(path).json() == before and len(events(engine)) == count


def test_put_creates_a_missing_invoice(client: TestClient, engine: Engine) -> None:
    body = invoice("C536379")
    del body["invoice_no"]  # the path names it
    response = client.put("/invoice/C536379", json=body)
    assert response.status_code == 201
    assert client.get("/invoice/C536379").json() == response.json()
    assert events(engine)[-1]["type"] == "invoice.created"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"invoice_no": "536366", "invoice_date": "2010-12-01", "country": "X"},
            "invoice_no",
        ),  # not the path's
        ({"invoice_date": "2010-12-01"}, "country"),  # no customer and no country
        ({"invoice_date": "yesterday", "country": "X"}, "invoice_date"),
        ({"invoice_date": "2010-12-01", "country": "X", "lines": [{"stock_code": "A"}]}, "lines"),
    ],
)
def test_a_bad_put_is_422_naming_the_field_and_stores_nothing(
    client: TestClient, customer: str, engine: Engine, body: dict[str, Any], field: str
) -> None:
    assert client.post(f"/customer/{customer}/invoice", json=invoice("536365")).status_code == 201
    before, count = client.get("/invoice/536365").json(), len(events(engine))
    response = client.put("/invoice/536365", json=body)
    assert response.status_code == 422, response.text
    assert field in [error["loc"][1] for error in response.json()["detail"]]
    assert client.get("/invoice/536365").json() == before
    assert len(events(engine)) == count


def test_patch_merges_into_the_invoice(client: TestClient, customer: str, engine: Engine) -> None:
    assert client.post(f"/customer/{customer}/invoice", json=invoice("536365")).status_code == 201
    response = client.patch("/invoice/536365", json={"country": "France"}, headers=MERGE_PATCH)
    assert response.status_code == 200, response.text
    assert response.json()["country"] == "France"
    assert len(response.json()["lines"]) == 2  # untouched
    # `lines` is an array: a merge patch replaces it whole.
    patched = client.patch("/invoice/536365", json={"lines": [line("22423", unit_price="1")]}).json()
    assert [(x["line_no"], x["stock_code"]) for x in patched["lines"]] == [(1, "22423")]
    # Removing the customer: null deletes a member (RFC 7396); the invoice keeps its country.
    detached = client.patch("/invoice/536365", json={"customer_id": None}).json()
    assert detached["customer_id"] is None and detached["customer"] is None
    assert detached["country"] == "France"
    assert [event["type"] for event in events(engine)][-3:] == ["invoice.updated"] * 3


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"invoice_no": "1"}, "invoice_no"),
        ({"invoice_date": None}, "invoice_date"),
        ({"lines": [{"stock_code": "A", "quantity": "many", "unit_price": "1"}]}, "lines"),
    ],
)
def test_a_bad_invoice_patch_is_422_and_stores_nothing(
    client: TestClient, customer: str, engine: Engine, patch: dict[str, Any], field: str
) -> None:
    assert client.post(f"/customer/{customer}/invoice", json=invoice("536365")).status_code == 201
    before, count = client.get("/invoice/536365").json(), len(events(engine))
    response = client.patch("/invoice/536365", json=patch, headers=MERGE_PATCH)
    assert response.status_code == 422, response.text
    assert field in [error["loc"][1] for error in response.json()["detail"]]
    assert client.get("/invoice/536365").json() == before
    assert len(events(engine)) == count


def test_a_patch_that_is_not_an_object_is_422(client: TestClient, customer: str) -> None:
    assert client.post(f"/customer/{customer}/invoice", json=invoice("536365")).status_code == 201
    for body in (b"[1, 2]", b'"text"', b"{not json"):
        response = client.patch("/invoice/536365", content=body, headers=MERGE_PATCH)
        assert response.status_code == 422, body
        assert response.json()["detail"][0]["loc"][0] == "body"


def test_delete_removes_the_invoice_and_its_lines(client: TestClient, customer: str, engine: Engine) -> None:
    assert client.post(f"/customer/{customer}/invoice", json=invoice("536365")).status_code == 201
    assert client.delete("/invoice/536365").status_code == 204
    assert client.get("/invoice/536365").status_code == 404
    assert client.delete("/invoice/536365").status_code == 404
    assert row_counts(engine) == {"customers": 1, "invoices": 0, "invoice_lines": 0}
    deleted = events(engine)[-1]
    assert deleted["type"] == "invoice.deleted"
    assert deleted["data"]["invoice_no"] == "536365" and deleted["data"]["line_count"] == 2
    # Its customer can go now.
    assert client.delete(f"/customer/{customer}").status_code == 204


def test_delete_of_the_lines_of_a_stock_code(client: TestClient, engine: Engine) -> None:
    lines = [line("85123A", line_no=1), line("71053", line_no=2), line("85123A", line_no=3, quantity=1)]
    assert client.post("/invoice", json=invoice("536365", lines=lines)).status_code == 201
    assert client.delete("/invoice/536365/85123A/").status_code == 204
    assert client.get("/invoice/536365/85123A/").status_code == 404
    remaining = client.get("/invoice/536365").json()["lines"]
    assert [(x["line_no"], x["stock_code"]) for x in remaining] == [(2, "71053")]
    updated = events(engine)[-1]
    assert updated["type"] == "invoice.updated"
    assert updated["data"]["removed_line_nos"] == [1, 3] and updated["data"]["line_count"] == 1
    date = dt.datetime(2010, 12, 1, 8, 26)
    assert stored_hash(engine, "536365") == content_hash(
        invoice_no="536365",
        customer_id=None,
        invoice_date=date,
        country="United Kingdom",
        lines=[(2, "71053", "WHITE HANGING HEART T-LIGHT HOLDER", 6, Decimal("2.55"), date)],
    )
    assert client.delete("/invoice/536365/85123A/").status_code == 404
    assert client.delete("/invoice/404/85123A/").status_code == 404
