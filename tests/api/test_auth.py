"""API keys and OAuth2 clients: made with the real `retail-api` command, used against the service on a
real SQLite file and a real PostgreSQL database; scopes, 401 and 403, tokens, rotation and revocation."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import text
from typer.testing import CliRunner, Result

from api.auth import security
from api.auth.cli import app as cli_app
from api.core.config import DEFAULT_TOKEN_SECRET, Settings
from api.main import create_app
from tests.api.conftest import make_settings
from tests.api.helpers import API_KEY, AUTH

KEY = re.compile(r"^rk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$")
CUSTOMER = {"customer_id": "17850", "country": "United Kingdom"}

Cli = Callable[..., Result]


@pytest.fixture
def cli(database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Cli:
    """Run `retail-api ...` in-process on the test's database; `expect` is the exit code it must have."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("API_KEY", API_KEY)
    monkeypatch.chdir(tmp_path)  # no developer's .env
    runner = CliRunner()

    def run(*args: str, expect: int = 0) -> Result:
        result = runner.invoke(cli_app, list(args))
        assert result.exit_code == expect, (args, result.output, result.exception)
        return result

    return run


@pytest.fixture
def anonymous(app: FastAPI) -> Iterator[TestClient]:
    """A client of the app that sends no credentials of its own."""
    with TestClient(app) as test_client:
        yield test_client


def last_line(output: str) -> str:
    """The command's own message (in-process, the service's logging may print migration lines first)."""
    return output.strip().splitlines()[-1]


