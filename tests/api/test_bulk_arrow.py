"""POST /bulk/invoices with an Arrow IPC stream body: the same answers, hashes and events as JSON."""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from api import arrow_writes, schemas
from api.crud import invoice_store
from retail_contract import content_hash, wire
from tests.api.helpers import invoice, line, row_counts

ARROW = wire.ARROW_STREAM
SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "online_retail_sample.csv"

LINE_TYPE = pa.struct(
    [
        pa.field("line_no", pa.int32(), nullable=False),
        pa.field("stock_code", pa.string(), nullable=False),
        pa.field("description", pa.string()),
        pa.field("quantity", pa.int64(), nullable=False),
        pa.field("unit_price", pa.decimal128(12, 3), nullable=False),
        pa.field("invoice_date", pa.timestamp("us")),
    ]
)
#: The contract's body schema, with both of its timestamp units.
BODY_SCHEMA = pa.schema(
    [
        pa.field("invoice_no", pa.string(), nullable=False),
        pa.field("invoice_date", pa.timestamp("s"), nullable=False),
        pa.field("customer_id", pa.string()),
        pa.field("country", pa.string(), nullable=False),
        pa.field("lines", pa.list_(pa.field("item", LINE_TYPE, nullable=False)), nullable=False),
    ]
)

NASTY_TEXT = [
    'quote " and backslash \\',
    "tab\tnewline\ncarriage\r",
    "controls \x01\x08\x0c\x1f and DEL \x7f",
    "é ü 漢字 😀",
    "line separators \u2028\u2029",
    "",
    "\\.",
    ",;|",
]


def _timestamp(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)


def arrow_rows(invoices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON-shaped invoices (tests.api.helpers.invoice) as Arrow rows of BODY_SCHEMA."""
    return [
        {
            "invoice_no": body["invoice_no"],
            "invoice_date": _timestamp(body["invoice_date"]),
            "customer_id": body.get("customer_id"),
            "country": body["country"],
            "lines": [
                {
                    "line_no": item.get("line_no", position + 1),
                    "stock_code": item["stock_code"],
                    "description": item.get("description"),
                    "quantity": item["quantity"],
                    "unit_price": Decimal(item["unit_price"]),
                    "invoice_date": _timestamp(item.get("invoice_date")),
                }
                for position, item in enumerate(body["lines"])
            ],
        }
        for body in invoices
    ]


def stream_of(table: pa.Table, *, batch_rows: int | None = None) -> bytes:
    """`table` as an Arrow IPC stream (several batches when `batch_rows` is set)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=batch_rows)
    return sink.getvalue().to_pybytes()


def arrow_body(invoices: list[dict[str, Any]], **kwargs: Any) -> bytes:
    return stream_of(pa.Table.from_pylist(arrow_rows(invoices), schema=BODY_SCHEMA), **kwargs)


def post_arrow(client: TestClient, body: bytes) -> Any:
    return client.post("/bulk/invoices", content=body, headers={"Content-Type": ARROW})


def post_json(client: TestClient, invoices: list[dict[str, Any]]) -> Any:
    return client.post("/bulk/invoices", json={"invoices": invoices})


@pytest.fixture
def customers(client: TestClient) -> list[str]:
    body = {"customers": [{"customer_id": c, "country": "United Kingdom"} for c in ("17850", "13047")]}
    assert client.post("/bulk/customers", json=body).status_code == 200
    return ["17850", "13047"]


def nasty_batch() -> list[dict[str, Any]]:
    """Invoices with every awkward value: nasty strings, null and empty descriptions, no customer,
    lines out of order, a line with its own timestamp, negative and tiny prices, an invoice without lines."""
    lines = [
        line(f"X{n}", line_no=n + 1, description=text_, unit_price="0.001")
        for n, text_ in enumerate(NASTY_TEXT)
    ]
    return [
        invoice("536365", customer_id="17850"),
        invoice(
            "536366",
            customer_id=None,
            country='Côte "d" \\ Ivoire',
            lines=[
                line("22633", line_no=3, unit_price="-11062.06", description=None),
                line(
                    "POST", line_no=1, quantity=-2, unit_price="0", invoice_date="2010-12-01T09:00:01.250000"
                ),
                line("D", line_no=2, description=""),
            ],
        ),
        invoice("C536379", customer_id="13047", lines=lines),
        invoice("536367", customer_id="17850", invoice_date="2011-12-09T12:50:00", lines=[]),
    ]


