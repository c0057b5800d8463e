"""GET /invoices and GET /customers: paged read-back with an opaque keyset cursor."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from retail_contract import wire
from tests.api.helpers import invoice, line

# (invoice_no, day, customer): three days, several invoices per day, numbers not in day order.
INVOICES = [
    ("536365", "2010-12-01", "17850"),
    ("536366", "2010-12-01", "17850"),
    ("C536379", "2010-12-01", None),
    ("536367", "2010-12-01", "13047"),
    ("536520", "2010-12-02", "14729"),
    ("536521", "2010-12-02", None),
    ("536368", "2010-12-03", "13047"),
    ("536369", "2010-12-03", "12583"),
]


@pytest.fixture
def stored(client: TestClient) -> None:
    customers = sorted({customer for _no, _day, customer in INVOICES if customer})
    body = {"customers": [{"customer_id": c, "country": "United Kingdom"} for c in customers]}
    assert client.post("/bulk/customers", json=body).status_code == 200
    batch = [
        invoice(
            no,
            invoice_date=f"{day}T09:00:00",
            customer_id=customer,
            lines=[line("85123A", line_no=1), line("BANK CHARGES", line_no=2, unit_price="0.001")],
        )
        for no, day, customer in INVOICES
    ]
    assert client.post("/bulk/invoices", json={"invoices": batch}).status_code == 200


def read_all(client: TestClient, path: str, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Every item, following next_cursor; also the number of pages."""
    items: list[dict[str, Any]] = []
    pages = 0
    cursor = None
    while True:
        response = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        pages += 1
        items += response.json()["items"]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return items, pages


def test_invoices_page_through_every_invoice_in_day_then_number_order(
    client: TestClient, stored: None
) -> None:
    items, pages = read_all(client, "/invoices", limit=3)

    assert pages == 3
    expected = sorted((day, no) for no, day, _customer in INVOICES)
    assert [(x["invoice_day"], x["invoice_no"]) for x in items] == expected
    assert all(len(x["lines"]) == 2 for x in items)
    assert items[0]["lines"][1] == {
        "line_no": 2,
        "stock_code": "BANK CHARGES",
        "description": "WHITE HANGING HEART T-LIGHT HOLDER",
        "quantity": 6,
        "unit_price": "0.001",
        "invoice_date": "2010-12-01T09:00:00",
    }


def test_invoices_range_is_inclusive_at_both_ends(client: TestClient, stored: None) -> None:
    items, _pages = read_all(client, "/invoices", start="2010-12-02", end="2010-12-03", limit=2)
    assert [x["invoice_no"] for x in items] == ["536520", "536521", "536368", "536369"]

    one_day = client.get("/invoices", params={"start": "2010-12-02", "end": "2010-12-02"}).json()
    assert [x["invoice_no"] for x in one_day["items"]] == ["536520", "536521"]
    assert one_day["next_cursor"] is None

    empty = client.get("/invoices", params={"start": "2011-01-01", "end": "2011-01-31"}).json()
    assert empty == {"items": [], "next_cursor": None}


def test_exactly_full_last_page_ends_with_no_cursor(client: TestClient, stored: None) -> None:
    page = client.get("/invoices", params={"limit": len(INVOICES)}).json()
    assert len(page["items"]) == len(INVOICES)
    assert page["next_cursor"] is None


def test_customers_with_an_invoice_in_the_range(client: TestClient, stored: None) -> None:
    items, pages = read_all(client, "/customers", limit=2)
    assert pages == 2
    assert [x["customer_id"] for x in items] == ["12583", "13047", "14729", "17850"]
    assert items[0] == {"customer_id": "12583", "country": "United Kingdom"}

    day_one, _pages = read_all(client, "/customers", start="2010-12-01", end="2010-12-01", limit=1)
    assert [x["customer_id"] for x in day_one] == ["13047", "17850"]

    client.post("/customer", json={"customer_id": "99999", "country": "France"})  # no invoice
    everyone, _pages = read_all(client, "/customers")
    assert "99999" not in [x["customer_id"] for x in everyone]


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "%%%",
        "",
        "2010-12-01",
        "yesterday_536365",
        "2010-13-01_536365",
        "2010-12-01_5363\u000065",
        "2010-12-01_53/65",
        "17850",  # a customers cursor on /invoices
        "2010-12-01_" + "1" * 21,
    ],
)
def test_bad_invoices_cursor_is_422(client: TestClient, cursor: str) -> None:
    response = client.get("/invoices", params={"cursor": cursor})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "cursor"]


