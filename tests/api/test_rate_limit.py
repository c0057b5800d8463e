"""Rate limits per API key: in memory, shared through the real Redis, and failing open without it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.main import create_app
from api.observability.ratelimit import MemoryLimiter, Rate
from tests.api.conftest import make_settings
from tests.api.helpers import AUTH
from tests.api.test_observability import scrape, value
from tests.support.redis import require_redis, unique_prefix
from tests.support.service import free_port, live_service


@pytest.fixture
def redis_url() -> str:
    return require_redis()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    with unique_prefix() as fresh:
        yield fresh


def limited_client(sqlite_url: str, rate: str, **settings: Any) -> TestClient:
    return TestClient(create_app(make_settings(sqlite_url, RATE_LIMIT=rate, **settings)), headers=AUTH)


def assert_refused(response: httpx.Response, limit: str) -> None:
    assert response.status_code == 429
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit()
    assert int(retry_after) >= 1
    body = response.json()
    assert body["limit"] == limit
    assert limit in body["detail"]
    assert response.headers["X-Request-ID"]


@pytest.mark.parametrize(
    ("text", "limit", "window"),
    [
        ("50/second", 50, 1),
        ("600/minute", 600, 60),
        ("1000/hour", 1000, 3600),
        (" 5 / 10 seconds ", 5, 10),
        ("10000/day", 10000, 86400),
    ],
)
def test_rates_parse(text: str, limit: int, window: int) -> None:
    rate = Rate.parse(text)
    assert (rate.limit, rate.window_seconds) == (limit, window)


@pytest.mark.parametrize("text", ["50", "0/second", "fast", "5/fortnight", "5/0seconds", "-1/second"])
def test_a_bad_rate_is_refused_at_start(sqlite_url: str, text: str) -> None:
    with pytest.raises(ValidationError, match="not a rate"):
        make_settings(sqlite_url, RATE_LIMIT=text)


def test_an_empty_rate_limit_is_off(sqlite_url: str) -> None:
    assert make_settings(sqlite_url, RATE_LIMIT="  ").RATE_LIMIT is None
    with TestClient(create_app(make_settings(sqlite_url)), headers=AUTH) as client:
        assert {client.get("/invoice/1").status_code for _ in range(30)} == {404}


def test_the_sliding_window_counts_the_previous_window_by_its_remaining_share() -> None:
    limiter = MemoryLimiter(Rate.parse("4/10seconds"))
    assert all(limiter.hit_at("k", 100.0 + i).allowed for i in range(4))
    refused = limiter.hit_at("k", 104.0)
    assert not refused.allowed
    assert refused.retry_after == 9  # 6 s to the next window, then 2.5 s until 3 of these 4 count
    assert limiter.hit_at("other", 104.0).allowed, "each key has its own counters"
    # At 112.5, 3/4 of the previous window (4 requests) still counts: 3 + 1 <= 4.
    assert limiter.hit_at("k", 112.5).allowed
    second = limiter.hit_at("k", 112.6)
    assert not second.allowed
    assert second.retry_after >= 1
    # Two windows later nothing counts any more.
    assert limiter.hit_at("k", 130.0).allowed


def test_over_the_limit_is_429_with_retry_after_and_only_valid_keys_count(sqlite_url: str) -> None:
    with limited_client(sqlite_url, "3/minute") as client:
        # Requests without a valid key are answered 401 and not counted against the service's key.
        for key in ("wrong", ""):
            assert client.get("/invoice/1", headers={"X-API-Key": key}).status_code == 401
        assert [client.get(f"/invoice/{n}").status_code for n in range(3)] == [404, 404, 404]
        refused = client.get("/invoice/4")
        assert_refused(refused, "3/minute")
        assert 1 <= int(refused.headers["Retry-After"]) <= 120
        assert_refused(client.post("/bulk/customers", json={"customers": []}), "3/minute")
        assert client.get("/invoice/1", headers={"X-API-Key": "wrong"}).status_code == 401
        # Probes and scrapes are never limited.
        assert {client.get("/health").status_code for _ in range(10)} == {200}
        samples = scrape(client)
    assert value(samples, "retail_rate_limited_total", route="/invoice/{invoice_no}") == 1
    assert value(samples, "retail_rate_limited_total", route="/bulk/customers") == 1
    assert (
        value(
            samples, "retail_http_requests_total", method="GET", route="/invoice/{invoice_no}", status="429"
        )
        == 1
    )


def test_redis_shares_the_limit_between_instances_and_keeps_keys_apart(
    sqlite_url: str, redis_url: str, prefix: str
) -> None:
    shared = {"REDIS_URL": redis_url, "REDIS_KEY_PREFIX": prefix}
    with ExitStack() as stack:
        first = stack.enter_context(limited_client(sqlite_url, "4/minute", **shared))
        second = stack.enter_context(limited_client(sqlite_url, "4/minute", **shared))
        other_key = stack.enter_context(
            TestClient(
                create_app(
                    make_settings(sqlite_url, RATE_LIMIT="4/minute", **shared).model_copy(
                        update={"API_KEY": "another-key"}
                    )
                ),
                headers={"X-API-Key": "another-key"},
            )
        )
        statuses = [client.get("/invoice/1").status_code for client in (first, second, first, second)]
        assert statuses == [404] * 4
        assert_refused(second.get("/invoice/1"), "4/minute")
        assert_refused(first.get("/invoice/1"), "4/minute")
        # Another key has its own counters, in the same Redis under the same prefix.
        assert [other_key.get("/invoice/1").status_code for _ in range(4)] == [404] * 4
        assert_refused(other_key.get("/invoice/1"), "4/minute")
    with redis.Redis.from_url(redis_url) as client:
        keys = sorted(k.decode() for k in client.scan_iter(match=f"{prefix}:*"))
        # One counter per key and window, hashed key in braces, each expiring on its own.
        assert len(keys) == 2, keys
        assert all(k.startswith(f"{prefix}:{{") for k in keys)
        assert all(0 < client.pttl(k) <= 121_000 for k in keys)


def test_unreachable_redis_fails_open_with_a_warning(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    caplog.set_level(logging.WARNING, logger="api.observability.ratelimit")
    with limited_client(sqlite_url, "1/minute", REDIS_URL=closed) as client:
        assert [client.get("/invoice/1").status_code for _ in range(5)] == [404] * 5
    warnings = [r for r in caplog.records if r.name == "api.observability.ratelimit"]
    assert len(warnings) == 1, "warned once, not per request"
    assert "Redis does not answer" in warnings[0].getMessage()


def test_two_live_workers_share_the_limit_through_redis(sqlite_url: str, redis_url: str, prefix: str) -> None:
    env = {"RATE_LIMIT": "10/minute", "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": prefix}
    with live_service(sqlite_url, workers=2, extra_env=env) as service:
        statuses = []
        for _ in range(15):
            # A new connection each time, so both workers answer.
            statuses.append(httpx.get(f"{service.url}/invoice/1", headers=service.headers, timeout=30))
    assert [r.status_code for r in statuses] == [404] * 10 + [429] * 5
    assert all(int(r.headers["Retry-After"]) >= 1 for r in statuses[10:])
