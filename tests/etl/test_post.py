"""post_lines: customers first, whole invoices in bounded batches as Arrow IPC streams, exact bodies,
content hashes equal to the reference (dict, orjson) ones, bounded concurrency."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
from collections import Counter
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from etl.errors import ServiceError
from etl.post import (
    PostReport,
    content_hashes,
    customer_payloads,
    invoice_starts,
    invoice_table,
    plan_invoice_batches,
    post_lines,
    sort_for_posting,
)
from retail_contract.wire import ARROW_STREAM
from tests.etl.conftest_client import API_KEY, FakeService, make_client, run, sample_lines, service_hash
from tests.etl.conftest_client import line_rows as shared_line_rows

#: The Arrow body of POST /bulk/invoices as the wire contract spells it (written out here rather than
#: imported, so that the test checks the contract, not the implementation's own constant).
CONTRACT_LINE = pa.struct(
    [
        pa.field("line_no", pa.int32(), nullable=False),
        pa.field("stock_code", pa.string(), nullable=False),
        pa.field("description", pa.string()),
        pa.field("quantity", pa.int64(), nullable=False),
        pa.field("unit_price", pa.decimal128(12, 3), nullable=False),
        pa.field("invoice_date", pa.timestamp("s"), nullable=False),
    ]
)
CONTRACT_SCHEMA = pa.schema(
    [
        pa.field("invoice_no", pa.string(), nullable=False),
        pa.field("invoice_date", pa.timestamp("s"), nullable=False),
        pa.field("customer_id", pa.string()),
        pa.field("country", pa.string(), nullable=False),
        pa.field("lines", pa.list_(pa.field("item", CONTRACT_LINE, nullable=False)), nullable=False),
    ]
)


class ArrowService(FakeService):
    """The fake service, reading `POST /bulk/invoices` as the Arrow stream of the wire contract.

    Each body must be `application/vnd.apache.arrow.stream` with exactly the contract's schema; it is
    kept as sent (`arrow_bodies`) and handed to the fake's JSON handling in the JSON shape (ISO
    timestamps, 3-decimal price strings), so storage, 409s and the compare-by-hash work as for JSON.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.arrow_bodies: list[bytes] = []

    def _route(self, request: httpx.Request) -> httpx.Response:
        if (request.method, request.url.path) != ("POST", "/bulk/invoices"):
            return super()._route(request)
        if request.headers.get("X-API-Key") != API_KEY:
            return httpx.Response(401, json={"detail": "bad or missing API key"})
        assert request.headers["Content-Type"] == ARROW_STREAM
        table = pa.ipc.open_stream(request.content).read_all()
        assert table.schema.equals(CONTRACT_SCHEMA), table.schema
        self.arrow_bodies.append(request.content)
        return self._bulk_invoices(_as_json_invoices(table))

    def decoded_bodies(self) -> list[pa.Table]:
        """Every invoice body sent, decoded with `pyarrow.ipc.open_stream`."""
        return [pa.ipc.open_stream(body).read_all() for body in self.arrow_bodies]


def _as_json_invoices(table: pa.Table) -> list[dict[str, Any]]:
    """Arrow invoice rows in the JSON body's shape, as the service reads both the same way."""

    def iso(stamp: dt.datetime) -> str:
        return stamp.isoformat(timespec="seconds")

    return [
        {
            **invoice,
            "invoice_date": iso(invoice["invoice_date"]),
            "lines": [
                {**line, "unit_price": str(line["unit_price"]), "invoice_date": iso(line["invoice_date"])}
                for line in invoice["lines"]
            ],
        }
        for invoice in table.to_pylist()
    ]


def line_rows(rows: list[dict[str, Any]]) -> pa.Table:
    """`conftest_client.line_rows` with a stock code by default: LINE_SCHEMA requires one, and the
    shared helper leaves it null (a case of its own below)."""
    return shared_line_rows([{"stock_code": "85123A", **row} for row in rows])


