"""read_back: every page of the asked days, converted to exact Arrow types."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

import httpx
import pyarrow as pa
import pytest

from etl.errors import ServiceError
from etl.post import post_lines
from etl.readback import calendar_spans, day_spans, read_back
from etl.schema import CUSTOMER_SCHEMA, LINE_SCHEMA
from tests.etl.conftest_client import FakeService, line_rows, make_client, run, sample_lines

D = dt.date
SORT = [("invoice_day", "ascending"), ("invoice_no", "ascending"), ("line_no", "ascending")]


def _read(service: FakeService, days, **options):
    async def go():
        async with make_client(service.transport()) as client:
            return await read_back(client, days, **options)

    return run(go)


def _loaded(lines) -> FakeService:
    service = FakeService()

    async def go():
        async with make_client(service.transport()) as client:
            await post_lines(lines, client)

    run(go)
    return service


@pytest.fixture(scope="module")
def lines():
    return sample_lines()


@pytest.fixture(scope="module")
def service(lines):
    return _loaded(lines)


def test_reads_back_exactly_what_was_posted_across_many_pages(lines, service):
    days = sorted(set(lines["invoice_day"].to_pylist()))
    service.requests.clear()
    service.max_in_flight = 0
    snapshot = _read(service, days, page_size=25, concurrency=3)

    assert snapshot.lines.schema == LINE_SCHEMA
    assert snapshot.lines.equals(lines.sort_by(SORT))
    pages = [r for r in service.requests if r.url.path == "/invoices"]
    assert len(pages) > len(days) * 3  # 449 invoices at 25 a page: the cursor chains were followed
    assert any("cursor" in r.url.params for r in pages)
    assert 2 <= service.max_in_flight <= 3  # three spans of days, walked side by side


def test_customers_are_read_back_once_each_sorted(lines, service):
    days = sorted(set(lines["invoice_day"].to_pylist()))
    snapshot = _read(service, days, page_size=40)
    ids = snapshot.customers["customer_id"].to_pylist()
    assert snapshot.customers.schema == CUSTOMER_SCHEMA
    assert ids == sorted(set(lines["customer_id"].drop_null().to_pylist()))
    assert snapshot.customers.slice(0, 1).to_pylist() == [
        {"customer_id": ids[0], "country": service.customers[ids[0]]}
    ]


def test_only_the_asked_days_are_read(lines, service):
    snapshot = _read(service, [D(2011, 8, 12)])
    assert set(snapshot.lines["invoice_day"].to_pylist()) == {D(2011, 8, 12)}
    assert snapshot.lines.num_rows == 1122


def test_prices_and_timestamps_are_exact():
    table = line_rows(
        [
            {"invoice_no": "A563185", "line_no": 1, "unit_price": "-11062.06", "customer_id": None},
            {
                "invoice_no": "536365",
                "line_no": 1,
                "unit_price": "0.001",
                "invoice_date": "2010-12-01 08:26:00",
            },
            {
                "invoice_no": "536365",
                "line_no": 2,
                "unit_price": "38970",
                "invoice_date": "2010-12-01 08:27:59",
            },
        ]
    )
    snapshot = _read(_loaded(table), [D(2010, 12, 1)], page_size=1)
    rows = snapshot.lines.to_pylist()
    assert [r["unit_price"] for r in rows] == [Decimal("0.001"), Decimal("38970.000"), Decimal("-11062.060")]
    assert snapshot.lines.schema.field("unit_price").type == pa.decimal128(12, 3)
    assert [r["invoice_date"] for r in rows][:2] == [
        dt.datetime(2010, 12, 1, 8, 26),
        dt.datetime(2010, 12, 1, 8, 27, 59),
    ]
    assert rows[2]["customer_id"] is None
    assert snapshot.lines.equals(table.sort_by(SORT))


def test_no_days_reads_nothing():
    service = FakeService()
    snapshot = _read(service, [])
    assert snapshot.lines.num_rows == 0 and snapshot.lines.schema == LINE_SCHEMA
    assert snapshot.customers.num_rows == 0
    assert service.requests == []


def test_day_spans_are_consecutive_runs_of_at_most_seven_days():
    days = [D(2010, 12, 1), D(2010, 12, 2), D(2010, 12, 3), D(2010, 12, 5), D(2010, 12, 3)]
    assert day_spans(days) == [(D(2010, 12, 1), D(2010, 12, 3)), (D(2010, 12, 5), D(2010, 12, 5))]
    fortnight = [D(2011, 1, 1) + dt.timedelta(days=n) for n in range(15)]
    assert day_spans(fortnight) == [
        (D(2011, 1, 1), D(2011, 1, 7)),
        (D(2011, 1, 8), D(2011, 1, 14)),
        (D(2011, 1, 15), D(2011, 1, 15)),
    ]


def test_calendar_spans_cover_the_gaps_in_at_most_92_days():
    assert calendar_spans([D(2010, 12, 5), D(2010, 12, 1), D(2010, 12, 3)]) == [
        (D(2010, 12, 1), D(2010, 12, 5))
    ]
    assert calendar_spans([D(2011, 3, 24)]) == [(D(2011, 3, 24), D(2011, 3, 24))]
    assert calendar_spans([]) == []
    year = calendar_spans([D(2010, 12, 1), D(2011, 12, 9)])
    assert len(year) == 5 and year[0][0] == D(2010, 12, 1) and year[-1][1] == D(2011, 12, 9)
    assert all((end - start).days < 92 for start, end in year)
    assert all(after[0] == before[1] + dt.timedelta(days=1) for before, after in itertools.pairwise(year))


def test_customers_are_read_over_the_calendar_between_the_days(lines, service):
    days = sorted(set(lines["invoice_day"].to_pylist()))
    service.requests.clear()
    snapshot = _read(service, days, page_size=1000)

    customer_pages = [r for r in service.requests if r.url.path == "/customers"]
    assert {(r.url.params["start"], r.url.params["end"]) for r in customer_pages} == {
        (start.isoformat(), end.isoformat()) for start, end in calendar_spans(days)
    }
    assert snapshot.customers["customer_id"].to_pylist() == sorted(
        set(lines["customer_id"].drop_null().to_pylist())
    )


def _one_invoice_service(price, day="2010-12-01") -> FakeService:
    service = FakeService()
    invoice = {
        "invoice_no": "1",
        "invoice_date": f"{day}T08:00:00",
        "invoice_day": day,
        "country": "United Kingdom",
        "customer_id": None,
        "lines": [
            {
                "line_no": 1,
                "stock_code": "X",
                "description": None,
                "quantity": 1,
                "unit_price": price,
                "invoice_date": f"{day}T08:00:00",
            }
        ],
    }
    page = httpx.Response(200, json={"items": [invoice], "next_cursor": None})
    empty = httpx.Response(200, json={"items": [], "next_cursor": None})
    service.faults = [page, empty]
    return service


@pytest.mark.parametrize(
    ("price", "message"),
    [
        (2.55, "do not fit LINE_SCHEMA"),  # a JSON number: not how prices travel
        ("2.5555", "do not fit LINE_SCHEMA"),  # a fourth decimal would be lost
    ],
)
def test_a_price_that_is_not_an_exact_3_decimal_string_is_refused(price, message):
    with pytest.raises(ServiceError, match=message):
        _read(_one_invoice_service(price), [D(2010, 12, 1)])


def test_an_invoice_outside_the_asked_days_is_refused():
    with pytest.raises(
        ServiceError, match=r"returned invoice 1 of 2010-12-02 when asked for 2010-12-01\.\.2010-12-01"
    ):
        _read(_one_invoice_service("1.00", day="2010-12-02"), [D(2010, 12, 1)])
