"""The service in-process (FastAPI's TestClient) on a fresh SQLite file or PostgreSQL database."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI

from api.core.config import Settings
from api.main import create_app
from tests.api.helpers import API_KEY


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for a test app; `_env_file=None` keeps a developer's `.env` out of the tests."""
    return Settings(_env_file=None, DATABASE_URL=database_url, API_KEY=API_KEY, **overrides)  # type: ignore[call-arg]


@pytest.fixture
def app(database_url: str) -> FastAPI:
    """A fresh app on a fresh database (migrated when the client starts it)."""
    return create_app(make_settings(database_url))