def _post(service: FakeService, lines, **options) -> PostReport:
    async def go() -> PostReport:
        async with make_client(service.transport()) as client:
            return await post_lines(lines, client, **options)

    return run(go)


@pytest.fixture(scope="module")
def lines():
    return sample_lines()


def test_posts_every_line_once_and_a_replay_changes_nothing(lines):
    service = ArrowService()
    progress: list[int] = []
    first = _post(service, lines, max_lines_per_request=2000, on_progress=progress.append)

    invoices = pc.count_distinct(lines["invoice_no"]).as_py()
    customers = pc.count_distinct(lines["customer_id"]).as_py()
    assert first.invoices_created == invoices == len(service.invoices)
    assert first.invoices_unchanged == 0
    assert first.lines_created == lines.num_rows == service.stored_line_count()
    assert first.customers_created == customers and first.customers_existing == 0
    assert sum(progress) == lines.num_rows
    assert first.requests == 1 + len(service.invoice_bodies)
    assert first.retries.by_cause == {}

    second = _post(service, lines, max_lines_per_request=2000)
    assert (second.invoices_created, second.invoices_unchanged, second.lines_created) == (0, invoices, 0)
    assert (second.customers_created, second.customers_existing) == (0, customers)
    assert service.stored_line_count() == lines.num_rows


def test_customers_are_posted_before_any_invoice(lines):
    service = ArrowService()
    _post(service, lines)
    paths = [r.url.path for r in service.requests]
    assert paths[0] == "/bulk/customers"
    assert set(paths[1:]) == {"/bulk/invoices/compare", "/bulk/invoices"}


def test_a_rerun_sends_only_hashes_and_the_service_agrees_with_the_jobs_hash(lines):
    """The job's content hash equals the service's own (the contract's `content_hash`, which the fake uses),
    so a replay posts no invoice at all; with `skip_unchanged=False` every invoice travels again."""
    service = ArrowService()
    first = _post(service, lines)
    posted_once = len(service.invoice_bodies)
    second = _post(service, lines)
    invoices = len(set(lines["invoice_no"].to_pylist()))
    assert (first.invoices_created, first.invoices_skipped) == (invoices, 0)
    assert (second.invoices_created, second.invoices_unchanged, second.invoices_skipped) == (
        0,
        invoices,
        invoices,
    )
    assert len(service.invoice_bodies) == posted_once  # nothing posted the second time
    third = _post(service, lines, skip_unchanged=False)
    assert (third.invoices_unchanged, third.invoices_skipped) == (invoices, 0)
    assert len(service.invoice_bodies) == 2 * posted_once


def test_an_invoice_changed_in_the_source_fails_the_post_before_any_invoice_is_sent(lines):
    """A hash that differs is a correction: by default the comparison of every batch names it and the
    post stops before a single invoice body is sent, suggesting `--on-conflict replace`."""
    service = ArrowService()
    _post(service, lines)
    bodies_before = len(service.invoice_bodies)
    first_no = lines["invoice_no"][0].as_py()
    changed = lines.set_column(
        lines.schema.get_field_index("quantity"),
        "quantity",
        pc.if_else(pc.equal(lines["invoice_no"], first_no), pc.add(lines["quantity"], 1), lines["quantity"]),
    )
    with pytest.raises(
        ServiceError, match=rf"invoice\(s\) {first_no} with other content.*on-conflict replace"
    ):
        _post(service, changed)
    assert len(service.invoice_bodies) == bodies_before