def key_headers(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create_key(cli: Cli, name: str, scopes: str) -> str:
    key = cli("keys", "create", "--name", name, "--scopes", scopes).stdout.strip()
    assert KEY.match(key), key
    return key


def create_client(cli: Cli, name: str, scopes: str) -> tuple[str, str]:
    lines = dict(
        line.split("=", 1)
        for line in cli("clients", "create", "--name", name, "--scopes", scopes).stdout.split()
    )
    return lines["client_id"], lines["client_secret"]


def get_token(client: TestClient, client_id: str, secret: str, **form: str) -> dict[str, Any]:
    response = client.post(
        "/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, **form},
    )
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


def test_key_create_list_rotate_revoke_through_the_command(
    cli: Cli, anonymous: TestClient, app: FastAPI
) -> None:
    key = create_key(cli, "etl", "read,write")
    assert anonymous.post("/customer", json=CUSTOMER, headers=key_headers(key)).status_code == 201
    assert anonymous.get("/customer/17850", headers=key_headers(key)).status_code == 200

    # Stored hashed: neither the key nor its secret part is in the database.
    with app.state.engine.connect() as connection:
        stored = connection.execute(text("SELECT name, prefix, digest, scopes FROM api_keys")).all()
    assert [(name, scopes) for name, _prefix, _digest, scopes in stored] == [("etl", "read write")]
    assert stored[0].digest == security.api_key_digest(key) != key
    assert key.split("_")[1] == stored[0].prefix

    listed = cli("keys", "list").stdout
    assert "etl" in listed and "read write" in listed and stored[0].prefix in listed
    assert key not in listed and key[16:] not in listed

    # A name in use is refused, in one line.
    taken = cli("keys", "create", "--name", "etl", "--scopes", "read", expect=1)
    assert last_line(taken.stderr).startswith("error: an API key named 'etl' exists")

    rotated = cli("keys", "rotate", "etl").stdout.strip()
    assert KEY.match(rotated) and rotated != key
    assert anonymous.get("/customer/17850", headers=key_headers(key)).status_code == 401
    assert anonymous.get("/customer/17850", headers=key_headers(rotated)).status_code == 200

    cli("keys", "revoke", "etl")
    refused = anonymous.get("/customer/17850", headers=key_headers(rotated))
    assert refused.status_code == 401
    assert refused.json() == {"detail": "missing or invalid X-API-Key header"}
    assert "etl" not in cli("keys", "list").stdout
    assert "revoked" in cli("keys", "list", "--all").stdout
    assert last_line(cli("keys", "revoke", "etl", expect=1).stderr).startswith(
        "error: no API key named 'etl'"
    )

    # The name is free again; the new key is another one.
    again = create_key(cli, "etl", "read")
    assert again not in (key, rotated)
    assert anonymous.get("/customer/17850", headers=key_headers(again)).status_code == 200


def test_bad_options_are_usage_errors(cli: Cli) -> None:
    assert (
        "unknown scope delete"
        in cli("keys", "create", "--name", "x", "--scopes", "read,delete", expect=2).output
    )
    assert "no scope given" in cli("clients", "create", "--name", "x", "--scopes", ",", expect=2).output
    bad_name = cli("keys", "create", "--name", "two words", "--scopes", "read", expect=1)
    assert "is not a name" in bad_name.stderr


def test_scopes_read_write_admin(cli: Cli, anonymous: TestClient) -> None:
    reader = key_headers(create_key(cli, "analyst", "read"))
    writer = key_headers(create_key(cli, "loader", "write"))
    admin = key_headers(create_key(cli, "operator", "admin"))

    denied = anonymous.post("/customer", json=CUSTOMER, headers=reader)
    assert denied.status_code == 403
    assert denied.json() == {"detail": "key:analyst lacks the write scope this operation needs"}
    assert "WWW-Authenticate" not in denied.headers  # a key is no bearer token
    assert (
        anonymous.post("/bulk/customers", json={"customers": [CUSTOMER]}, headers=reader).status_code == 403
    )

    # write includes read, admin includes write.
    assert anonymous.post("/customer", json=CUSTOMER, headers=writer).status_code == 201
    assert anonymous.get("/customer/17850", headers=writer).status_code == 200
    other = {"customer_id": "12346", "country": "United Kingdom"}
    assert anonymous.post("/customer", json=other, headers=admin).status_code == 201

    # Reads, and the compare endpoint that only reads, need only read.
    assert anonymous.get("/customer/17850", headers=reader).status_code == 200
    assert anonymous.get("/customers", headers=reader).status_code == 200
    compared = anonymous.post("/bulk/invoices/compare", json={"invoices": {}}, headers=reader)
    assert compared.status_code == 200


def test_missing_forged_and_malformed_credentials_are_401(cli: Cli, anonymous: TestClient) -> None:
    key = create_key(cli, "etl", "read")
    forged_key = key[:16] + ("A" if key[16] != "A" else "B") + key[17:]  # the right prefix, another secret
    unknown_prefix = security.new_api_key().key
    for headers in ({}, key_headers(forged_key), key_headers(unknown_prefix), key_headers("rk_nonsense")):
        response = anonymous.get("/customer/17850", headers=headers)
        assert response.status_code == 401, headers
        assert response.json() == {"detail": "missing or invalid X-API-Key header"}
        assert "APIKey" in response.headers["WWW-Authenticate"]

    forged = jwt.encode(
        {"sub": "rc_x", "scope": "admin", "exp": dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)},
        "an attacker's own secret, 32 bytes or more",
        algorithm="HS256",
    )
    unsigned = jwt.encode({"sub": "rc_x", "scope": "admin"}, None, algorithm="none")
    for token in (forged, unsigned, "not-a-jwt"):
        response = anonymous.get("/customer/17850", headers=bearer(token))
        assert response.status_code == 401, token
        assert response.json() == {"detail": "invalid bearer token: the access token is invalid"}
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_the_bootstrap_key_is_still_admin(client: TestClient) -> None:
    # `client` sends the service's API_KEY, as the job does.
    assert client.post("/customer", json=CUSTOMER).status_code == 201
    assert client.get("/customer/17850").status_code == 200
    assert client.post("/bulk/customers", json={"customers": [CUSTOMER]}).status_code == 200


