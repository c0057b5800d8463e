"""Fixtures of the fault tests: the session's fault report (printed by tests/conftest.py at the end)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.report import FaultReport


@pytest.fixture(scope="session")
def fault_report() -> Iterator[FaultReport]:
    """Scenarios recorded by the tests; written to .retail-etl/fault-report.{json,md} at the end."""
    report = FaultReport()
    yield report
    report.write()