def test_invoices_are_never_split_and_batches_respect_the_line_limit(lines):
    service = ArrowService()
    limit = 500
    _post(service, lines, max_lines_per_request=limit)

    sizes = Counter(lines["invoice_no"].to_pylist())
    seen: Counter[str] = Counter()
    for body in service.invoice_bodies:
        batch_lines = sum(len(i["lines"]) for i in body)
        # Over the limit only when the batch is a single invoice larger than the limit.
        assert batch_lines <= limit or (len(body) == 1 and sizes[body[0]["invoice_no"]] > limit)
        for invoice in body:
            seen[invoice["invoice_no"]] += 1
            assert len(invoice["lines"]) == sizes[invoice["invoice_no"]]
    assert set(seen.values()) == {1}
    assert set(seen) == set(sizes)
    assert max(sizes.values()) > limit  # the sample has one (592 lines): the lone-invoice case ran
    assert len(service.invoice_bodies) > 10
    # In the Arrow bodies themselves: an invoice over the limit is the only row of its stream.
    large = [t for t in service.decoded_bodies() if max(pc.list_value_length(t["lines"]).to_pylist()) > limit]
    assert large and all(t.num_rows == 1 for t in large)
    assert {len(t["lines"][0]) for t in large} == {n for n in sizes.values() if n > limit}


def test_plan_caps_invoices_per_batch_and_keeps_big_invoices_whole():
    rows = [{"invoice_no": f"5{n:05d}", "line_no": 1} for n in range(7)]
    rows += [{"invoice_no": "599999", "line_no": k} for k in range(1, 11)]  # 10 lines
    ordered = sort_for_posting(line_rows(rows))
    batches = plan_invoice_batches(ordered, max_lines=4, max_invoices=3)
    assert [(b.invoices, b.lines) for b in batches] == [(3, 3), (3, 3), (1, 1), (1, 10)]
    assert batches[0].start == 0 and batches[-1].stop == ordered.num_rows
    assert all(a.stop == b.start for a, b in itertools.pairwise(batches))
    assert plan_invoice_batches(ordered.slice(0, 0), max_lines=4, max_invoices=3) == []


def test_the_body_is_an_arrow_stream_of_exactly_the_invoices_and_their_lines():
    rows = [
        # Lines out of order in the table, and a second timestamp on line 2: invoice fields come from
        # line 1, each line keeps its own timestamp.
        {"invoice_no": "536365", "line_no": 2, "unit_price": "3.39", "invoice_date": "2010-12-01 08:27:00"},
        {
            "invoice_no": "536365",
            "line_no": 1,
            "stock_code": "85123A",
            "description": "WHITE HANGING HEART T-LIGHT HOLDER",
            "quantity": 6,
            "unit_price": "2.55",
        },
        {
            "invoice_no": "C536379",
            "line_no": 1,
            "stock_code": "D",
            "description": None,
            "quantity": -1,
            "unit_price": "27.5",
            "customer_id": None,
            "country": "EIRE",
        },
        {
            "invoice_no": "A563185",
            "line_no": 1,
            "stock_code": "B",
            "unit_price": "-11062.06",
            "customer_id": None,
        },
    ]
    service = ArrowService()
    _post(service, line_rows([{"stock_code": "X", **r} for r in rows]))

    (request,) = [r for r in service.requests if r.url.path == "/bulk/invoices"]
    assert request.headers["Content-Type"] == "application/vnd.apache.arrow.stream"
    body = pa.ipc.open_stream(request.content).read_all()
    assert body.schema.equals(CONTRACT_SCHEMA)
    at = dt.datetime(2010, 12, 1, 8, 26)
    assert body.to_pylist() == [
        {
            "invoice_no": "536365",
            "invoice_date": at,
            "customer_id": "17850",
            "country": "United Kingdom",
            "lines": [
                {
                    "line_no": 1,
                    "stock_code": "85123A",
                    "description": "WHITE HANGING HEART T-LIGHT HOLDER",
                    "quantity": 6,
                    "unit_price": Decimal("2.550"),
                    "invoice_date": at,
                },
                {
                    "line_no": 2,
                    "stock_code": "X",
                    "description": "ITEM",
                    "quantity": 1,
                    "unit_price": Decimal("3.390"),
                    "invoice_date": dt.datetime(2010, 12, 1, 8, 27),
                },
            ],
        },
        {
            "invoice_no": "A563185",
            "invoice_date": at,
            "customer_id": None,
            "country": "United Kingdom",
            "lines": [
                {
                    "line_no": 1,
                    "stock_code": "B",
                    "description": "ITEM",
                    "quantity": 1,
                    "unit_price": Decimal("-11062.060"),
                    "invoice_date": at,
                }
            ],
        },
        {
            "invoice_no": "C536379",
            "invoice_date": at,
            "customer_id": None,
            "country": "EIRE",
            "lines": [
                {
                    "line_no": 1,
                    "stock_code": "D",
                    "description": None,
                    "quantity": -1,
                    "unit_price": Decimal("27.500"),
                    "invoice_date": at,
                }
            ],
        },
    ]


