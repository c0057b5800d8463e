"""`./dev demo` (etl.demo): a service that dies at start is reported with its own last error line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from etl import demo


def test_a_service_that_dies_at_start_is_reported_with_its_error_line(tmp_path: Path) -> None:
    log_path = tmp_path / "service.log"
    crash = (
        "import sys; print('INFO:     Started server process [1]'); sys.stdout.flush(); "
        "raise RuntimeError('Form data requires \"python-multipart\" to be installed.')"
    )
    with log_path.open("wb") as log:
        service = subprocess.Popen([sys.executable, "-c", crash], stdout=log, stderr=subprocess.STDOUT)
        service.wait(timeout=30)
    with pytest.raises(SystemExit) as exit_:
        demo._wait_healthy("http://127.0.0.1:9", service, log_path)
    message = str(exit_.value.code)
    assert message.startswith("error: the service stopped at start (exit 1): RuntimeError: Form data")
    assert "\n" not in message
    assert message.endswith(f"see {log_path}")


@pytest.mark.parametrize(
    ("log", "line"),
    [
        ("", "it wrote nothing"),
        (
            "INFO: starting\nERROR: Application startup failed. Exiting.\n",
            "ERROR: Application startup failed. Exiting.",
        ),
        (
            'Traceback (most recent call last):\n  File "x.py"\nValueError: DATABASE_URL is not a URL\n'
            "INFO: shutting down\n",
            "ValueError: DATABASE_URL is not a URL",
        ),
    ],
)
def test_the_error_line_is_the_exception_else_the_last_line(tmp_path: Path, log: str, line: str) -> None:
    path = tmp_path / "service.log"
    path.write_text(log)
    assert demo._last_error_line(path) == line