# --- storing -------------------------------------------------------------------------------------


def test_arrow_post_reads_back_as_posted(client: TestClient, engine: Engine, customers: list[str]) -> None:
    batch = nasty_batch()

    response = post_arrow(client, arrow_body(batch, batch_rows=2))

    assert response.status_code == 200, response.text
    assert response.json() == {"created": 4, "unchanged": 0, "lines_created": 2 + 3 + len(NASTY_TEXT)}
    assert row_counts(engine) == {"customers": 2, "invoices": 4, "invoice_lines": 2 + 3 + len(NASTY_TEXT)}
    stored = client.get("/invoice/536366").json()
    assert stored["customer_id"] is None and stored["country"] == 'Côte "d" \\ Ivoire'
    assert [
        (x["line_no"], x["description"], x["unit_price"], x["invoice_date"]) for x in stored["lines"]
    ] == [
        (1, "WHITE HANGING HEART T-LIGHT HOLDER", "0.000", "2010-12-01T09:00:01.250000"),
        (2, "", "2.550", "2010-12-01T08:26:00"),
        (3, None, "-11062.060", "2010-12-01T08:26:00"),
    ]
    texts = [x["description"] for x in client.get("/invoice/C536379").json()["lines"]]
    assert texts == NASTY_TEXT
    # The Arrow read-back gives back exactly the rows that were posted.
    page = client.get("/invoices", params={"limit": 10}, headers={"Accept": ARROW})
    read = pa.ipc.open_stream(page.content).read_all().to_pylist()
    posted = {row["invoice_no"]: row for row in arrow_rows(batch)}
    for row in read:
        expected = posted[row["invoice_no"]]
        assert (row["customer_id"], row["country"], row["invoice_date"]) == (
            expected["customer_id"],
            expected["country"],
            expected["invoice_date"],
        )
        want = sorted(
            (
                item["line_no"],
                item["stock_code"],
                item["description"],
                item["quantity"],
                item["unit_price"],
                item["invoice_date"] or expected["invoice_date"],
            )
            for item in expected["lines"]
        )
        got = [tuple(item.values()) for item in row["lines"]]
        assert got == want


def test_json_then_arrow_is_unchanged_and_arrow_then_json_too(
    client: TestClient, engine: Engine, customers: list[str]
) -> None:
    batch = nasty_batch()
    first, second = batch[:2], batch[2:]
    assert post_json(client, first).json()["created"] == 2
    assert post_arrow(client, arrow_body(second)).json()["created"] == 2
    before = row_counts(engine)

    assert post_arrow(client, arrow_body(batch)).json() == {"created": 0, "unchanged": 4, "lines_created": 0}
    assert post_json(client, batch).json() == {"created": 0, "unchanged": 4, "lines_created": 0}
    assert row_counts(engine) == before
    hashes = {
        body["invoice_no"]: stored.content_hash
        for body, stored in zip(batch, arrow_writes.read_invoices(arrow_body(batch)).invoices, strict=True)
    }
    compared = client.post("/bulk/invoices/compare", json={"invoices": hashes}).json()
    assert compared["unchanged"] == sorted(hashes)


def test_conflicts_are_409_and_store_nothing(
    client: TestClient, engine: Engine, customers: list[str]
) -> None:
    post_json(client, [invoice("536365", customer_id="17850"), invoice("536366", customer_id="17850")])
    before = row_counts(engine)
    batch = [
        invoice("536367", customer_id="17850"),
        invoice("536365", customer_id="13047"),
        invoice("536366", customer_id="17850", lines=[line(line_no=1, unit_price="2.56")]),
    ]

    response = post_arrow(client, arrow_body(batch))

    assert response.status_code == 409
    assert response.json()["invoice_nos"] == ["536365", "536366"]
    assert response.json() == post_json(client, batch).json()
    assert row_counts(engine) == before
    twice = post_arrow(client, arrow_body([invoice("9"), invoice("9", country="France")]))
    assert twice.status_code == 409 and twice.json()["invoice_nos"] == ["9"]


