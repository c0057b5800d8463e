"""Invoices and lines: POST/GET /invoice..., POST /customer/{id}/invoice, lines by stock code."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.api.helpers import invoice, line, row_counts
from tests.api.test_bulk_arrow import arrow_body, post_arrow


@pytest.fixture
def customer(client: TestClient) -> str:
    response = client.post("/customer", json={"customer_id": "17850", "country": "United Kingdom"})
    assert response.status_code == 201
    return "17850"


def test_create_invoice_for_customer_returns_the_invoice(client: TestClient, customer: str) -> None:
    response = client.post(f"/customer/{customer}/invoice", json=invoice("536365"))

    assert response.status_code == 201
    assert response.json() == {
        "invoice_no": "536365",
        "invoice_date": "2010-12-01T08:26:00",
        "invoice_day": "2010-12-01",
        "country": "United Kingdom",
        "customer_id": "17850",
        "customer": {"url": "/customer/17850"},
        "lines": [
            {
                "line_no": 1,
                "stock_code": "85123A",
                "description": "WHITE HANGING HEART T-LIGHT HOLDER",
                "quantity": 6,
                "unit_price": "2.550",
                "invoice_date": "2010-12-01T08:26:00",
            },
            {
                "line_no": 2,
                "stock_code": "71053",
                "description": "WHITE METAL LANTERN",
                "quantity": 6,
                "unit_price": "3.390",
                "invoice_date": "2010-12-01T08:26:00",
            },
        ],
    }
    assert client.get("/invoice/536365").json() == response.json()


def test_identical_invoice_replay_is_200_and_stores_nothing_new(
    client: TestClient, engine: Engine, customer: str
) -> None:
    body = invoice("536365")
    first = client.post(f"/customer/{customer}/invoice", json=body)
    before = row_counts(engine)

    replay = client.post(f"/customer/{customer}/invoice", json=body)

    assert replay.status_code == 200
    assert replay.json() == first.json()
    assert row_counts(engine) == before == {"customers": 1, "invoices": 1, "invoice_lines": 2}


def test_invoice_number_taken_by_other_data_is_409(client: TestClient, engine: Engine, customer: str) -> None:
    client.post(f"/customer/{customer}/invoice", json=invoice("536365"))
    before = row_counts(engine)
    other_lines = [line("85123A", line_no=1, quantity=7)]

    for body in (invoice("536365", country="France"), invoice("536365", lines=other_lines)):
        response = client.post(f"/customer/{customer}/invoice", json=body)
        assert response.status_code == 409
        assert response.json()["invoice_nos"] == ["536365"]
    assert row_counts(engine) == before


def test_invoice_of_unknown_customer_is_404(client: TestClient, engine: Engine) -> None:
    response = client.post("/customer/99999/invoice", json=invoice())
    assert response.status_code == 404
    assert response.json() == {"detail": "customer 99999 not found"}
    assert row_counts(engine)["invoices"] == 0


def test_invoice_without_customer_through_post_invoice(client: TestClient) -> None:
    response = client.post("/invoice", json=invoice("536414"))
    assert response.status_code == 201
    assert response.json()["customer_id"] is None
    assert response.json()["customer"] is None
    assert client.post("/invoice", json=invoice("536414")).status_code == 200


def test_post_invoice_with_customer_links_it(client: TestClient, customer: str) -> None:
    response = client.post("/invoice", json=invoice("536365", customer_id=int(customer)))
    assert response.status_code == 201
    assert response.json()["customer"] == {"url": "/customer/17850"}
    assert client.get(f"/customer/{customer}/invoice").json() == {"id_536365": "/invoice/536365"}


def test_post_invoice_with_unknown_customer_is_409_naming_the_field(client: TestClient) -> None:
    response = client.post("/invoice", json=invoice(customer_id="99999"))
    assert response.status_code == 409  # well formed, but not stored: a conflict with the state
    assert response.json()["detail"][0]["loc"] == ["body", "customer_id"]


def test_invoice_numbers_are_strings_and_integers_are_accepted(client: TestClient) -> None:
    for invoice_no in ("C536379", "A563185"):
        assert client.post("/invoice", json=invoice(invoice_no)).json()["invoice_no"] == invoice_no
    created = client.post("/invoice", json=invoice(536370))  # type: ignore[arg-type]
    assert created.status_code == 201
    assert created.json()["invoice_no"] == "536370"
    assert client.get("/invoice/536370").status_code == 200


def test_invoice_keeps_its_own_country(client: TestClient, customer: str) -> None:
    response = client.post(f"/customer/{customer}/invoice", json=invoice("536365", country="EIRE"))
    assert response.json()["country"] == "EIRE"
    assert client.get(f"/customer/{customer}").json()["country"] == "United Kingdom"


def test_line_keeps_its_own_timestamp_and_description(client: TestClient) -> None:
    lines = [
        line("85123A", description="CREAM HEART", line_no=1),
        line("85123A", description="WHITE HEART", line_no=2, invoice_date="2010-12-01T08:27:00"),
        line("85123A", description=None, line_no=3),
    ]
    body = client.post("/invoice", json=invoice("536365", lines=lines)).json()

    assert [(x["description"], x["invoice_date"]) for x in body["lines"]] == [
        ("CREAM HEART", "2010-12-01T08:26:00"),
        ("WHITE HEART", "2010-12-01T08:27:00"),
        (None, "2010-12-01T08:26:00"),
    ]


def test_lines_without_line_no_are_numbered_in_order(client: TestClient) -> None:
    lines = [line("A"), line("B", line_no=5), line("C")]
    body = client.post("/invoice", json=invoice(lines=lines)).json()
    assert [(x["line_no"], x["stock_code"]) for x in body["lines"]] == [(1, "A"), (5, "B"), (6, "C")]


def test_invoice_with_no_lines(client: TestClient) -> None:
    body = invoice("536365")
    del body["lines"]
    response = client.post("/invoice", json=body)
    assert response.status_code == 201
    assert response.json()["lines"] == []


def test_prices_are_exact_decimals_end_to_end(client: TestClient) -> None:
    lines = [
        line("PADS", line_no=1, unit_price="0.001"),
        line("B", line_no=2, unit_price="-11062.06", quantity=1),
        line("M", line_no=3, unit_price="0", quantity=-1),
        line("DOT", line_no=4, unit_price="38970.00"),
        line("POST", line_no=5, unit_price="999999999.999"),
        line("X", line_no=6, unit_price=2.55),  # type: ignore[arg-type]  # a JSON number is read exactly too
    ]
    client.post("/invoice", json=invoice("A563185", lines=lines))

    stored = client.get("/invoice/A563185").json()["lines"]

    assert [x["unit_price"] for x in stored] == [
        "0.001",
        "-11062.060",
        "0.000",
        "38970.000",
        "999999999.999",
        "2.550",
    ]
    assert [x["quantity"] for x in stored] == [6, 1, -1, 6, 6, 6]


def test_invalid_invoice_body_is_422_naming_the_field(client: TestClient) -> None:
    cases = [
        (invoice(lines=[line(unit_price="2.5501")]), ["body", "lines", 0, "unit_price"]),
        (invoice(lines=[line(unit_price="1234567890.5")]), ["body", "lines", 0, "unit_price"]),
        (invoice(lines=[line(unit_price="NaN")]), ["body", "lines", 0, "unit_price"]),
        (invoice(lines=[line(quantity=2**63)]), ["body", "lines", 0, "quantity"]),
        (invoice(lines=[line(quantity=1.5)]), ["body", "lines", 0, "quantity"]),  # type: ignore[arg-type]
        (invoice(lines=[line(line_no=0)]), ["body", "lines", 0, "line_no"]),
        (invoice(lines=[line(line_no=2**31)]), ["body", "lines", 0, "line_no"]),
        (invoice(lines=[line("x" * 33)]), ["body", "lines", 0, "stock_code"]),
        (invoice(lines=[line("A/B")]), ["body", "lines", 0, "stock_code"]),
        (invoice(lines=[line(description="d" * 256)]), ["body", "lines", 0, "description"]),
        (invoice(invoice_no="5363 65"), ["body", "invoice_no"]),
        (invoice(invoice_no="1" * 21), ["body", "invoice_no"]),
        (invoice(invoice_date="2010-12-01T08:26:00+01:00"), ["body", "invoice_date"]),
        (invoice(invoice_date="yesterday"), ["body", "invoice_date"]),
        (invoice(country=None), ["body", "country"]),  # type: ignore[arg-type]
    ]
    for body, loc in cases:
        response = client.post("/invoice", json=body)
        assert response.status_code == 422, body
        assert loc in [error["loc"] for error in response.json()["detail"]], response.json()


def test_unknown_invoice_is_404_naming_it(client: TestClient) -> None:
    response = client.get("/invoice/C536379")
    assert response.status_code == 404
    assert response.json() == {"detail": "invoice C536379 not found"}


def test_add_line_gets_the_next_line_no(client: TestClient, engine: Engine) -> None:
    client.post("/invoice", json=invoice("536365"))

    response = client.post(
        "/invoice/536365/22752/", json={"quantity": 2, "unit_price": "7.65", "description": "SET 7 BABUSHKA"}
    )

    assert response.status_code == 201
    assert response.json() == {
        "line_no": 3,
        "stock_code": "22752",
        "description": "SET 7 BABUSHKA",
        "quantity": 2,
        "unit_price": "7.650",
        "invoice_date": "2010-12-01T08:26:00",
    }
    assert client.get("/invoice/536365").json()["lines"][-1] == response.json()
    assert row_counts(engine)["invoice_lines"] == 3


def test_adding_the_same_line_twice_without_line_no_makes_two_lines(client: TestClient) -> None:
    client.post("/invoice", json=invoice("536365", lines=[]))
    body = {"quantity": 1, "unit_price": "2.55", "description": "DUPLICATE LINE"}
    assert client.post("/invoice/536365/85123A/", json=body).json()["line_no"] == 1
    assert client.post("/invoice/536365/85123A/", json=body).json()["line_no"] == 2

    lines = client.get("/invoice/536365/85123A/")

    assert lines.status_code == 200
    assert [x["line_no"] for x in lines.json()] == [1, 2]


def test_add_line_with_line_no_is_replayable(client: TestClient, engine: Engine) -> None:
    client.post("/invoice", json=invoice("536365"))
    body = {"line_no": 7, "quantity": 1, "unit_price": "1.25", "invoice_date": "2010-12-01T09:00:00"}
    assert client.post("/invoice/536365/POST/", json=body).status_code == 201
    before = row_counts(engine)

    assert client.post("/invoice/536365/POST/", json=body).status_code == 200
    assert client.post("/invoice/536365/POST/", json={**body, "quantity": 2}).status_code == 409
    assert client.post("/invoice/536365/DOT/", json=body).status_code == 409
    assert row_counts(engine) == before


def test_add_line_to_unknown_invoice_is_404(client: TestClient) -> None:
    response = client.post("/invoice/536365/85123A/", json={"quantity": 1, "unit_price": "1"})
    assert response.status_code == 404
    assert response.json() == {"detail": "invoice 536365 not found"}


def test_add_line_bad_body_is_422_naming_the_field(client: TestClient) -> None:
    client.post("/invoice", json=invoice("536365"))
    response = client.post("/invoice/536365/85123A/", json={"quantity": "many", "unit_price": "1"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "quantity"]


def test_replay_after_adding_a_line_compares_with_the_new_content(client: TestClient) -> None:
    client.post("/invoice", json=invoice("536365"))
    added = client.post("/invoice/536365/22752/", json={"quantity": 2, "unit_price": "7.65"}).json()

    old_body = invoice("536365")
    new_body = invoice("536365", lines=[*old_body["lines"], {**added, "stock_code": "22752"}])

    assert client.post("/invoice", json=old_body).status_code == 409
    assert client.post("/invoice", json=new_body).status_code == 200


def test_stock_codes_with_spaces_work_url_encoded(client: TestClient) -> None:
    lines = [line("BANK CHARGES", line_no=1, unit_price="15", quantity=1, description="Bank Charges")]
    client.post("/invoice", json=invoice("C536379", lines=lines))

    added = client.post("/invoice/C536379/BANK%20CHARGES/", json={"quantity": -1, "unit_price": "15"})
    assert added.status_code == 201
    assert added.json()["stock_code"] == "BANK CHARGES"

    read = client.get("/invoice/C536379/BANK%20CHARGES/")
    assert read.status_code == 200
    assert [(x["line_no"], x["quantity"]) for x in read.json()] == [(1, 1), (2, -1)]


def test_lines_of_a_stock_code_not_on_the_invoice_is_404(client: TestClient) -> None:
    client.post("/invoice", json=invoice("536365"))
    response = client.get("/invoice/536365/NOPE/")
    assert response.status_code == 404
    assert "NOPE" in response.json()["detail"]
    assert client.get("/invoice/999999/85123A/").json() == {"detail": "invoice 999999 not found"}


def test_the_course_example_invoice_takes_its_customers_country_and_midnight(client: TestClient) -> None:
    """The course's `POST /customer/12345/invoice {"invoice_no": 123456, "invoice_date": "2021-01-05"}`."""
    assert client.post("/customer", json={"customer_id": "12345", "country": "Germany"}).status_code == 201
    response = client.post(
        "/customer/12345/invoice", json={"invoice_no": 123456, "invoice_date": "2021-01-05"}
    )
    assert response.status_code == 201, response.text
    assert response.json() == {
        "invoice_no": "123456",
        "invoice_date": "2021-01-05T00:00:00",
        "invoice_day": "2021-01-05",
        "country": "Germany",
        "customer_id": "12345",
        "customer": {"url": "/customer/12345"},
        "lines": [],
    }
    # The replay is recognised as identical: the default was applied before the content hash.
    again = client.post("/customer/12345/invoice", json={"invoice_no": 123456, "invoice_date": "2021-01-05"})
    assert again.status_code == 200
    # A country given is kept.
    other = client.post(
        "/customer/12345/invoice",
        json={"invoice_no": "123457", "invoice_date": "2021-01-05", "country": "EIRE"},
    )
    assert other.json()["country"] == "EIRE"


