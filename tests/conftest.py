"""Fixtures shared by every test: a fresh SQLite file, a fresh PostgreSQL database, or either."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.api.helpers import AUTH
from tests.faults.report import MARKDOWN_PATH
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


#: Folders whose tests run in one process when the suite runs in several (`./dev test`: pytest-xdist,
#: `--dist loadfile`), in this order before the others: the stack tests share one running stack (and take
#: longest), the fault tests one fault report.
SHARED_PROCESS_FOLDERS = ("stack", "faults")


def _folder(nodeid: str) -> str:
    """`stack` of `tests/stack/test_faults.py::test_x`."""
    parts = nodeid.split("::", 1)[0].split("/")
    return parts[1] if len(parts) > 2 else ""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses PostgreSQL with `postgres`, so `-m "not postgres"` can leave them out;
    put the SHARED_PROCESS_FOLDERS first, the longest first."""
    for item in items:
        if "postgres_url" in getattr(item, "fixturenames", ()) or "[postgres" in item.nodeid:
            item.add_marker(pytest.mark.postgres)
    order = {folder: rank for rank, folder in enumerate(SHARED_PROCESS_FOLDERS)}
    items.sort(key=lambda item: order.get(_folder(item.nodeid), len(order)))  # stable: files keep order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, except that each of SHARED_PROCESS_FOLDERS goes to one process as a whole, and
    the files go out in collection order (the longest first) rather than by their number of tests."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedFolderScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            folder = _folder(nodeid)
            return f"tests/{folder}" if folder in SHARED_PROCESS_FOLDERS else super()._split_scope(nodeid)

    config.option.loadscopereorder = False
    return SharedFolderScheduling(config, log)


_session_started = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault report under the test summary when this session's fault tests wrote one (they may have
    run in another process: the file tells; also `python -m tests.faults.report`)."""
    if MARKDOWN_PATH.exists() and MARKDOWN_PATH.stat().st_mtime >= _session_started:
        terminalreporter.write_sep("=", f"fault report ({MARKDOWN_PATH})")
        terminalreporter.write(MARKDOWN_PATH.read_text())


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
