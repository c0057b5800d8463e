"""The resource cache: answers of resource GETs kept in Redis when `REDIS_URL` is set.

What is cached: the JSON body (and ETag, when the route gives one) of a resource GET, under a resource
key such as `invoice:536365` (`customer_key`, `invoice_key`, ...). Entries live `CACHE_TTL_SECONDS`.
A write invalidates every key it affects after its transaction committed and before it answers, so a
read that starts after a write was acknowledged never sees the state before it, whichever worker or
instance answers.

The race that makes "delete on write" alone unsafe: a reader misses, reads the database before the
write commits, and stores what it read after the write deleted the key, so the stale value sits in the
cache until it expires. This module prevents it with **leases**, the pattern of Facebook's memcache
("Scaling Memcache at Facebook", NSDI 2013, section 3.2.1), done with Redis scripts:

- a miss stores a random lease token under the key's lease key, in the same atomic script that found
  the entry missing, *before* the database is read;
- a write's invalidation deletes the entry and the lease (one script, after its commit);
- a reader may store what it read only while its own token is still the key's lease (one script).

A reader whose lease predates an invalidation had its lease deleted, so its possibly stale value is
refused. A reader that got its lease after the invalidation read the database after the commit. A lease
that expired or was overwritten by a later miss is refused too: every failure mode refuses to store,
none stores a stale value (unlike generation counters, an evicted key cannot bring back an old entry).

Redis unreachable, failing or slower than `TIMEOUT_SECONDS`: the request is served from the database
(never an error), a warning is logged at most once per `RETRY_SECONDS`, and Redis is not asked again
until then. An invalidation that could not reach Redis leaves entries that may be stale: the process
then bypasses the cache, and the first time Redis answers again it increments the cache's *epoch*, a
number that is part of every key, which retires every entry at once (old ones expire with their TTL).
Other processes could read such an entry in the time between Redis coming back and that increment; a
single Redis is assumed (a replica promoted with unreplicated deletes would equally lose invalidations).

A point read (`point_read`: a customer, an invoice) with the rate limit in Redis makes one round trip
on a hit: the limit's count and the lookup run in one script (`count_and_look_up`, called where the
request is counted), and a refused request looks nothing up.

All keys start with `CACHE_KEY_PREFIX`; tests and deployments sharing a Redis use different prefixes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from prometheus_client import CollectorRegistry, Counter
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from api.observability.ratelimit import (
    ALLOWED,
    SLIDING_WINDOW_LUA_FUNCTION,
    Decision,
    Limiter,
    RedisLimiter,
    decision_of,
)

logger = logging.getLogger(__name__)

#: After Redis failed, the cache is bypassed for this long before Redis is tried again.
RETRY_SECONDS = 5.0
#: A cache operation must be done within this (connecting: CONNECT_TIMEOUT_SECONDS). It includes the
#: wait for the event loop: with 0.5 s, a worker saturated by 64 connections (p99 latency ~0.5 s in
#: benchmarks/api_throughput.py) took its own queueing for a dead Redis and bypassed the cache.
TIMEOUT_SECONDS = 1.5
#: Opening a connection to Redis must take no longer than this.
CONNECT_TIMEOUT_SECONDS = 0.5
#: A miss's lease lives this long: a reader slower than this between miss and store stores nothing.
LEASE_MILLISECONDS = 10_000
#: Keys per invalidation script: the script blocks Redis while it runs, so a bulk write's thousands of
#: keys go in several short ones.
INVALIDATE_CHUNK = 1_000

# --- resource keys: one function per cached resource, used by the GET and by every write ------------


def customer_key(customer_id: str) -> str:
    """`GET /customer/{customer_id}`."""
    return f"customer:{customer_id}"


def customer_invoices_key(customer_id: str) -> str:
    """`GET /customer/{customer_id}/invoice`: the links to the customer's invoices."""
    return f"customer-invoices:{customer_id}"


def invoice_key(invoice_no: str) -> str:
    """`GET /invoice/{invoice_no}`: the invoice with its lines."""
    return f"invoice:{invoice_no}"


def stock_code_key(stock_code: str) -> str:
    """`GET /stockcode/{stockcode}`: the summary of the lines carrying the code."""
    return f"stockcode:{stock_code}"


