"""The monitoring and events part of the compose stack (issue 7): RabbitMQ, Redis, the outbox relay, the
Pushgateway, Prometheus and Grafana are wired to each other and to the service and the job; Prometheus'
config passes the real `promtool`; every metric the dashboard and the alert rules query is one that the
service (scraped from a real app) or the job (its push registry) exports.

`promtool` comes with Debian's `prometheus` package (a test dependency, installed by `./dev test`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from etl.metrics import JOB, ROW_STAGES, STATUSES, registry_for, success_registry
from tests.dags.conftest import REPO
from tests.dags.test_compose import docker_compose

PROMETHEUS = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "retail.json"

#: What the dashboard must show (issue 7).
SERVICE_METRICS = {
    "retail_http_requests_total",
    "retail_http_request_duration_seconds_bucket",
    "retail_db_pool_connections",
    "retail_db_pool_size",
    "retail_outbox_depth",
    "retail_outbox_relay_lag_seconds",
    "retail_rate_limited_total",
}
JOB_METRICS = {
    "retail_job_rows",
    "retail_job_stage_seconds",
    "retail_job_retries",
    "retail_job_last_success_timestamp_seconds",
}

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan",
}  # fmt: skip


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    result = docker_compose("config")
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    return resolved


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    return config


def mounts(service: dict[str, Any]) -> list[str]:
    return [str(m) for m in service.get("volumes", [])]


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: apt-get install -y prometheus (./dev test does)")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "rules found" in result.stdout


def test_prometheus_scrapes_the_service_and_the_pushgateway_of_the_stack(
    compose: dict[str, Any], prometheus_config: dict[str, Any]
) -> None:
    services = compose["services"]
    jobs = {job["job_name"]: job for job in prometheus_config["scrape_configs"]}
    targets = {name: job["static_configs"][0]["targets"] for name, job in jobs.items()}
    # Each replica directly, under its own `replica` label.
    replicas = {c["labels"]["replica"]: c["targets"] for c in jobs["retail-api"]["static_configs"]}
    assert replicas == {"api-1": ["api-1:8000"], "api-2": ["api-2:8000"]}
    assert jobs["retail-api"].get("metrics_path") == "/metrics"
    # The pushed job/instance labels are the ones that count, not the gateway's.
    assert targets["pushgateway"] == ["pushgateway:9091"] and jobs["pushgateway"]["honor_labels"] is True
    # The service's public port is nginx's. docker-compose 1.29 prints short port syntax
    # ("127.0.0.1:8000:80/tcp") or a mapping.
    assert any(
        (str(p.get("published")) == "8000") if isinstance(p, dict) else str(p).startswith("127.0.0.1:8000:")
        for p in services["nginx"]["ports"]
    )
    assert services["pushgateway"]["image"].startswith("prom/pushgateway:")
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    assert any(m.endswith("deploy/prometheus:/etc/prometheus:ro") for m in mounts(prometheus))
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_the_job_pushes_where_prometheus_scrapes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("airflow-scheduler", "airflow-apiserver", "airflow-dag-processor", "airflow-triggerer"):
        url = services[name]["environment"]["RETAIL_PUSHGATEWAY_URL"]
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == ("pushgateway", 9091), name


def test_the_service_gets_rabbitmq_redis_and_a_rate_limit_and_the_relay_runs_from_its_image(
    compose: dict[str, Any],
) -> None:
    from api.core.config import Settings

    services = compose["services"]
    api, relay = services["api-1"], services["outbox-relay"]
    assert services["api-2"]["environment"] == api["environment"]
    env = api["environment"]
    assert urlsplit(env["RABBITMQ_URL"]).hostname == "rabbitmq"
    assert urlsplit(env["REDIS_URL"]).hostname == "redis"
    # The service accepts these settings as they are (RATE_LIMIT is parsed at start-up).
    settings = Settings(_env_file=None, **env)  # type: ignore[arg-type]
    assert settings.RATE_LIMIT and settings.RABBITMQ_URL and settings.REDIS_URL
    # One publisher: the relay service, not a thread in each API process.
    assert env["RELAY_IN_SERVICE"] == "false"
    assert relay["image"] == api["image"]
    assert relay["command"] == ["python", "-m", "api.events.relay"]
    for key in ("DATABASE_URL", "RABBITMQ_URL"):
        assert relay["environment"][key] == env[key], key
    assert relay["depends_on"]["api-1"] == {"condition": "service_healthy"}
    for dependency in ("rabbitmq", "redis"):
        assert api["depends_on"][dependency] == {"condition": "service_healthy"}, dependency
        assert services[dependency]["healthcheck"]["test"], dependency
    assert services["rabbitmq"]["image"] == "rabbitmq:3-management"
    assert "rabbitmq-diagnostics" in services["rabbitmq"]["healthcheck"]["test"]


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    assert any(
        m.endswith("deploy/grafana/provisioning:/etc/grafana/provisioning:ro") for m in mounts(grafana)
    )
    (dashboards_mount,) = [m for m in mounts(grafana) if "deploy/grafana/dashboards:" in m]
    in_container = dashboards_mount.split(":")[1]

    (datasource,) = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus" and urlsplit(datasource["url"]).hostname == "prometheus"
    (provider,) = yaml.safe_load((GRAFANA / "provisioning/dashboards/retail.yml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == in_container

    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors ($__rate_interval)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        name, is_call = match.group(1), match.group(2)
        if not is_call and name.lower() not in PROMQL_WORDS:
            names.add(name)
    return names


def job_of(expr: str) -> set[str]:
    return set(re.findall(r'job="([^"]+)"', expr))


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    return [str(rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def exported_by_the_service(tmp_path: Path) -> set[str]:
    """The sample names a real app's /metrics exposes (a family without samples yet, e.g. a counter of
    429s before any, counts by the names its type gives its samples)."""
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from api.main import create_app
    from tests.api.conftest import make_settings
    from tests.api.helpers import AUTH

    app = create_app(make_settings(f"sqlite:///{tmp_path / 'retail.db'}"))
    with TestClient(app, headers=AUTH) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/customer/1").status_code == 404
        response = client.get("/metrics")
    assert response.status_code == 200
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names = set()
    for family in text_string_to_metric_families(response.text):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    return names


def exported_by_the_job() -> set[str]:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    full = {
        "status": "reconciled",
        "duration_seconds": 1.0,
        "finished_timestamp_seconds": 1.0,
        "rows": dict.fromkeys(ROW_STAGES, 1),
        "seconds": {"post": 1.0},
        "retries": {"503": 1},
    }
    text = (generate_latest(registry_for(full)) + generate_latest(success_registry(full))).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_metric_the_dashboard_and_the_alerts_query_is_exported(
    tmp_path: Path, prometheus_config: dict[str, Any]
) -> None:
    # `up` is Prometheus' own series of every scrape target (the replica-down alerts use it).
    service, job = exported_by_the_service(tmp_path) | {"up"}, exported_by_the_job()
    assert service >= SERVICE_METRICS
    assert job >= JOB_METRICS
    scrape_jobs = {c["job_name"] for c in prometheus_config["scrape_configs"]}

    queried: set[str] = set()
    for expr in dashboard_exprs() + rule_exprs():
        names = metric_names(expr)
        assert names, expr
        unknown = names - service - job
        assert not unknown, f"{expr}: {sorted(unknown)} is exported by neither the service nor the job"
        # The job label: the service's scrape job for its metrics, the pushed job label for the job's.
        for value in job_of(expr):
            expected = JOB if names <= job else "retail-api"
            assert value == expected and (value == JOB or value in scrape_jobs), expr
        queried |= names
    # The dashboard shows everything issue 7 names.
    assert {n for e in dashboard_exprs() for n in metric_names(e)} >= SERVICE_METRICS | JOB_METRICS
    assert "retail_job_last_success_timestamp_seconds" in queried


def test_the_metric_name_parser_finds_names_and_skips_functions_labels_and_ranges() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, route) "
        '(rate(x_bucket{job="a", route=~"/b.*"}[$__rate_interval])))'
        " / on (route) group_left sum(y_total offset 5m) > bool 2 * time() - z"
    )
    assert metric_names(expr) == {"x_bucket", "y_total", "z"}


def test_the_job_statuses_are_what_the_dashboard_and_alerts_expect() -> None:
    assert set(STATUSES) == {"reconciled", "failed"}
    assert any('status="failed"' in expr for expr in rule_exprs())


def test_the_dashboard_has_per_replica_panels_that_do_not_overlap() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    (row,) = [p for p in panels if p["type"] == "row" and "replica" in p["title"].lower()]
    in_row = [p for p in panels if p["type"] != "row" and row["gridPos"]["y"] < p["gridPos"]["y"] < 42]
    exprs = {p["title"]: [t["expr"] for t in p["targets"]] for p in in_row}
    assert len(exprs) >= 4, exprs
    # Each of them shows one series per replica: grouped by `replica`, or `up` (one per target).
    for title, queries in exprs.items():
        for expr in queries:
            assert re.search(r"by \([^)]*\breplica\b", expr) or expr.startswith("up{"), (title, expr)
            assert job_of(expr) == {"retail-api"}, (title, expr)
        assert all(
            "{{replica}}" in t["legendFormat"] for p in in_row if p["title"] == title for t in p["targets"]
        )
    # Grafana's grid is 24 wide; no two panels share a cell.
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        own = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not own & cells, panel["title"]
        cells |= own


def test_the_rules_alert_on_a_replica_down_by_its_label() -> None:
    rules = {
        r["alert"]: r
        for g in yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
        for r in g["rules"]
    }
    assert rules["RetailApiReplicaDown"]["expr"] == 'up{job="retail-api"} == 0'
    assert "{{ $labels.replica }}" in rules["RetailApiReplicaDown"]["annotations"]["summary"]
    assert rules["RetailApiAllReplicasDown"]["labels"]["severity"] == "critical"
