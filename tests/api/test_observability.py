"""Metrics, JSON logs and request ids of the service: in process and as a real uvicorn process."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool, StaticPool

from api.main import create_app
from api.observability.metrics import PoolCollector
from tests.api.conftest import make_settings
from tests.api.helpers import API_KEY, AUTH, invoice
from tests.support.service import live_service

INVOICE_ROUTE = "/invoice/{invoice_no}"


def scrape(client: TestClient | httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """`GET /metrics` without a key, as {(sample name, sorted labels): value}."""
    response = client.get("/metrics", headers={"X-API-Key": ""})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a log must be one JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def json_client(database_url: str) -> Any:
    with TestClient(create_app(make_settings(database_url, LOG_FORMAT="json")), headers=AUTH) as client:
        yield client


def test_metrics_count_requests_by_route_template(json_client: TestClient) -> None:
    for invoice_no in ("1", "2", "3"):
        assert json_client.get(f"/invoice/{invoice_no}").status_code == 404
    assert json_client.get("/no/such/path").status_code == 404
    assert json_client.get("/customer/17850", headers={"X-API-Key": "wrong"}).status_code == 401
    customer = {"customer_id": "17850", "country": "United Kingdom"}
    assert json_client.post("/bulk/customers", json={"customers": [customer]}).status_code == 200

    samples = scrape(json_client)
    labels = {"method": "GET", "route": INVOICE_ROUTE, "status": "404"}
    assert value(samples, "retail_http_requests_total", **labels) == 3
    assert value(samples, "retail_http_request_duration_seconds_count", **labels) == 3
    assert value(samples, "retail_http_request_duration_seconds_bucket", le="+Inf", **labels) == 3
    assert value(samples, "retail_http_request_duration_seconds_bucket", le="30.0", **labels) == 3
    assert value(samples, "retail_http_request_duration_seconds_sum", **labels) > 0
    assert value(samples, "retail_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert (
        value(
            samples, "retail_http_requests_total", method="GET", route="/customer/{customer_id}", status="401"
        )
        == 1
    )
    assert (
        value(samples, "retail_http_requests_total", method="POST", route="/bulk/customers", status="200")
        == 1
    )
    # Never the raw path: the label set stays as small as the routes.
    routes = {dict(labels).get("route") for _name, labels in samples}
    assert not any(route and route.startswith("/invoice/") and route != INVOICE_ROUTE for route in routes)


def test_metrics_is_open_and_not_in_the_schema(json_client: TestClient) -> None:
    response = TestClient(json_client.app).get("/metrics")  # no key at all
    assert response.status_code == 200
    assert "retail_db_pool_size" in response.text
    assert "/metrics" not in json_client.get("/openapi.json").json()["paths"]


def test_pool_and_outbox_gauges_are_read_at_scrape_time(json_client: TestClient, database_url: str) -> None:
    engine = json_client.app.state.engine  # type: ignore[attr-defined]
    samples = scrape(json_client)
    assert value(samples, "retail_db_pool_size") == (10 if database_url.startswith("postgresql") else 5)
    with engine.connect():
        held = scrape(json_client)
    assert value(held, "retail_db_pool_connections", state="checked_out") >= 1
    assert value(held, "retail_db_pool_connections", state="overflow") == 0
    assert value(held, "retail_db_pool_connections", state="idle") >= 0

    # Without RABBITMQ_URL no relay runs: the events of a write wait in the outbox.
    assert value(samples, "retail_outbox_depth") == 0
    customer = {"customer_id": "17850", "country": "United Kingdom"}
    assert json_client.post("/bulk/customers", json={"customers": [customer]}).status_code == 200
    body = {"invoices": [invoice("536365", customer_id="17850")]}
    assert json_client.post("/bulk/invoices", json=body).status_code == 200
    after = scrape(json_client)
    assert value(after, "retail_outbox_depth") >= 2
    assert value(after, "retail_outbox_relay_lag_seconds") >= 0
    assert ("retail_outbox_relay_lag_seconds", ()) in after


@pytest.mark.parametrize("poolclass", [StaticPool, NullPool])
def test_pool_gauges_of_unsized_pools_are_zero_not_errors(poolclass: Any) -> None:
    engine = create_engine("sqlite://", poolclass=poolclass)
    with engine.connect():
        families = {family.name: family for family in PoolCollector(engine).collect()}
    assert families["retail_db_pool_size"].samples[0].value == 0
    states = {s.labels["state"]: s.value for s in families["retail_db_pool_connections"].samples}
    assert set(states) == {"checked_out", "idle", "overflow"}


def test_request_id_is_kept_echoed_and_on_every_log_line(
    json_client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    request_id = "job-7f3c:batch.12"
    customer = {"customer_id": "17850", "country": "United Kingdom"}
    json_client.post("/bulk/customers", json={"customers": [customer]}).raise_for_status()
    body = {"invoices": [invoice("536365", customer_id="17850"), invoice("C536379")]}
    first = json_client.post("/bulk/invoices", json=body, headers={"X-Request-ID": request_id})
    assert first.status_code == 200
    assert first.headers["X-Request-ID"] == request_id
    body["invoices"].append(invoice("536366"))
    second = json_client.post("/bulk/invoices", json=body, headers={"X-Request-ID": "second"})
    assert second.json() == {"created": 1, "unchanged": 2, "lines_created": 2}

    lines = json_lines(capsys.readouterr().err)
    mine = [line for line in lines if line["request_id"] == request_id]
    access = [line for line in mine if line["logger"] == "api.access"]
    assert len(access) == 1
    assert access[0]["method"] == "POST"
    assert access[0]["route"] == access[0]["path"] == "/bulk/invoices"
    assert access[0]["status"] == 200
    assert access[0]["duration_ms"] > 0
    assert access[0]["client"]
    assert access[0]["api_key_id"] == hashlib.sha256(API_KEY.encode()).hexdigest()[:8]
    assert {"ts", "level", "logger", "msg"} <= set(access[0])
    assert all(API_KEY not in json.dumps(line) for line in lines), "the key itself is never logged"

    # At INFO the bulk line says counts only: on the full data one request names ~26,000 invoices.
    bulk = [line for line in mine if line["logger"] == "api.routes.bulk"]
    assert len(bulk) == 1
    assert bulk[0]["level"] == "info"
    assert bulk[0]["msg"] == "bulk invoices: 2 created, 0 unchanged, 4 lines created"
    assert "invoices_created" not in bulk[0] and "536365" not in json.dumps(bulk[0])


def test_the_bulk_write_names_its_invoices_at_debug(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """At DEBUG the invoice numbers are logged too, so one can be followed from the job's log to the
    service's (same request id)."""
    settings = make_settings(database_url, LOG_FORMAT="json", LOG_LEVEL="DEBUG")
    with TestClient(create_app(settings), headers=AUTH) as client:
        customer = {"customer_id": "17850", "country": "United Kingdom"}
        client.post("/bulk/customers", json={"customers": [customer]}).raise_for_status()
        body = {"invoices": [invoice("536365", customer_id="17850"), invoice("C536379")]}
        client.post("/bulk/invoices", json=body, headers={"X-Request-ID": "first"}).raise_for_status()
        body["invoices"].append(invoice("536366"))
        client.post("/bulk/invoices", json=body, headers={"X-Request-ID": "second"}).raise_for_status()
    lines = json_lines(capsys.readouterr().err)

    def bulk_lines(request_id: str, level: str) -> list[dict[str, Any]]:
        return [
            line
            for line in lines
            if line["request_id"] == request_id
            and line["logger"] == "api.routes.bulk"
            and line["level"] == level
        ]

    (first_info,) = bulk_lines("first", "info")
    assert "invoices_created" not in first_info
    (first,) = bulk_lines("first", "debug")
    assert first["invoices_created"] == ["536365", "C536379"]
    assert first["invoices_unchanged"] == []
    (replay,) = bulk_lines("second", "debug")
    assert replay["invoices_created"] == ["536366"]
    assert replay["invoices_unchanged"] == ["536365", "C536379"]