def test_the_bodies_carry_every_sample_line_exactly_once_with_exact_values(lines):
    service = ArrowService()
    _post(service, lines, max_lines_per_request=5000)
    bodies = service.decoded_bodies()
    assert len(bodies) > 1
    sent = pa.concat_tables(bodies)
    # Unnest: each line with its invoice's number, in body order (invoice, then line_no).
    flat = sent["lines"].combine_chunks()
    parents = pc.list_parent_indices(flat)
    sent_lines = pa.Table.from_arrays(
        [pc.take(sent["invoice_no"], parents), *flat.flatten().flatten()],
        names=["invoice_no", *CONTRACT_LINE.names],
    )
    expected = sort_for_posting(lines).select(sent_lines.column_names)
    assert sent_lines.equals(expected.cast(sent_lines.schema))
    # Invoice-level fields are those of each invoice's first line.
    firsts = sort_for_posting(lines).take(pa.array(invoice_starts(sort_for_posting(lines))))
    for name in ("invoice_no", "invoice_date", "customer_id", "country"):
        assert sent[name].to_pylist() == firsts[name].to_pylist()


def test_a_retry_resends_the_same_arrow_bytes():
    service = ArrowService()
    table = line_rows([{"invoice_no": "1", "line_no": 1}, {"invoice_no": "1", "line_no": 2}])
    service.faults = [
        httpx.Response(200, json={"created": 1, "existing": 0, "conflicts": []}),
        httpx.Response(200, json={"unchanged": [], "different": [], "missing": ["1"]}),
        httpx.Response(503, headers={"Retry-After": "0"}),  # the invoice batch's first attempt
    ]
    service.customers["17850"] = "United Kingdom"
    report = _post(service, table)
    posts = [r for r in service.requests if r.url.path == "/bulk/invoices"]
    assert len(posts) == 2
    assert posts[0].content == posts[1].content == service.arrow_bodies[0]
    assert posts[0].headers["X-Request-ID"] == posts[1].headers["X-Request-ID"]
    assert report.retries.by_cause == {"503": 1} and report.invoices_created == 1


def test_only_the_invoices_the_service_lacks_are_in_the_body(lines):
    """The compare-by-hash answer removes rows from the Arrow body; the count check still holds."""
    service = ArrowService()
    some = lines.filter(pc.is_in(lines["invoice_no"], value_set=lines["invoice_no"].unique()[:40]))
    _post(service, some)
    report = _post(service, lines)
    posted = {no for body in service.decoded_bodies()[1:] for no in body["invoice_no"].to_pylist()}
    invoices = set(lines["invoice_no"].to_pylist())
    assert report.invoices_skipped == 40 and report.invoices_created == len(invoices) - 40
    assert posted == invoices - set(some["invoice_no"].to_pylist())


def test_customers_get_the_country_of_their_first_line():
    table = line_rows(
        [
            {"invoice_no": "1", "line_no": 1, "customer_id": "12370", "country": "Cyprus"},
            {"invoice_no": "2", "line_no": 1, "customer_id": None, "country": "Spain"},
            {"invoice_no": "3", "line_no": 1, "customer_id": "12370", "country": "Austria"},
            {"invoice_no": "4", "line_no": 1, "customer_id": "12431", "country": "Belgium"},
        ]
    )
    assert customer_payloads(table) == [
        {"customer_id": "12370", "country": "Cyprus"},
        {"customer_id": "12431", "country": "Belgium"},
    ]