def test_client_credentials_token_flow(cli: Cli, anonymous: TestClient, app: FastAPI) -> None:
    client_id, secret = create_client(cli, "reports", "read")
    assert client_id.startswith("rc_")
    issued = get_token(anonymous, client_id, secret)
    assert issued["token_type"] == "bearer"
    assert issued["expires_in"] == 900
    assert issued["scope"] == "read"
    claims = jwt.decode(issued["access_token"], options={"verify_signature": False})
    assert claims["sub"] == client_id and claims["scope"] == "read"
    assert claims["iss"] == claims["aud"] == "retail-api"
    assert claims["exp"] - claims["iat"] == 900 and claims["jti"]

    token = bearer(issued["access_token"])
    assert anonymous.get("/customer/17850", headers=token).status_code == 404  # authorized; not stored
    denied = anonymous.post("/customer", json=CUSTOMER, headers=token)
    assert denied.status_code == 403
    assert (
        denied.headers["WWW-Authenticate"]
        == 'Bearer realm="retail-api", error="insufficient_scope", scope="write"'
    )

    # Stored with Argon2, never in clear.
    with app.state.engine.connect() as connection:
        stored = connection.execute(text("SELECT secret_hash FROM oauth_clients")).scalar_one()
    assert stored.startswith("$argon2id$") and secret not in stored

    # HTTP Basic (RFC 6749 §2.3.1) works as well as the form.
    basic = anonymous.post("/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret))
    assert basic.status_code == 200 and basic.json()["scope"] == "read"


def test_a_token_can_be_narrowed_to_fewer_scopes(cli: Cli, anonymous: TestClient) -> None:
    client_id, secret = create_client(cli, "loader", "write")
    wide = bearer(get_token(anonymous, client_id, secret)["access_token"])
    assert anonymous.post("/customer", json=CUSTOMER, headers=wide).status_code == 201
    narrowed = get_token(anonymous, client_id, secret, scope="read")
    assert narrowed["scope"] == "read"
    narrow = bearer(narrowed["access_token"])
    assert anonymous.get("/customer/17850", headers=narrow).status_code == 200
    assert anonymous.post("/customer", json=CUSTOMER, headers=narrow).status_code == 403


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({}, 400, "invalid_request"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, 401, "invalid_client"),
        (
            {"grant_type": "client_credentials", "client_id": "{id}", "client_secret": "wrong"},
            401,
            "invalid_client",
        ),
        (
            {"grant_type": "client_credentials", "client_id": "rc_unknown", "client_secret": "{secret}"},
            401,
            "invalid_client",
        ),
        # A NUL, which PostgreSQL cannot even compare, never reaches the database.
        (
            {"grant_type": "client_credentials", "client_id": "rc_\x00" + "9" * 40, "client_secret": "x"},
            401,
            "invalid_client",
        ),
        (
            {
                "grant_type": "client_credentials",
                "client_id": "{id}",
                "client_secret": "{secret}",
                "scope": "admin",
            },
            400,
            "invalid_scope",
        ),
        (
            {
                "grant_type": "client_credentials",
                "client_id": "{id}",
                "client_secret": "{secret}",
                "scope": "all",
            },
            400,
            "invalid_scope",
        ),
    ],
)
def test_token_errors_follow_rfc_6749(
    cli: Cli, anonymous: TestClient, form: dict[str, str], status: int, error: str
) -> None:
    client_id, secret = create_client(cli, "reports", "read")
    data = {name: value.format(id=client_id, secret=secret) for name, value in form.items()}
    response = anonymous.post("/token", data=data)
    assert response.status_code == status
    assert response.json()["error"] == error
    assert response.json()["error_description"]
    assert response.headers["Cache-Control"] == "no-store"
    if status == 401:
        assert response.headers["WWW-Authenticate"] == 'Basic realm="retail-api"'


def test_an_expired_token_is_401(cli: Cli, anonymous: TestClient, app: FastAPI) -> None:
    client_id, _secret = create_client(cli, "reports", "read")
    authenticator = app.state.authenticator
    an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    expired = security.issue_token(
        authenticator.tokens, client_id=client_id, scopes=["read"], generation=1, now=an_hour_ago
    )
    response = anonymous.get("/customer/17850", headers=bearer(expired))
    assert response.status_code == 401
    assert response.json() == {"detail": "invalid bearer token: the access token has expired"}
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    # The same token minted now passes: only its expiry differed.
    fresh = security.issue_token(authenticator.tokens, client_id=client_id, scopes=["read"], generation=1)
    assert anonymous.get("/customer/17850", headers=bearer(fresh)).status_code == 404


def test_tokens_of_a_revoked_or_rotated_client_are_refused(cli: Cli, anonymous: TestClient) -> None:
    client_id, secret = create_client(cli, "reports", "read")
    before = bearer(get_token(anonymous, client_id, secret)["access_token"])
    assert anonymous.get("/customer/17850", headers=before).status_code == 404

    rotated = dict(line.split("=", 1) for line in cli("clients", "rotate", "reports").stdout.split())
    assert rotated["client_id"] == client_id and rotated["client_secret"] != secret
    refused = anonymous.get("/customer/17850", headers=before)
    assert refused.status_code == 401
    assert "revoked or its secret rotated" in refused.json()["detail"]
    old_secret = anonymous.post(
        "/token", data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    )
    assert old_secret.status_code == 401
    after = bearer(get_token(anonymous, client_id, rotated["client_secret"])["access_token"])
    assert anonymous.get("/customer/17850", headers=after).status_code == 404

    cli("clients", "revoke", "reports")
    revoked = anonymous.get("/customer/17850", headers=after)
    assert revoked.status_code == 401
    assert 'error="invalid_token"' in revoked.headers["WWW-Authenticate"]
    no_new_token = anonymous.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": rotated["client_secret"],
        },
    )
    assert no_new_token.status_code == 401
    assert "reports" not in cli("clients", "list").stdout
    assert "reports" in cli("clients", "list", "--all").stdout


