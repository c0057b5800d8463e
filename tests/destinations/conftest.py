"""Fixtures of the destination tests: a lake holding the sample, its days as the lake reads them back,
a throw-away PostgreSQL database, and the real broker with a test's own exchange."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl.destinations.base import DayTables
from etl.destinations.lake_destination import LakeDestination
from etl.lake import write_lake
from etl.load import load_source
from etl.schema import DayRange, ValidatedSource
from etl.validate import validate
from tests.etl.conftest import SAMPLE_CSV, snapshot_of
from tests.events.conftest import consumer, rabbitmq  # the real broker's fixtures

__all__ = ["consumer", "rabbitmq"]

FINGERPRINT = "sample0123456789"


@pytest.fixture(scope="session")
def validated() -> ValidatedSource:
    return validate(load_source(str(SAMPLE_CSV)), DayRange())


@pytest.fixture
def sample_lake(tmp_path: Path, validated: ValidatedSource) -> Path:
    """A lake holding the sample's four days, written by `etl.lake.write_lake` as the job writes it."""
    root = tmp_path / "lake"
    write_lake(
        str(root),
        validated.days,
        snapshot_of(validated.lines),
        validated.rejects,
        source_fingerprint=FINGERPRINT,
    )
    return root


@pytest.fixture
def lake_days(sample_lake: Path, validated: ValidatedSource) -> list[DayTables]:
    return LakeDestination(str(sample_lake)).read_days(validated.days)


@pytest.fixture
def plain_postgres_url(postgres_url: str) -> str:
    """The fresh database of `tests/conftest.py`'s `postgres_url` as a plain `postgresql://` URL, the form
    a user gives `--warehouse` (and the one psycopg takes)."""
    return postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
