"""Fixtures shared by every test: a fresh SQLite file, a fresh PostgreSQL database, or either."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.api.helpers import AUTH
from tests.support.postgres import temporary_database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLAlchemy URL of a SQLite file that does not exist yet."""
    return f"sqlite:///{tmp_path / 'retail.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty PostgreSQL database, dropped after the test."""
    with temporary_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs twice: on a fresh SQLite file and on a fresh PostgreSQL database."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses PostgreSQL with `postgres`, so `-m "not postgres"` can leave them out."""
    for item in items:
        if "postgres_url" in getattr(item, "fixturenames", ()) or "[postgres" in item.nodeid:
            item.add_marker(pytest.mark.postgres)


# The service in-process: each test folder that uses these defines its own `app` fixture.


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A client of `app` that sends the API key; its lifespan applies the migrations."""
    with TestClient(app, headers=AUTH) as test_client:
        yield test_client


@pytest.fixture
def engine(app: FastAPI, client: TestClient) -> Engine:
    """The app's engine, to check what is stored."""
    database: Engine = app.state.engine
    return database