def test_an_invoice_without_customer_or_country_is_422_naming_country(
    client: TestClient, engine: Engine
) -> None:
    response = client.post("/invoice", json={"invoice_no": "1", "invoice_date": "2021-01-05"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "country"]
    unknown = client.post(
        "/invoice", json={"invoice_no": "1", "invoice_date": "2021-01-05", "customer_id": "404"}
    )
    assert unknown.status_code == 409
    assert unknown.json()["detail"][0]["loc"] == ["body", "customer_id"]
    assert (
        client.post(
            "/customer/404/invoice", json={"invoice_no": "1", "invoice_date": "2021-01-05"}
        ).status_code
        == 404
    )
    assert row_counts(engine)["invoices"] == 0


@pytest.mark.parametrize("bad", ["2021-13-05", "2021-01-32", "05/01/2021", "2021-01-05Z"])
def test_a_bad_date_is_422_naming_invoice_date(client: TestClient, bad: str) -> None:
    response = client.post("/invoice", json={"invoice_no": "1", "invoice_date": bad, "country": "X"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "invoice_date"]


def test_a_bulk_invoice_still_needs_its_country(client: TestClient) -> None:
    body = {"invoices": [{"invoice_no": "1", "invoice_date": "2021-01-05", "customer_id": None}]}
    response = client.post("/bulk/invoices", json=body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "invoices", 0, "country"]


@pytest.mark.parametrize("path", ["/invoice", "/bulk/invoices", "/invoice/536365", "arrow"])
def test_lines_sharing_a_number_are_409_naming_the_lines_and_store_nothing(
    client: TestClient, engine: Engine, path: str
) -> None:
    """No JSON Schema can say "line numbers are unique", so the schema accepts such a body; the write
    refuses it as a conflict within the request, as it refuses an invoice repeated with other content."""
    body = invoice("536365", lines=[line("A", line_no=1), line("B", line_no=1)])
    if path == "/bulk/invoices":
        response = client.post(path, json={"invoices": [invoice("536364"), body]})
        loc = ["body", "invoices", 1, "lines"]
    elif path == "arrow":
        response = post_arrow(client, arrow_body([invoice("536364"), body]))
        loc = ["body", "invoices", 1, "lines"]
    elif path == "/invoice":
        response = client.post(path, json=body)
        loc = ["body", "lines"]
    else:
        del body["invoice_no"]
        response = client.put(path, json=body)
        loc = ["body", "lines"]
    assert response.status_code == 409, response.text
    assert response.json()["detail"] == [
        {"type": "line_no_duplicate", "loc": loc, "msg": "line_no 1 appears more than once"}
    ]
    assert row_counts(engine)["invoices"] == 0
