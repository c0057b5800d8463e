"""The service in-process (FastAPI's TestClient) on a fresh SQLite file or PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.core.config import Settings
from api.main import create_app
from tests.api.helpers import API_KEY, AUTH


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for a test app; `_env_file=None` keeps a developer's `.env` out of the tests."""
    return Settings(_env_file=None, DATABASE_URL=database_url, API_KEY=API_KEY, **overrides)  # type: ignore[call-arg]


@pytest.fixture
def app(database_url: str) -> FastAPI:
    """A fresh app on a fresh database (migrated when the client starts it)."""
    return create_app(make_settings(database_url))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A client that sends the API key; its lifespan applies the migrations."""
    with TestClient(app, headers=AUTH) as test_client:
        yield test_client


@pytest.fixture
def engine(app: FastAPI, client: TestClient) -> Engine:
    """The app's engine, to check what is stored."""
    database: Engine = app.state.engine
    return database
