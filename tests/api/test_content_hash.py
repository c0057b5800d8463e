"""The content hash: orjson's bytes equal the reference encoder's, and POST /bulk/invoices/compare."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from retail_contract.content_hash import content_hash, content_hashes
from retail_contract.wire import LINE_FIELDS
from tests.api.helpers import invoice, line

TRICKY_TEXT = [
    'quote " and backslash \\',
    "tab\tnewline\ncarriage\r",
    "controls \x00\x01\x08\x0c\x1f and DEL \x7f",
    "é ü 漢字 😀",
    "line separators \u2028\u2029",
    "</script>",
    "",
]


@pytest.mark.parametrize("text", TRICKY_TEXT)
def test_orjson_writes_what_the_reference_encoder_writes(text: str) -> None:
    canonical = ["536365", None, "2010-12-01T08:26:00", text, [[1, text, None, -5, "2.550", "x"]]]
    reference = json.dumps(canonical, ensure_ascii=False, separators=(",", ":")).encode()
    assert orjson.dumps(canonical) == reference


def test_the_hash_is_sha256_of_the_documented_canonical_form() -> None:
    date = dt.datetime(2010, 12, 1, 8, 26)
    lines = [
        (2, "71053", None, 6, Decimal("3.39"), date),
        (1, "85123A", "WHITE HANGING HEART", -6, Decimal("2.550"), date),
    ]
    expected = hashlib.sha256(
        b'["536365","17850","2010-12-01T08:26:00","United Kingdom",'
        b'[[1,"85123A","WHITE HANGING HEART",-6,"2.550","2010-12-01T08:26:00"],'
        b'[2,"71053",null,6,"3.390","2010-12-01T08:26:00"]]]'
    ).hexdigest()
    got = content_hash(
        invoice_no="536365", customer_id="17850", invoice_date=date, country="United Kingdom", lines=lines
    )
    assert got == expected


def test_a_lone_surrogate_falls_back_to_the_reference_encoder() -> None:
    date = dt.datetime(2010, 12, 1)
    lines = [(1, "X", "bad \ud800", 1, Decimal("1"), date)]
    # The reference encoder writes the surrogate; UTF-8 cannot, which is the database's refusal to make.
    with pytest.raises(UnicodeEncodeError):
        content_hash(invoice_no="1", customer_id=None, invoice_date=date, country="UK", lines=lines)


def test_compare_sorts_each_number_by_what_is_stored(client: TestClient) -> None:
    assert (
        client.post(
            "/bulk/customers", json={"customers": [{"customer_id": "17850", "country": "UK"}]}
        ).status_code
        == 200
    )
    body = invoice("536365", customer_id="17850", lines=[line("85123A", line_no=1)])
    assert client.post("/bulk/invoices", json={"invoices": [body]}).status_code == 200
    stored = content_hash(
        invoice_no="536365",
        customer_id="17850",
        invoice_date=dt.datetime(2010, 12, 1, 8, 26),
        country="United Kingdom",
        lines=[
            (
                1,
                "85123A",
                "WHITE HANGING HEART T-LIGHT HOLDER",
                6,
                Decimal("2.55"),
                dt.datetime(2010, 12, 1, 8, 26),
            )
        ],
    )
    other = "0" * 64
    response = client.post("/bulk/invoices/compare", json={"invoices": {"536365": stored, "536366": other}})
    assert response.status_code == 200, response.text
    assert response.json() == {"unchanged": ["536365"], "different": [], "missing": ["536366"], "deleted": []}
    response = client.post("/bulk/invoices/compare", json={"invoices": {"536365": other}})
    assert response.json() == {"unchanged": [], "different": ["536365"], "missing": [], "deleted": []}
    # A client deletes it: it is named as deleted, not missing, so a source run does not post it unasked.
    assert client.delete("/invoice/536365").status_code == 204
    response = client.post("/bulk/invoices/compare", json={"invoices": {"536365": stored, "536366": other}})
    assert response.json() == {"unchanged": [], "different": [], "missing": ["536366"], "deleted": ["536365"]}


@pytest.mark.parametrize(
    ("invoices", "loc_end"),
    [
        ({"536365": "ABC"}, "536365"),
        ({"536365": "F" * 64}, "536365"),  # uppercase hex is not the documented spelling
        ({"bad/no": "0" * 64}, "[key]"),
    ],
)
def test_compare_refuses_malformed_hashes_and_numbers_naming_them(
    client: TestClient, invoices: dict[str, str], loc_end: str
) -> None:
    response = client.post("/bulk/invoices/compare", json={"invoices": invoices})
    assert response.status_code == 422
    loc = response.json()["detail"][0]["loc"]
    assert loc[:2] == ["body", "invoices"] and str(loc[-1]) == loc_end


def _nested(lines: list[list[tuple[Any, ...]]]) -> pa.ListArray:
    flat = [line for invoice_lines in lines for line in invoice_lines]
    struct = pa.StructArray.from_arrays(
        [
            pa.array([line[0] for line in flat], pa.int32()),
            pa.array([line[1] for line in flat], pa.string()),
            pa.array([line[2] for line in flat], pa.string()),
            pa.array([line[3] for line in flat], pa.int64()),
            pa.array([line[4] for line in flat], pa.decimal128(12, 3)),
            pa.array([line[5] for line in flat], pa.timestamp("us")),
        ],
        names=list(LINE_FIELDS),
    )
    offsets = [0]
    for invoice_lines in lines:
        offsets.append(offsets[-1] + len(invoice_lines))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), struct)


def test_the_arrow_definition_equals_the_python_one_for_every_kind_of_value() -> None:
    """`content_hashes` (the Arrow path and the job) and `content_hash` (the JSON path) are one
    definition: equal for escapes, non-ASCII, nulls, empty invoices and sub-second timestamps."""
    date = dt.datetime(2010, 12, 1, 8, 26)
    fractional = dt.datetime(2010, 12, 1, 9, 0, 1, 250000)
    headers = [
        ("536365", "17850", date, "United Kingdom"),
        ("C536379", None, fractional, 'EIRE "quoted" \\'),
        ("1", "22ff32f22f", date, "漢字 😀"),
    ]
    lines: list[list[tuple[Any, ...]]] = [
        [
            (1, "85123A", "WHITE HANGING HEART", 6, Decimal("2.55"), date),
            (2, "D", None, -1, Decimal("-0.5"), date),
        ],
        [(n, 'A\\"', text, 0, Decimal("999999999.999"), fractional) for n, text in enumerate(TRICKY_TEXT, 1)],
        [],
    ]
    got = content_hashes(
        pa.array([h[0] for h in headers]),
        pa.array([h[1] for h in headers], pa.string()),
        pa.array([h[2] for h in headers], pa.timestamp("us")),
        pa.array([h[3] for h in headers]),
        _nested(lines),
    )
    expected = [
        content_hash(
            invoice_no=no, customer_id=customer, invoice_date=when, country=country, lines=invoice_lines
        )
        for (no, customer, when, country), invoice_lines in zip(headers, lines, strict=True)
    ]
    assert got == expected


def test_the_job_uses_the_one_definition() -> None:
    from etl import post

    assert post.content_hash.content_hashes is content_hashes
