"""The job pushes its run metrics to a real Prometheus Pushgateway, and the pushed figures are the run
report's; a push that cannot reach the gateway does not fail the run.

Real processes only: the service (uvicorn on SQLite), the `retail-etl` command, Debian's
`prometheus-pushgateway` (a test dependency, installed by `./dev test`; missing, these tests fail).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from etl.metrics import METRIC_NAMES, ROW_STAGES
from tests.e2e.test_job import run_job
from tests.support.pushgateway import Pushgateway, running_pushgateway
from tests.support.service import LiveService, free_port, live_service

ONE_DAY = ("--start", "2010-12-01", "--end", "2010-12-01")


@pytest.fixture
def service(sqlite_url: str) -> Iterator[LiveService]:
    with live_service(sqlite_url) as running:
        yield running


@pytest.fixture
def pushgateway() -> Iterator[Pushgateway]:
    with running_pushgateway() as gateway:
        yield gateway


def last_report(lake: Path) -> dict[str, Any]:
    reports = sorted((lake / "_runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    report: dict[str, Any] = json.loads(reports[-1].read_text())
    return report


def by_label(samples: dict[Any, float], name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for (metric, labels), value in samples.items() if metric == name}


def single(samples: dict[Any, float], name: str) -> float | None:
    values = [value for (metric, _labels), value in samples.items() if metric == name]
    assert len(values) <= 1, (name, values)
    return values[0] if values else None


def assert_pushed_equals_report(samples: dict[Any, float], metrics: dict[str, Any]) -> None:
    assert by_label(samples, "retail_job_rows", "stage") == metrics["rows"]
    assert by_label(samples, "retail_job_stage_seconds", "stage") == pytest.approx(metrics["seconds"])
    assert by_label(samples, "retail_job_retries", "cause") == metrics["retries"]
    assert single(samples, "retail_job_duration_seconds") == pytest.approx(metrics["duration_seconds"])
    outcome = metrics["status"]
    assert by_label(samples, "retail_job_status", "status") == {
        "reconciled": 1.0 if outcome == "reconciled" else 0.0,
        "failed": 1.0 if outcome == "failed" else 0.0,
    }


def test_a_run_pushes_the_figures_of_its_report_and_a_failed_run_keeps_the_last_success(
    service: LiveService, pushgateway: Pushgateway, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    done = run_job(service, lake, *ONE_DAY, "--pushgateway", pushgateway.url)
    assert done.returncode == 0, done.stderr
    report = last_report(lake)
    metrics = report["metrics"]
    assert report["status"] == metrics["status"] == "reconciled"

    # The report's metrics, as the job counted them: every line of the day through every stage.
    rows = metrics["rows"]
    assert set(rows) == set(ROW_STAGES)
    assert rows["source"] == 8326 and rows["rejected"] == 0
    assert rows["valid"] == rows["posted"] == rows["created"] == rows["read_back"] == rows["written"] > 0
    assert rows["unchanged"] == 0
    assert set(metrics["seconds"]) == {"load", "validate", "post", "read back", "reconcile", "write lake"}
    assert metrics["seconds"] == report["seconds"] and metrics["retries"] == report["retries"] == {}
    assert metrics["duration_seconds"] >= sum(report["seconds"].values()) * 0.99

    # ... and what the Pushgateway holds for job retail_etl: the same figures.
    samples = pushgateway.samples()
    assert {name for name, _ in samples} >= set(METRIC_NAMES) - {"retail_job_retries"}
    assert_pushed_equals_report(samples, metrics)
    last_success = single(samples, "retail_job_last_success_timestamp_seconds")
    assert last_success == pytest.approx(metrics["finished_timestamp_seconds"])

    # A rerun: every line already stored, so posted = unchanged.
    again = run_job(service, lake, *ONE_DAY, "--pushgateway", pushgateway.url)
    assert again.returncode == 0, again.stderr
    rerun = last_report(lake)["metrics"]
    assert rerun["rows"]["created"] == 0 and rerun["rows"]["unchanged"] == rows["posted"]
    assert_pushed_equals_report(pushgateway.samples(), rerun)
    last_success = rerun["finished_timestamp_seconds"]

    # A failed run (the service refuses the key) pushes too: status failed, and the last success stays.
    refused = run_job(service, lake, *ONE_DAY, "--api-key", "wrong-key", "--pushgateway", pushgateway.url)
    assert refused.returncode == 3, refused.stderr
    failed = last_report(lake)
    assert failed["status"] == failed["metrics"]["status"] == "failed"
    assert "posted" not in failed["metrics"]["rows"]  # the post stage never finished
    samples = pushgateway.samples()
    assert_pushed_equals_report(samples, failed["metrics"])
    assert single(samples, "retail_job_last_success_timestamp_seconds") == pytest.approx(last_success)


def test_a_bad_source_is_a_failed_run_on_the_pushgateway(
    service: LiveService, pushgateway: Pushgateway, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    done = run_job(service, tmp_path / "lake", "--pushgateway", pushgateway.url, source=empty)
    assert done.returncode == 2, done.stderr
    samples = pushgateway.samples()
    assert by_label(samples, "retail_job_status", "status") == {"reconciled": 0.0, "failed": 1.0}
    assert single(samples, "retail_job_last_success_timestamp_seconds") is None
    assert by_label(samples, "retail_job_rows", "stage") == {}


def test_a_push_that_cannot_reach_the_gateway_does_not_fail_the_run(
    service: LiveService, tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    lake = tmp_path / "lake"
    done = run_job(service, lake, *ONE_DAY, "--pushgateway", closed)
    assert done.returncode == 0, done.stderr
    assert last_report(lake)["status"] == "reconciled"
    records = [json.loads(line) for line in done.stderr.splitlines()]
    warnings = [r for r in records if r["level"] == "warning"]
    assert len(warnings) == 1, warnings
    assert warnings[0]["logger"] == "etl.metrics" and closed in warnings[0]["msg"]
    assert "Traceback" not in done.stderr
