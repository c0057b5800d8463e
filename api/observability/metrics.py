"""The service's Prometheus metrics and their exposition at `/metrics`.

Per request (the middleware): `retail_http_requests_total{method,route,status}`,
`retail_http_request_duration_seconds{method,route,status}` and `retail_rate_limited_total{route}`, where
`route` is the route template (`/invoice/{invoice_no}`) or `unmatched`, never the raw path.
At scrape time (collectors): `retail_db_pool_connections{state}` and `retail_db_pool_size` from the
SQLAlchemy pool, `retail_outbox_depth` and `retail_outbox_relay_lag_seconds` from the outbox table.

Several uvicorn workers: with `PROMETHEUS_MULTIPROC_DIR` set (to an empty directory, before the service
starts) the request metrics of all workers are summed by whichever worker answers the scrape; without it
each worker reports only its own counts. The pool gauges are always those of the answering worker; the
outbox gauges describe the database, so they are the same whoever answers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

from fastapi import Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

#: Up to 30 s: a bulk post of 50,000 lines takes seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)
HTTP_LABELS = ("method", "route", "status")
UNMATCHED = "unmatched"


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, when the service runs in it."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class PoolCollector(Collector):
    """Connections of the engine's pool, read when scraped; pools without a size report what they can."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        pool = self.engine.pool
        size = _call(pool, "size")
        checked_out = _call(pool, "checkedout")
        idle = _call(pool, "checkedin")
        overflow = max(0, _call(pool, "overflow"))
        connections = GaugeMetricFamily(
            "retail_db_pool_connections", "Database connections of this worker's pool", labels=["state"]
        )
        connections.add_metric(["checked_out"], checked_out)
        connections.add_metric(["idle"], idle)
        connections.add_metric(["overflow"], overflow)
        yield connections
        yield GaugeMetricFamily(
            "retail_db_pool_size", "Configured size of this worker's pool (0: not a sized pool)", value=size
        )


def _call(pool: object, method: str) -> int:
    """`pool.<method>()` as an int; 0 for pools without it (NullPool, StaticPool, SingletonThreadPool)."""
    function = getattr(pool, method, None)
    if not callable(function):
        return 0
    try:
        value = function()
    except Exception:  # a pool that cannot say reports nothing rather than failing the scrape
        return 0
    return int(value) if isinstance(value, int | float) else 0


class OutboxCollector(Collector):
    """Depth and age of the event outbox, read from the database when scraped."""

    def __init__(self, sessions: Callable[[], Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        try:
            from api.events.outbox import outbox_depth, relay_lag_seconds

            with self.sessions() as session:
                depth = outbox_depth(session)
                lag = relay_lag_seconds(session)
        except Exception:  # the scrape still answers the other metrics; the log says why
            logger.warning("metrics: cannot read the outbox", exc_info=True)
            return
        yield GaugeMetricFamily("retail_outbox_depth", "Events waiting to be published", value=depth)
        yield GaugeMetricFamily(
            "retail_outbox_relay_lag_seconds",
            "Age of the oldest unpublished event (0 when none waits)",
            value=lag,
        )


class Metrics:
    """The metrics of one app; `render()` is the body of `/metrics`."""

    def __init__(self, engine: Engine, sessions: Callable[[], Session]) -> None:
        self.multiprocess_dir = multiprocess_dir()
        # In multiprocess mode values go to files, and the scrape reads every worker's files.
        self.registry = CollectorRegistry()
        own = None if self.multiprocess_dir else self.registry
        #: Where this app's other counters register (None in multiprocess mode: they go to files).
        self.own_registry = own
        self.requests = Counter(
            "retail_http_requests_total", "HTTP requests answered", HTTP_LABELS, registry=own
        )
        self.duration = Histogram(
            "retail_http_request_duration_seconds",
            "Time from request to the end of the response",
            HTTP_LABELS,
            buckets=DURATION_BUCKETS,
            registry=own,
        )
        self.rate_limited = Counter(
            "retail_rate_limited_total",
            "Requests refused with 429 by the rate limit",
            ["route"],
            registry=own,
        )
        self.scrape_collectors: list[Collector] = [PoolCollector(engine), OutboxCollector(sessions)]
        if not self.multiprocess_dir:
            for collector in self.scrape_collectors:
                self.registry.register(collector)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        status_text = str(status)
        self.requests.labels(method, route, status_text).inc()
        self.duration.labels(method, route, status_text).observe(seconds)

    def render(self) -> bytes:
        """The metrics in Prometheus' text format."""
        if not self.multiprocess_dir:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        for collector in self.scrape_collectors:
            registry.register(collector)
        return generate_latest(registry)


def metrics_endpoint(request: Request) -> Response:
    """`GET /metrics`: open like `/health`, left out of the OpenAPI schema."""
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
