"""Airflow for the DAG tests: a throwaway AIRFLOW_HOME with a SQLite metadata database.

Airflow reads its configuration once, when it is first imported, so the environment is set here at import
time, before any test module imports `airflow`. The metadata database is migrated once per session, and
only for the tests that ask for it (`airflow_db`): the tests of the day mapping need no Airflow at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO / "dags"
AIRFLOW = Path(sys.executable).with_name("airflow")
#: The slots the stack's init step gives the pool (docker-compose.yml, docs/airflow.md).
POOL_SLOTS = 2

if "airflow" in sys.modules:  # pragma: no cover - a guard, not a branch the suite takes
    raise RuntimeError("airflow was imported before tests/dags/conftest.py could point it at a temp home")

AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="retail-airflow-"))
AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    # SQLite under the temp home; the value Airflow would pick anyway, spelled out so that a developer's
    # own AIRFLOW__DATABASE__SQL_ALCHEMY_CONN can never point the tests at a real metadata database.
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
}
os.environ.update(AIRFLOW_ENV)
# A developer's own settings for the job must not leak into the DAG's run-time fallbacks.
for name in (
    "RETAIL_SOURCE",
    "RETAIL_LAKE",
    "RETAIL_WAREHOUSE_URL",
    "RETAIL_NOTIFY_URL",
    "AIRFLOW_VAR_RETAIL_SOURCE",
    "AIRFLOW_VAR_RETAIL_LAKE",
    "AIRFLOW_VAR_RETAIL_WAREHOUSE",
    "AIRFLOW_VAR_RETAIL_NOTIFY",
):
    os.environ.pop(name, None)


def airflow_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the `airflow` command line of this virtualenv against the test home."""
    result = subprocess.run(
        [str(AIRFLOW), *args],
        env={**os.environ, **AIRFLOW_ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and result.returncode != 0:
        command = " ".join(args)
        raise AssertionError(
            f"airflow {command} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    """The migrated metadata database with the pool `retail_api`, created the way the stack's init step
    creates them: `airflow db migrate`, then `airflow pools set`."""
    airflow_cli("db", "migrate")
    airflow_cli(
        "pools", "set", "retail_api", str(POOL_SLOTS), "Bounds concurrent calls to the retail service"
    )
    yield AIRFLOW_HOME


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the throwaway AIRFLOW_HOME."""
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def dagbag(airflow_db: Path):
    """Every file of `dags/`, parsed the way the dag-processor parses it."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


@pytest.fixture(scope="session")
def retail_dag(dagbag):
    """The `retail_etl` DAG as parsed from `dags/retail_etl.py`."""
    assert "retail_etl" in dagbag.dags, dagbag.import_errors
    return dagbag.dags["retail_etl"]
