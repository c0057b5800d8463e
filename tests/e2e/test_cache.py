"""The resource cache end to end: two uvicorn workers, the real Redis, a real database.

No read that starts after a write was acknowledged may see the state before it, whichever worker
answers, while other clients keep reading (and filling the cache with what they read) all along.
And a Redis that dies under a running service only sends the reads to the database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.cache import RETRY_SECONDS
from tests.api.helpers import invoice, line
from tests.api.test_observability import scrape, value
from tests.support.redis import own_redis_server, require_redis, unique_prefix
from tests.support.service import LiveService, live_service

ROUNDS = 30
READERS = 3
CUSTOMER, INVOICE, STOCK_CODE = "17850", "536365", "85123A"
COUNTRIES = ["France", "Germany", "EIRE"]
LINE_MEMBERS = ("line_no", "stock_code", "description", "quantity", "unit_price", "invoice_date")


@pytest.fixture
def redis_url() -> str:
    return require_redis()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    with unique_prefix() as fresh:
        yield fresh


def fresh_get(service: LiveService, path: str) -> httpx.Response:
    """GET on a new connection, so either worker may answer."""
    response = httpx.get(f"{service.url}{path}", headers=service.headers, timeout=30)
    assert response.status_code == 200, (path, response.status_code, response.text)
    return response


def store_sample(client: httpx.Client) -> None:
    assert (
        client.post("/customer", json={"customer_id": CUSTOMER, "country": "United Kingdom"}).status_code
        == 201
    )
    body = invoice(INVOICE, lines=[line(STOCK_CODE, line_no=1)])
    assert client.post(f"/customer/{CUSTOMER}/invoice", json=body).status_code == 201


def keep_reading(service: LiveService, stop: threading.Event, statuses: list[int]) -> None:
    """Read the watched resources in a loop until `stop`: each miss stores what it read."""
    paths = [
        f"/invoice/{INVOICE}",
        f"/stockcode/{STOCK_CODE}",
        f"/customer/{CUSTOMER}/invoice",
        f"/customer/{CUSTOMER}",
    ]
    with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
        while not stop.is_set():
            for path in paths:
                statuses.append(client.get(path).status_code)


def put_invoice_with_one_more_line(client: httpx.Client, quantity: int) -> None:
    """PUT the invoice as read, one line of the stock code more, on condition it is what was read."""
    read = client.get(f"/invoice/{INVOICE}")
    current = read.json()
    lines = [{name: item[name] for name in LINE_MEMBERS} for item in current["lines"]]
    next_no = max(item["line_no"] for item in lines) + 1
    body = {
        "invoice_date": current["invoice_date"],
        "customer_id": CUSTOMER,
        "lines": [*lines, line(STOCK_CODE, line_no=next_no, quantity=quantity)],
    }
    # If-Match: a stale cached read would make this 412.
    put = client.put(f"/invoice/{INVOICE}", json=body, headers={"If-Match": read.headers["etag"]})
    assert put.status_code == 200, put.text


def test_no_stale_read_after_an_acknowledged_write_with_two_workers(
    database_url: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = {"REDIS_URL": redis_url, "CACHE_KEY_PREFIX": prefix, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    stale: list[str] = []
    statuses: list[int] = []
    with (
        live_service(database_url, workers=2, extra_env=env) as service,
        httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client,
    ):
        store_sample(client)
        stop = threading.Event()
        readers = [
            threading.Thread(target=keep_reading, args=(service, stop, statuses)) for _ in range(READERS)
        ]
        for reader in readers:
            reader.start()
        invoices = {f"id_{INVOICE}"}
        put_lines = 0
        try:
            for round_no in range(1, ROUNDS + 1):
                added = client.post(
                    f"/invoice/{INVOICE}/{STOCK_CODE}/", json={"quantity": round_no, "unit_price": "1.25"}
                )
                assert added.status_code == 201
                if round_no % 10 == 0:
                    new_invoice = f"C{round_no}"
                    body = invoice(new_invoice, lines=[line(STOCK_CODE)])
                    assert client.post(f"/customer/{CUSTOMER}/invoice", json=body).status_code == 201
                    invoices.add(f"id_{new_invoice}")
                if round_no % 10 == 5:
                    put_invoice_with_one_more_line(client, quantity=round_no)
                    put_lines += 1
                country = COUNTRIES[round_no % len(COUNTRIES)]
                replaced = client.put(f"/customer/{CUSTOMER}", json={"country": country})
                assert replaced.status_code == 200, replaced.text
                lines = 1 + round_no + put_lines
                line_count = lines + round_no // 10  # each new invoice has one line of the code
                for _ in range(2):
                    seen = len(fresh_get(service, f"/invoice/{INVOICE}").json()["lines"])
                    if seen != lines:
                        stale.append(f"round {round_no}: invoice with {seen} lines, not {lines}")
                    summary = fresh_get(service, f"/stockcode/{STOCK_CODE}").json()
                    if summary["line_count"] != line_count:
                        stale.append(f"round {round_no}: {summary['line_count']} lines of the code")
                    listed = set(fresh_get(service, f"/customer/{CUSTOMER}/invoice").json())
                    if listed != invoices:
                        stale.append(f"round {round_no}: invoices {sorted(listed)}")
                    seen_country = fresh_get(service, f"/customer/{CUSTOMER}").json()["country"]
                    if seen_country != country:
                        stale.append(f"round {round_no}: customer of {seen_country}, not {country}")
        finally:
            stop.set()
            for reader in readers:
                reader.join()
        samples = scrape(client)
    assert stale == []
    assert statuses and set(statuses) == {200}
    # The cache was really in the way: both hits and misses, and every write invalidated.
    assert value(samples, "retail_cache_hits_total", resource="invoice") > 0
    assert value(samples, "retail_cache_misses_total", resource="invoice") >= ROUNDS
    assert value(samples, "retail_cache_hits_total", resource="customer") > 0
    assert value(samples, "retail_cache_invalidations_total") >= ROUNDS * 4


def test_redis_dying_under_a_running_service_sends_reads_to_the_database(sqlite_url: str) -> None:
    with own_redis_server() as redis_server:
        env = {"REDIS_URL": redis_server.url, "CACHE_KEY_PREFIX": "retail-test:dying", "LOG_FORMAT": "json"}
        with live_service(sqlite_url, extra_env=env) as service:
            with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
                store_sample(client)
                cached = [fresh_get(service, f"/invoice/{INVOICE}") for _ in range(3)]
                hits_before = value(scrape(client), "retail_cache_hits_total", resource="invoice")
                assert hits_before >= 2

                redis_server.kill()
                killed_at = time.monotonic()
                answers = [client.get(f"/invoice/{INVOICE}") for _ in range(50)]
                assert {answer.status_code for answer in answers} == {200}
                assert {answer.content for answer in answers} == {cached[0].content}
                added = client.post(f"/invoice/{INVOICE}/71053/", json={"quantity": 1, "unit_price": "2"})
                assert added.status_code == 201
                assert len(client.get(f"/invoice/{INVOICE}").json()["lines"]) == 2
                samples = scrape(client)
                outage_seconds = time.monotonic() - killed_at
            log = service.log_tail(10_000)
    assert value(samples, "retail_cache_hits_total", resource="invoice") == hits_before
    assert value(samples, "retail_cache_errors_total", operation="get") >= 1
    warnings = [text for text in log.splitlines() if "cache: Redis does not answer" in text]
    # Rate limited: at most one warning per retry interval, not one per request of the 52 above.
    assert 1 <= len(warnings) <= outage_seconds // RETRY_SECONDS + 1, warnings
    assert '"status":500' not in log.replace(" ", "")
