"""One path: a scheduled run honours every setting the command line honours, and both leave the same run
report. `dag.test()` against a live service process; the command line against another, so that both
runs start from an empty service and count the same."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.dags.conftest import REPO
from tests.dags.test_dag_run import (  # noqa: F401 - fixtures
    DAY,
    fresh_dag,
    retail_api_connection,
    service,
    source_day,
)
from tests.support.job import SAMPLE, job_command
from tests.support.service import live_service

#: Every setting of how a run pushes the service, away from its default.
SETTINGS = {
    "RETAIL_CONCURRENCY": "2",
    "RETAIL_LINES_PER_REQUEST": "150",
    "RETAIL_PAGE_SIZE": "40",
    "RETAIL_RETRY_BUDGET_SECONDS": "42",
    "RETAIL_REQUEST_TIMEOUT_SECONDS": "21",
    "RETAIL_LINES_PER_BATCH": "1500",
}


def only_report(lake: Path) -> dict[str, Any]:
    (path,) = (lake / "_runs").glob("*.json")
    assert path.with_suffix(".html").is_file()  # its page, beside it
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def test_a_scheduled_run_honours_the_settings_and_leaves_the_command_lines_report(
    fresh_dag, retail_api_connection: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    for name, value in SETTINGS.items():
        monkeypatch.setenv(name, value)
    dag_lake, cli_lake = tmp_path / "dag-lake", tmp_path / "cli-lake"
    run = fresh_dag.test(
        logical_date=dt.datetime.fromisoformat(DAY).replace(tzinfo=dt.UTC),
        run_conf={"source": str(SAMPLE), "lake": str(dag_lake)},
    )
    assert run.state == "success"
    with live_service(f"sqlite:///{tmp_path / 'cli-service.db'}", api_key="cli-key") as other:
        cli = subprocess.run(
            job_command(other.url, cli_lake, "--start", DAY, "--end", DAY),
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "RETAIL_API_KEY": other.api_key, "RETAIL_CACHE_DIR": str(tmp_path / "cache")},
            timeout=300,
        )
    assert cli.returncode == 0, cli.stderr[-4000:]
    from_dag, from_cli = only_report(dag_lake), only_report(cli_lake)

    # The settings the stages ran with, in both: the environment's.
    expected = {
        "concurrency": 2,
        "lines_per_request": 150,
        "page_size": 40,
        "retry_budget_seconds": 42.0,
        "request_timeout_seconds": 21.0,
        "lines_per_batch": 1500,
    }
    assert from_cli["settings"] == expected
    # The DAG's tasks post and read back with these; a scheduled run is one day, not cut in batches.
    assert {k: v for k, v in from_dag["settings"].items() if k != "lines_per_batch"} == {
        k: v for k, v in expected.items() if k != "lines_per_batch"
    }
    # Their effect: the day's lines go in requests of at most 150 lines (the default sends one request).
    lines, _, _ = source_day(DAY)
    assert from_dag["counts"]["requests"] == from_cli["counts"]["requests"] >= 1 + math.ceil(lines / 150)

    # The same report, however the run ran.
    assert set(from_dag) == set(from_cli)
    assert from_dag["status"] == from_cli["status"] == "reconciled"
    assert from_dag["counts"] == from_cli["counts"]
    assert from_dag["rejects_by_reason"] == from_cli["rejects_by_reason"]
    assert set(from_dag["seconds"]) == set(from_cli["seconds"])
    assert from_dag["days"] == from_cli["days"] == [DAY]
    for side in ("service", "lake"):
        assert from_dag["reconciliation"][side]["ok"] is from_cli["reconciliation"][side]["ok"] is True
        assert from_dag["reconciliation"][side]["days"] == from_cli["reconciliation"][side]["days"]
        assert from_dag["reconciliation"][side]["totals"] == from_cli["reconciliation"][side]["totals"]
