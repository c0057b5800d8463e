"""Fixtures of the fault tests: the session's fault report, printed at the end of the run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.report import MARKDOWN_PATH, FaultReport

_written: list[FaultReport] = []


@pytest.fixture(scope="session")
def fault_report() -> Iterator[FaultReport]:
    """Scenarios recorded by the tests; written to .retail-etl/fault-report.{json,md} at the end."""
    report = FaultReport()
    yield report
    report.write()
    _written.append(report)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault report under the test summary (also: `python -m tests.faults.report`)."""
    for report in _written:
        if report.scenarios:
            terminalreporter.write_sep("=", f"fault report ({MARKDOWN_PATH})")
            terminalreporter.write(MARKDOWN_PATH.read_text())