def test_unknown_customer_is_409_at_its_invoice(
    client: TestClient, engine: Engine, customers: list[str]
) -> None:
    batch = [invoice("536365", customer_id="17850"), invoice("536366", customer_id="99999")]

    response = post_arrow(client, arrow_body(batch))

    assert response.status_code == 409  # well formed, but not stored: a conflict with the state
    assert response.json()["detail"][0]["loc"] == ["body", "invoices", 1, "customer_id"]
    assert "99999" in response.json()["detail"][0]["msg"]
    assert row_counts(engine)["invoices"] == 0


def test_the_events_are_those_of_the_json_path(
    client: TestClient, engine: Engine, customers: list[str]
) -> None:
    # The same invoices under other numbers: one set posted as JSON, the other as Arrow.
    batch = nasty_batch()
    renamed = [{**body, "invoice_no": "A" + body["invoice_no"]} for body in batch]
    assert post_json(client, batch).status_code == 200
    assert post_arrow(client, arrow_body(renamed)).status_code == 200

    with engine.connect() as connection:
        payloads = connection.execute(
            text("SELECT payload FROM outbox_events WHERE event_type = 'invoice.created' ORDER BY seq")
        ).scalars()
        data = {event["data"]["invoice_no"]: event["data"] for event in map(json.loads, payloads)}
    assert len(data) == 2 * len(batch)
    for body in batch:
        from_arrow = dict(data["A" + body["invoice_no"]], invoice_no=body["invoice_no"])
        assert from_arrow == data[body["invoice_no"]]
    assert data["C536379"]["amount"] == "0.048"


def test_an_empty_stream_stores_nothing(client: TestClient) -> None:
    body = stream_of(BODY_SCHEMA.empty_table())
    assert post_arrow(client, body).json() == {"created": 0, "unchanged": 0, "lines_created": 0}


def test_the_arrow_body_needs_the_api_key(client: TestClient, engine: Engine) -> None:
    headers = {"Content-Type": ARROW, "X-API-Key": "wrong"}
    response = client.post("/bulk/invoices", content=arrow_body([invoice("536365")]), headers=headers)
    assert response.status_code == 401
    assert row_counts(engine)["invoices"] == 0