def test_a_customer_stored_under_another_country_is_reported_not_fatal():
    service = ArrowService()
    service.customers["12370"] = "Austria"
    table = line_rows([{"invoice_no": "1", "line_no": 1, "customer_id": "12370", "country": "Cyprus"}])
    report = _post(service, table)
    assert report.customer_conflicts == ("12370",)
    assert report.customers_existing == 1
    assert report.invoices_created == 1


def test_concurrency_is_bounded(lines):
    service = ArrowService(yields_per_request=5)
    _post(service, lines, concurrency=3, max_lines_per_request=300)
    assert len(service.invoice_bodies) > 10
    assert service.max_in_flight == 3


def test_one_at_a_time_when_concurrency_is_one(lines):
    service = ArrowService(yields_per_request=5)
    _post(service, lines, concurrency=1, max_lines_per_request=300)
    assert service.max_in_flight == 1


def test_a_retried_batch_shows_in_the_report():
    service = ArrowService()
    table = line_rows([{"invoice_no": "1", "line_no": 1}])
    service.faults = [httpx.Response(200, json={"created": 1, "existing": 0, "conflicts": []})]  # customers
    service.customers["17850"] = "United Kingdom"
    service.faults.append(httpx.Response(503))  # the invoice batch's first attempt
    report = _post(service, table)
    assert report.retries.by_cause == {"503": 1}
    assert report.invoices_created == 1
    assert report.requests == 2


def test_an_invoice_stored_with_other_content_stops_the_post():
    service = ArrowService()
    table = line_rows([{"invoice_no": "536365", "line_no": 1, "quantity": 6}])
    _post(service, table)
    changed = line_rows([{"invoice_no": "536365", "line_no": 1, "quantity": 7}])
    with pytest.raises(ServiceError, match=r"the service holds invoice\(s\) 536365 with other content"):
        _post(service, changed)


def _corrected(lines: pa.Table, invoice_no: str) -> pa.Table:
    """`lines` with one more of every line's quantity in invoice `invoice_no`."""
    return lines.set_column(
        lines.schema.get_field_index("quantity"),
        "quantity",
        pc.if_else(
            pc.equal(lines["invoice_no"], invoice_no), pc.add(lines["quantity"], 1), lines["quantity"]
        ),
    )


def test_with_replace_a_changed_invoice_is_put_whole_and_the_rest_skipped(lines):
    service = ArrowService()
    _post(service, lines, max_lines_per_request=2000)
    invoice_no = lines["invoice_no"][0].as_py()
    bodies_before = len(service.invoice_bodies)
    changed = _corrected(lines, invoice_no)

    report = _post(service, changed, max_lines_per_request=2000, on_conflict="replace")

    assert report.replaced_invoices == (invoice_no,) and report.invoices_replaced == 1
    invoice_day = lines.filter(pc.equal(lines["invoice_no"], invoice_no))["invoice_date"][0].as_py().date()
    assert report.replaced_days == (invoice_day,)
    assert report.invoices_created == 0
    assert report.invoices_unchanged == report.invoices_skipped == len(service.invoices) - 1
    assert len(service.invoice_bodies) == bodies_before, "nothing else travels in bulk"
    [(put_no, body)] = service.invoice_puts
    source = changed.filter(pc.equal(changed["invoice_no"], invoice_no))
    assert put_no == invoice_no and "invoice_no" not in body
    assert [line["quantity"] for line in body["lines"]] == source["quantity"].to_pylist()
    assert [line["unit_price"] for line in body["lines"]] == [
        str(p) for p in source["unit_price"].to_pylist()
    ]
    # Now the service holds the source: a second replace run replaces nothing.
    again = _post(service, changed, max_lines_per_request=2000, on_conflict="replace")
    assert again.invoices_replaced == 0 and len(service.invoice_puts) == 1


