"""The deployment files: docker-compose.yml validates and wires what the DAG reads at run time.

No Docker engine runs here; `docker-compose config` (Debian's docker-compose 1.29) validates and resolves
the file without one. It is a test dependency: `apt-get install -y docker-compose`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.dags.conftest import REPO

#: Issue 7's services; tests/dags/test_monitoring.py checks their wiring.
MONITORING_AND_EVENTS = {"rabbitmq", "redis", "outbox-relay", "pushgateway", "prometheus", "grafana"}
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}


def docker_compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("docker-compose")
    if executable is None:
        pytest.fail(
            "docker-compose is not installed; the compose file cannot be validated. "
            "Install Debian's docker-compose 1.29: apt-get update && apt-get install -y docker-compose"
        )
    return subprocess.run(
        [executable, "-f", str(REPO / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as docker-compose resolves it, with a non-default API key to follow through."""
    result = docker_compose("config", env={"RETAIL_API_KEY": "k-from-env", "RETAIL_API_POOL_SLOTS": "3"})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_the_compose_file_validates() -> None:
    result = docker_compose("config", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_the_stack_has_postgres_the_service_and_airflow_3(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "api", *AIRFLOW_SERVICES, *MONITORING_AND_EVENTS}
    assert {name: services[name].get("command") for name in AIRFLOW_SERVICES - {"airflow-init"}} == {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
    }
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow"), name
        assert services[name]["build"]["dockerfile"] == "Dockerfile.airflow", name
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert services[name]["depends_on"]["airflow-init"] == {"condition": "service_completed_successfully"}
    assert "FROM apache/airflow:3.3.2-python3.11" in (REPO / "Dockerfile.airflow").read_text()


def test_service_and_airflow_use_separate_databases(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["api"]["environment"]["DATABASE_URL"].endswith("@postgres:5432/retail")
    init_sql = (REPO / "deploy" / "postgres" / "01-databases.sql").read_text()
    assert re.search(r"CREATE DATABASE retail OWNER retail;", init_sql)
    assert re.search(r"CREATE DATABASE airflow OWNER airflow;", init_sql)
    mounts = services["postgres"]["volumes"]
    assert any(str(m).endswith("deploy/postgres:/docker-entrypoint-initdb.d:ro") for m in mounts), mounts


def test_the_service_is_health_checked_and_built_from_the_project(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert "/health" in " ".join(api["healthcheck"]["test"])
    assert api["build"]["dockerfile"] == "Dockerfile"
    assert compose["services"]["airflow-scheduler"]["depends_on"]["api"] == {"condition": "service_healthy"}
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and "HEALTHCHECK" in dockerfile
    assert 'CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]' in dockerfile


def test_airflow_gets_the_connection_variables_and_pool_the_dag_needs(compose: dict[str, Any]) -> None:
    from airflow.sdk import Connection

    from tests.dags.test_dag import load_dag_module

    services = compose["services"]
    env = services["airflow-scheduler"]["environment"]
    conn = Connection.from_json(env["AIRFLOW_CONN_RETAIL_API"], conn_id="retail_api")
    # The key reaches Airflow's connection and the service alike.
    assert conn.password == services["api"]["environment"]["API_KEY"] == "k-from-env"
    assert load_dag_module().service_url(conn) == "http://api:8000"
    assert env["AIRFLOW_VAR_RETAIL_LAKE"] == "/opt/retail/lake"
    assert env["AIRFLOW_VAR_RETAIL_SOURCE"].startswith("/opt/retail/source/")

    init = services["airflow-init"]
    script = "\n".join(init["command"])
    assert "airflow db migrate" in script
    # `config` prints the file's `$$` escapes as they are; the shell in the container sees one `$`.
    assert re.search(r'airflow pools set retail_api "\$+\{RETAIL_API_POOL_SLOTS\}"', script), script
    assert init["environment"]["RETAIL_API_POOL_SLOTS"] == "3"
    assert script.index("airflow db migrate") < script.index("airflow pools set")


def test_the_lake_is_a_named_volume_shared_with_the_tasks(compose: dict[str, Any]) -> None:
    assert "retail-lake" in compose["volumes"]
    scheduler_mounts = [str(m) for m in compose["services"]["airflow-scheduler"]["volumes"]]
    assert "retail-lake:/opt/retail/lake:rw" in scheduler_mounts
    assert any(m.endswith(":/opt/airflow/dags:ro") for m in scheduler_mounts)


def test_the_connection_env_is_valid_json_in_the_file_itself() -> None:
    # Compose passes the value through untouched; a quoting slip would only show when a task runs.
    raw = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    value = raw["x-airflow-common"]["environment"]["AIRFLOW_CONN_RETAIL_API"]
    parsed = json.loads(value.replace("${RETAIL_API_KEY:-dev-api-key}", "dev-api-key"))
    assert parsed == {
        "conn_type": "http",
        "host": "api",
        "port": 8000,
        "schema": "http",
        "password": "dev-api-key",
    }
