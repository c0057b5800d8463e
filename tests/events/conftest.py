"""Fixtures of the event tests: the real broker (fails in CI when it is down), a test's own exchange."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.events.support import BROKER_URL, EventConsumer, broker_problem, running_in_ci, unique_exchange


@pytest.fixture
def rabbitmq() -> str:
    """URL of the real broker on 127.0.0.1:5672; fails (CI=true) or skips when it is unreachable."""
    problem = broker_problem()
    if problem is not None:
        message = (
            f"RabbitMQ is not reachable at {BROKER_URL} ({problem}); start it with: rabbitmq-server -detached"
        )
        if running_in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return BROKER_URL


@pytest.fixture
def consumer(rabbitmq: str) -> Iterator[EventConsumer]:
    """A consumer of a fresh exchange (`consumer.exchange`), deleted after the test."""
    events = EventConsumer(unique_exchange())
    try:
        yield events
    finally:
        events.close()