def test_with_replace_a_customer_gets_the_one_country_its_lines_name():
    service = ArrowService()
    _post(service, line_rows([{"invoice_no": "1", "line_no": 1, "customer_id": "7", "country": "France"}]))
    moved = line_rows(
        [
            {"invoice_no": "2", "line_no": 1, "customer_id": "7", "country": "Spain"},
            {"invoice_no": "3", "line_no": 1, "customer_id": "8", "country": "Spain"},
        ]
    )
    service.customers["8"] = "Italy"  # a customer whose source names two countries keeps the stored one
    both = pa.concat_tables(
        [moved, line_rows([{"invoice_no": "4", "line_no": 1, "customer_id": "8", "country": "Italy"}])]
    )

    kept = _post(service, both)  # fail: a customer's other country is no error, and nothing is replaced
    assert kept.customer_conflicts == ("7", "8") and service.customer_puts == []
    replaced = _post(service, both, on_conflict="replace")
    assert replaced.customers_replaced == ("7",) and replaced.customer_conflicts == ("8",)
    assert service.customer_puts == [("7", {"country": "Spain"})]
    assert service.customers == {"7": "Spain", "8": "Italy"}


def test_on_conflict_takes_only_fail_or_replace(lines):
    with pytest.raises(ValueError, match="expected one of fail, replace"):
        _post(ArrowService(), lines, on_conflict="overwrite")


def test_a_short_acknowledgement_is_an_error():
    service = ArrowService()
    service.faults = [
        httpx.Response(200, json={"created": 1, "existing": 0, "conflicts": []}),
        httpx.Response(200, json={"unchanged": [], "different": [], "missing": ["1", "2"]}),
        httpx.Response(200, json={"created": 1, "unchanged": 0, "lines_created": 1}),
    ]
    table = line_rows([{"invoice_no": "1", "line_no": 1}, {"invoice_no": "2", "line_no": 1}])
    with pytest.raises(
        ServiceError, match="acknowledged 1 created \\+ 0 unchanged \\(\\+ 0 by hash\\) of 2 invoices"
    ):
        _post(service, table)


def test_nothing_to_post_sends_nothing():
    service = ArrowService()
    report = _post(service, line_rows([]))
    assert service.requests == []
    assert report.requests == 0 and report.lines_created == 0


def test_rejects_a_line_limit_beyond_the_service_limit(lines):
    with pytest.raises(ValueError, match="max_lines_per_request"):
        _post(ArrowService(), lines, max_lines_per_request=50_001)


# -- content hashes: column-wise equals the reference, per dict ---------------------------------------


def _reference_invoices(ordered: pa.Table) -> list[dict[str, Any]]:
    """The JSON invoice items the job used to build per line (its former `invoice_payloads`): header
    fields from each invoice's first line, prices as 3-decimal strings, timestamps in ISO form."""
    dates = [d and d.isoformat(timespec="seconds") for d in ordered["invoice_date"].to_pylist()]
    prices = pc.cast(ordered["unit_price"], pa.string()).to_pylist()
    rows = ordered.to_pylist()
    lines = [
        {
            "line_no": row["line_no"],
            "stock_code": row["stock_code"],
            "description": row["description"],
            "quantity": row["quantity"],
            "unit_price": price,
            "invoice_date": date,
        }
        for row, price, date in zip(rows, prices, dates, strict=True)
    ]
    starts = invoice_starts(ordered).tolist()
    stops = [*starts[1:], ordered.num_rows]
    return [
        {
            "invoice_no": rows[start]["invoice_no"],
            "customer_id": rows[start]["customer_id"],
            "invoice_date": dates[start],
            "country": rows[start]["country"],
            "lines": lines[start:stop],
        }
        for start, stop in zip(starts, stops, strict=True)
    ]


