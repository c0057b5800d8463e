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
    "airflow-worker",
}
#: Issue 17's topology: the service's replicas behind nginx, and the lake's object store.
REPLICAS = ("api-1", "api-2")
TOPOLOGY = {*REPLICAS, "nginx", "s3"}


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
    assert set(services) == {"postgres", *TOPOLOGY, *AIRFLOW_SERVICES, *MONITORING_AND_EVENTS}
    assert {name: services[name].get("command") for name in AIRFLOW_SERVICES - {"airflow-init"}} == {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
        "airflow-worker": "celery worker",
    }
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow"), name
        assert services[name]["build"]["dockerfile"] == "Dockerfile.airflow", name
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert services[name]["depends_on"]["airflow-init"] == {"condition": "service_completed_successfully"}
    # The public image unless a build names another base (./dev images: one made here, docs/scale.md).
    airflow_dockerfile = (REPO / "Dockerfile.airflow").read_text()
    assert "ARG BASE_IMAGE=apache/airflow:3.3.2-python3.11\nFROM ${BASE_IMAGE}\n" in airflow_dockerfile


def test_service_and_airflow_use_separate_databases(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for replica in REPLICAS:
        assert services[replica]["environment"]["DATABASE_URL"].endswith("@postgres:5432/retail"), replica
    init_sql = (REPO / "deploy" / "postgres" / "01-databases.sql").read_text()
    assert re.search(r"CREATE DATABASE retail OWNER retail;", init_sql)
    assert re.search(r"CREATE DATABASE airflow OWNER airflow;", init_sql)
    mounts = services["postgres"]["volumes"]
    assert any(str(m).endswith("deploy/postgres:/docker-entrypoint-initdb.d:ro") for m in mounts), mounts


def test_the_service_is_health_checked_and_built_from_the_project(compose: dict[str, Any]) -> None:
    for replica in REPLICAS:
        api = compose["services"][replica]
        assert "/health" in " ".join(api["healthcheck"]["test"])
        assert api["build"]["dockerfile"] == "Dockerfile"
    assert compose["services"]["airflow-scheduler"]["depends_on"]["nginx"] == {"condition": "service_healthy"}
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\n" in dockerfile
    assert "HEALTHCHECK" in dockerfile
    assert 'CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]' in dockerfile


def test_airflow_gets_the_connection_variables_and_pool_the_dag_needs(compose: dict[str, Any]) -> None:
    from airflow.sdk import Connection

    from tests.dags.test_dag import load_dag_module

    services = compose["services"]
    env = services["airflow-scheduler"]["environment"]
    conn = Connection.from_json(env["AIRFLOW_CONN_RETAIL_API"], conn_id="retail_api")
    # The key reaches Airflow's connection and the service alike.
    assert conn.password == services["api-1"]["environment"]["API_KEY"] == "k-from-env"
    assert services["api-2"]["environment"]["API_KEY"] == "k-from-env"
    # The DAG talks to nginx only, never to a replica.
    assert load_dag_module().service_url(conn) == "http://nginx:80"
    assert env["AIRFLOW_VAR_RETAIL_LAKE"] == "s3://retail-lake/lake"
    assert env["AWS_ENDPOINT_URL"] == "http://s3:5000"
    assert env["AIRFLOW_VAR_RETAIL_SOURCE"].startswith("/opt/retail/source/")

    init = services["airflow-init"]
    script = "\n".join(init["command"])
    assert "airflow db migrate" in script
    # `config` prints the file's `$$` escapes as they are; the shell in the container sees one `$`.
    assert re.search(r'airflow pools set retail_api "\$+\{RETAIL_API_POOL_SLOTS\}"', script), script
    assert init["environment"]["RETAIL_API_POOL_SLOTS"] == "3"
    assert script.index("airflow db migrate") < script.index("airflow pools set")


def test_the_lake_is_on_the_object_store_and_its_bucket_is_created_before_the_tasks(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert services["s3"]["image"].startswith("motoserver/moto:")
    script = "\n".join(services["airflow-init"]["command"])
    assert "fs.mkdir('retail-lake')" in script
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        mounts = [str(m) for m in services[name]["volumes"]]
        assert any(m.endswith(":/opt/airflow/dags:ro") for m in mounts), name
        assert not any("/opt/retail/lake" in m for m in mounts), name
    assert "retail-lake" not in compose.get("volumes", {})


def test_celery_workers_broker_results_and_lost_task_detection(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = services["airflow-worker"]
    assert worker["deploy"]["replicas"] == 2
    assert "inspect ping" in " ".join(worker["healthcheck"]["test"])
    env = worker["environment"]
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("amqp://guest:guest@rabbitmq:5672/")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == (
        "db+postgresql+psycopg://airflow:airflow@postgres:5432/airflow"
    )
    assert env["AIRFLOW__CELERY__TASK_ACKS_LATE"] == "True"
    # The workers preload the job; the module named is the one the image copies into its config folder.
    assert env["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"] == "retail_celery_config.CELERY_CONFIG"
    dockerfile = (REPO / "Dockerfile.airflow").read_text()
    assert "deploy/airflow/retail_celery_config.py /opt/airflow/config/" in dockerfile
    assert int(env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"]) <= 60
    assert int(env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL"]) <= 10
    # Every Airflow component reads one definition (x-airflow-common), the workers included.
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        shared = {k: v for k, v in services[name]["environment"].items() if k.startswith("AIRFLOW__")}
        assert shared == {k: v for k, v in env.items() if k.startswith("AIRFLOW__")}, name
    dockerfile = (REPO / "Dockerfile.airflow").read_text()
    assert '"/opt/retail-etl[stack]"' in dockerfile
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"apache-airflow-providers-celery==3.26.0"' in pyproject and '"celery==5.6.3"' in pyproject


def test_nginx_balances_the_replicas_with_the_stack_scripts_config(compose: dict[str, Any]) -> None:
    import importlib.util
    import sys

    services = compose["services"]
    nginx = services["nginx"]
    assert any(
        str(m).endswith("deploy/nginx/compose.conf:/etc/nginx/nginx.conf:ro") for m in nginx["volumes"]
    )
    assert {name: services["nginx"]["depends_on"][name] for name in REPLICAS} == {
        name: {"condition": "service_healthy"} for name in REPLICAS
    }
    # One definition of the proxy: the compose file's config is the local stack's, rendered for compose.
    spec = importlib.util.spec_from_file_location("stack", REPO / "deploy" / "stack" / "stack.py")
    assert spec is not None and spec.loader is not None
    stack = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("stack", stack)  # dataclasses look their module up by name
    spec.loader.exec_module(stack)
    conf = (REPO / "deploy" / "nginx" / "compose.conf").read_text()
    assert conf == stack.compose_nginx_config()
    for replica in REPLICAS:
        assert f"server {replica}:8000 max_fails=1 fail_timeout=5s;" in conf
    assert "proxy_next_upstream error timeout http_502 http_503;" in conf


def test_the_connection_env_is_valid_json_in_the_file_itself() -> None:
    # Compose passes the value through untouched; a quoting slip would only show when a task runs.
    raw = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    value = raw["x-airflow-common"]["environment"]["AIRFLOW_CONN_RETAIL_API"]
    parsed = json.loads(value.replace("${RETAIL_API_KEY:-dev-api-key}", "dev-api-key"))
    assert parsed == {
        "conn_type": "http",
        "host": "nginx",
        "port": 80,
        "schema": "http",
        "password": "dev-api-key",
    }
