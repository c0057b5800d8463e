"""The resource cache (api/cache.py) with the real Redis: what is cached, what every write invalidates,
the lease that refuses a stale store, the epoch after a lost invalidation, and Redis away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from api import schemas
from api.cache import CachedResponse, CacheMetrics, ResourceCache
from api.main import create_app
from tests.api.conftest import make_settings
from tests.api.helpers import AUTH, invoice, line
from tests.api.test_bulk_arrow import arrow_body, post_arrow
from tests.api.test_observability import scrape, value
from tests.support.redis import TcpPassage, require_redis, unique_prefix
from tests.support.service import free_port


@pytest.fixture
def redis_url() -> str:
    return require_redis()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    with unique_prefix() as fresh:
        yield fresh


def cached_client(database_url: str, redis_url: str, prefix: str) -> TestClient:
    app = create_app(make_settings(database_url, REDIS_URL=redis_url, CACHE_KEY_PREFIX=prefix))
    return TestClient(app, headers=AUTH)


def counts(client: TestClient, resource: str) -> tuple[float, float]:
    """(hits, misses) of `resource` so far."""
    samples = scrape(client)
    return (
        value(samples, "retail_cache_hits_total", resource=resource),
        value(samples, "retail_cache_misses_total", resource=resource),
    )


def store_sample(client: TestClient) -> None:
    """Customer 17850 with invoice 536365 (stock codes 85123A and 71053)."""
    assert (
        client.post("/customer", json={"customer_id": "17850", "country": "United Kingdom"}).status_code
        == 201
    )
    assert client.post("/customer/17850/invoice", json=invoice("536365")).status_code == 201


RESOURCES = [
    ("customer", "/customer/17850"),
    ("customer_invoices", "/customer/17850/invoice"),
    ("invoice", "/invoice/536365"),
    ("stockcode", "/stockcode/85123A"),
]


def test_resource_gets_are_answered_from_the_cache_as_the_database_answers(
    database_url: str, redis_url: str, prefix: str
) -> None:
    with cached_client(database_url, redis_url, prefix) as client:
        store_sample(client)
        with TestClient(create_app(make_settings(database_url)), headers=AUTH) as uncached:
            for resource, path in RESOURCES:
                from_database = uncached.get(path)
                first, second = client.get(path), client.get(path)
                assert from_database.status_code == first.status_code == second.status_code == 200
                # Byte for byte what the service without a cache answers.
                assert first.content == second.content == from_database.content, path
                assert second.headers["content-type"] == "application/json"
                assert counts(client, resource) == (1, 1), resource
        # The bytes are the response models' own JSON (the routes return them without validating).
        body = client.get("/invoice/536365").content
        assert schemas.InvoicePublic.model_validate_json(body).model_dump_json().encode() == body
        body = client.get("/customer/17850").content
        assert schemas.CustomerPublic.model_validate_json(body).model_dump_json().encode() == body
        # What does not exist is answered 404 and not cached.
        for _ in range(2):
            assert client.get("/invoice/999999").status_code == 404
            assert client.get("/customer/1").status_code == 404
        assert counts(client, "invoice")[0] == 2  # the two hits above, none for 999999


def warm(client: TestClient, paths: list[str]) -> dict[str, Any]:
    """GET each path twice (the second answer is the cached one); their bodies."""
    bodies = {}
    for path in paths:
        client.get(path)
        response = client.get(path)
        assert response.status_code == 200
        bodies[path] = response.json()
    return bodies


def test_every_write_invalidates_what_it_changes_before_it_answers(
    sqlite_url: str, redis_url: str, prefix: str
) -> None:
    with cached_client(sqlite_url, redis_url, prefix) as client:
        store_sample(client)
        watched = [path for _resource, path in RESOURCES]

        # A line: the invoice and its stock code's summary.
        before = warm(client, watched)
        added = client.post("/invoice/536365/85123A/", json={"quantity": 2, "unit_price": "9.99"})
        assert added.status_code == 201
        after = {path: client.get(path).json() for path in watched}
        assert len(after["/invoice/536365"]["lines"]) == len(before["/invoice/536365"]["lines"]) + 1
        assert after["/stockcode/85123A"]["line_count"] == before["/stockcode/85123A"]["line_count"] + 1
        assert after["/stockcode/85123A"]["max_unit_price"] == "9.990"

        # An invoice of the customer: its list of invoices and the stock codes of its lines.
        warm(client, watched)
        body = invoice("536366", lines=[line("85123A", unit_price="0.5")])
        assert client.post("/customer/17850/invoice", json=body).status_code == 201
        assert "id_536366" in client.get("/customer/17850/invoice").json()
        assert client.get("/stockcode/85123A").json()["min_unit_price"] == "0.500"

        # POST /invoice with the customer in the body.
        warm(client, watched)
        body = invoice("536367", customer_id="17850", lines=[line("85123A", quantity=1000)])
        assert client.post("/invoice", json=body).status_code == 201
        assert "id_536367" in client.get("/customer/17850/invoice").json()
        assert client.get("/stockcode/85123A").json()["invoice_count"] == 3

        # Bulk, JSON body.
        warm(client, watched)
        body = invoice("536368", customer_id="17850", lines=[line("85123A", unit_price="0.001")])
        assert client.post("/bulk/invoices", json={"invoices": [body]}).json()["created"] == 1
        assert "id_536368" in client.get("/customer/17850/invoice").json()
        assert client.get("/stockcode/85123A").json()["min_unit_price"] == "0.001"

        # Bulk, Arrow body.
        warm(client, watched)
        body = invoice("536369", customer_id="17850", lines=[line("85123A", unit_price="99999.999")])
        assert post_arrow(client, arrow_body([body])).json()["created"] == 1
        assert "id_536369" in client.get("/customer/17850/invoice").json()
        assert client.get("/stockcode/85123A").json()["max_unit_price"] == "99999.999"

        # A replay changes nothing and invalidates nothing: the next GET is still a hit.
        warm(client, watched)
        hits_before = counts(client, "invoice")[0]
        assert client.post("/bulk/invoices", json={"invoices": [body]}).json()["unchanged"] == 1
        client.get("/invoice/536365")
        assert counts(client, "invoice")[0] == hits_before + 1
        assert value(scrape(client), "retail_cache_invalidations_total") > 0


MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


def test_put_patch_and_delete_invalidate_before_they_answer(
    sqlite_url: str, redis_url: str, prefix: str
) -> None:
    with cached_client(sqlite_url, redis_url, prefix) as client:
        store_sample(client)  # 17850 with 536365: lines of 85123A and 71053
        assert client.post("/customer", json={"customer_id": "12346", "country": "France"}).status_code == 201
        links = {"17850": "/customer/17850/invoice", "12346": "/customer/12346/invoice"}
        codes = {code: f"/stockcode/{code}" for code in ("85123A", "71053", "22752")}

        # The customer's PUT and PATCH.
        warm(client, ["/customer/17850"])
        assert client.put("/customer/17850", json={"country": "EIRE"}).status_code == 200
        assert client.get("/customer/17850").json()["country"] == "EIRE"
        warm(client, ["/customer/17850"])
        assert (
            client.patch("/customer/17850", json={"country": "Germany"}, headers=MERGE_PATCH).status_code
            == 200
        )
        assert client.get("/customer/17850").json()["country"] == "Germany"

        # PUT moves the invoice to another customer and replaces its lines: the invoice, both customers'
        # links, and the old codes' and the new code's summaries.
        watched = ["/invoice/536365", *links.values(), codes["85123A"], codes["71053"]]
        warm(client, watched)
        assert client.get(codes["22752"]).status_code == 404  # a code no line carries
        body = {"invoice_date": "2010-12-01T08:26:00", "customer_id": "12346", "lines": [line("22752")]}
        assert client.put("/invoice/536365", json=body).status_code == 200
        moved = client.get("/invoice/536365").json()
        assert moved["customer_id"] == "12346" and moved["country"] == "France"
        assert [item["stock_code"] for item in moved["lines"]] == ["22752"]
        assert client.get(links["17850"]).json() == {}
        assert client.get(links["12346"]).json() == {"id_536365": "/invoice/536365"}
        assert client.get(codes["85123A"]).status_code == 404
        assert client.get(codes["71053"]).status_code == 404
        assert client.get(codes["22752"]).json()["line_count"] == 1

        # PATCH moves it back with two other lines: the same keys, from the other side.
        watched = ["/invoice/536365", *links.values(), codes["22752"]]
        warm(client, watched)
        patch = {"customer_id": "17850", "country": None, "lines": [line("85123A"), line("71053")]}
        assert client.patch("/invoice/536365", json=patch, headers=MERGE_PATCH).status_code == 200
        back = client.get("/invoice/536365").json()
        assert back["customer_id"] == "17850" and back["country"] == "Germany"
        assert client.get(links["17850"]).json() == {"id_536365": "/invoice/536365"}
        assert client.get(links["12346"]).json() == {}
        assert client.get(codes["22752"]).status_code == 404
        assert client.get(codes["85123A"]).json()["line_count"] == 1

        # DELETE of the lines of one stock code: the invoice and that code's summary.
        warm(client, ["/invoice/536365", codes["85123A"], codes["71053"]])
        assert client.delete("/invoice/536365/85123A/").status_code == 204
        assert [item["stock_code"] for item in client.get("/invoice/536365").json()["lines"]] == ["71053"]
        assert client.get(codes["85123A"]).status_code == 404

        # DELETE of the invoice: it, its customer's links, the codes of its lines.
        warm(client, ["/invoice/536365", links["17850"], codes["71053"]])
        assert client.delete("/invoice/536365").status_code == 204
        assert client.get("/invoice/536365").status_code == 404
        assert client.get(links["17850"]).json() == {}
        assert client.get(codes["71053"]).status_code == 404

        # DELETE of a customer: it and its links.
        warm(client, ["/customer/12346", links["12346"]])
        assert client.delete("/customer/12346").status_code == 204
        assert client.get("/customer/12346").status_code == 404
        assert client.get(links["12346"]).status_code == 404
        # Every GET above after its write was a miss: none of them was answered by a stale entry.
        assert value(scrape(client), "retail_cache_invalidations_total") > 0


def test_a_cached_entry_answers_etags_304_and_head_as_the_database_does(
    sqlite_url: str, redis_url: str, prefix: str
) -> None:
    with cached_client(sqlite_url, redis_url, prefix) as client:
        store_sample(client)
        with TestClient(create_app(make_settings(sqlite_url)), headers=AUTH) as uncached:
            for resource, path in RESOURCES:
                from_database = uncached.get(path)
                client.get(path)
                hits = counts(client, resource)[0]
                cached = client.get(path)
                assert counts(client, resource)[0] == hits + 1, "answered from the cache"
                tag = from_database.headers["etag"]
                assert cached.headers["etag"] == tag, path
                # If-None-Match on a hit: 304 with the tag, no body; a stale tag gets the body.
                not_modified = client.get(path, headers={"If-None-Match": tag})
                assert (not_modified.status_code, not_modified.content) == (304, b"")
                assert not_modified.headers["etag"] == tag
                assert client.get(path, headers={"If-None-Match": '"stale"'}).content == from_database.content
                # HEAD on a hit: the GET's headers without the body.
                head, head_uncached = client.head(path), uncached.head(path)
                assert head.status_code == head_uncached.status_code == 200
                assert head.content == b""
                for header in ("etag", "content-length", "content-type"):
                    assert head.headers[header] == head_uncached.headers[header], (path, header)
                assert client.head(path, headers={"If-None-Match": tag}).status_code == 304

        # After a write, the tag a client kept no longer matches: the new body with its new tag.
        old_tag = client.get("/customer/17850").headers["etag"]
        assert client.put("/customer/17850", json={"country": "EIRE"}).status_code == 200
        fresh = client.get("/customer/17850", headers={"If-None-Match": old_tag})
        assert fresh.status_code == 200 and fresh.json()["country"] == "EIRE"
        assert fresh.headers["etag"] != old_tag
        assert (
            client.get("/customer/17850", headers={"If-None-Match": fresh.headers["etag"]}).status_code == 304
        )


def new_cache(url: str, prefix: str, **kwargs: Any) -> ResourceCache:
    return ResourceCache(
        url, prefix=prefix, ttl_seconds=60, metrics=CacheMetrics(CollectorRegistry()), **kwargs
    )


def test_a_read_that_began_before_a_write_cannot_store_what_it_read(redis_url: str, prefix: str) -> None:
    cache = new_cache(redis_url, prefix)

    async def scenario() -> None:
        # The race: a reader misses and reads the database; the write commits and invalidates;
        # the reader then stores what it read before the write.
        slow_reader = await cache.get("invoice:1", resource="invoice")
        assert slow_reader.entry is None and slow_reader.lease is not None
        cache.invalidate(["invoice:1"])
        assert not await cache.set(slow_reader, CachedResponse(b'{"stale": true}'))

        # A later miss reads after the write and stores; a reader whose lease a later miss replaced
        # stores nothing either.
        earlier = await cache.get("invoice:1", resource="invoice")
        later = await cache.get("invoice:1", resource="invoice")
        assert not await cache.set(earlier, CachedResponse(b'{"earlier": true}'))
        assert await cache.set(later, CachedResponse(b'{"fresh": true}', etag='"v2"'))
        hit = await cache.get("invoice:1", resource="invoice")
        assert hit.entry == CachedResponse(b'{"fresh": true}', etag='"v2"')

        # Once stored, a lease is used up: it cannot store again after an invalidation.
        cache.invalidate(["invoice:1"])
        assert not await cache.set(later, CachedResponse(b'{"stale": true}'))
        assert (await cache.get("invoice:1", resource="invoice")).entry is None

    asyncio.run(scenario())


def test_a_lost_invalidation_retires_every_entry_once_redis_answers_again(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="api.cache")
    reader = new_cache(redis_url, prefix)
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    with TcpPassage((host, int(port))) as passage:
        writer = new_cache(f"redis://127.0.0.1:{passage.port}/0", prefix, retry_seconds=0)

        async def scenario() -> None:
            miss = await reader.get("customer:1", resource="customer")
            assert await reader.set(miss, CachedResponse(b'{"country": "France"}'))
            assert (await writer.get("customer:1", resource="customer")).entry is not None

            passage.cut()
            writer.invalidate(["customer:1"])  # the write committed; Redis cannot be told
            # While cut off, the writer's process serves from the database.
            assert (await writer.get("customer:1", resource="customer")).entry is None

            passage.restore()
            # Its first cache operation once Redis answers retires every entry (the epoch), and the
            # entry its write made stale is gone for every process.
            assert (await writer.get("customer:2", resource="customer")).entry is None
            assert (await reader.get("customer:1", resource="customer")).entry is None

        asyncio.run(scenario())
    messages = [record.getMessage() for record in caplog.records if record.name == "api.cache"]
    assert any("Redis does not answer" in message for message in messages)
    assert any("retired" in message for message in messages)


def test_unreachable_redis_serves_from_the_database_with_one_warning(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    caplog.set_level(logging.WARNING, logger="api.cache")
    with cached_client(sqlite_url, closed, "retail-test:closed") as client:
        # Not asked again during the test, however slow the machine: exactly one failure to warn of.
        client.app.state.cache.retry_seconds = 3600  # type: ignore[attr-defined]
        store_sample(client)
        answers = [client.get("/invoice/536365") for _ in range(20)]
        assert {answer.status_code for answer in answers} == {200}
        assert len({answer.content for answer in answers}) == 1
        # Writes go on, and what they wrote is read at once.
        assert (
            client.post("/invoice/536365/71053/", json={"quantity": 1, "unit_price": "1"}).status_code == 201
        )
        assert len(client.get("/invoice/536365").json()["lines"]) == 3
        samples = scrape(client)
    assert value(samples, "retail_cache_hits_total", resource="invoice") == 0
    assert value(samples, "retail_cache_misses_total", resource="invoice") == 21
    errors = sum(value(samples, "retail_cache_errors_total", operation=op) for op in ("get", "invalidate"))
    assert errors == 1  # the first write's invalidation; later operations did not ask Redis
    warnings = [record for record in caplog.records if record.name == "api.cache"]
    assert len(warnings) == 1, "warned once, not per request"
    assert "Redis does not answer" in warnings[0].getMessage()


# --- a cached read's count and lookup in one round trip (api.cache.count_and_look_up) -----------------


def limited_client(database_url: str, redis_url: str, prefix: str, rate: str) -> TestClient:
    settings = make_settings(
        database_url, REDIS_URL=redis_url, CACHE_KEY_PREFIX=prefix, REDIS_KEY_PREFIX=prefix, RATE_LIMIT=rate
    )
    return TestClient(create_app(settings), headers=AUTH)


def record_redis_calls(client: TestClient) -> list[str]:
    """The Redis calls the app makes from now on: the cache's scripts by name, the limiter's as `hit`.
    (Redis is real; the wrappers only note each call before making it.)"""
    calls: list[str] = []
    # The cache's client and scripts are made on its first read, in the client's event loop.
    assert client.get("/stockcode/NO-SUCH-CODE").status_code == 404
    cache: ResourceCache = client.app.state.cache  # type: ignore[attr-defined]
    for name, script in list(cache._async_scripts.items()):

        async def noted(*args: Any, _script: Any = script, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return await _script(*args, **kwargs)

        cache._async_scripts[name] = noted
    limiter = client.app.state.limiter  # type: ignore[attr-defined]
    hit = limiter.hit

    async def noted_hit(key: str) -> Any:
        calls.append("hit")
        return await hit(key)

    limiter.hit = noted_hit
    return calls


def test_a_cached_read_is_counted_and_looked_up_in_one_round_trip(
    sqlite_url: str, redis_url: str, prefix: str
) -> None:
    with limited_client(sqlite_url, redis_url, prefix, "1000/minute") as client:
        store_sample(client)
        calls = record_redis_calls(client)
        first = client.get("/customer/17850")  # a miss: the count and the lease, then the store
        assert calls == ["count and get", "set"]
        calls.clear()
        for answer in (
            client.get("/customer/17850"),
            client.head("/customer/17850"),
            client.get("/invoice/536365"),
        ):
            assert answer.status_code == 200
        assert client.get("/customer/17850").content == first.content
        # Hits: one script each; the invoice's first read a miss that stored its entry.
        assert calls == ["count and get", "count and get", "count and get", "set", "count and get"]
        calls.clear()
        # A read that is not a point read is counted, then looked up: two round trips, as before.
        assert client.get("/customer/17850/invoice").status_code == 200
        assert calls == ["hit", "get", "set"]
        samples = scrape(client)
    assert value(samples, "retail_cache_hits_total", resource="customer") == 3
    assert value(samples, "retail_cache_misses_total", resource="customer") == 1


def test_a_cached_read_over_the_limit_is_refused_and_reads_nothing(
    sqlite_url: str, redis_url: str, prefix: str
) -> None:
    with limited_client(sqlite_url, redis_url, prefix, "4/minute") as client:
        store_sample(client)  # two writes, counted
        assert client.get("/customer/17850").status_code == 200  # 3: counted with its lookup
        assert client.get("/customer/17850/invoice").status_code == 200  # 4: counted on its own
        hits_before = value(scrape(client), "retail_cache_hits_total", resource="customer")
        refused = client.get("/customer/17850")
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert "rate limit of 4/minute" in refused.json()["detail"]
        # One limit for every route of the identity: a write is refused too.
        assert client.post("/customer", json={"customer_id": "1", "country": "UK"}).status_code == 429
        samples = scrape(client)
    assert value(samples, "retail_cache_hits_total", resource="customer") == hits_before, "nothing read"


def test_a_point_read_answered_422_is_still_counted(sqlite_url: str, redis_url: str, prefix: str) -> None:
    # The count goes with the lookup of the raw path parameter, before it is validated: a malformed id
    # costs the caller its request like any other.
    too_long = "9" * 100
    with limited_client(sqlite_url, redis_url, prefix, "2/minute") as client:
        assert [client.get(f"/customer/{too_long}").status_code for _ in range(3)] == [422, 422, 429]


def test_a_cached_read_with_redis_away_is_served_and_not_limited(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    caplog.set_level(logging.WARNING)
    with limited_client(sqlite_url, closed, "retail-test:closed", "1/minute") as client:
        store_sample(client)
        answers = [client.get("/customer/17850") for _ in range(5)]
    assert {answer.status_code for answer in answers} == {200}, "both fail open"
    messages = [record.getMessage() for record in caplog.records]
    assert any("cache: Redis does not answer" in message for message in messages)
    assert any("rate limiter: Redis does not answer" in message for message in messages)
