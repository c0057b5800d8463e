"""Per-API-key rate limits: a sliding window counter, in this process or shared through Redis.

The algorithm (the "sliding window counter" approximation): a counter per key and fixed window, and an
estimate of the requests in the last window length, `previous * (share of the previous window still
inside it) + current`. It smooths the double burst a fixed window allows at its edges, costs two small
keys per API key, and a refused request is not counted, so a client retrying after `Retry-After` gets in.

With `REDIS_URL` the counters live in Redis (one Lua script, atomic, using Redis' clock), so every worker
and instance shares the limit; without it each process keeps its own. When Redis does not answer the
limiter fails open: the request goes through and a warning is logged (at most every few seconds), and
Redis is not asked again for a short while, so an outage of the limiter never becomes one of the service.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)

_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d*)\s*(second|minute|hour|day)s?\s*")

#: After Redis failed, requests go through unlimited for this long before Redis is tried again.
REDIS_RETRY_SECONDS = 5.0
#: Redis must answer within this; a slow limiter must not slow the service.
REDIS_TIMEOUT_SECONDS = 0.5


@dataclass(frozen=True)
class Rate:
    """At most `limit` requests per `window_seconds`; `text` is how it was configured."""

    limit: int
    window_seconds: float
    text: str

    @classmethod
    def parse(cls, text: str) -> Rate:
        """`"50/second"`, `"600/minute"`, `"1000/hour"`, `"100/10seconds"`, `"10000/day"`."""
        match = _RATE.fullmatch(text)
        if not match or int(match.group(1)) < 1 or match.group(2) == "0":
            raise ValueError(f"not a rate: {text!r}; expected like '50/second' or '600/minute'")
        count = int(match.group(2) or 1)
        return cls(int(match.group(1)), count * _UNITS[match.group(3)], text.strip())


@dataclass(frozen=True)
class Decision:
    """Whether a request may go on; if not, after how many whole seconds to retry (at least 1)."""

    allowed: bool
    retry_after: int = 0


ALLOWED = Decision(True)


class Limiter(Protocol):
    rate: Rate

    async def hit(self, key: str) -> Decision: ...


def _decide(rate: Rate, previous: float, current: float, elapsed: float) -> Decision:
    """The sliding window decision for counts of the previous and current window (same as the Lua)."""
    window = rate.window_seconds
    weight = (window - elapsed) / window
    if previous * weight + current + 1 <= rate.limit:
        return ALLOWED
    if current + 1 <= rate.limit:
        # Room appears as the previous window slides out: wait until its weight is small enough.
        wait = window * (1 - (rate.limit - current - 1) / previous) - elapsed
    else:
        # The current window alone is full: wait for the next one, and for this one to slide out of it.
        wait = (window - elapsed) + window * max(0.0, 1 - (rate.limit - 1) / current)
    return Decision(False, max(1, math.ceil(wait - 1e-9)))


class MemoryLimiter:
    """Counters in this process: each worker process limits on its own."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._windows: dict[str, tuple[int, int, int]] = {}  # key -> (window index, previous, current)
        self._lock = threading.Lock()

    async def hit(self, key: str) -> Decision:
        return self.hit_at(key, time.monotonic())

    def hit_at(self, key: str, now: float) -> Decision:
        window = self.rate.window_seconds
        index = int(now // window)
        with self._lock:
            seen, previous, current = self._windows.get(key, (index, 0, 0))
            if seen != index:
                previous, current = (current if seen == index - 1 else 0), 0
            decision = _decide(self.rate, previous, current, now - index * window)
            if decision.allowed:
                current += 1
            self._windows[key] = (index, previous, current)
            return decision


#: The sliding window in Lua, as a function: this module's script calls it, and so does the cache's
#: lookup of a cached read (api.cache), which counts the request in the same round trip. `prefix` is the
#: key's counters' prefix, `limit` and `window` (ms) numbers. Returns {allowed (0/1), retry after in ms}.
SLIDING_WINDOW_LUA_FUNCTION = """
local function sliding_window(prefix, limit, window)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local index = math.floor(now / window)
  local elapsed = now - index * window
  local current_key = prefix .. ':' .. index
  local previous = tonumber(redis.call('GET', prefix .. ':' .. (index - 1)) or '0')
  local current = tonumber(redis.call('GET', current_key) or '0')
  local weight = (window - elapsed) / window
  if previous * weight + current + 1 <= limit then
    redis.call('INCR', current_key)
    redis.call('PEXPIRE', current_key, window * 2 + 1000)
    return {1, 0}
  end
  local wait
  if current + 1 <= limit then
    wait = window * (1 - (limit - current - 1) / previous) - elapsed
  else
    wait = (window - elapsed) + window * math.max(0, 1 - (limit - 1) / current)
  end
  return {0, math.ceil(wait)}
end
"""

# KEYS[1]: the key's prefix; ARGV: limit, window in ms. Returns {allowed (0/1), retry after in ms}.
_SLIDING_WINDOW_LUA = (
    SLIDING_WINDOW_LUA_FUNCTION + "return sliding_window(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))\n"
)


class RedisLimiter:
    """Counters in Redis under `<prefix>:{<key>}:<window>`: shared by every worker and instance."""

    def __init__(self, rate: Rate, url: str, *, prefix: str) -> None:
        self.rate = rate
        self.url = url
        self.prefix = prefix
        self._client: Any = None
        self._script: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._down_until = 0.0
        self._warned_at = -math.inf

    def _connect(self) -> Any:
        # A client belongs to the event loop it first ran on (a test client starts a new loop each time).
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # As the cache's client (api.cache): no retries inside the client, and no socket timeout,
            # which redis-py implements with a task per command; `hit` bounds the call instead.
            self._client = aioredis.Redis.from_url(
                self.url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS, retry=Retry(NoBackoff(), 0)
            )
            self._script = self._client.register_script(_SLIDING_WINDOW_LUA)
            self._loop = loop
        return self._script

    @property
    def available(self) -> bool:
        """False while the limiter fails open after Redis did not answer."""
        return time.monotonic() >= self._down_until

    def counters(self, key: str) -> str:
        """The prefix of `key`'s counters in Redis."""
        return f"{self.prefix}:{{{key}}}"

    @property
    def window_ms(self) -> int:
        """The window's length in ms, as the Lua function takes it."""
        return int(self.rate.window_seconds * 1000)

    async def hit(self, key: str) -> Decision:
        if not self.available:
            return ALLOWED
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
                script = self._connect()
                allowed, retry_ms = await script(
                    keys=[self.counters(key)], args=[self.rate.limit, self.window_ms]
                )
        except Exception as error:  # any failure of the limiter lets the request through
            self.fail_open(error)
            return ALLOWED
        return decision_of(int(allowed), int(retry_ms))

    def fail_open(self, error: Exception) -> None:
        """Let requests through unlimited for a while after Redis did not answer (warned at most once
        per `REDIS_RETRY_SECONDS`)."""
        now = time.monotonic()
        self._down_until = now + REDIS_RETRY_SECONDS
        if now - self._warned_at >= REDIS_RETRY_SECONDS:
            self._warned_at = now
            logger.warning(
                "rate limiter: Redis does not answer (%s); requests go through unlimited, retrying in %.0f s",
                error,
                REDIS_RETRY_SECONDS,
                extra={"redis_url": _redacted(self.url)},
            )


def decision_of(allowed: int, retry_ms: int) -> Decision:
    """The decision the Lua function `sliding_window` returned as {allowed, retry after in ms}."""
    if allowed:
        return ALLOWED
    return Decision(False, max(1, math.ceil(retry_ms / 1000)))


def _redacted(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def make_limiter(rate_limit: str | None, redis_url: str | None, *, prefix: str) -> Limiter | None:
    """The limiter the settings ask for; None when `RATE_LIMIT` is empty (no limit)."""
    if not rate_limit:
        return None
    rate = Rate.parse(rate_limit)
    if redis_url:
        return RedisLimiter(rate, redis_url, prefix=prefix)
    return MemoryLimiter(rate)
