"""POST /bulk/customers and POST /bulk/invoices: the job's write path."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.api.helpers import invoice, line, row_counts


def bulk_invoices(client: TestClient, invoices: list[dict[str, Any]]) -> Any:
    return client.post("/bulk/invoices", json={"invoices": invoices})


@pytest.fixture
def customers(client: TestClient) -> list[str]:
    body = {
        "customers": [
            {"customer_id": "17850", "country": "United Kingdom"},
            {"customer_id": 13047, "country": "United Kingdom"},
        ]
    }
    assert client.post("/bulk/customers", json=body).json() == {"created": 2, "existing": 0, "conflicts": []}
    return ["17850", "13047"]


def test_bulk_customers_creates_new_and_reports_existing_and_conflicts(
    client: TestClient, engine: Engine, customers: list[str]
) -> None:
    body = {
        "customers": [
            {"customer_id": "17850", "country": "United Kingdom"},  # stored, same country
            {"customer_id": "13047", "country": "EIRE"},  # stored, other country
            {"customer_id": "12370", "country": "Cyprus"},  # new
            {"customer_id": "12370", "country": "Austria"},  # new, repeated with another country
            {"customer_id": "12431", "country": "Australia"},  # new
        ]
    }

    response = client.post("/bulk/customers", json=body)

    assert response.status_code == 200
    assert response.json() == {"created": 2, "existing": 2, "conflicts": ["12370", "13047"]}
    assert client.get("/customer/13047").json()["country"] == "United Kingdom"
    assert client.get("/customer/12370").json()["country"] == "Cyprus"  # the first posted
    assert row_counts(engine)["customers"] == 4

    again = client.post("/bulk/customers", json=body)
    assert again.json() == {"created": 0, "existing": 4, "conflicts": ["12370", "13047"]}
    assert row_counts(engine)["customers"] == 4


def test_bulk_customers_validation(client: TestClient) -> None:
    too_many = {"customers": [{"customer_id": str(n), "country": "X"} for n in range(10_001)]}
    assert client.post("/bulk/customers", json=too_many).json()["detail"][0]["loc"] == ["body", "customers"]
    bad = client.post(
        "/bulk/customers", json={"customers": [{"customer_id": "1", "country": "X"}, {"customer_id": "x/y"}]}
    )
    assert bad.status_code == 422
    locs = [error["loc"] for error in bad.json()["detail"]]
    assert ["body", "customers", 1, "customer_id"] in locs
    assert ["body", "customers", 1, "country"] in locs
    assert client.post("/bulk/customers", json={"customers": []}).json() == {
        "created": 0,
        "existing": 0,
        "conflicts": [],
    }


def test_bulk_invoices_stores_invoices_with_their_lines(
    client: TestClient, engine: Engine, customers: list[str]
) -> None:
    batch = [
        invoice("536365", customer_id="17850"),
        invoice("536366", customer_id="13047", lines=[line("22633", line_no=1, unit_price="1.85")]),
        invoice(
            "536414",
            customer_id=None,
            lines=[line("22139", line_no=1, description=None, quantity=56, unit_price="0")],
        ),
        invoice(
            "C536379", customer_id="17850", lines=[line("D", line_no=1, quantity=-1, unit_price="27.50")]
        ),
    ]

    response = bulk_invoices(client, batch)

    assert response.status_code == 200
    assert response.json() == {"created": 4, "unchanged": 0, "lines_created": 5}
    assert row_counts(engine) == {"customers": 2, "invoices": 4, "invoice_lines": 5}
    stored = client.get("/invoice/C536379").json()
    assert stored["customer"] == {"url": "/customer/17850"}
    assert stored["lines"][0]["unit_price"] == "27.500"
    assert client.get("/invoice/536414").json()["customer_id"] is None


def test_posting_the_same_batch_twice_stores_each_row_once(
    client: TestClient, engine: Engine, customers: list[str]
) -> None:
    batch = [invoice(str(536365 + n), customer_id="17850") for n in range(5)]
    assert bulk_invoices(client, batch).json() == {"created": 5, "unchanged": 0, "lines_created": 10}
    before = row_counts(engine)

    replay = bulk_invoices(client, batch)

    assert replay.status_code == 200
    assert replay.json() == {"created": 0, "unchanged": 5, "lines_created": 0}
    assert row_counts(engine) == before


def test_overlapping_batch_creates_only_the_new_invoices(
    client: TestClient, engine: Engine, customers: list[str]
) -> None:
    bulk_invoices(client, [invoice("536365", customer_id="17850"), invoice("536366", customer_id="17850")])

    response = bulk_invoices(
        client, [invoice("536366", customer_id="17850"), invoice("536367", customer_id="17850")]
    )

    assert response.json() == {"created": 1, "unchanged": 1, "lines_created": 2}
    assert row_counts(engine)["invoices"] == 3


def test_conflicting_invoice_makes_the_whole_batch_409_and_stores_nothing(
    client: TestClient, engine: Engine, customers: list[str]
) -> None:
    bulk_invoices(client, [invoice("536365", customer_id="17850"), invoice("536366", customer_id="17850")])
    before = row_counts(engine)
    batch = [
        invoice("536367", customer_id="17850"),  # new: must not be stored either
        invoice("536365", customer_id="13047"),  # other customer
        invoice("536366", customer_id="17850", lines=[line(line_no=1, unit_price="2.56")]),  # other line
    ]

    response = bulk_invoices(client, batch)

    assert response.status_code == 409
    assert response.json()["invoice_nos"] == ["536365", "536366"]
    assert "536365" in response.json()["detail"]
    assert row_counts(engine) == before
    assert client.get("/invoice/536367").status_code == 404


def test_same_invoice_twice_in_a_batch(client: TestClient, engine: Engine, customers: list[str]) -> None:
    same = bulk_invoices(client, [invoice("536365"), invoice("536365")])
    assert same.json() == {"created": 1, "unchanged": 0, "lines_created": 2}

    different = bulk_invoices(client, [invoice("536366"), invoice("536366", country="France")])
    assert different.status_code == 409
    assert different.json()["invoice_nos"] == ["536366"]
    assert row_counts(engine)["invoices"] == 1


def test_unknown_customer_is_409_naming_the_field_and_stores_nothing(
    client: TestClient, engine: Engine, customers: list[str]
) -> None:
    batch = [invoice("536365", customer_id="17850"), invoice("536366", customer_id="99999")]

    response = bulk_invoices(client, batch)

    assert response.status_code == 409  # well formed, but not stored: a conflict with the state
    assert response.json()["detail"][0]["loc"] == ["body", "invoices", 1, "customer_id"]
    assert "99999" in response.json()["detail"][0]["msg"]
    assert row_counts(engine)["invoices"] == 0


def test_bulk_invoice_limits(client: TestClient) -> None:
    too_many_invoices = [invoice(str(n), lines=[]) for n in range(5_001)]
    response = bulk_invoices(client, too_many_invoices)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "invoices"]

    lines = [line("85123A", line_no=n + 1) for n in range(25_001)]
    response = bulk_invoices(client, [invoice("1", lines=lines), invoice("2", lines=lines)])
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "invoices"]
    assert "50000" in response.json()["detail"][0]["msg"]


def test_bulk_invoice_field_errors_name_the_invoice_and_line(client: TestClient) -> None:
    batch = [invoice("1"), invoice("2", lines=[line(line_no=1), line(line_no=2, unit_price="0.0001")])]
    response = bulk_invoices(client, batch)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "invoices", 1, "lines", 1, "unit_price"]


def test_bulk_invoice_read_back_matches_what_was_posted(client: TestClient, customers: list[str]) -> None:
    lines = [
        line("85123A", line_no=1, unit_price="0.001", invoice_date="2011-09-25T13:10:00"),
        line("85123A", line_no=2, unit_price="-11062.06", description=None),
        line("85123A", line_no=3, unit_price="-11062.06", description=None),  # a duplicate line
    ]
    bulk_invoices(
        client, [invoice("A563185", invoice_date="2011-09-25T13:09:00", customer_id="17850", lines=lines)]
    )

    stored = client.get("/invoice/A563185").json()

    assert stored["invoice_day"] == "2011-09-25"
    assert [(x["line_no"], x["unit_price"], x["invoice_date"]) for x in stored["lines"]] == [
        (1, "0.001", "2011-09-25T13:10:00"),
        (2, "-11062.060", "2011-09-25T13:09:00"),
        (3, "-11062.060", "2011-09-25T13:09:00"),
    ]
