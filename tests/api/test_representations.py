"""Content negotiation of the resource reads: JSON (the default), CSV and XML by `Accept` with its
q-values, each representation with its own ETag and `Vary: Accept`, 406 naming the types offered, money
exact in all three, and a malformed `Accept` read as `*/*`."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.core.representation import choose
from api.errors import NotAcceptableError
from tests.api.helpers import invoice

CSV, XML, JSON = "text/csv", "application/xml", "application/json"
READS = [
    "/customer/17850",
    "/invoice/536365",
    "/customer/17850/invoice",
    "/stockcode/85123A",
    "/invoice/536365/85123A/",
    "/invoices?start=2010-12-01&end=2010-12-31",
    "/customers?start=2010-12-01&end=2010-12-31",
]


@pytest.fixture
def stored(client: TestClient) -> TestClient:
    assert (
        client.post("/customer", json={"customer_id": "17850", "country": "United Kingdom"}).status_code
        == 201
    )
    body = invoice("536365")
    body["lines"][0].update(description='WHITE "HEART", <T-LIGHT> & co', unit_price="2.55")
    assert client.post("/customer/17850/invoice", json=body).status_code == 201
    return client


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, JSON),
        ("*/*", JSON),
        ("text/csv", CSV),
        ("application/xml", XML),
        ("text/*", CSV),
        ("application/*", JSON),  # a tie between JSON and XML goes to the one offered first
        ("application/xml;q=0.9, text/csv;q=0.5", XML),
        ("text/csv;q=0.2, application/xml;q=0.3, application/json;q=0.1", XML),
        ("application/json;q=0, */*;q=0.1", CSV),  # the most specific range decides JSON's quality
        ("TEXT/CSV", CSV),
        ("text/csv; charset=utf-8", CSV),
        ("garbage", JSON),  # malformed: read as */*
        ("text/csv;q=banana", JSON),
        ("*/csv", JSON),
        (",,,", JSON),
    ],
)
def test_the_type_chosen_follows_accept_and_its_q_values(accept: str | None, chosen: str) -> None:
    assert choose(accept) == chosen


@pytest.mark.parametrize("accept", ["image/png", "application/json;q=0, text/csv;q=0, application/xml;q=0"])
def test_nothing_acceptable_is_406_naming_the_types_offered(stored: TestClient, accept: str) -> None:
    with pytest.raises(NotAcceptableError):
        choose(accept)
    for path in READS:
        answer = stored.get(path, headers={"Accept": accept})
        assert answer.status_code == 406, path
        assert answer.json()["offered"] == [JSON, CSV, XML]
        assert all(kind in answer.json()["detail"] for kind in (JSON, CSV, XML))


@pytest.mark.parametrize("path", READS)
def test_each_read_in_each_type_with_its_own_etag_and_304(stored: TestClient, path: str) -> None:
    tags = set()
    for media_type in (JSON, CSV, XML):
        answer = stored.get(path, headers={"Accept": media_type})
        assert answer.status_code == 200, (path, media_type, answer.text)
        assert answer.headers["content-type"].startswith(media_type)
        assert answer.headers["vary"] == "Accept"
        if path.startswith(("/invoices", "/customers")):
            continue  # the pages in JSON carry no ETag (they did not before); CSV and XML do
        tag = answer.headers["etag"]
        tags.add(tag)
        assert stored.get(path, headers={"Accept": media_type, "If-None-Match": tag}).status_code == 304
        head = stored.head(path, headers={"Accept": media_type})
        assert head.headers["etag"] == tag and int(head.headers["content-length"]) == len(answer.content)
    assert len(tags) in (0, 3)  # one per representation


def test_csv_and_xml_say_what_json_says_money_exact(stored: TestClient) -> None:
    document = stored.get("/invoice/536365").json()
    rows = list(csv.DictReader(io.StringIO(stored.get("/invoice/536365", headers={"Accept": CSV}).text)))
    assert len(rows) == len(document["lines"])
    for row, line in zip(rows, document["lines"], strict=True):
        assert row["invoice_no"] == "536365" and row["customer.url"] == document["customer"]["url"]
        assert (row["stock_code"], row["description"], row["unit_price"]) == (
            line["stock_code"],
            line["description"],
            line["unit_price"],
        )
    assert rows[0]["unit_price"] == "2.550" and rows[0]["description"] == 'WHITE "HEART", <T-LIGHT> & co'

    root = ET.fromstring(stored.get("/invoice/536365", headers={"Accept": XML}).content)
    assert root.tag == "invoice" and root.findtext("invoice_no") == "536365"
    xml_lines = root.findall("lines/line")
    assert [(e.findtext("unit_price"), e.findtext("description")) for e in xml_lines] == [
        (line["unit_price"], line["description"]) for line in document["lines"]
    ]
    customers = ET.fromstring(stored.get("/customers", headers={"Accept": XML}).content)
    assert customers.find("next_cursor").get("nil") == "true"  # null, not an empty text


def test_a_page_in_csv_carries_its_cursor_in_a_header(stored: TestClient) -> None:
    assert stored.post("/customer/17850/invoice", json=invoice("536366")).status_code == 201
    first = stored.get("/invoices?limit=1", headers={"Accept": CSV})
    cursor = first.headers.get("x-next-cursor")
    assert cursor is not None, dict(first.headers)
    second = stored.get(f"/invoices?limit=1&cursor={cursor}", headers={"Accept": CSV})
    numbers = [
        row["invoice_no"] for answer in (first, second) for row in csv.DictReader(io.StringIO(answer.text))
    ]
    assert sorted(set(numbers)) == ["536365", "536366"]


def test_the_openapi_document_lists_the_types(stored: TestClient) -> None:
    paths: dict[str, Any] = stored.get("/openapi.json").json()["paths"]
    for path in ("/customer/{customer_id}", "/invoice/{invoice_no}", "/stockcode/{stockcode}", "/customers"):
        get = paths[path]["get"]
        assert {JSON, CSV, XML} <= set(get["responses"]["200"]["content"]), path
        assert "406" in get["responses"], path