def customer_write_keys(customer_id: str) -> list[str]:
    """The keys a write of the customer (create, replace, patch, delete) makes stale."""
    return [customer_key(customer_id), customer_invoices_key(customer_id)]


def invoice_write_keys(
    invoice_no: str, customer_ids: Iterable[str | None], stock_codes: Iterable[str]
) -> list[str]:
    """The keys a write of one invoice makes stale: the invoice, the invoice lists of its customers and
    the summaries of its lines' stock codes. A write that changes them passes the old and new ones."""
    keys = [invoice_key(invoice_no)]
    keys += [customer_invoices_key(customer_id) for customer_id in set(customer_ids) if customer_id]
    keys += [stock_code_key(code) for code in set(stock_codes)]
    return keys


# --- Redis scripts: KEYS[1] is the epoch key; ARGV[1] the prefix with its colon --------------------

# The lookup as a Lua function, called by the two scripts below: the entry of `resource`, or a lease
# `token` of `lease_ms` on it. Returns {1, entry} or {0, epoch}.
_GET_OR_LEASE_FUNCTION = """
local function get_or_lease(epoch_key, prefix, resource, token, lease_ms)
  local epoch = redis.call('GET', epoch_key) or '0'
  local base = prefix .. epoch .. ':'
  local entry = redis.call('GET', base .. 'd:' .. resource)
  if entry then
    return {1, entry}
  end
  redis.call('SET', base .. 'l:' .. resource, token, 'PX', lease_ms)
  return {0, epoch}
end
"""

# ARGV[2] resource key, ARGV[3] lease token, ARGV[4] lease ms. Returns {1, entry} or {0, epoch}.
_GET_OR_LEASE = _GET_OR_LEASE_FUNCTION + "return get_or_lease(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])\n"