def test_openapi_declares_both_schemes_with_scopes(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["OAuth2ClientCredentials"]["flows"] == {
        "clientCredentials": {"tokenUrl": "/token", "scopes": security.SCOPE_DESCRIPTIONS}
    }
    assert schemes["APIKeyHeader"]["name"] == "X-API-Key"
    paths = schema["paths"]

    def security_of(method: str, path: str) -> list[dict[str, list[str]]]:
        return paths[path][method]["security"]  # type: ignore[no-any-return]

    # Either scheme will do; OpenAPI 3.1 lets an API key's requirement name its scopes ("roles") too.
    assert security_of("get", "/customer/{customer_id}") == [
        {"APIKeyHeader": ["read"]},
        {"OAuth2ClientCredentials": ["read"]},
    ]
    assert {"OAuth2ClientCredentials": ["write"]} in security_of("post", "/customer")
    assert {"OAuth2ClientCredentials": ["write"]} in security_of("post", "/bulk/invoices")
    assert {"OAuth2ClientCredentials": ["read"]} in security_of("post", "/bulk/invoices/compare")
    for path, operations in paths.items():
        for method, operation in operations.items():
            if operation.get("security"):
                assert {"401", "403"} <= operation["responses"].keys(), (method, path)
    token = paths["/token"]["post"]
    assert "security" not in token
    assert {"200", "400", "401"} <= token["responses"].keys()
    assert "application/x-www-form-urlencoded" in token["requestBody"]["content"]


def test_rate_limit_counts_each_identity_apart(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("API_KEY", API_KEY)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    first = runner.invoke(cli_app, ["keys", "create", "--name", "first", "--scopes", "read"]).stdout.strip()
    second = runner.invoke(cli_app, ["keys", "create", "--name", "second", "--scopes", "read"]).stdout.strip()
    with TestClient(create_app(make_settings(sqlite_url, RATE_LIMIT="2/minute"))) as client:
        statuses = [client.get("/invoice/1", headers=key_headers(first)).status_code for _ in range(3)]
        assert statuses == [404, 404, 429]
        # Another identity has its own counter; a wrong key is refused before it is counted.
        assert client.get("/invoice/1", headers=key_headers(first[:-1] + "x")).status_code == 401
        assert [client.get("/invoice/1", headers=key_headers(second)).status_code for _ in range(2)] == [
            404,
            404,
        ]
        assert [client.get("/invoice/1", headers=AUTH).status_code for _ in range(2)] == [404, 404]
        refused = client.get("/invoice/1", headers=AUTH)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["limit"] == "2/minute"


def test_token_secret_settings() -> None:
    local = Settings(_env_file=None)  # type: ignore[call-arg]
    assert local.token_signing_key == DEFAULT_TOKEN_SECRET
    # Production without TOKEN_SECRET issues and accepts no tokens (API keys still work) ...
    production = Settings(_env_file=None, ENVIRONMENT="production", API_KEY="a-real-secret")  # type: ignore[call-arg]
    assert production.token_signing_key is None
    # ... and refuses the development default or a short key.
    with pytest.raises(ValidationError, match="TOKEN_SECRET is the development default"):
        Settings(_env_file=None, ENVIRONMENT="production", API_KEY="k", TOKEN_SECRET=DEFAULT_TOKEN_SECRET)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        Settings(_env_file=None, TOKEN_SECRET="short")  # type: ignore[call-arg]


def test_production_without_token_secret_refuses_tokens(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, ENVIRONMENT="production")
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/token", data={"grant_type": "client_credentials", "client_id": "rc_x", "client_secret": "x"}
        )
        assert response.status_code == 400
        assert response.json()["error"] == "unsupported_grant_type"
        token = jwt.encode({"sub": "rc_x"}, DEFAULT_TOKEN_SECRET, algorithm="HS256")
        refused = client.get("/customer/1", headers=bearer(token))
        assert refused.status_code == 401
        assert "accepts no access tokens" in refused.json()["detail"]
        assert client.get("/customer/1", headers=AUTH).status_code == 404


def test_the_access_log_names_the_identity(
    cli: Cli, anonymous: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    key = create_key(cli, "etl", "read")
    caplog.set_level("INFO", logger="api.access")
    anonymous.get("/customer/17850", headers=key_headers(key))
    anonymous.get("/customer/17850", headers=AUTH)
    anonymous.get("/customer/17850", headers=key_headers("wrong"))
    access = [record for record in caplog.records if record.name == "api.access"]
    assert [(record.status, record.identity) for record in access] == [  # type: ignore[attr-defined]
        (404, "key:etl"),
        (404, "bootstrap"),
        (401, None),
    ]
    assert all(key not in record.getMessage() for record in access)
