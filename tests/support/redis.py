"""The machine's real Redis (127.0.0.1:6379): a URL for a test, fail (CI) or skip when it is down."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_problem() -> str | None:
    """Why Redis cannot be used, or None when it answers PING."""
    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2) as client:
            client.ping()
    except redis.RedisError as error:
        return repr(error)
    return None


def require_redis() -> str:
    """The URL of the real Redis; a failure with CI=true, a skip elsewhere, when it does not answer."""
    problem = redis_problem()
    if problem is not None:
        message = (
            f"Redis is not reachable at {REDIS_URL} ({problem}); start it with: redis-server --daemonize yes "
            '--bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no (or ./dev test)'
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return REDIS_URL


@contextmanager
def unique_prefix() -> Iterator[str]:
    """A key prefix nobody else uses; its keys are deleted afterwards."""
    prefix = f"retail-test:{secrets.token_hex(6)}"
    try:
        yield prefix
    finally:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2) as client:
            keys = list(client.scan_iter(match=f"{prefix}:*"))
            if keys:
                client.delete(*keys)
