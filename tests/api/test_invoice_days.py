"""GET /invoice-days: per invoice day, the invoices, lines and amount the service holds, computed by the
database, checked against figures computed by hand (issue 28: the lake equals the service)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import invoice, line


def post(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post("/invoice", json=body)
    assert response.status_code == 201, response.text


@pytest.fixture
def stored(client: TestClient) -> TestClient:
    # 2010-12-01: two invoices, four lines: 6 x 2.55 + 6 x 3.39 + (-2) x 0.001 + 1 x 999999999.999
    post(client, invoice("536365"))
    post(
        client,
        invoice(
            "536366",
            invoice_date="2010-12-01T17:00:00",
            lines=[
                line("A", quantity=-2, unit_price="0.001"),
                line("B", quantity=1, unit_price="999999999.999"),
            ],
        ),
    )
    # 2010-12-02: one invoice without lines.
    post(client, invoice("536367", invoice_date="2010-12-02T09:00:00", lines=[]))
    # 2010-12-03: a cancellation, -12 x 1.25, and a free line, 3 x 0.
    post(
        client,
        invoice(
            "C536368",
            invoice_date="2010-12-03",
            lines=[line("C", quantity=-12, unit_price="1.25"), line("D", quantity=3, unit_price="0")],
        ),
    )
    return client


DAY1 = {"invoice_day": "2010-12-01", "invoices": 2, "lines": 4, "amount": "1000000035.637"}
DAY2 = {"invoice_day": "2010-12-02", "invoices": 1, "lines": 0, "amount": "0.000"}
DAY3 = {"invoice_day": "2010-12-03", "invoices": 1, "lines": 2, "amount": "-15.000"}


def days(client: TestClient, **params: str) -> list[dict[str, Any]]:
    response = client.get("/invoice-days", params=params)
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()["days"]
    return result


def test_each_day_is_counted_and_summed_exactly(stored: TestClient) -> None:
    assert days(stored) == [DAY1, DAY2, DAY3]
    assert days(stored, start="2010-12-02", end="2010-12-03") == [DAY2, DAY3]
    assert days(stored, start="2010-12-02", end="2010-12-02") == [DAY2]
    assert days(stored, end="2010-12-01") == [DAY1]
    assert days(stored, start="2010-12-04") == []
    assert days(stored, start="2010-12-03", end="2010-12-01") == []  # an end before the start: no day


def test_the_figures_follow_changes(stored: TestClient) -> None:
    assert stored.delete("/invoice/536365/85123A/").status_code == 204  # 6 x 2.55 less
    assert stored.delete("/invoice/536367").status_code == 204
    assert days(stored, start="2010-12-01", end="2010-12-02") == [
        {"invoice_day": "2010-12-01", "invoices": 2, "lines": 3, "amount": "1000000020.337"}
    ]


def test_amounts_past_64_bits_stay_exact(client: TestClient) -> None:
    # SQLite keeps thousandths in 64-bit integers: this product (~1e27) and this sum (~1.8e19) do not fit.
    post(
        client,
        invoice(
            "1",
            invoice_date="2011-01-01",
            lines=[
                line("A", quantity=10**15 - 1, unit_price="999999999.999"),
                line("B", quantity=-1, unit_price="0.001"),
            ],
        ),
    )
    post(
        client,
        invoice(
            "2",
            invoice_date="2011-01-02",
            lines=[
                line("A", quantity=9_000_000, unit_price="999999999.999"),
                line("B", quantity=9_000_000, unit_price="999999999.999"),
            ],
        ),
    )
    first = {"invoice_day": "2011-01-01", "invoices": 1, "lines": 2, "amount": "999999999998999000000000.000"}
    second = {"invoice_day": "2011-01-02", "invoices": 1, "lines": 2, "amount": "17999999999982000.000"}
    assert days(client) == [first, second]
    # Each alone: a product SQLite would make a float, and a sum SQLite would refuse.
    assert days(client, end="2011-01-01") == [first]
    assert days(client, start="2011-01-02") == [second]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "2010-13-01"}, "start"),
        ({"start": "2011-02-29"}, "start"),
        ({"end": "yesterday"}, "end"),
        ({"end": "2010-12-01T00:00:00"}, "end"),
        ({"start": ""}, "start"),
    ],
)
def test_a_bad_date_is_422_naming_it(client: TestClient, params: dict[str, str], field: str) -> None:
    response = client.get("/invoice-days", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", field]
