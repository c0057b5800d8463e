"""The Postman collection, run by newman against a real service on a fresh SQLite file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from api.main import create_app
from tests.api.conftest import make_settings
from tests.support.service import REPO_ROOT, live_service

COLLECTION = REPO_ROOT / "postman" / "retail-api.postman_collection.json"
RETAIL_API = str(Path(sys.executable).parent / "retail-api")


def read_only_credentials(database_url: str) -> dict[str, str]:
    """A read-only API key and a read-only OAuth2 client, made with the installed `retail-api` command as an
    operator would (nothing can create them over HTTP), for the collection's 403 and token requests."""
    env = {**os.environ, "DATABASE_URL": database_url}

    def retail_api(*args: str) -> str:
        done = subprocess.run([RETAIL_API, *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    key = retail_api("keys", "create", "--name", "postman-reader", "--scopes", "read").strip().splitlines()[0]
    printed = retail_api("clients", "create", "--name", "postman-client", "--scopes", "read")
    client = dict(line.split("=", 1) for line in printed.splitlines() if "=" in line)
    return {"readKey": key, "readClientId": client["client_id"], "readClientSecret": client["client_secret"]}


def find_newman() -> str:
    """newman on PATH or where ./dev installs it; a missing newman fails the test, it does not skip it."""
    found = shutil.which("newman")
    local = REPO_ROOT / ".tools" / "node_modules" / ".bin" / "newman"
    if found:
        return found
    if local.exists():
        return str(local)
    raise AssertionError(
        "newman is not installed: run ./dev test, or "
        "npm install --silent --no-audit --no-fund --prefix .tools newman@6"
    )


def requests_of(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every request of the collection, folders flattened."""
    flat: list[dict[str, Any]] = []
    for item in items:
        flat += requests_of(item["item"]) if "item" in item else [item]
    return flat


def test_collection_covers_every_endpoint_with_assertions(sqlite_url: str) -> None:
    collection = json.loads(COLLECTION.read_text())
    assert {variable["key"] for variable in collection["variable"]} >= {"baseUrl", "apiKey"}
    requests = requests_of(collection["item"])
    for request in requests:
        tests = "\n".join(
            line
            for event in request["event"]
            if event["listen"] == "test"
            for line in event["script"]["exec"]
        )
        assert "pm.test(" in tests, request["name"]

    sent = {
        (request["request"]["method"], request["request"]["url"].removeprefix("{{baseUrl}}").split("?")[0])
        for request in requests
    }
    schema = create_app(make_settings(sqlite_url)).openapi()
    for path, operations in schema["paths"].items():
        pattern = re.compile("^" + re.sub(r"\{[^/]+\}", "[^/]+", path) + "$")
        for method in operations:
            assert any(m == method.upper() and pattern.match(p) for m, p in sent), f"{method.upper()} {path}"


def test_collection_asks_for_each_representation() -> None:
    requests = requests_of(json.loads(COLLECTION.read_text())["item"])
    accepted = {
        header["value"].split(";")[0].split(",")[0].strip()
        for request in requests
        for header in request["request"].get("header", [])
        if header["key"].lower() == "accept"
    }
    assert {"text/csv", "application/xml", "text/*", "image/png"} <= accepted  # each type, a range, a 406


def test_newman_runs_the_collection_against_a_live_service(sqlite_url: str, tmp_path: Path) -> None:
    newman = find_newman()
    report = tmp_path / "newman.json"
    with live_service(sqlite_url) as service:
        credentials = read_only_credentials(sqlite_url)
        result = subprocess.run(
            [
                newman,
                "run",
                str(COLLECTION),
                "--env-var",
                f"baseUrl={service.url}",
                "--env-var",
                f"apiKey={service.api_key}",
                *(arg for name, value in credentials.items() for arg in ("--env-var", f"{name}={value}")),
                "--reporters",
                "cli,json",
                "--reporter-json-export",
                str(report),
                "--color",
                "off",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    stats = json.loads(report.read_text())["run"]["stats"]
    assert stats["assertions"]["failed"] == 0
    assert stats["requests"]["failed"] == 0
    assert stats["assertions"]["total"] >= stats["requests"]["total"] >= 30
