"""What the stack tests share: the running stack's handle, backfills through its scheduler, lakes read
from its S3, and the job started against its nginx."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.job import SAMPLE
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "deploy" / "stack" / "stack.py"
BIN = Path(sys.executable).parent
UP_TIMEOUT_SECONDS = 600


def missing(reason: str) -> None:
    """Fail in CI, skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class Stack:
    """A running stack: its folder, `state.json`, shared settings and a few ways to act on it."""

    dir: Path
    up_output: str

    @property
    def state(self) -> dict[str, Any]:
        """`state.json` as `up`, `kill` and `start` leave it."""
        state: dict[str, Any] = json.loads((self.dir / "state.json").read_text())
        return state

    @property
    def env(self) -> dict[str, str]:
        """The stack's env file, as every part of it reads it."""
        sys.path.insert(0, str(STACK.parent))
        try:
            from stack import read_env_file  # type: ignore[import-not-found]
        finally:
            sys.path.remove(str(STACK.parent))
        values: dict[str, str] = read_env_file(self.dir / "stack.env")
        return values

    def url(self, what: str) -> str:
        """http://127.0.0.1:<port> of a part (nginx, api-1, prometheus, airflow, s3 ...)."""
        return f"http://127.0.0.1:{self.state['ports'][what]}"

    def pid(self, part: str) -> int | None:
        """The leader of `part`'s process group, as the stack recorded it."""
        pid: int | None = self.state["parts"][part]["pid"]
        return pid

    def log(self, name: str) -> str:
        """`<dir>/logs/<name>.log`."""
        path = self.dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stack_command(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`stack.py <args> --dir <dir>`."""
        command, *rest = args
        return subprocess.run(
            [sys.executable, str(STACK), command, "--dir", str(self.dir), *rest],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )

    def kill(self, part: str) -> None:
        """SIGKILL `part`'s process group."""
        result = self.stack_command("kill", part)
        assert result.returncode == 0, result.stderr

    def start(self, part: str) -> None:
        """Start `part` again and wait until it is healthy."""
        result = self.stack_command("start", part, timeout=300)
        assert result.returncode == 0, result.stderr + self.log(part)[-3000:]

    def subprocess_env(self, **extra: str) -> dict[str, str]:
        """This process' environment with the stack's settings on top (what `set -a; . stack.env` gives)."""
        return {**os.environ, **self.env, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", **extra}

    def airflow(self, *args: str, timeout: float = 180) -> str:
        """The `airflow` command line against the stack's metadata database; its stdout."""
        result = subprocess.run(
            [str(BIN / "airflow"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            env=self.subprocess_env(),
        )
        assert result.returncode == 0, (
            f"airflow {' '.join(args)}:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
        )
        return result.stdout

    def airflow_db(self) -> Any:
        """A psycopg connection to Airflow's metadata database (autocommit: each query sees the latest)."""
        import psycopg

        return psycopg.connect(
            f"host=127.0.0.1 port=5432 user=postgres dbname=airflow_{self.state['name']}", autocommit=True
        )

    def storage_options(self) -> dict[str, Any]:
        """s3fs options for the stack's object store."""
        env = self.env
        return {
            "endpoint_url": env["AWS_ENDPOINT_URL"],
            "key": env["AWS_ACCESS_KEY_ID"],
            "secret": env["AWS_SECRET_ACCESS_KEY"],
        }

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus' /api/v1/alerts: the alerts pending or firing now."""
        response = httpx.get(f"{self.url('prometheus')}/api/v1/alerts", timeout=5)
        response.raise_for_status()
        alerts: list[dict[str, Any]] = response.json()["data"]["alerts"]
        return alerts

    def firing(self, alertname: str, **labels: str) -> list[dict[str, Any]]:
        """The firing alerts named `alertname` whose labels include `labels`."""
        return [
            alert
            for alert in self.alerts()
            if alert["state"] == "firing"
            and alert["labels"].get("alertname") == alertname
            and all(alert["labels"].get(k) == v for k, v in labels.items())
        ]


#: The two busiest days of sample_data/ (3,108 and 2,109 lines): a small backfill with real work.
DAYS = ("2010-12-01", "2010-12-02")
DAY_DATES = [dt.date.fromisoformat(day) for day in DAYS]
LINES_ON_DAYS = 3108 + 2109
#: Bounds on waits (never asserted on): a backfill of two days takes 15-30 s here, one with a lost worker
#: about a minute more (detection after 30 s, then the DAG's retry delay: 10-20 s for the second try of a
#: reprocessed day, docs/scale.md).
RUN_TIMEOUT_SECONDS = 420


def backfill(stack: Stack, *, conf: dict[str, Any] | None = None, days: Sequence[str] = DAYS) -> int:
    """`airflow backfill create` over `days` (consecutive), also over days that already ran (another
    test's backfill); the backfill's id, once its runs exist."""
    args = ["backfill", "create", "--dag-id", "retail_etl", "--from-date", days[0], "--to-date", days[-1]]
    if conf:
        args += ["--dag-run-conf", json.dumps(conf)]
    # Without it, days that already have a run are skipped and the backfill has no runs at all.
    args += ["--reprocess-behavior", "completed"]

    def none_running() -> bool:
        # One backfill per DAG at a time; the scheduler marks a finished one complete within ~30 s.
        with stack.airflow_db() as db:
            query = "SELECT count(*) FROM backfill WHERE dag_id = 'retail_etl' AND completed_at IS NULL"
            (running,) = db.execute(query).fetchone()
        return int(running) == 0

    wait_for("the previous backfill marked complete", none_running, 120, 1.0)
    stack.airflow(*args)
    with stack.airflow_db() as db:
        (backfill_id,) = db.execute("SELECT max(id) FROM backfill WHERE dag_id = 'retail_etl'").fetchone()
    assert len(run_states(stack, int(backfill_id))) == len(days), f"backfill {backfill_id} created no runs"
    return int(backfill_id)


def run_states(stack: Stack, backfill_id: int) -> dict[str, str]:
    """run_id → state of the backfill's DAG runs."""
    with stack.airflow_db() as db:
        rows = db.execute(
            "SELECT run_id, state FROM dag_run WHERE backfill_id = %s", (backfill_id,)
        ).fetchall()
    return dict(rows)


def wait_until_finished(stack: Stack, backfill_id: int, runs: int = len(DAYS)) -> dict[str, str]:
    """Wait until every run of the backfill (`runs`: one per day) has finished; their states."""

    def finished() -> dict[str, str] | None:
        states = run_states(stack, backfill_id)
        done = len(states) == runs and all(s in ("success", "failed") for s in states.values())
        return states if done else None

    states: dict[str, str] = wait_for(f"backfill {backfill_id} finished", finished, RUN_TIMEOUT_SECONDS, 1.0)
    return states


def lake_rows(stack: Stack, root: str) -> dict[str, list[dict[str, Any]]]:
    """Every lake table's rows on DAYS, as the lake's reader returns them (sorted by day and key)."""
    from etl.lake import TABLES, read_lake_table

    options = stack.storage_options()
    return {
        table: read_lake_table(root, table, DAY_DATES, storage_options=options).to_pylist()
        for table in TABLES
    }


def run_job(stack: Stack, lake: str, tmp: Path, **settings: str) -> subprocess.Popen[str]:
    """`retail-etl run` over DAYS through nginx (the stack's RETAIL_API_URL) into `lake`, started."""
    command = [sys.executable, "-m", "etl.cli", "run", "--source", str(SAMPLE), "--lake", lake]
    command += ["--start", DAYS[0], "--end", DAYS[-1]]
    env = stack.subprocess_env(RETAIL_CACHE_DIR=str(tmp / "cache"), **settings)
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
