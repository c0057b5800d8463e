"""POST /customer, GET /customer/{id}, GET /customer/{id}/invoice."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.api.helpers import invoice, row_counts


def test_create_customer_returns_201_and_it_can_be_read(client: TestClient) -> None:
    created = client.post("/customer", json={"customer_id": "12345", "country": "Germany"})
    assert created.status_code == 201
    assert created.json() == {"customer_id": "12345", "country": "Germany"}

    read = client.get("/customer/12345")
    assert read.status_code == 200
    assert read.json() == {"customer_id": "12345", "country": "Germany"}


def test_integer_customer_id_is_stored_as_its_string(client: TestClient) -> None:
    created = client.post("/customer", json={"customer_id": 17850, "country": "United Kingdom"})
    assert created.status_code == 201
    assert created.json()["customer_id"] == "17850"
    assert client.get("/customer/17850").json()["customer_id"] == "17850"


def test_identical_replay_returns_200_and_stores_nothing(client: TestClient, engine: Engine) -> None:
    body = {"customer_id": "12345", "country": "Germany"}
    assert client.post("/customer", json=body).status_code == 201
    before = row_counts(engine)

    replay = client.post("/customer", json={"customer_id": 12345, "country": "Germany"})

    assert replay.status_code == 200
    assert replay.json() == body
    assert row_counts(engine) == before


def test_same_id_with_another_country_is_409_and_keeps_the_first(client: TestClient) -> None:
    assert client.post("/customer", json={"customer_id": "12345", "country": "Germany"}).status_code == 201

    conflict = client.post("/customer", json={"customer_id": "12345", "country": "France"})

    assert conflict.status_code == 409
    assert "12345" in conflict.json()["detail"]
    assert client.get("/customer/12345").json()["country"] == "Germany"


def test_unknown_customer_is_404_naming_it(client: TestClient) -> None:
    response = client.get("/customer/99999")
    assert response.status_code == 404
    assert response.json() == {"detail": "customer 99999 not found"}


def test_invalid_customer_body_is_422_naming_the_field(client: TestClient) -> None:
    cases = [
        ({"country": "Germany"}, "customer_id"),
        ({"customer_id": "12/45", "country": "Germany"}, "customer_id"),
        ({"customer_id": "", "country": "Germany"}, "customer_id"),
        ({"customer_id": "17\n850", "country": "Germany"}, "customer_id"),
        ({"customer_id": "nul\u0000", "country": "Germany"}, "customer_id"),
        ({"customer_id": "1" * 21, "country": "Germany"}, "customer_id"),
        ({"customer_id": "12345"}, "country"),
        ({"customer_id": "12345", "country": ""}, "country"),
        ({"customer_id": "12345", "country": "x" * 65}, "country"),
        ({"customer_id": "12345", "country": "Ger\u0000many"}, "country"),
    ]
    for body, field in cases:
        response = client.post("/customer", json=body)
        assert response.status_code == 422, body
        assert ["body", field] in [error["loc"] for error in response.json()["detail"]], body


def test_invalid_customer_id_in_the_path_is_422(client: TestClient) -> None:
    for path in ("/customer/" + "1" * 21, "/customer/a%01b"):
        response = client.get(path)
        assert response.status_code == 422, path
        assert response.json()["detail"][0]["loc"] == ["path", "customer_id"]


@pytest.mark.parametrize("customer_id", ["22ff32f22f", "a b", "Müller & Söhne", "O'Brien", "-5", "17850.0"])
def test_a_customer_id_is_any_text_without_slash_or_control_characters(
    client: TestClient, customer_id: str
) -> None:
    """The course's `POST /customer {"customer_id": "22ff32f22f", ...}`: ids are strings, not digits."""
    created = client.post("/customer", json={"customer_id": customer_id, "country": "Germany"})
    assert created.status_code == 201, created.text
    assert created.json() == {"customer_id": customer_id, "country": "Germany"}
    read = client.get(f"/customer/{quote(customer_id, safe='')}")
    assert read.status_code == 200
    assert read.json() == {"customer_id": customer_id, "country": "Germany"}


def test_customer_invoice_links_map_each_invoice_to_its_url(client: TestClient) -> None:
    client.post("/customer", json={"customer_id": "17850", "country": "United Kingdom"})
    assert client.get("/customer/17850/invoice").json() == {}
    for invoice_no, day in (("536366", "2010-12-02"), ("536365", "2010-12-01"), ("C536379", "2010-12-01")):
        body = invoice(invoice_no, invoice_date=f"{day}T08:26:00")
        assert client.post("/customer/17850/invoice", json=body).status_code == 201

    links = client.get("/customer/17850/invoice")

    assert links.status_code == 200
    assert links.json() == {
        "id_536365": "/invoice/536365",
        "id_C536379": "/invoice/C536379",
        "id_536366": "/invoice/536366",
    }
    assert list(links.json()) == ["id_536365", "id_C536379", "id_536366"]  # by day, then number


def test_invoice_links_of_unknown_customer_is_404(client: TestClient) -> None:
    response = client.get("/customer/99999/invoice")
    assert response.status_code == 404
    assert "99999" in response.json()["detail"]
