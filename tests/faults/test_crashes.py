"""Crashes: the service SIGKILLed mid-run, the job SIGKILLed or SIGTERMed, two jobs over the same day.

A proxy with a little latency (no faults) stretches the run, and its count of forwarded bulk writes
tells the test when the run is in the middle of posting.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.faults.proxy import FaultProxy
from tests.faults.report import FaultReport, Scenario
from tests.faults.support import (
    DAY,
    ROOT,
    assert_each_row_once,
    assert_one_line_error,
    job_command,
    job_env,
    lake_tables,
    last_run_report,
    run_job,
    start_job,
)
from tests.support.service import LiveService, live_service

DAY_ARGS = ("--start", DAY, "--end", DAY)
SLOW = {"RETAIL_CONCURRENCY": "1"}


@pytest.fixture(scope="module")
def expected_lake(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pa.Table]:
    base = tmp_path_factory.mktemp("expected")
    with live_service(f"sqlite:///{base / 'retail.db'}") as service:
        result = run_job(service.url, service.api_key, base / "lake", *DAY_ARGS)
        assert result.returncode == 0, result.stderr[-3000:]
    return lake_tables(base / "lake")


@pytest.fixture
def pg_service(postgres_url: str) -> Iterator[LiveService]:
    with live_service(postgres_url) as service:
        yield service


def wait_for(condition: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    assert callable(condition)
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the run to get there"
        time.sleep(0.02)


def visible_parts(lake: Path) -> list[Path]:
    return sorted(p for p in lake.rglob("part-*.parquet") if "_runs" not in p.parts)


def assert_visible_parts_complete(lake: Path) -> None:
    """Every visible part file is a whole Parquet file; readers of the lake skip the temporary ones."""
    for part in visible_parts(lake):
        pq.read_table(part)
    lake_tables(lake)


def test_service_killed_mid_run_and_restarted(
    pg_service: LiveService, expected_lake: dict[str, pa.Table], tmp_path: Path, fault_report: FaultReport
) -> None:
    lake = tmp_path / "lake"
    with FaultProxy(pg_service.url, latency_seconds=0.2) as proxy:
        job = start_job(proxy.url, pg_service.api_key, lake, *DAY_ARGS, env=SLOW)
        wait_for(lambda: proxy.count("forwarded POST /bulk/invoices") >= 3)
        pg_service.kill()
        time.sleep(1.0)
        pg_service.start()
        _, stderr = job.communicate(timeout=240)
        down = proxy.count("upstream_down")
    if job.returncode != 0:  # a clear error, and a rerun completes
        assert_one_line_error(stderr)
        rerun = run_job(pg_service.url, pg_service.api_key, lake, *DAY_ARGS)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        outcome = f"exit {job.returncode} with one line; rerun exit 0"
    else:
        outcome = "exit 0, retried through the restart"
    lost, duplicated = assert_each_row_once(pg_service.url, pg_service.api_key)
    assert lake_tables(lake) == expected_lake
    retries = last_run_report(lake)["retries"]
    assert isinstance(retries, dict)
    if job.returncode == 0:
        assert down > 0 and sum(retries.values()) > 0, (down, retries)
    fault_report.add(
        Scenario(
            "service SIGKILL mid-run, restarted (PostgreSQL)",
            {"service_killed": 1, "answers_while_down": down},
            retries,
            outcome,
            lost,
            duplicated,
        )
    )


def test_job_killed_while_posting_then_rerun(
    expected_lake: dict[str, pa.Table], tmp_path: Path, fault_report: FaultReport
) -> None:
    lake = tmp_path / "lake"
    with live_service(f"sqlite:///{tmp_path / 'retail.db'}") as service:
        with FaultProxy(service.url, latency_seconds=0.2) as proxy:
            job = start_job(proxy.url, service.api_key, lake, *DAY_ARGS, env=SLOW)
            wait_for(lambda: proxy.count("forwarded POST /bulk/invoices") >= 3)
            job.send_signal(signal.SIGKILL)
            job.communicate(timeout=30)
        assert job.returncode == -signal.SIGKILL
        assert visible_parts(lake) == []
        rerun = run_job(service.url, service.api_key, lake, *DAY_ARGS)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        lost, duplicated = assert_each_row_once(service.url, service.api_key)
    assert lake_tables(lake) == expected_lake
    fault_report.add(
        Scenario(
            "job SIGKILL while posting, rerun",
            {"job_killed": 1},
            {},
            "no partition visible; rerun exit 0, exact lake",
            lost,
            duplicated,
        )
    )


# Runs the CLI with one lake step wrapped so that the process SIGKILLs itself at that point.
_KILLING_RUNNER = textwrap.dedent(
    """
    import importlib, os, signal, sys
    step, after = sys.argv[1], int(sys.argv[2])
    where, name = step.rsplit(".", 1)
    module = importlib.import_module(f"etl.lake.{where}")
    original = getattr(module, name)
    calls = 0
    def dying(*args, **kwargs):
        global calls
        result = original(*args, **kwargs)
        calls += 1
        if calls >= after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(module, name, dying)
    from etl.cli import main
    sys.argv = ["retail-etl", *sys.argv[3:]]
    main()
    """
)


@pytest.mark.parametrize(
    ("step", "after", "label"),
    [
        ("storage.write_bytes", 2, "write_bytes"),
        ("commit.commit_manifest", 1, "commit"),
        ("publish.publish_file", 2, "publish_file"),
    ],
)
def test_job_killed_while_writing_the_lake_then_rerun(
    step: str,
    after: int,
    label: str,
    expected_lake: dict[str, pa.Table],
    tmp_path: Path,
    fault_report: FaultReport,
) -> None:
    lake = tmp_path / "lake"
    with live_service(f"sqlite:///{tmp_path / 'retail.db'}") as service:
        command = [sys.executable, "-c", _KILLING_RUNNER, step, str(after)]
        command += job_command(service.url, lake, *DAY_ARGS)[3:]
        killed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=240,
            check=False,
            env=job_env(service.api_key, lake),
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        objects = list((lake / "_lake" / "objects").rglob("*.parquet"))
        manifests = list((lake / "_lake" / "manifests").glob("*.json"))
        assert_visible_parts_complete(lake)
        if step == "storage.write_bytes":
            # Killed before the commit: objects no manifest names, invisible to every reader. At least
            # `after` objects: the lake writes them from several threads, so another one may finish
            # between the killing call's return and the signal.
            assert len(objects) >= after and manifests == []
            assert visible_parts(lake) == []
            assert all(table.num_rows == 0 for table in lake_tables(lake).values())
        elif step == "commit.commit_manifest":
            # Committed, not yet published: manifest readers see the day whole, plain readers nothing yet.
            assert len(manifests) == 1 and visible_parts(lake) == []
            assert lake_tables(lake) == expected_lake
        else:
            assert len(visible_parts(lake)) == after  # whole partitions only
            assert lake_tables(lake) == expected_lake
        rerun = run_job(service.url, service.api_key, lake, *DAY_ARGS)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        lost, duplicated = assert_each_row_once(service.url, service.api_key)
    assert not [p for p in lake.rglob("*") if p.name.endswith(".tmp")]
    assert lake_tables(lake) == expected_lake
    fault_report.add(
        Scenario(
            f"job SIGKILL in lake {label} #{after}, rerun",
            {"job_killed": 1},
            {},
            "readers see the committed day or none; rerun exact lake",
            lost,
            duplicated,
        )
    )


def test_sigterm_stops_the_job_with_143_and_one_line(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    with (
        live_service(f"sqlite:///{tmp_path / 'retail.db'}") as service,
        FaultProxy(service.url, latency_seconds=0.2) as proxy,
    ):
        job = start_job(proxy.url, service.api_key, lake, *DAY_ARGS, env=SLOW)
        wait_for(lambda: proxy.count("forwarded POST /bulk/invoices") >= 2)
        job.send_signal(signal.SIGTERM)
        _, stderr = job.communicate(timeout=60)
    assert job.returncode == 143, stderr[-3000:]
    assert "SIGTERM" in assert_one_line_error(stderr)
    assert visible_parts(lake) == []


def test_two_jobs_over_the_same_day_at_once(
    pg_service: LiveService, expected_lake: dict[str, pa.Table], tmp_path: Path, fault_report: FaultReport
) -> None:
    jobs = [start_job(pg_service.url, pg_service.api_key, tmp_path / f"lake{i}", *DAY_ARGS) for i in (1, 2)]
    results = [job.communicate(timeout=240) for job in jobs]
    for job, (_, stderr) in zip(jobs, results, strict=True):
        assert job.returncode == 0, stderr[-3000:]
    lost, duplicated = assert_each_row_once(pg_service.url, pg_service.api_key)
    for i in (1, 2):
        assert lake_tables(tmp_path / f"lake{i}") == expected_lake
    created = [last_run_report(tmp_path / f"lake{i}")["counts"] for i in (1, 2)]
    lines_created = sum(c["lines_created"] for c in created if isinstance(c, dict))
    assert lines_created == 2109
    fault_report.add(
        Scenario(
            "two jobs over the same day at once (PostgreSQL)",
            {"concurrent_jobs": 2},
            {},
            "both exit 0, exact lakes",
            lost,
            duplicated,
        )
    )