def test_the_openapi_document_names_the_arrow_body(client: TestClient) -> None:
    content = client.get("/openapi.json").json()["paths"]["/bulk/invoices"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", ARROW}


# --- the content hash and the stored values --------------------------------------------------------


def sample_invoices() -> list[dict[str, Any]]:
    """The sample's rows as JSON-shaped invoices, lines numbered in file order."""
    invoices: dict[str, dict[str, Any]] = {}
    with SAMPLE.open(newline="", encoding="utf-8") as source:
        for row in csv.DictReader(source):
            date = row["InvoiceDate"].replace(" ", "T")
            customer = row["CustomerID"].removesuffix(".0") or None
            body = invoices.setdefault(
                row["InvoiceNo"],
                invoice(
                    row["InvoiceNo"],
                    invoice_date=date,
                    country=row["Country"],
                    customer_id=customer,
                    lines=[],
                ),
            )
            body["lines"].append(
                line(
                    row["StockCode"],
                    line_no=len(body["lines"]) + 1,
                    description=row["Description"] or None,
                    quantity=int(row["Quantity"]),
                    unit_price=row["UnitPrice"],
                    invoice_date=date,
                )
            )
    return list(invoices.values())


def json_store(invoices: list[dict[str, Any]]) -> invoice_store.InvoicesToStore:
    """What the JSON path makes of `invoices`."""
    parsed = schemas.BulkInvoicesCreate.model_validate({"invoices": invoices}).invoices
    return invoice_store.invoices_to_store([(body, body.customer_id) for body in parsed])


@pytest.mark.parametrize("make", [sample_invoices, nasty_batch], ids=["sample", "nasty"])
def test_arrow_and_json_make_the_same_invoices_to_store(make: Callable[[], list[dict[str, Any]]]) -> None:
    invoices = make()
    for start in range(0, len(invoices), schemas.MAX_BULK_INVOICES):
        chunk = invoices[start : start + schemas.MAX_BULK_INVOICES]
        from_arrow = arrow_writes.read_invoices(arrow_body(chunk, batch_rows=300))
        from_json = json_store(chunk)
        # Header, content hash, line count and amount of every invoice.
        assert list(from_arrow.invoices) == list(from_json.invoices)
        assert isinstance(from_arrow.lines, pa.Table) and not isinstance(from_json.lines, pa.Table)
        flat = sorted((row["invoice"], *list(row.values())[1:]) for row in from_arrow.lines.to_pylist())
        assert flat == sorted((i, *tuple_) for i, lines in enumerate(from_json.lines) for tuple_ in lines)


def test_the_arrow_hash_is_the_one_content_hash_for_nasty_strings() -> None:
    date = dt.datetime(2010, 12, 1, 8, 26)
    for text_ in NASTY_TEXT:
        rows = [
            {
                "invoice_no": "1",
                "invoice_date": date,
                "customer_id": None,
                "country": text_.replace("\n", "").replace("\t", "").replace("\r", "") or "X",
                "lines": [
                    {
                        "line_no": 2,
                        "stock_code": 'A\\"',
                        "description": text_,
                        "quantity": -1,
                        "unit_price": Decimal("-0.5"),
                        "invoice_date": None,
                    },
                    {
                        "line_no": 1,
                        "stock_code": "😀",
                        "description": None,
                        "quantity": 0,
                        "unit_price": Decimal("999999999.999"),
                        "invoice_date": date,
                    },
                ],
            }
        ]
        if any(ord(c) < 0x20 or c == "\x7f" for c in rows[0]["country"]):
            rows[0]["country"] = "X"
        (stored,) = arrow_writes.read_invoices(
            stream_of(pa.Table.from_pylist(rows, schema=BODY_SCHEMA))
        ).invoices
        expected = content_hash.content_hash(
            invoice_no="1",
            customer_id=None,
            invoice_date=date,
            country=rows[0]["country"],
            lines=[
                (2, 'A\\"', text_, -1, Decimal("-0.500"), date),
                (1, "😀", None, 0, Decimal("999999999.999"), date),
            ],
        )
        assert stored.content_hash == expected, text_


# --- validation ----------------------------------------------------------------------------------


def one_invoice_table(**changes: Any) -> pa.Table:
    """One valid invoice of two lines as a table, with `changes` applied to its row (`lines` replaced)."""
    (row,) = arrow_rows([invoice("536365")])
    return pa.Table.from_pylist([{**row, **changes}], schema=BODY_SCHEMA)


def with_line(**changes: Any) -> pa.Table:
    (row,) = arrow_rows([invoice("536365")])
    row["lines"][1].update(changes)
    return pa.Table.from_pylist([row], schema=BODY_SCHEMA)


def replaced(table: pa.Table, name: str, array: pa.Array | pa.ChunkedArray) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, array)


