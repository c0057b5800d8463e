"""RetailClient: what is retried, how long it waits, when it gives up, and what it says."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import logging
import ssl
import uuid
from functools import partial

import httpx
import pyarrow as pa
import pytest
import respx

from etl.client import RetailClient, RetryPolicy, RetryStats, gather_bounded, parse_retry_after
from etl.errors import ServiceError
from etl.post import invoice_table, sort_for_posting
from retail_contract.wire import ARROW_STREAM
from tests.etl.conftest_client import (
    API_KEY,
    BASE_URL,
    FAST_POLICY,
    RecordingSleep,
    line_rows,
    make_client,
    run,
)

OK_INVOICES = {"created": 1, "unchanged": 0, "lines_created": 1}
INVOICE = {
    "invoice_no": "536365",
    "customer_id": "17850",
    "invoice_date": "2010-12-01T08:26:00",
    "country": "United Kingdom",
    "lines": [
        {
            "line_no": 1,
            "stock_code": "85123A",
            "description": "WHITE HANGING HEART T-LIGHT HOLDER",
            "quantity": 6,
            "unit_price": "2.550",
            "invoice_date": "2010-12-01T08:26:00",
        }
    ],
}


@pytest.fixture
def router():
    with respx.mock(base_url=BASE_URL, assert_all_called=False) as mock:
        yield mock


async def _post_invoices(sleep: RecordingSleep, policy: RetryPolicy = FAST_POLICY):
    async with make_client(policy=policy, sleep=sleep) as client:
        answer = await client.post_invoices([INVOICE])
        return answer, client.retry_stats


# -- what is retried ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_retries_429_and_5xx_then_succeeds(router, status):
    route = router.post("/bulk/invoices").mock(
        side_effect=[httpx.Response(status), httpx.Response(200, json=OK_INVOICES)]
    )
    sleep = RecordingSleep()
    answer, stats = run(lambda: _post_invoices(sleep))
    assert answer == OK_INVOICES
    assert route.call_count == 2
    assert stats.by_cause == {str(status): 1}
    assert len(sleep.waits) == 1


def test_retries_connection_failures_and_counts_them_by_class(router):
    route = router.post("/bulk/invoices").mock(
        side_effect=[
            httpx.ConnectError("connection refused"),
            httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
            httpx.ReadTimeout("timed out"),
            httpx.Response(200, json=OK_INVOICES),
        ]
    )
    sleep = RecordingSleep()
    answer, stats = run(lambda: _post_invoices(sleep))
    assert answer == OK_INVOICES
    assert route.call_count == 4
    assert stats.by_cause == {"ConnectError": 1, "ReadTimeout": 1, "RemoteProtocolError": 1}
    assert stats.total == 3


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, {"detail": "bad request"}, "POST /bulk/invoices was refused with 400 Bad Request: bad request"),
        (404, {"detail": "no such thing"}, "404 Not Found: no such thing"),
        (
            422,
            {"detail": [{"loc": ["body", "invoices", 0, "customer_id"], "msg": "unknown customer"}]},
            "422 Unprocessable Entity: body.invoices.0.customer_id: unknown customer",
        ),
        (401, {"detail": "bad key"}, "the service refused the API key (401 on POST /bulk/invoices)"),
        (
            413,
            {"detail": "too large"},
            "the service found the request too large (413 on POST /bulk/invoices)",
        ),
    ],
)
def test_4xx_is_not_retried_and_says_what_the_service_said(router, status, body, expected):
    route = router.post("/bulk/invoices").mock(return_value=httpx.Response(status, json=body))
    sleep = RecordingSleep()
    with pytest.raises(ServiceError) as raised:
        run(lambda: _post_invoices(sleep))
    assert expected in str(raised.value)
    assert route.call_count == 1
    assert sleep.waits == []


def test_409_on_bulk_invoices_names_the_conflicting_invoices(router):
    router.post("/bulk/invoices").mock(
        return_value=httpx.Response(
            409, json={"detail": "invoices exist with other content", "invoice_nos": ["536365", "536366"]}
        )
    )
    with pytest.raises(ServiceError) as raised:
        run(lambda: _post_invoices(RecordingSleep()))
    message = str(raised.value)
    assert message.startswith("the service holds invoice(s) 536365, 536366 with other content")
    assert "invoices exist with other content" in message


def test_a_request_httpx_cannot_send_is_not_retried():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'.")

    sleep = RecordingSleep()

    async def call():
        async with make_client(httpx.MockTransport(refuse), sleep=sleep) as client:
            await client.health()

    with pytest.raises(ServiceError, match="cannot send GET /health: UnsupportedProtocol"):
        run(call)
    assert sleep.waits == []


# -- how long it waits -------------------------------------------------------------------------------


def test_retry_after_in_seconds_is_honoured(router):
    router.post("/bulk/invoices").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "7"}),
            httpx.Response(503, headers={"Retry-After": "2"}),
            httpx.Response(200, json=OK_INVOICES),
        ]
    )
    sleep = RecordingSleep()
    run(lambda: _post_invoices(sleep))
    # FAST_POLICY's own backoff is 0.01 s and 0.02 s: the header is what decided each wait.
    assert sleep.waits == [7.0, 2.0]


def test_retry_after_as_http_date_is_honoured(router):
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    router.post("/bulk/invoices").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)}),
            httpx.Response(200, json=OK_INVOICES),
        ]
    )
    sleep = RecordingSleep()
    run(lambda: _post_invoices(sleep))
    # The header has whole seconds, so the wait is 29..30 s from whenever the answer was read.
    assert len(sleep.waits) == 1
    assert 28.0 <= sleep.waits[0] <= 30.0


def test_parse_retry_after_reads_both_forms():
    now = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert parse_retry_after("120", now=now) == 120.0
    assert parse_retry_after(" 0 ", now=now) == 0.0
    assert parse_retry_after("Wed, 01 May 2024 12:00:45 GMT", now=now) == 45.0
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now=now) == 0.0  # in the past: now
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("-5", now=now) is None
    assert parse_retry_after(None, now=now) is None


def test_retry_after_zero_does_not_spin(router):
    router.post("/bulk/invoices").mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "0"})] * 3
        + [httpx.Response(200, json=OK_INVOICES)]
    )
    # No backoff of its own: only the floor stands between "Retry-After: 0" and a busy loop.
    policy = RetryPolicy(max_attempts=5, initial_wait=0, jitter=0, min_wait=0.25, max_wait=60)
    sleep = RecordingSleep()
    answer, stats = run(lambda: _post_invoices(sleep, policy))
    assert answer == OK_INVOICES
    assert sleep.waits == [0.25, 0.25, 0.25]
    assert stats.by_cause == {"429": 3}


def test_a_long_retry_after_is_capped_and_backoff_wins_when_longer(router):
    router.post("/bulk/invoices").mock(
        side_effect=[
            httpx.Response(503, headers={"Retry-After": "3600"}),
            httpx.Response(503, headers={"Retry-After": "1"}),
            httpx.Response(200, json=OK_INVOICES),
        ]
    )
    policy = RetryPolicy(max_attempts=5, initial_wait=4, jitter=0, min_wait=0.1, max_wait=60)
    sleep = RecordingSleep()
    run(lambda: _post_invoices(sleep, policy))
    # 1st: min(max(3600, 4), 60); 2nd: max(1, backoff 4 * 2) = 8.
    assert sleep.waits == [60.0, 8.0]


def test_backoff_grows_exponentially_with_bounded_jitter(router):
    router.get("/health").mock(side_effect=[httpx.Response(503)] * 4 + [httpx.Response(200, json={})])
    policy = RetryPolicy(max_attempts=5, initial_wait=1, jitter=0.5, min_wait=0.1, max_wait=60)
    sleep = RecordingSleep()

    async def call():
        async with make_client(policy=policy, sleep=sleep) as client:
            return await client.health()

    run(call)
    assert len(sleep.waits) == 4
    for wait, base in zip(sleep.waits, [1, 2, 4, 8], strict=True):
        assert base <= wait <= base + 0.5


# -- giving up ---------------------------------------------------------------------------------------


def test_gives_up_after_max_attempts_with_a_clear_message(router):
    route = router.post("/bulk/invoices").mock(
        return_value=httpx.Response(503, json={"detail": "database unavailable"})
    )
    policy = RetryPolicy(max_attempts=3, initial_wait=0.01, jitter=0, min_wait=0.01)
    sleep = RecordingSleep()
    with pytest.raises(ServiceError) as raised:
        run(lambda: _post_invoices(sleep, policy))
    message = str(raised.value)
    assert message.startswith("POST /bulk/invoices failed after 3 attempt(s) in ")
    assert "last HTTP 503 Service Unavailable (database unavailable)" in message
    assert "\n" not in message
    assert route.call_count == 3
    assert len(sleep.waits) == 2


def test_gives_up_when_the_time_budget_would_be_exceeded(router):
    route = router.post("/bulk/invoices").mock(return_value=httpx.Response(429, headers={"Retry-After": "4"}))
    policy = RetryPolicy(
        max_attempts=100, total_budget_seconds=10, initial_wait=0.01, jitter=0, min_wait=0.01
    )
    sleep = RecordingSleep()
    with pytest.raises(ServiceError, match=r"failed after 3 attempt\(s\) .*last HTTP 429"):
        run(lambda: _post_invoices(sleep, policy))
    # Waits of 4 and 4 fit in 10 s; a third would end at 12 s, so the client stops before it.
    assert sleep.waits == [4.0, 4.0]
    assert route.call_count == 3


def test_gives_up_on_a_service_that_stays_unreachable(router):
    router.get("/health").mock(side_effect=httpx.ConnectError("connection refused"))
    policy = RetryPolicy(max_attempts=4, initial_wait=0.01, jitter=0, min_wait=0.01)

    sleep = RecordingSleep()

    async def call():
        async with make_client(policy=policy, sleep=sleep) as client:
            await client.health()

    with pytest.raises(
        ServiceError, match=r"GET /health failed after 4 attempt\(s\).*ConnectError: connection refused"
    ):
        run(call)
    assert len(sleep.waits) == 3


# -- headers, request ids, replays -------------------------------------------------------------------


def test_sends_the_api_key_and_one_request_id_per_request_kept_across_retries(router):
    route = router.get("/health").mock(
        side_effect=[
            httpx.Response(503),
            httpx.Response(200, json={"status": "ok"}),
            httpx.Response(200, json={}),
        ]
    )

    async def call():
        async with make_client(sleep=RecordingSleep()) as client:
            await client.health()
            await client.health()

    run(call)
    ids = [c.request.headers["X-Request-ID"] for c in route.calls]
    assert all(c.request.headers["X-API-Key"] == API_KEY for c in route.calls)
    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert ids[0] == ids[1]  # the retry of the first request
    assert ids[2] != ids[0]  # the second request


def test_a_replayed_write_whose_response_was_lost_stores_nothing_twice(router):
    """The first attempt reaches the server and is committed, but its answer is lost on the way back;
    the retry sends the same batch, and the idempotent server reports it unchanged."""
    stored: dict[str, dict] = {}
    lose_next_answer = [True]

    def server(request: httpx.Request) -> httpx.Response:
        created = unchanged = lines = 0
        for invoice in json.loads(request.content)["invoices"]:
            if invoice["invoice_no"] in stored:
                unchanged += 1
            else:
                stored[invoice["invoice_no"]] = invoice
                created += 1
                lines += len(invoice["lines"])
        if lose_next_answer.pop() if lose_next_answer else False:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, json={"created": created, "unchanged": unchanged, "lines_created": lines})

    route = router.post("/bulk/invoices").mock(side_effect=server)
    answer, stats = run(lambda: _post_invoices(RecordingSleep()))
    assert route.call_count == 2
    assert stats.by_cause == {"RemoteProtocolError": 1}
    assert answer == {"created": 0, "unchanged": 1, "lines_created": 0}
    assert list(stored) == ["536365"]
    assert sum(len(i["lines"]) for i in stored.values()) == 1


# -- Arrow invoice bodies ----------------------------------------------------------------------------


def _invoice_table() -> pa.Table:
    rows = [
        {"invoice_no": "536365", "line_no": 1, "stock_code": "85123A"},
        {"invoice_no": "536365", "line_no": 2, "stock_code": "71053", "description": None},
        {"invoice_no": "536366", "line_no": 1, "stock_code": "22633", "customer_id": None},
    ]
    return invoice_table(sort_for_posting(line_rows(rows)))


async def _post_table(table: pa.Table, sleep: RecordingSleep):
    async with make_client(sleep=sleep) as client:
        return await client.post_invoice_table(table), client.retry_stats


def test_an_invoice_table_travels_as_one_arrow_stream_and_a_retry_resends_the_same_bytes(router, caplog):
    route = router.post("/bulk/invoices").mock(
        side_effect=[
            httpx.Response(503, headers={"Retry-After": "1"}),
            httpx.Response(200, json={**OK_INVOICES, "created": 2, "lines_created": 3}),
        ]
    )
    table = _invoice_table()
    sleep = RecordingSleep()
    with caplog.at_level(logging.INFO, logger="etl.client"):
        answer, stats = run(lambda: _post_table(table, sleep))

    assert answer == {"created": 2, "unchanged": 0, "lines_created": 3}
    assert stats.by_cause == {"503": 1} and sleep.waits == [1.0]
    first, second = (call.request for call in route.calls)
    assert first.headers["Content-Type"] == second.headers["Content-Type"] == ARROW_STREAM
    assert first.headers["X-Request-ID"] == second.headers["X-Request-ID"]
    assert first.content == second.content  # encoded once, resent as is
    assert pa.ipc.open_stream(first.content).read_all().equals(table)
    # The invoices are named from the table, once per logical request, with its id.
    (logged,) = [r for r in caplog.records if hasattr(r, "invoice_nos")]
    assert logged.invoice_nos == ["536365", "536366"]  # type: ignore[attr-defined]
    assert logged.request_id == first.headers["X-Request-ID"]  # type: ignore[attr-defined]


def test_a_409_to_an_arrow_body_names_the_conflicting_invoices(router):
    router.post("/bulk/invoices").mock(
        return_value=httpx.Response(409, json={"detail": "other content", "invoice_nos": ["536366"]})
    )
    with pytest.raises(ServiceError, match=r"holds invoice\(s\) 536366 with other content"):
        run(lambda: _post_table(_invoice_table(), RecordingSleep()))


# -- paging ------------------------------------------------------------------------------------------


def test_iterates_over_all_pages_following_the_cursor(router):
    def pages(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        assert request.url.params["start"] == "2010-12-01"
        assert request.url.params["end"] == "2010-12-02"
        assert request.url.params["limit"] == "2"
        following = {None: ("a", [1, 2]), "a": ("b", [3, 4]), "b": (None, [5])}
        next_cursor, items = following[cursor]
        return httpx.Response(200, json={"items": items, "next_cursor": next_cursor})

    router.get("/invoices").mock(side_effect=pages)

    async def call():
        async with make_client() as client:
            return [
                page
                async for page in client.iter_invoice_pages(dt.date(2010, 12, 1), dt.date(2010, 12, 2), 2)
            ]

    assert run(call) == [[1, 2], [3, 4], [5]]


def test_a_cursor_that_comes_back_stops_the_walk(router):
    router.get("/customers").mock(return_value=httpx.Response(200, json={"items": [], "next_cursor": "same"}))

    async def call():
        async with make_client() as client:
            return [
                page async for page in client.iter_customer_pages(dt.date(2010, 12, 1), dt.date(2010, 12, 1))
            ]

    with pytest.raises(ServiceError, match="repeated cursor 'same'"):
        run(call)


# -- small parts -------------------------------------------------------------------------------------


def test_retry_stats_since_gives_one_stage_its_share():
    before = RetryStats({"429": 1})
    after = RetryStats({"429": 3, "ConnectError": 1})
    assert after.since(before).by_cause == {"429": 2, "ConnectError": 1}
    assert after.since(after).by_cause == {}
    assert after.to_dict() == {"429": 3, "ConnectError": 1}


def test_retry_policy_refuses_a_zero_floor():
    with pytest.raises(ValueError, match="min_wait"):
        RetryPolicy(min_wait=0)


def test_gather_bounded_keeps_order_bounds_concurrency_and_cancels_on_failure():
    running = 0
    most = 0
    cancelled: list[int] = []

    async def job(n: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            for _ in range(5):
                await asyncio.sleep(0)
            if n == 3:
                raise ServiceError("job 3 failed")
            return n * 10
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        finally:
            running -= 1

    assert run(lambda: gather_bounded([partial(job, n) for n in range(3)], 2)) == [0, 10, 20]
    assert most == 2
    with pytest.raises(ServiceError, match="job 3 failed"):
        run(lambda: gather_bounded([partial(job, n) for n in range(3, 8)], 2))
    assert cancelled  # the jobs running alongside the failed one were stopped, not left behind


@pytest.mark.parametrize(
    ("base_url", "verify_mode"),
    [("https://retail.example", ssl.CERT_REQUIRED), ("http://127.0.0.1:8000", ssl.CERT_NONE)],
)
def test_certificates_are_checked_whenever_the_service_speaks_tls(base_url, verify_mode):
    # The SSL context httpx's pool would use for a TLS connection (plain HTTP never uses it).
    client = RetailClient(base_url, API_KEY)
    context = client._http._transport._pool._ssl_context  # type: ignore[attr-defined]
    assert context.verify_mode == verify_mode
    assert context.check_hostname is (verify_mode == ssl.CERT_REQUIRED)