# The rate limit's count, then the lookup, in one round trip (`count_and_look_up`). KEYS[2] the identity's
# counters; ARGV[2..4] as `_GET_OR_LEASE`, ARGV[5] the limit, ARGV[6] the window in ms. Returns
# {2, retry after in ms} when the request is refused (nothing is looked up), else what the lookup returns.
_COUNT_AND_GET_OR_LEASE = (
    SLIDING_WINDOW_LUA_FUNCTION
    + _GET_OR_LEASE_FUNCTION
    + """
local counted = sliding_window(KEYS[2], tonumber(ARGV[5]), tonumber(ARGV[6]))
if counted[1] == 0 then
  return {2, counted[2]}
end
return get_or_lease(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""
)

# ARGV[2] epoch of the lease, ARGV[3] resource key, ARGV[4] lease token, ARGV[5] entry, ARGV[6] ttl ms.
# Returns 1 when stored, 0 when the lease was gone or another reader's.
_SET_IF_LEASED = """
local base = ARGV[1] .. ARGV[2] .. ':'
local lease = base .. 'l:' .. ARGV[3]
if redis.call('GET', lease) == ARGV[4] then
  redis.call('SET', base .. 'd:' .. ARGV[3], ARGV[5], 'PX', ARGV[6])
  redis.call('DEL', lease)
  return 1
end
return 0
"""

# ARGV[2..] resource keys. Deletes their entries and leases in the current epoch.
_INVALIDATE = """
local base = ARGV[1] .. (redis.call('GET', KEYS[1]) or '0') .. ':'
for i = 2, #ARGV do
  redis.call('DEL', base .. 'd:' .. ARGV[i], base .. 'l:' .. ARGV[i])
end
return #ARGV - 1
"""


@dataclass(frozen=True)
class CachedResponse:
    """A cached answer: the JSON body and its ETag (None when the route sends none)."""

    body: bytes
    etag: str | None = None

    def encode(self) -> bytes:
        """The entry as stored: the ETag, a newline, the body (an ETag holds no newline)."""
        return (self.etag or "").encode() + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> CachedResponse:
        """The entry `encode` stored."""
        etag, _, body = raw.partition(b"\n")
        return cls(body=body, etag=etag.decode() or None)

    def response(self, media_type: str = "application/json") -> Response:
        """The answer to send: the body, with its ETag header when there is one."""
        headers = {"ETag": self.etag} if self.etag is not None else None
        return Response(content=self.body, media_type=media_type, headers=headers)


@dataclass(frozen=True)
class Lookup:
    """What `get` found: the entry, or the lease under which a miss may store what it reads."""

    key: str
    resource: str
    entry: CachedResponse | None
    #: (epoch, token) of the miss's lease; None on a hit, or when the cache was not asked.
    lease: tuple[str, str] | None = None


class CacheMetrics:
    """`retail_cache_hits_total{resource}`, `..._misses_total{resource}` (a miss includes a lookup
    served from the database because Redis was down), `..._errors_total{operation}` and
    `..._invalidations_total` (keys)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.hits = Counter(
            "retail_cache_hits_total",
            "Resource GETs answered from the cache",
            ["resource"],
            registry=registry,
        )
        self.misses = Counter(
            "retail_cache_misses_total",
            "Resource GETs answered from the database",
            ["resource"],
            registry=registry,
        )
        self.errors = Counter(
            "retail_cache_errors_total",
            "Cache operations Redis did not answer",
            ["operation"],
            registry=registry,
        )
        self.invalidations = Counter(
            "retail_cache_invalidations_total", "Resource keys invalidated by writes", registry=registry
        )


class ResourceCache:
    """The cache of one service process (see the module docstring for the protocol).

    `get` and `set` are coroutines (resource GETs await them on the event loop, no thread hop);
    `invalidate` is a plain function for the write handlers, which run in the thread pool.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        ttl_seconds: float,
        metrics: CacheMetrics,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.url = url
        self.retry_seconds = retry_seconds
        self.prefix = prefix + ":"
        self.epoch_key = prefix + ":epoch"
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.metrics = metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_scripts: dict[str, Any] = {}
        self._async_client: Any = None
        self._sync_scripts: dict[str, Any] = {}
        self._sync_client: Any = None
        self._sync_lock = threading.Lock()
        self._down_until = 0.0
        self._warned_at = -math.inf
        #: An invalidation did not reach Redis: entries may be stale until the epoch is incremented.
        self._epoch_stale = False

    # --- clients ------------------------------------------------------------------------------------

    def _async(self) -> Any:
        # A client belongs to the event loop it first ran on (a test client starts a loop per client).
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # No retries inside the client: a failure opens the breaker (`_failed`) instead of
            # making the request wait for three more attempts. No socket timeout either: redis-py
            # implements it with a task per command (`asyncio.wait_for`), a large part of a cached
            # GET's time; each call is bounded by `asyncio.timeout` instead (a cancelled command
            # closes its connection, so no reply is ever read by the wrong command).
            self._async_client = aioredis.Redis.from_url(
                self.url, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS, retry=Retry(NoBackoff(), 0)
            )
            # EVALSHA with the script's digest; the script text only when Redis does not know it yet.
            self._async_scripts = {
                "get": self._async_client.register_script(_GET_OR_LEASE),
                "count and get": self._async_client.register_script(_COUNT_AND_GET_OR_LEASE),
                "set": self._async_client.register_script(_SET_IF_LEASED),
            }
            self._loop = loop
        return self._async_client

    def _sync(self) -> Any:
        with self._sync_lock:
            if self._sync_client is None:
                import redis
                from redis.backoff import NoBackoff
                from redis.retry import Retry

                self._sync_client = redis.Redis.from_url(
                    self.url,
                    socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    socket_timeout=TIMEOUT_SECONDS,
                    retry=Retry(NoBackoff(), 0),
                )
                self._sync_scripts = {"invalidate": self._sync_client.register_script(_INVALIDATE)}
            return self._sync_client

    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, operation: str, error: Exception) -> None:
        self.metrics.errors.labels(operation).inc()
        now = time.monotonic()
        self._down_until = now + self.retry_seconds
        if now - self._warned_at >= self.retry_seconds:
            self._warned_at = now
            logger.warning(
                "cache: Redis does not answer (%s: %s); serving from the database, retrying in %.0f s",
                operation,
                error,
                self.retry_seconds,
                extra={"redis_url": _redacted(self.url)},
            )

    def _epoch_retired(self) -> None:
        self._epoch_stale = False
        logger.warning("cache: Redis answers again; every entry stored before the outage was retired")

    # --- the interface ------------------------------------------------------------------------------

    async def get(self, key: str, *, resource: str) -> Lookup:
        """The cached entry of `key`, or a miss holding the lease to `set` what is read next."""
        if not self._available():
            self.metrics.misses.labels(resource).inc()
            return Lookup(key, resource, None)
        try:
            async with asyncio.timeout(TIMEOUT_SECONDS):
                client = self._async()
                if self._epoch_stale:
                    await client.incr(self.epoch_key)
                    self._epoch_retired()
                token = secrets.token_hex(8)
                found, value = await self._async_scripts["get"](
                    keys=[self.epoch_key], args=[self.prefix, key, token, LEASE_MILLISECONDS], client=client
                )
        except Exception as error:  # any failure of the cache serves from the database
            self._failed("get", error)
            self.metrics.misses.labels(resource).inc()
            return Lookup(key, resource, None)
        if int(found):
            self.metrics.hits.labels(resource).inc()
            return Lookup(key, resource, CachedResponse.decode(value))
        self.metrics.misses.labels(resource).inc()
        return Lookup(key, resource, None, (value.decode(), token))

    async def count_and_get(
        self, key: str, *, resource: str, limiter: RedisLimiter, rate_key: str
    ) -> tuple[Decision, Lookup | None] | None:
        """`limiter.hit(rate_key)`, then `get(key)` if the request is allowed, in one round trip: the
        decision, and the lookup (None when refused). None when the cache or the limiter is bypassed
        after a failure: the caller then counts on its own, as without a cache."""
        if not self._available() or self._epoch_stale or not limiter.available:
            return None
        try:
            async with asyncio.timeout(TIMEOUT_SECONDS):
                client = self._async()
                token = secrets.token_hex(8)
                found, value = await self._async_scripts["count and get"](
                    keys=[self.epoch_key, limiter.counters(rate_key)],
                    args=[self.prefix, key, token, LEASE_MILLISECONDS, limiter.rate.limit, limiter.window_ms],
                    client=client,
                )
        except Exception as error:  # both fail open: counted by nobody, served from the database
            self._failed("get", error)
            limiter.fail_open(error)
            self.metrics.misses.labels(resource).inc()
            return ALLOWED, Lookup(key, resource, None)
        if int(found) == 2:
            return decision_of(0, int(value)), None
        if int(found):
            self.metrics.hits.labels(resource).inc()
            return ALLOWED, Lookup(key, resource, CachedResponse.decode(value))
        self.metrics.misses.labels(resource).inc()
        return ALLOWED, Lookup(key, resource, None, (value.decode(), token))

    async def set(self, lookup: Lookup, entry: CachedResponse) -> bool:
        """Store what a miss read, if its lease still holds; whether it was stored."""
        if lookup.lease is None or not self._available() or self._epoch_stale:
            return False
        epoch, token = lookup.lease
        try:
            async with asyncio.timeout(TIMEOUT_SECONDS):
                client = self._async()
                stored = await self._async_scripts["set"](
                    keys=[self.epoch_key],
                    args=[self.prefix, epoch, lookup.key, token, entry.encode(), self.ttl_ms],
                    client=client,
                )
        except Exception as error:  # not storing is always safe
            self._failed("set", error)
            return False
        return bool(int(stored))

    def invalidate(self, keys: Iterable[str]) -> None:
        """Make `keys` stale everywhere; call after the write's commit, before answering.

        Never raises: when Redis cannot be told, this process bypasses the cache and retires every
        entry (the epoch) as soon as Redis answers again.
        """
        unique = sorted(set(keys))
        if not unique:
            return
        if not self._available():
            self._epoch_stale = True
            return
        try:
            client = self._sync()
            if self._epoch_stale:
                client.incr(self.epoch_key)
                self._epoch_retired()
            for chunk in _chunks(unique, INVALIDATE_CHUNK):
                self._sync_scripts["invalidate"](
                    keys=[self.epoch_key], args=[self.prefix, *chunk], client=client
                )
        except Exception as error:
            self._epoch_stale = True
            self._failed("invalidate", error)
            self._retire_now()
            return
        self.metrics.invalidations.inc(len(unique))

    def _retire_now(self) -> None:
        """One more attempt, on a new connection, to retire every entry after a failed invalidation:
        a timeout under load must not leave other processes serving what this write changed."""
        try:
            self._sync().incr(self.epoch_key)
        except Exception:  # still unreachable: bypassed until Redis answers (see `get`)
            return
        self._epoch_retired()

    async def ainvalidate(self, keys: Iterable[str]) -> None:
        """`invalidate` for a coroutine: runs it in the thread pool."""
        await run_in_threadpool(self.invalidate, list(keys))


def _chunks(values: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _redacted(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def make_cache(
    redis_url: str | None, *, prefix: str, ttl_seconds: float, registry: CollectorRegistry | None
) -> ResourceCache | None:
    """The cache the settings ask for: None without `REDIS_URL` or with a TTL of 0."""
    if not redis_url or ttl_seconds <= 0:
        return None
    return ResourceCache(redis_url, prefix=prefix, ttl_seconds=ttl_seconds, metrics=CacheMetrics(registry))


# --- what routes call ------------------------------------------------------------------------------


def cache_of(request: HTTPConnection) -> ResourceCache | None:
    """The cache of the app serving `request` (None: no cache)."""
    cache: ResourceCache | None = getattr(request.app.state, "cache", None)
    return cache


@dataclass(frozen=True)
class PointRead:
    """A resource GET whose lookup can go with the rate limit's count: its resource, the path parameter
    that names it and the function from that parameter to its resource key."""

    resource: str
    parameter: str
    key: Callable[[str], str]


_POINT_READS: dict[Callable[..., Any], PointRead] = {}


def point_read(
    resource: str, parameter: str, key: Callable[[str], str]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a resource GET endpoint (put below its route decorator) whose cache lookup is made in the
    same round trip as the rate limit's count (`count_and_look_up`); it must call `read_through` with
    that `resource` and `key(path parameter)`."""

    def mark(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        _POINT_READS[endpoint] = PointRead(resource, parameter, key)
        return endpoint

    return mark


async def count_and_look_up(request: HTTPConnection, limiter: Limiter, rate_key: str) -> Decision | None:
    """Count the request against `rate_key` and, on a `point_read` route, look its entry up in the same
    Redis script, kept for the handler's `read_through`: a cache hit then costs one round trip, not two.
    None when the two cannot go together (no cache, a limiter in memory, another route, either bypassed
    after a failure): the caller counts on its own."""
    cache = cache_of(request)
    if cache is None or not isinstance(limiter, RedisLimiter):
        return None
    endpoint = getattr(request.scope.get("route"), "endpoint", None)
    read = _POINT_READS.get(endpoint) if endpoint is not None else None
    if read is None or (value := request.path_params.get(read.parameter)) is None:
        return None
    found = await cache.count_and_get(
        read.key(value), resource=read.resource, limiter=limiter, rate_key=rate_key
    )
    if found is None:
        return None
    decision, lookup = found
    if lookup is not None:
        request.state.cache_lookup = lookup
    return decision


def _looked_up(request: Request, key: str) -> Lookup | None:
    """The lookup `count_and_look_up` made for this request's `key`, taken once."""
    lookup: Lookup | None = getattr(request.state, "cache_lookup", None)
    if lookup is None:
        return None
    del request.state.cache_lookup
    return lookup if lookup.key == key else None


async def read_through(
    request: Request,
    key: str,
    *,
    resource: str,
    load: Callable[[], bytes | None],
    etag: Callable[[bytes], str] | None = None,
    point_read: bool = False,
) -> CachedResponse | None:
    """The answer of a resource GET: from the cache, else `load()` (None when the resource does not
    exist, which is not cached), stored under the miss's lease. `load` runs in the thread pool, or, for a
    `point_read` on a database where those run on the event loop (`reads_on_the_event_loop`), inline."""
    cache = cache_of(request)
    lookup = _looked_up(request, key) if cache is not None else None
    if lookup is None and cache is not None:
        lookup = await cache.get(key, resource=resource)
    if lookup is not None and lookup.entry is not None:
        return lookup.entry
    if point_read and request.app.state.reads_inline:
        body = load()
    else:
        body = await run_in_threadpool(load)
    if body is None:
        return None
    entry = CachedResponse(body, etag(body) if etag is not None else None)
    if cache is not None and lookup is not None:
        await cache.set(lookup, entry)
    return entry


def invalidate(request: Request, keys: Iterable[str]) -> None:
    """Invalidate `keys` in the cache of the app serving `request`, if it has one (from a sync handler,
    after the write committed)."""
    cache = cache_of(request)
    if cache is not None:
        cache.invalidate(keys)