@pytest.mark.parametrize("incoming", ["", "has space", "x" * 129, "semi;colon", "ünïcode"])
def test_an_invalid_incoming_request_id_is_replaced(
    json_client: TestClient, capsys: pytest.CaptureFixture[str], incoming: str
) -> None:
    capsys.readouterr()
    response = json_client.get("/invoice/1", headers={"X-Request-ID": incoming.encode()})
    assert response.status_code == 404
    generated = response.headers["X-Request-ID"]
    assert generated != incoming
    assert uuid.UUID(generated).version == 4
    access = [line for line in json_lines(capsys.readouterr().err) if line["logger"] == "api.access"]
    assert [line["request_id"] for line in access] == [generated]


def test_without_a_request_id_one_is_generated_per_request(json_client: TestClient) -> None:
    ids = {json_client.get("/health").headers["X-Request-ID"] for _ in range(3)}
    assert len(ids) == 3
    assert all(uuid.UUID(i).version == 4 for i in ids)


def test_text_format_and_uvicorn_access_log_is_off(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(make_settings(sqlite_url, LOG_FORMAT="text", LOG_LEVEL="debug"))
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("uvicorn.access").disabled
    with TestClient(app, headers={**AUTH, "X-Request-ID": "text-1"}) as client:
        capsys.readouterr()
        client.get("/invoice/1")
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "api.access" in line)
    assert "[text-1]" in line
    assert "GET /invoice/1 404" in line
    assert "route=/invoice/{invoice_no}" in line
    with pytest.raises(ValueError, match="log level"):
        make_settings(sqlite_url, LOG_LEVEL="loud")


