"""The job's side of observability, without a server: the run metrics' shape, the registry it pushes, and
the one log line per bulk invoices request with its request id (kept across retries)."""

from __future__ import annotations

import logging

import httpx
import pytest
import respx
from prometheus_client import generate_latest

from etl.config import JobSettings
from etl.metrics import METRIC_NAMES, registry_for, run_metrics, success_registry
from tests.etl.conftest_client import BASE_URL, RecordingSleep, make_client, run
from tests.etl.test_client import INVOICE, OK_INVOICES

COUNTS = {
    "source_rows": 100,
    "lines": 97,
    "rejects": 3,
    "invoices": 9,
    "lines_created": 90,
    "invoices_created": 8,
    "invoices_unchanged": 1,
    "lines_read_back": 97,
    "lines_written": 97,
    "partitions_written": 3,
}


def test_run_metrics_count_lines_at_every_stage() -> None:
    metrics = run_metrics(
        COUNTS,
        {"load": 0.5, "post": 1.25},
        {"503": 2},
        status="reconciled",
        duration_seconds=2.0004,
        finished_timestamp_seconds=1_700_000_000.5,
    )
    assert metrics == {
        "status": "reconciled",
        "duration_seconds": 2.0,
        "finished_timestamp_seconds": 1_700_000_000.5,
        "rows": {
            "source": 100,
            "valid": 97,
            "rejected": 3,
            "posted": 97,
            "created": 90,
            "unchanged": 7,
            "read_back": 97,
            "written": 97,
        },
        "seconds": {"load": 0.5, "post": 1.25},
        "retries": {"503": 2},
    }


def test_a_run_that_stopped_early_has_only_the_rows_of_the_stages_it_finished() -> None:
    metrics = run_metrics(
        {"source_rows": 5, "lines": 5, "rejects": 0},
        {"load": 0.1, "validate": 0.1},
        {},
        status="failed",
        duration_seconds=1,
        finished_timestamp_seconds=1,
    )
    assert metrics["rows"] == {"source": 5, "valid": 5, "rejected": 0}


def test_the_registry_holds_the_dashboards_metric_names() -> None:
    metrics = run_metrics(
        COUNTS,
        {"post": 1.0},
        {"ReadTimeout": 1},
        status="failed",
        duration_seconds=3,
        finished_timestamp_seconds=4,
    )
    text = generate_latest(registry_for(metrics)).decode()
    assert 'retail_job_rows{stage="unchanged"} 7.0' in text
    assert 'retail_job_stage_seconds{stage="post"} 1.0' in text
    assert 'retail_job_retries{cause="ReadTimeout"} 1.0' in text
    assert "retail_job_duration_seconds 3.0" in text
    assert 'retail_job_status{status="failed"} 1.0' in text
    assert 'retail_job_status{status="reconciled"} 0.0' in text
    # A failed run has no success time; that lives in its own group, pushed by reconciled runs only.
    assert "retail_job_last_success_timestamp_seconds" not in text
    success = generate_latest(success_registry(metrics)).decode()
    assert "retail_job_last_success_timestamp_seconds 4.0" in success
    pushed = {line.split()[2] for line in (text + success).splitlines() if line.startswith("# TYPE")}
    assert pushed == set(METRIC_NAMES)


def test_the_pushgateway_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RETAIL_PUSHGATEWAY_URL", raising=False)
    assert JobSettings(_env_file=None).pushgateway_url is None  # type: ignore[call-arg]
    monkeypatch.setenv("RETAIL_PUSHGATEWAY_URL", "http://pushgateway:9091")
    assert JobSettings(_env_file=None).pushgateway_url == "http://pushgateway:9091"  # type: ignore[call-arg]


def test_each_bulk_invoices_request_is_logged_once_with_its_id_and_invoices_across_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    second = {**INVOICE, "invoice_no": "536366"}
    with respx.mock(base_url=BASE_URL) as router:
        route = router.post("/bulk/invoices").mock(
            side_effect=[httpx.Response(503), httpx.Response(200, json={**OK_INVOICES, "created": 2})]
        )

        async def post() -> None:
            async with make_client(sleep=RecordingSleep()) as client:
                await client.post_invoices([INVOICE, second])

        with caplog.at_level(logging.INFO, logger="etl.client"):
            run(post)

    sent_ids = {call.request.headers["X-Request-ID"] for call in route.calls}
    assert len(route.calls) == 2 and len(sent_ids) == 1
    (request_id,) = sent_ids
    lines = [r for r in caplog.records if r.levelno == logging.INFO and hasattr(r, "invoice_nos")]
    assert len(lines) == 1
    assert lines[0].request_id == request_id  # type: ignore[attr-defined]
    assert lines[0].invoice_nos == ["536365", "536366"]  # type: ignore[attr-defined]
    assert request_id in lines[0].getMessage()
