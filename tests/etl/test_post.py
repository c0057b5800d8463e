"""post_lines: customers first, whole invoices in bounded batches, exact payloads, bounded concurrency."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from decimal import Decimal

import httpx
import pyarrow.compute as pc
import pytest

from etl.errors import ServiceError
from etl.post import (
    PostReport,
    customer_payloads,
    invoice_payloads,
    plan_invoice_batches,
    post_lines,
    sort_for_posting,
)
from tests.etl.conftest_client import FakeService, line_rows, make_client, run, sample_lines

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")
PRICE = re.compile(r"^-?\d+\.\d{3}$")


def _post(service: FakeService, lines, **options) -> PostReport:
    async def go() -> PostReport:
        async with make_client(service.transport()) as client:
            return await post_lines(lines, client, **options)

    return run(go)


@pytest.fixture(scope="module")
def lines():
    return sample_lines()


def test_posts_every_line_once_and_a_replay_changes_nothing(lines):
    service = FakeService()
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
    service = FakeService()
    _post(service, lines)
    paths = [r.url.path for r in service.requests]
    assert paths[0] == "/bulk/customers"
    assert set(paths[1:]) == {"/bulk/invoices/compare", "/bulk/invoices"}


def test_a_rerun_sends_only_hashes_and_the_service_agrees_with_the_jobs_hash(lines):
    """The job's content hash equals the service's own (`api.crud.content_hash`, which the fake uses),
    so a replay posts no invoice at all; with `skip_unchanged=False` every invoice travels again."""
    service = FakeService()
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


def test_an_invoice_changed_in_the_source_is_posted_and_refused(lines):
    """A hash that differs is not skipped: the invoice is posted, and the service's 409 fails the run."""
    service = FakeService()
    _post(service, lines)
    first_no = lines["invoice_no"][0].as_py()
    changed = lines.set_column(
        lines.schema.get_field_index("quantity"),
        "quantity",
        pc.if_else(pc.equal(lines["invoice_no"], first_no), pc.add(lines["quantity"], 1), lines["quantity"]),
    )
    with pytest.raises(ServiceError, match="other content"):
        _post(service, changed)
    assert first_no in {invoice["invoice_no"] for invoice in service.invoice_bodies[-1]}


def test_invoices_are_never_split_and_batches_respect_the_line_limit(lines):
    service = FakeService()
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


def test_plan_caps_invoices_per_batch_and_keeps_big_invoices_whole():
    rows = [{"invoice_no": f"5{n:05d}", "line_no": 1} for n in range(7)]
    rows += [{"invoice_no": "599999", "line_no": k} for k in range(1, 11)]  # 10 lines
    ordered = sort_for_posting(line_rows(rows))
    batches = plan_invoice_batches(ordered, max_lines=4, max_invoices=3)
    assert [(b.invoices, b.lines) for b in batches] == [(3, 3), (3, 3), (1, 1), (1, 10)]
    assert batches[0].start == 0 and batches[-1].stop == ordered.num_rows
    assert all(a.stop == b.start for a, b in itertools.pairwise(batches))
    assert plan_invoice_batches(ordered.slice(0, 0), max_lines=4, max_invoices=3) == []


def test_invoice_payload_shapes():
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
    table = line_rows([{"stock_code": "X", **r} for r in rows])
    invoices = {i["invoice_no"]: i for i in invoice_payloads(sort_for_posting(table))}

    first = invoices["536365"]
    assert {k: v for k, v in first.items() if k != "lines"} == {
        "invoice_no": "536365",
        "customer_id": "17850",
        "invoice_date": "2010-12-01T08:26:00",
        "country": "United Kingdom",
    }
    assert first["lines"] == [
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
            "stock_code": "X",
            "description": "ITEM",
            "quantity": 1,
            "unit_price": "3.390",
            "invoice_date": "2010-12-01T08:27:00",
        },
    ]
    assert invoices["C536379"]["customer_id"] is None
    assert invoices["C536379"]["lines"][0]["description"] is None
    assert invoices["C536379"]["lines"][0]["quantity"] == -1
    assert invoices["A563185"]["lines"][0]["unit_price"] == "-11062.060"


def test_all_sample_payload_values_are_strings_for_prices_and_iso_for_dates(lines):
    service = FakeService()
    _post(service, lines, max_lines_per_request=5000)
    every_line = [line for body in service.invoice_bodies for invoice in body for line in invoice["lines"]]
    assert len(every_line) == lines.num_rows
    assert all(isinstance(line["unit_price"], str) and PRICE.match(line["unit_price"]) for line in every_line)
    assert all(ISO.match(line["invoice_date"]) for line in every_line)
    assert all(ISO.match(i["invoice_date"]) for body in service.invoice_bodies for i in body)
    total = sum(Decimal(line["unit_price"]) * line["quantity"] for line in every_line)
    expected = sum(
        Decimal(str(p)) * q
        for p, q in zip(lines["unit_price"].to_pylist(), lines["quantity"].to_pylist(), strict=True)
    )
    assert total == expected


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
    service = FakeService()
    service.customers["12370"] = "Austria"
    table = line_rows([{"invoice_no": "1", "line_no": 1, "customer_id": "12370", "country": "Cyprus"}])
    report = _post(service, table)
    assert report.customer_conflicts == ("12370",)
    assert report.customers_existing == 1
    assert report.invoices_created == 1


def test_concurrency_is_bounded(lines):
    service = FakeService(yields_per_request=5)
    _post(service, lines, concurrency=3, max_lines_per_request=300)
    assert len(service.invoice_bodies) > 10
    assert service.max_in_flight == 3


def test_one_at_a_time_when_concurrency_is_one(lines):
    service = FakeService(yields_per_request=5)
    _post(service, lines, concurrency=1, max_lines_per_request=300)
    assert service.max_in_flight == 1


def test_a_retried_batch_shows_in_the_report():
    service = FakeService()
    table = line_rows([{"invoice_no": "1", "line_no": 1}])
    service.faults = [httpx.Response(200, json={"created": 1, "existing": 0, "conflicts": []})]  # customers
    service.customers["17850"] = "United Kingdom"
    service.faults.append(httpx.Response(503))  # the invoice batch's first attempt
    report = _post(service, table)
    assert report.retries.by_cause == {"503": 1}
    assert report.invoices_created == 1
    assert report.requests == 2


def test_an_invoice_stored_with_other_content_stops_the_post():
    service = FakeService()
    table = line_rows([{"invoice_no": "536365", "line_no": 1, "quantity": 6}])
    _post(service, table)
    changed = line_rows([{"invoice_no": "536365", "line_no": 1, "quantity": 7}])
    with pytest.raises(ServiceError, match=r"the service holds invoice\(s\) 536365 with other content"):
        _post(service, changed)


def test_a_short_acknowledgement_is_an_error():
    service = FakeService()
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
    service = FakeService()
    report = _post(service, line_rows([]))
    assert service.requests == []
    assert report.requests == 0 and report.lines_created == 0


def test_rejects_a_line_limit_beyond_the_service_limit(lines):
    with pytest.raises(ValueError, match="max_lines_per_request"):
        _post(FakeService(), lines, max_lines_per_request=50_001)