def test_live_service_logs_json_lines_with_the_request_id(sqlite_url: str) -> None:
    # LOG_FORMAT unset: the service's stderr is a file, so JSON; uvicorn's own lines go through it too.
    with live_service(sqlite_url, api_key=API_KEY) as service:
        with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
            response = client.get("/invoice/536365", headers={"X-Request-ID": "live-req-1"})
            assert response.status_code == 404
            assert response.headers["X-Request-ID"] == "live-req-1"
            samples = scrape(client)
        log = service.log_path.read_text()
    lines = json_lines(log)
    access = [line for line in lines if line["request_id"] == "live-req-1"]
    assert [(line["logger"], line["route"], line["status"]) for line in access] == [
        ("api.access", INVOICE_ROUTE, 404)
    ]
    assert any(line["logger"].startswith("uvicorn") for line in lines)
    assert value(samples, "retail_http_requests_total", method="GET", route=INVOICE_ROUTE, status="404") == 1


def test_two_workers_report_their_sum_in_multiprocess_mode(sqlite_url: str, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with live_service(sqlite_url, api_key=API_KEY, workers=2, extra_env=env) as service:
        # New connections each time, so both workers answer some of them.
        for _ in range(20):
            assert (
                httpx.get(f"{service.url}/invoice/1", headers=service.headers, timeout=30).status_code == 404
            )
        for _ in range(4):
            with httpx.Client(base_url=service.url, timeout=30) as client:
                samples = scrape(client)
            labels = {"method": "GET", "route": INVOICE_ROUTE, "status": "404"}
            assert value(samples, "retail_http_requests_total", **labels) == 20
            assert value(samples, "retail_http_request_duration_seconds_count", **labels) == 20
            assert ("retail_db_pool_size", ()) in samples
            assert ("retail_outbox_depth", ()) in samples
    assert any(metrics_dir.glob("counter_*.db")), "the workers count in the shared directory"