def _canonical(invoice: dict[str, Any]) -> list[Any]:
    """docs/design.md "Content hash": what is hashed, in the form the JSON is written from."""
    return [
        invoice["invoice_no"],
        invoice["customer_id"],
        invoice["invoice_date"],
        invoice["country"],
        [
            [
                line["line_no"],
                line["stock_code"],
                line["description"],
                line["quantity"],
                line["unit_price"],
                line["invoice_date"],
            ]
            for line in sorted(invoice["lines"], key=lambda line: line["line_no"])
        ],
    ]


def _reference_hash(invoice: dict[str, Any]) -> str:
    """The job's former per-dict `content_hash`: sha256 of orjson's compact JSON."""
    return hashlib.sha256(orjson.dumps(_canonical(invoice))).hexdigest()


def _json_dumps_hash(invoice: dict[str, Any]) -> str:
    """The same hash from the definition's own encoder, `json.dumps(..., ensure_ascii=False)`."""
    text = json.dumps(_canonical(invoice), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def test_content_hashes_equal_the_reference_over_the_whole_sample(lines):
    ordered = sort_for_posting(lines)
    reference = _reference_invoices(ordered)
    table = invoice_table(ordered)
    assert table["invoice_no"].to_pylist() == [invoice["invoice_no"] for invoice in reference]
    assert content_hashes(table) == [_reference_hash(invoice) for invoice in reference]
    # The sample has quoted descriptions and missing customers and descriptions: the escaping and null
    # paths ran, not only the plain one.
    descriptions = [d for d in lines["description"].to_pylist() if d is not None]
    assert any('"' in d for d in descriptions) and lines["description"].null_count
    assert lines["customer_id"].null_count


def test_content_hashes_of_a_batch_slice_or_filtered_rows_are_those_of_the_same_invoices(lines):
    ordered = sort_for_posting(lines)
    table = invoice_table(ordered)
    whole = content_hashes(table)
    assert content_hashes(table.slice(7, 30)) == whole[7:37]
    keep = [i % 3 != 1 for i in range(table.num_rows)]
    assert content_hashes(table.filter(pa.array(keep))) == list(itertools.compress(whole, keep))
    for batch in plan_invoice_batches(ordered, max_lines=700, max_invoices=50):
        start = invoice_starts(ordered).tolist().index(batch.start)
        batch_hashes = content_hashes(invoice_table(ordered.slice(batch.start, batch.lines)))
        assert batch_hashes == whole[start : start + batch.invoices]
    assert content_hashes(invoice_table(ordered.slice(0, 0))) == []
    # Lines in many chunks (as a reader may give them) make the same body and hashes.
    chunked = pa.Table.from_batches(ordered.to_batches(max_chunksize=1000))
    assert chunked["invoice_no"].num_chunks > 1
    assert invoice_table(chunked).equals(table) and content_hashes(invoice_table(chunked)) == whole


NASTY_TEXTS = [
    'SET OF 3 "VINTAGE" HEARTS',
    "back\\slash \\n not a newline",
    '\\"',
    '"',
    "tab\there",
    "new\nline and carriage\rreturn",
    "\x00nul \x01 \x08 \x0c \x1f",
    "\x7f delete is not escaped",
    "line\u2028separator\u2029",
    "CAFÉ crème, Ελλάδα, 日本",
    "gift 🎁 emoji 🇬🇧",
    "",
    " ",
    None,
]


def test_content_hashes_equal_the_reference_for_nasty_strings():
    rows = [
        {"invoice_no": "1", "line_no": k, "description": text, "stock_code": f"S{k}"}
        for k, text in enumerate(NASTY_TEXTS, start=1)
    ]
    rows += [
        # Strings of every field JSON must escape, headers too, and a missing customer.
        {
            "invoice_no": 'C"2\\',
            "line_no": 1,
            "stock_code": 'Q"\\\t',
            "description": None,
            "customer_id": None,
            "country": "Côte d'Ivoire \n",
        },
        {"invoice_no": "3", "line_no": 2, "customer_id": '1"\x1f', "description": '🎁\x00"\\'},
        {"invoice_no": "3", "line_no": 1, "description": None, "country": "\\"},
        # Nothing to escape at all (the path that returns the strings as they are).
        {"invoice_no": "4", "line_no": 1, "description": "PLAIN", "quantity": -12, "unit_price": "0"},
        {"invoice_no": "4", "line_no": 2, "description": None, "unit_price": "0.001"},
    ]
    ordered = sort_for_posting(line_rows([{"stock_code": "X", **row} for row in rows]))
    reference = _reference_invoices(ordered)
    got = content_hashes(invoice_table(ordered))
    assert len(got) == 4
    assert got == [_reference_hash(invoice) for invoice in reference]
    assert got == [_json_dumps_hash(invoice) for invoice in reference]
    assert got == [service_hash(invoice) for invoice in reference]


@pytest.mark.parametrize("text", [t for t in NASTY_TEXTS if t is not None])
def test_each_nasty_string_alone_hashes_as_the_reference(text):
    """One string at a time, in each string field, so a wrong escape cannot hide behind another."""
    for field in ("description", "stock_code", "customer_id", "country", "invoice_no"):
        row = {"invoice_no": "9", "line_no": 1, "stock_code": "X", field: text}
        ordered = sort_for_posting(line_rows([row]))
        (invoice,) = _reference_invoices(ordered)
        assert content_hashes(invoice_table(ordered)) == [_reference_hash(invoice)], field


def test_a_null_where_a_value_is_required_hashes_as_the_reference_and_is_left_to_the_service():
    """Validated lines have none, but Arrow does not enforce nullability: such a line is hashed as the
    reference writes it (`null`) and sent as it is, for the service to refuse by the same rules as JSON."""
    rows = [
        {"invoice_no": "1", "line_no": 1},  # no stock code
        {"invoice_no": "1", "line_no": 2, "stock_code": "X"},
        {"invoice_no": "2", "line_no": 1, "stock_code": "X", "country": None},
    ]
    posted = shared_line_rows(rows)
    service = ArrowService()
    _post(service, posted)
    body = service.decoded_bodies()[0]
    assert body["lines"][0][0]["stock_code"].as_py() is None and body["country"][1].as_py() is None
    # And nulls in every other required column of one line.
    table = posted
    for name in ("quantity", "unit_price", "invoice_date", "line_no"):
        column = table[name].combine_chunks()
        nulled = pa.concat_arrays([column[:2], pa.nulls(1, column.type)])
        table = table.set_column(table.schema.get_field_index(name), table.schema.field(name), nulled)
    for lines in (posted, table):
        ordered = sort_for_posting(lines)
        reference = _reference_invoices(ordered)
        assert content_hashes(invoice_table(ordered)) == [_reference_hash(invoice) for invoice in reference]


def test_lines_already_grouped_by_invoice_are_posted_in_their_order_and_others_are_sorted():
    grouped = line_rows(
        [
            {"invoice_no": "9", "line_no": 1},
            {"invoice_no": "9", "line_no": 2},
            {"invoice_no": "1", "line_no": 1},
            {"invoice_no": "5", "line_no": 1},
        ]
    )
    assert sort_for_posting(grouped).equals(grouped.select(sort_for_posting(grouped).column_names))

    split = line_rows(
        [
            {"invoice_no": "9", "line_no": 1},
            {"invoice_no": "1", "line_no": 1},
            {"invoice_no": "9", "line_no": 2},
        ]
    )
    backwards = line_rows([{"invoice_no": "9", "line_no": 2}, {"invoice_no": "9", "line_no": 1}])
    for table in (split, backwards):
        ordered = sort_for_posting(table)
        keys = list(zip(ordered["invoice_no"].to_pylist(), ordered["line_no"].to_pylist(), strict=True))
        assert keys == sorted(keys)
