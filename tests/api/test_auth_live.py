"""Credentials end to end: the installed `retail-api` command as its own process, and the service as a
real uvicorn process with two workers on the same database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.service import LiveService, live_service

RETAIL_API = str(Path(sys.executable).parent / "retail-api")
CUSTOMER = {"customer_id": "17850", "country": "United Kingdom"}


def retail_api(service: LiveService, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    """Run the command on the service's database, from a folder without a `.env`."""
    env = {**os.environ, "DATABASE_URL": service.database_url, "API_KEY": service.api_key}
    result = subprocess.run(
        [RETAIL_API, *args], env=env, cwd=Path(service.log_path).parent, capture_output=True, text=True
    )
    assert result.returncode == expect, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def fresh_get(service: LiveService, path: str, headers: dict[str, str]) -> int:
    """GET on a new connection each time, so either worker may answer."""
    return httpx.get(f"{service.url}{path}", headers=headers, timeout=30).status_code


def test_keys_and_tokens_against_a_live_service(database_url: str) -> None:
    with live_service(database_url, workers=2) as service:
        key = retail_api(service, "keys", "create", "--name", "live", "--scopes", "read,write").stdout.strip()
        assert key.startswith("rk_")
        with httpx.Client(base_url=service.url, headers={"X-API-Key": key}, timeout=30) as client:
            assert client.post("/customer", json=CUSTOMER).status_code == 201
            assert client.get("/customer/17850").status_code == 200

        created = retail_api(service, "clients", "create", "--name", "dashboard", "--scopes", "read").stdout
        credentials = dict(line.split("=", 1) for line in created.split())
        issued = httpx.post(
            f"{service.url}/token",
            data={"grant_type": "client_credentials", **credentials},
            timeout=30,
        )
        assert issued.status_code == 200, issued.text
        token = {"Authorization": f"Bearer {issued.json()['access_token']}"}
        assert fresh_get(service, "/customer/17850", token) == 200
        denied = httpx.post(f"{service.url}/customer", json=CUSTOMER, headers=token, timeout=30)
        assert denied.status_code == 403
        assert 'error="insufficient_scope"' in denied.headers["WWW-Authenticate"]

        # Revoked in another process: both workers refuse from the next request on (no cache to expire).
        retail_api(service, "keys", "revoke", "live")
        retail_api(service, "clients", "revoke", "dashboard")
        assert {fresh_get(service, "/customer/17850", {"X-API-Key": key}) for _ in range(6)} == {401}
        assert {fresh_get(service, "/customer/17850", token) for _ in range(6)} == {401}
        # The bootstrap key is untouched by all this.
        assert fresh_get(service, "/customer/17850", service.headers) == 200

        unknown = retail_api(service, "keys", "rotate", "nobody", expect=1)
        assert unknown.stderr.strip().splitlines()[-1] == (
            "error: no API key named 'nobody' is in use (see `retail-api keys list`)"
        )
