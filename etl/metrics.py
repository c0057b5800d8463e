"""The job's run metrics: the `metrics` section of the run report, and its push to a Prometheus Pushgateway.

One shape for both: `run_metrics` derives it from a run's counts, seconds per stage and retries, the run
report saves it, and `push_run_metrics` pushes exactly those figures, so the dashboard and the report agree.

    {"status": "reconciled",
     "duration_seconds": 4.2,
     "finished_timestamp_seconds": 1795000000.0,
     "rows": {"source": 8326, "valid": 8326, "rejected": 0, "posted": 8326, "created": 8326,
              "unchanged": 0, "read_back": 8326, "written": 8326},
     "seconds": {"load": 0.1, "validate": 0.2, "post": 2.0, ...},
     "retries": {"503": 2, "ReadTimeout": 1}}

Rows are invoice lines at each stage: read from the source, valid, rejected, posted to the service, created
by it, unchanged (already stored), read back, written to the lake. A stage that did not run has no entry.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

log = logging.getLogger("etl.metrics")

#: The Pushgateway job label of every push.
JOB = "retail_etl"
#: The outcomes `retail_job_status{status}` has a series for: 1 for the run's, 0 for the other.
STATUSES = ("reconciled", "failed")
#: The rows a run counts, as `metrics.rows` keys and `retail_job_rows{stage}` labels, in pipeline order.
ROW_STAGES = ("source", "valid", "rejected", "posted", "created", "unchanged", "read_back", "written")
#: Every metric a push holds (the Grafana dashboard queries these).
METRIC_NAMES = (
    "retail_job_rows",
    "retail_job_stage_seconds",
    "retail_job_retries",
    "retail_job_duration_seconds",
    "retail_job_last_success_timestamp_seconds",
    "retail_job_status",
)
PUSH_TIMEOUT_SECONDS = 10.0


def run_metrics(
    counts: Mapping[str, Any],
    seconds: Mapping[str, float],
    retries: Mapping[str, int],
    *,
    status: str,
    duration_seconds: float,
    finished_timestamp_seconds: float,
) -> dict[str, Any]:
    """The `metrics` section of a run report, from the run's `counts` (the stages' counters), `seconds`
    per stage and `retries` by cause."""
    rows: dict[str, int] = {}
    for stage, key in (
        ("source", "source_rows"),
        ("valid", "lines"),
        ("rejected", "rejects"),
    ):
        if key in counts:
            rows[stage] = int(counts[key])
    if "lines_created" in counts and "lines" in counts:
        # Every valid line was posted once the post stage finished; the service created some, and the rest
        # it already held with the same content (anything else is a 409 and fails the run).
        rows["posted"] = int(counts["lines"])
        rows["created"] = int(counts["lines_created"])
        rows["unchanged"] = rows["posted"] - rows["created"]
    if "lines_read_back" in counts:
        rows["read_back"] = int(counts["lines_read_back"])
    if "lines_written" in counts:
        rows["written"] = int(counts["lines_written"])
    return {
        "status": status,
        "duration_seconds": round(duration_seconds, 3),
        "finished_timestamp_seconds": round(finished_timestamp_seconds, 3),
        "rows": rows,
        "seconds": {stage: float(value) for stage, value in seconds.items()},
        "retries": {cause: int(n) for cause, n in retries.items()},
    }


def registry_for(metrics: Mapping[str, Any]) -> CollectorRegistry:
    """A fresh registry holding the run's gauges (never the process's default registry)."""
    registry = CollectorRegistry()
    rows = Gauge(
        "retail_job_rows", "Invoice lines at each stage of the last run", ["stage"], registry=registry
    )
    for stage, value in metrics.get("rows", {}).items():
        rows.labels(stage=stage).set(value)
    seconds = Gauge(
        "retail_job_stage_seconds", "Seconds each stage of the last run took", ["stage"], registry=registry
    )
    for stage, value in metrics.get("seconds", {}).items():
        seconds.labels(stage=stage).set(value)
    retries = Gauge(
        "retail_job_retries", "Retried requests of the last run, by cause", ["cause"], registry=registry
    )
    for cause, value in metrics.get("retries", {}).items():
        retries.labels(cause=cause).set(value)
    Gauge("retail_job_duration_seconds", "Wall time of the last run", registry=registry).set(
        metrics.get("duration_seconds", 0.0)
    )
    status = Gauge("retail_job_status", "1 for the last run's outcome", ["status"], registry=registry)
    for name in STATUSES:
        status.labels(status=name).set(1 if metrics.get("status") == name else 0)
    return registry


def success_registry(metrics: Mapping[str, Any]) -> CollectorRegistry:
    """A fresh registry holding the time a reconciled run finished."""
    registry = CollectorRegistry()
    Gauge(
        "retail_job_last_success_timestamp_seconds",
        "Unix time the last reconciled run finished",
        registry=registry,
    ).set(metrics["finished_timestamp_seconds"])
    return registry


def grouping_key() -> dict[str, str]:
    """The Pushgateway group of this job's pushes: one per host, so a rerun replaces the last run's
    figures rather than adding a group per run."""
    return {"instance": socket.gethostname()}


def push_run_metrics(
    url: str,
    metrics: Mapping[str, Any],
    *,
    group: Mapping[str, str] | None = None,
    timeout: float = PUSH_TIMEOUT_SECONDS,
) -> bool:
    """Push the run's metrics to the Pushgateway at `url` (`http://host:9091`); True when it took them.

    Two groups, each replaced whole (PUT), so no series of an earlier run lingers (a stage or a retry
    cause this run did not have): `{instance}` holds the run's figures, and `{instance, outcome=
    "reconciled"}` the last success time, pushed by reconciled runs only, so that it survives a failed
    run. A failed push never fails the run: it is one warning log line.
    """
    key = dict(group or grouping_key())
    try:
        push_to_gateway(url, job=JOB, registry=registry_for(metrics), grouping_key=key, timeout=timeout)
        if metrics.get("status") == "reconciled":
            push_to_gateway(
                url,
                job=JOB,
                registry=success_registry(metrics),
                grouping_key={**key, "outcome": "reconciled"},
                timeout=timeout,
            )
    except Exception as exc:  # the run's outcome matters more than its metrics
        log.warning(
            "could not push the run metrics to %s: %s: %s",
            url,
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
            extra={"pushgateway": url},
        )
        return False
    log.info("pushed the run metrics", extra={"pushgateway": url, "status": metrics.get("status")})
    return True
