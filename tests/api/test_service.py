"""Open endpoints, authentication, settings, body size limit, and errors that never leak internals."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.core.config import DEFAULT_API_KEY, Settings
from api.main import create_app
from tests.api.conftest import make_settings
from tests.api.helpers import AUTH, invoice

# Every data endpoint, with a body that would be valid: only the key is missing or wrong.
DATA_ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/customer", {"customer_id": "1", "country": "X"}),
    ("GET", "/customer/1", None),
    ("POST", "/customer/1/invoice", invoice()),
    ("GET", "/customer/1/invoice", None),
    ("POST", "/invoice", invoice()),
    ("GET", "/invoice/536365", None),
    ("POST", "/invoice/536365/85123A/", {"quantity": 1, "unit_price": "1"}),
    ("GET", "/invoice/536365/85123A/", None),
    ("GET", "/stockcode/85123A", None),
    ("POST", "/bulk/customers", {"customers": []}),
    ("POST", "/bulk/invoices", {"invoices": []}),
    ("POST", "/bulk/invoices/compare", {"invoices": {}}),
    ("GET", "/invoices", None),
    ("GET", "/customers", None),
    ("HEAD", "/customer/1", None),
    ("PUT", "/customer/1", {"country": "X"}),
    ("PATCH", "/customer/1", {"country": "X"}),
    ("DELETE", "/customer/1", None),
    ("HEAD", "/customer/1/invoice", None),
    ("HEAD", "/invoice/536365", None),
    ("PUT", "/invoice/536365", invoice()),
    ("PATCH", "/invoice/536365", {"country": "X"}),
    ("DELETE", "/invoice/536365", None),
    ("HEAD", "/invoice/536365/85123A/", None),
    ("DELETE", "/invoice/536365/85123A/", None),
    ("HEAD", "/stockcode/85123A", None),
    ("HEAD", "/invoices", None),
    ("HEAD", "/customers", None),
    ("GET", "/changes", None),
    ("HEAD", "/changes", None),
    ("GET", "/changes/head", None),
    ("HEAD", "/changes/head", None),
    ("GET", "/invoice-days", None),
    ("HEAD", "/invoice-days", None),
]


def test_root_and_health_are_open(client: TestClient) -> None:
    client.headers.pop("X-API-Key")
    root = client.get("/")
    assert root.status_code == 200
    assert "message" in root.json()
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "database": "ok"}
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_every_data_endpoint_needs_the_key(client: TestClient) -> None:
    client.headers.pop("X-API-Key")
    for method, path, body in DATA_ENDPOINTS:
        for headers in (
            {},
            {"X-API-Key": "wrong"},
            {"X-API-Key": "test-key "},
            {"X-API-Key": "é".encode("latin-1")},
        ):
            response = client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            if method != "HEAD":  # HEAD answers the headers only
                assert response.json() == {"detail": "missing or invalid X-API-Key header"}
    # The same requests pass authentication with the key (what they answer then depends on the data).
    for method, path, body in DATA_ENDPOINTS:
        assert client.request(method, path, json=body, headers=AUTH).status_code != 401, (method, path)


def test_openapi_declares_the_api_key_scheme(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The service's API_KEY",
    }
    secured = {
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if op.get("security")
    }
    assert {
        (method, path.replace("1", "{customer_id}")) for method, path, _body in DATA_ENDPOINTS[:2]
    } <= secured
    assert ("GET", "/health") not in secured
    assert len(secured) == len(DATA_ENDPOINTS)


def test_health_is_503_when_the_database_does_not_answer() -> None:
    # Nothing listens on port 1; migrations are off so the app starts without its database.
    url = "postgresql+psycopg://postgres@127.0.0.1:1/retail"
    app = create_app(make_settings(url, MIGRATE_ON_START=False))
    with TestClient(app, headers=AUTH) as client:
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json() == {"status": "error", "database": "unavailable"}

        data = client.get("/customer/1")
        assert data.status_code == 503
        assert "127.0.0.1" not in data.text
        assert data.json() == {"detail": "the database is unavailable, retry later"}


def test_production_refuses_the_development_key() -> None:
    with pytest.raises(ValidationError, match="API_KEY"):
        Settings(_env_file=None, ENVIRONMENT="production")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="ENVIRONMENT"):
        Settings(_env_file=None, ENVIRONMENT="staging")  # type: ignore[call-arg, arg-type]
    production = Settings(_env_file=None, ENVIRONMENT="production", API_KEY="a-real-secret")  # type: ignore[call-arg]
    assert production.API_KEY != DEFAULT_API_KEY


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "sqlite:///elsewhere.db")
    monkeypatch.setenv("API_KEY", "from-env")
    monkeypatch.setenv("MAX_BODY_BYTES", "1024")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.DATABASE_URL, settings.API_KEY, settings.MAX_BODY_BYTES) == (
        "sqlite:///elsewhere.db",
        "from-env",
        1024,
    )
    assert Settings(_env_file=None).ENVIRONMENT == "local"  # type: ignore[call-arg]


def test_body_over_the_limit_is_413(sqlite_url: str) -> None:
    app = create_app(make_settings(sqlite_url, MAX_BODY_BYTES=1000))
    with TestClient(app, headers=AUTH) as client:
        big = invoice(lines=[{"stock_code": "X", "quantity": 1, "unit_price": "1"}] * 40)

        declared = client.post("/bulk/invoices", json={"invoices": [big]})
        assert declared.status_code == 413
        assert declared.json() == {"detail": "request body over the limit of 1000 bytes"}

        def chunks():  # no Content-Length: the limit is enforced while the body streams in
            for _ in range(20):
                yield b" " * 100

        streamed = client.post(
            "/bulk/invoices", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413

        small = client.post("/customer", json={"customer_id": "1", "country": "X"})
        assert small.status_code == 201


def test_malformed_json_is_422(client: TestClient) -> None:
    for content in (b"{", b"[1, 2", b'{"customer_id": }', b"\xff\xfe"):
        response = client.post("/customer", content=content, headers={"Content-Type": "application/json"})
        assert response.status_code in (400, 422), content
        assert "Traceback" not in response.text
    assert client.post("/customer", json=[1, 2]).status_code == 422
    assert client.post("/customer", json="text").status_code == 422
    assert client.post("/customer", json=None).status_code == 422


HOSTILE_PATH_VALUES = [
    "'",
    '"',
    "1' OR '1'='1",
    "1; DROP TABLE invoices; --",
    "%00",
    "a%00b",
    "%27%22",
    "ü",
    "日本",
    "%F0%9F%98%80",
    "x" * 5000,
    "9" * 400,
    "-1",
    "..",
    "%5C",
    "%0A%0D",
    "NULL",
    "%25",
]


def test_hostile_path_values_never_give_a_500(client: TestClient) -> None:
    client.post("/invoice", json=invoice("536365"))
    templates = [
        ("GET", "/customer/{}"),
        ("GET", "/customer/{}/invoice"),
        ("POST", "/customer/{}/invoice"),
        ("GET", "/invoice/{}"),
        ("GET", "/invoice/{}/85123A/"),
        ("GET", "/invoice/536365/{}/"),
        ("POST", "/invoice/536365/{}/"),
        ("POST", "/invoice/{}/85123A/"),
        ("GET", "/stockcode/{}"),
    ]
    for method, template in templates:
        for value in HOSTILE_PATH_VALUES:
            body = invoice() if "customer" in template else {"quantity": 1, "unit_price": "1"}
            response = client.request(method, template.format(value), json=body if method == "POST" else None)
            assert response.status_code in (200, 201, 404, 405, 409, 422), (
                method,
                template,
                value,
                response.text,
            )
            assert "Traceback" not in response.text and "SELECT" not in response.text.upper().replace(
                "SELECT_", ""
            )


def test_hostile_body_values_never_give_a_500(client: TestClient) -> None:
    client.post("/customer", json={"customer_id": "1", "country": "X"})
    values: list[Any] = [
        None,
        True,
        -1,
        2**64,
        10**400,
        1e308,
        "",
        "'; DROP TABLE customers; --",
        "\u0000",
        "a\u0000b",
        "\ud83d\ude00",  # sent as JSON escapes: an emoji
        "\ud800",  # a lone surrogate: valid JSON, not encodable as UTF-8
        float("nan"),  # Python's JSON parser accepts NaN and Infinity
        float("inf"),
        "日本",
        "x" * 100_000,
        [],
        {},
        [1, 2, 3],
        {"$gt": ""},
    ]
    bodies = []
    for value in values:
        bodies.append(("/customer", {"customer_id": value, "country": "X"}))
        bodies.append(("/customer", {"customer_id": "2", "country": value}))
        bodies.append(("/invoice", invoice(invoice_no=value)))
        bodies.append(("/invoice", invoice(country=value)))
        bodies.append(("/invoice", invoice(customer_id=value)))
        bodies.append(("/invoice", invoice(invoice_date=value)))
        for field in ("stock_code", "description", "quantity", "unit_price", "line_no", "invoice_date"):
            bodies.append(
                (
                    "/invoice",
                    invoice(lines=[{"stock_code": "A", "quantity": 1, "unit_price": "1", field: value}]),
                )
            )
            bodies.append(("/invoice/536365/85123A/", {"quantity": 1, "unit_price": "1", field: value}))
        bodies.append(("/bulk/invoices", {"invoices": value}))
        bodies.append(("/bulk/customers", {"customers": value}))
    for path, body in bodies:
        # json.dumps escapes non-ASCII and writes NaN, as a hostile client could.
        response = client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert response.status_code in (200, 201, 404, 409, 422), (path, body, response.text[:300])
        assert "Traceback" not in response.text
        assert len(response.content) < 20_000, "large inputs are not echoed back"