def replaced_line_field(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    """`table` whose line field `name` is `array` (any type, nulls allowed)."""
    lists = table.column("lines").combine_chunks()
    items = lists.flatten()
    children = [array if field.name == name else items.field(field.name) for field in items.type]
    struct = pa.StructArray.from_arrays(children, names=[field.name for field in items.type])
    return replaced(table, "lines", pa.ListArray.from_arrays(lists.offsets, struct))


@pytest.mark.parametrize(
    ("table", "loc"),
    [
        (one_invoice_table(invoice_no="53/6365"), ["body", "invoices", 0, "invoice_no"]),
        (one_invoice_table(invoice_no=""), ["body", "invoices", 0, "invoice_no"]),
        (one_invoice_table(invoice_no="1" * 21), ["body", "invoices", 0, "invoice_no"]),
        (one_invoice_table(customer_id="17/850"), ["body", "invoices", 0, "customer_id"]),
        (one_invoice_table(customer_id="1785\n"), ["body", "invoices", 0, "customer_id"]),
        (one_invoice_table(country="x" * 65), ["body", "invoices", 0, "country"]),
        (one_invoice_table(country="United\x00Kingdom"), ["body", "invoices", 0, "country"]),
        (one_invoice_table(invoice_date=None), ["body", "invoices", 0, "invoice_date"]),
        (one_invoice_table(lines=None), ["body", "invoices", 0, "lines"]),
        (with_line(line_no=0), ["body", "invoices", 0, "lines", 1, "line_no"]),
        (with_line(stock_code="A/B"), ["body", "invoices", 0, "lines", 1, "stock_code"]),
        (with_line(stock_code="A\x00"), ["body", "invoices", 0, "lines", 1, "stock_code"]),
        (with_line(stock_code=""), ["body", "invoices", 0, "lines", 1, "stock_code"]),
        (with_line(stock_code=None), ["body", "invoices", 0, "lines", 1, "stock_code"]),
        (with_line(description="nul \x00"), ["body", "invoices", 0, "lines", 1, "description"]),
        (with_line(description="x" * 256), ["body", "invoices", 0, "lines", 1, "description"]),
        (with_line(quantity=None), ["body", "invoices", 0, "lines", 1, "quantity"]),
        (with_line(unit_price=None), ["body", "invoices", 0, "lines", 1, "unit_price"]),
        (
            replaced_line_field(with_line(), "line_no", pa.array([1, 2**31], pa.int64())),
            ["body", "invoices", 0, "lines", 1, "line_no"],
        ),
        (
            replaced_line_field(with_line(), "line_no", pa.array([1, None], pa.int32())),
            ["body", "invoices", 0, "lines", 1, "line_no"],
        ),
        (
            # A price beyond decimal128(12, 3)'s precision, which Arrow does not check by itself.
            replaced_line_field(
                with_line(),
                "unit_price",
                pa.Array.from_buffers(
                    pa.decimal128(12, 3), 2, pa.array([1, 10**12], pa.decimal128(20, 3)).buffers()
                ),
            ),
            ["body"],  # Arrow's full validation of the stream refuses it
        ),
        (
            # A wider decimal is accepted, but not an amount NUMERIC(12, 3) cannot hold.
            replaced_line_field(
                with_line(), "unit_price", pa.array([Decimal(1), Decimal(10**9)], pa.decimal128(20, 3))
            ),
            ["body", "invoices", 0, "lines", 1, "unit_price"],
        ),
        (
            replaced(one_invoice_table(), "invoice_date", pa.array([2**62], pa.timestamp("us"))),
            ["body", "invoices", 0, "invoice_date"],
        ),
    ],
)
def test_value_errors_name_the_json_location(client: TestClient, table: pa.Table, loc: list[Any]) -> None:
    response = post_arrow(client, stream_of(table))
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


def _file_format(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _hostile_bodies() -> list[tuple[str, bytes, list[Any] | None]]:
    valid = one_invoice_table()
    bodies: list[tuple[str, bytes, list[Any] | None]] = [
        ("garbage", b"\x00garbage" * 100, ["body"]),
        ("empty", b"", ["body"]),
        ("json", b'{"invoices": []}', ["body"]),
        ("file format", _file_format(valid), ["body"]),
        ("truncated", stream_of(valid)[:-40], ["body"]),
        ("schema only, cut", stream_of(valid)[:100], ["body"]),
        (
            "int invoice_no",
            stream_of(replaced(valid, "invoice_no", pa.array([536365]))),
            ["body", "invoices", "invoice_no"],
        ),
        (
            "float unit_price",
            stream_of(replaced_line_field(valid, "unit_price", pa.array([2.55, 3.39]))),
            ["body", "invoices", "lines", "unit_price"],
        ),
        (
            "tz-aware timestamp",
            stream_of(
                replaced(valid, "invoice_date", valid.column("invoice_date").cast(pa.timestamp("s", "UTC")))
            ),
            ["body", "invoices", "invoice_date"],
        ),
        (
            "timestamp[ns]",
            stream_of(replaced(valid, "invoice_date", valid.column("invoice_date").cast(pa.timestamp("ns")))),
            ["body", "invoices", "invoice_date"],
        ),
        (
            "timestamp[s] far beyond microseconds",
            stream_of(replaced(valid, "invoice_date", pa.array([2**62], pa.timestamp("s")))),
            ["body", "invoices", "invoice_date"],
        ),
        (
            "decimal with scale 4",
            stream_of(
                replaced_line_field(
                    valid, "unit_price", pa.array([Decimal("2.5501"), Decimal("1")], pa.decimal128(12, 4))
                )
            ),
            ["body", "invoices", "lines", "unit_price"],
        ),
        (
            "extra column",
            stream_of(valid.append_column("invoice_day", pa.array([dt.date(2010, 12, 1)]))),
            ["body", "invoices", "invoice_day"],
        ),
        ("missing column", stream_of(valid.drop_columns(["country"])), ["body", "invoices", "country"]),
        (
            "duplicate column",
            stream_of(
                pa.table([*valid.columns, valid.column("country")], names=[*valid.column_names, "country"])
            ),
            ["body", "invoices", "country"],
        ),
        (
            "lines as strings",
            stream_of(replaced(valid, "lines", pa.array(["x"]))),
            ["body", "invoices", "lines"],
        ),
        (
            "line struct without line_no",
            stream_of(
                replaced(
                    valid,
                    "lines",
                    pa.array(
                        [
                            [
                                {k: v for k, v in item.items() if k != "line_no"}
                                for item in valid.column("lines")[0].as_py()
                            ]
                        ]
                    ),
                )
            ),
            ["body", "invoices", "lines", "line_no"],
        ),
        (
            "dictionary-encoded strings",
            stream_of(replaced(valid, "country", valid.column("country").dictionary_encode())),
            ["body", "invoices", "country"],
        ),
        (
            "a null line inside a list",
            stream_of(
                replaced(
                    valid,
                    "lines",
                    pa.ListArray.from_arrays(
                        pa.array([0, 2], pa.int32()),
                        pa.StructArray.from_arrays(
                            valid.column("lines").combine_chunks().flatten().flatten(),
                            fields=list(LINE_TYPE),
                            mask=pa.array([False, True]),
                        ),
                    ),
                )
            ),
            ["body", "invoices", 0, "lines", 1],
        ),
        (
            "nul in a description",
            stream_of(with_line(description="\x00")),
            ["body", "invoices", 0, "lines", 1, "description"],
        ),
        ("all-null customer column", stream_of(replaced(valid, "customer_id", pa.nulls(1))), None),
        (
            "large strings",
            stream_of(replaced(valid, "invoice_no", pa.array(["536365"], pa.large_string()))),
            None,
        ),
    ]
    # Invalid UTF-8 in a string column, written around Arrow's own checks.
    raw = pa.Array.from_buffers(
        pa.string(), 1, [None, pa.array([0, 2], pa.int32()).buffers()[1], pa.py_buffer(b"\xff\xfe")]
    )
    bodies.append(("invalid UTF-8", stream_of(replaced(valid, "invoice_no", raw)), ["body"]))
    # Offsets pointing past the data, patched into the bytes: must be refused before any kernel reads them.
    body = bytearray(stream_of(one_invoice_table(invoice_no="ZZZQQQ")))
    at = body.index(b"ZZZQQQ")
    assert body[at - 8 : at] == b"\x00\x00\x00\x00\x06\x00\x00\x00"
    body[at - 4 : at] = (1 << 20).to_bytes(4, "little")
    bodies.append(("offsets beyond the data", bytes(body), ["body"]))
    # Compressed buffers could inflate far beyond the body limit: refused before they are read.
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, valid.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(valid)
    bodies.append(("compressed", sink.getvalue().to_pybytes(), ["body"]))
    return bodies


HOSTILE = _hostile_bodies()


def test_hostile_bodies_are_never_a_server_error(client: TestClient, engine: Engine) -> None:
    for name, body, loc in HOSTILE:
        response = post_arrow(client, body)
        if loc is None:
            assert response.status_code == 200, (name, response.text)
            continue
        assert response.status_code == 422, (name, response.text)
        assert response.json()["detail"][0]["loc"] == loc, (name, response.json())
    # Only the two acceptable bodies stored anything: the same invoice, stored once.
    assert row_counts(engine) == {"customers": 0, "invoices": 1, "invoice_lines": 2}


def test_limits_are_those_of_the_json_path(client: TestClient) -> None:
    too_many = pa.Table.from_pylist(
        arrow_rows([invoice(str(n), lines=[]) for n in range(schemas.MAX_BULK_INVOICES + 1)]),
        schema=BODY_SCHEMA,
    )
    response = post_arrow(client, stream_of(too_many, batch_rows=1000))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "invoices"]

    lines = [line("85123A", line_no=n + 1) for n in range(25_001)]
    response = post_arrow(client, arrow_body([invoice("1", lines=lines), invoice("2", lines=lines)]))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "invoices"]
    assert "50000" in response.json()["detail"][0]["msg"]

    at_the_limit = [invoice(str(n), lines=[line(line_no=k + 1) for k in range(10)]) for n in range(5_000)]
    response = post_arrow(client, arrow_body(at_the_limit))
    assert response.json() == {"created": 5_000, "unchanged": 0, "lines_created": 50_000}