def test_the_invoices_cursor_is_the_last_position_and_any_pattern_match_is_one(
    client: TestClient, stored: None
) -> None:
    """The schema says exactly what is accepted: every cursor matching its pattern is a keyset
    position, a day past its month's end included."""
    everything = client.get("/invoices").json()["items"]
    first = client.get("/invoices", params={"limit": 1}).json()
    last = first["items"][0]
    assert first["next_cursor"] == f"{last['invoice_day']}_{last['invoice_no']}"
    rest = client.get("/invoices", params={"cursor": first["next_cursor"]}).json()["items"]
    assert [first["items"][0], *rest] == everything
    assert client.get("/invoices", params={"cursor": "0000-01-01_0"}).json()["items"] == everything
    after_november = client.get("/invoices", params={"cursor": "2010-11-31_0"}).json()["items"]
    assert after_november == [x for x in everything if x["invoice_day"] >= "2010-12-01"]
    assert client.get("/invoices", params={"cursor": "9999-12-31_zzz"}).json()["items"] == []


def test_bad_customers_cursor_is_422(client: TestClient, stored: None) -> None:
    for cursor in ("a/b", "1\u0000", "x" * 21, ""):
        response = client.get("/customers", params={"cursor": cursor})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["query", "cursor"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 5001}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"start": "2010-13-01"}, "start"),
        ({"end": "tomorrow"}, "end"),
        ({"start": "0"}, "start"),  # a date is YYYY-MM-DD, not a Unix timestamp
        ({"end": "2011-02-29"}, "end"),
    ],
)
def test_bad_paging_parameters_are_422(client: TestClient, params: dict[str, Any], field: str) -> None:
    for path in ("/invoices", "/customers"):
        response = client.get(path, params=params)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["query", field]


def test_an_end_before_the_start_is_an_empty_range(client: TestClient, stored: None) -> None:
    for path in ("/invoices", "/customers"):
        response = client.get(path, params={"start": "2010-12-02", "end": "2010-12-01"})
        assert response.status_code == 200
        assert response.json() == {"items": [], "next_cursor": None}


ARROW = wire.ARROW_STREAM


def read_all_arrow(client: TestClient, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Every invoice through the Arrow representation, following `X-Next-Cursor`."""
    items: list[dict[str, Any]] = []
    pages = 0
    cursor = None
    while True:
        response = client.get(
            "/invoices",
            params={**params, **({"cursor": cursor} if cursor else {})},
            headers={"Accept": ARROW},
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == ARROW
        pages += 1
        table = pa.ipc.open_stream(response.content).read_all()
        assert table.schema == wire.INVOICE_PAGE_SCHEMA
        items += table.to_pylist()
        cursor = response.headers.get("x-next-cursor")
        if cursor is None:
            return items, pages


def _as_json(invoice: dict[str, Any]) -> dict[str, Any]:
    """An Arrow page row spelled as the JSON page spells it."""
    return {
        "invoice_no": invoice["invoice_no"],
        "invoice_date": invoice["invoice_date"].isoformat(),
        "invoice_day": invoice["invoice_day"].isoformat(),
        "country": invoice["country"],
        "customer_id": invoice["customer_id"],
        "lines": [
            {
                **line,
                "unit_price": format(line["unit_price"], "f"),
                "invoice_date": line["invoice_date"].isoformat(),
            }
            for line in invoice["lines"]
        ],
    }


@pytest.mark.parametrize("limit", [1, 3, 1000])
def test_the_arrow_page_holds_what_the_json_page_holds(client: TestClient, stored: None, limit: int) -> None:
    # An invoice without lines must survive the nesting too.
    assert (
        client.post(
            "/invoice", json=invoice("536999", invoice_date="2010-12-02T10:00:00", lines=[])
        ).status_code
        == 201
    )
    params = {"start": "2010-12-01", "end": "2010-12-03", "limit": limit}
    from_json, json_pages = read_all(client, "/invoices", **params)
    from_arrow, arrow_pages_read = read_all_arrow(client, **params)
    assert arrow_pages_read == json_pages
    assert [_as_json(item) for item in from_arrow] == [
        {key: value for key, value in item.items() if key != "customer"} for item in from_json
    ]
    assert any(item["lines"] == [] for item in from_arrow)
    assert {line["unit_price"] for item in from_arrow for line in item["lines"]} == {
        Decimal("2.550"),
        Decimal("0.001"),
    }


@pytest.mark.parametrize(
    ("accept", "arrow"),
    [
        (None, False),
        ("application/json", False),
        (ARROW, True),
        (f"{ARROW}, application/json;q=0.5", True),
        (f"application/json, {ARROW};q=0", False),
        ("*/*", False),
    ],
)
def test_the_arrow_stream_is_given_only_when_asked_for(
    client: TestClient, stored: None, accept, arrow
) -> None:
    headers = {"Accept": accept} if accept else {}
    response = client.get("/invoices", params={"limit": 2}, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(ARROW if arrow else "application/json")


def test_a_bad_cursor_is_422_in_arrow_too(client: TestClient, stored: None) -> None:
    response = client.get("/invoices", params={"cursor": "garbage"}, headers={"Accept": ARROW})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "cursor"]
