"""One local production-like stack for every test in this folder (`deploy/stack/stack.py`, session scope).

The stack is the real thing: nginx, two uvicorn replicas on PostgreSQL, moto's S3 server, Prometheus and
the Pushgateway, Airflow's api-server, scheduler and dag-processor, two Celery workers on RabbitMQ. It is
started with short Prometheus intervals (`--scrape-interval 1s --alert-for 3s`) and without scheduled runs
(`--no-schedule`: unpausing the DAG must not start the year's catch-up; backfills still run), under a
random name, and purged at the end. A missing program fails the tests in CI (CI=true) and skips them
elsewhere.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.stack.support import BIN, REPO, STACK, UP_TIMEOUT_SECONDS, Stack, missing, run_job


def _require_programs() -> None:
    for program, package in (
        ("nginx", "nginx-light"),
        ("prometheus", "prometheus"),
        ("prometheus-pushgateway", "prometheus-pushgateway"),
        ("rabbitmqctl", "rabbitmq-server"),
    ):
        if shutil.which(program) is None and shutil.which(program, path="/usr/sbin:/usr/bin") is None:
            missing(f"{program} is not installed: apt-get install -y {package} (./dev test does)")
    for program in ("airflow", "moto_server", "celery"):
        if not (BIN / program).exists():
            missing(f"{BIN / program} is missing: pip install -e '.[stack]' (./dev setup does)")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack, up and healthy, for the whole session; purged (databases, vhost, folder) at the end."""
    _require_programs()
    directory = tmp_path_factory.mktemp("stack") / "stack"
    name = f"t{secrets.token_hex(4)}"
    command = [sys.executable, str(STACK), "up", "--dir", str(directory), "--name", name]
    command += ["--no-schedule", "--scrape-interval", "1s", "--alert-for", "3s"]
    try:
        up = subprocess.run(command, capture_output=True, text=True, timeout=UP_TIMEOUT_SECONDS, cwd=REPO)
    except subprocess.TimeoutExpired:
        up = None
    try:
        if up is None or up.returncode != 0:
            logs = directory / "logs"
            tails = "".join(
                f"\n--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                for log in sorted(logs.glob("*.log"))
            ) if logs.exists() else ""  # fmt: skip
            detail = "timed out" if up is None else up.stderr[-3000:]
            if up is not None and "does not answer" in up.stderr:
                missing(f"a machine service is down: {up.stderr.strip()}")
            pytest.fail(f"stack up failed: {detail}{tails[-8000:]}")
        yield Stack(dir=directory, up_output=up.stdout)
    finally:
        subprocess.run(
            [sys.executable, str(STACK), "down", "--dir", str(directory), "--purge"],
            capture_output=True,
            timeout=180,
            cwd=REPO,
        )


@pytest.fixture(scope="session")
def unpaused_dag(stack: Stack) -> str:
    """`retail_etl` unpaused on the stack (its runs of a paused DAG would stay queued)."""
    stack.airflow("dags", "unpause", "retail_etl")
    return "retail_etl"


@pytest.fixture(scope="session")
def reference_lake(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fault-free `retail-etl run` over the same days, through nginx, into the stack's S3."""
    root = f"s3://retail-lake/reference-{secrets.token_hex(3)}"
    job = run_job(stack, root, tmp_path_factory.mktemp("reference"))
    _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    return root
