"""A real Prometheus Pushgateway process (Debian's `prometheus-pushgateway`), for the job's metrics tests.

The binary is a test dependency (`./dev test` installs it): missing, the tests fail rather than skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.service import free_port

BINARY = "prometheus-pushgateway"
START_TIMEOUT_SECONDS = 20.0


@dataclass
class Pushgateway:
    """A running Pushgateway; `url` is what the job is given."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def samples(self, job: str = "retail_etl") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample the gateway exposes for `job`: (name, sorted labels without job/instance) → value."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).raise_for_status().text
        found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("job") != job:
                    continue
                labels = tuple(
                    sorted((k, v) for k, v in sample.labels.items() if k not in {"job", "instance"})
                )
                found[(sample.name, labels)] = sample.value
        return found


def binary() -> str:
    """The Pushgateway executable; fails the test when it is not installed."""
    path = shutil.which(BINARY) or (f"/usr/bin/{BINARY}" if Path(f"/usr/bin/{BINARY}").exists() else None)
    if path is None:
        pytest.fail(
            f"{BINARY} is not installed; the job's push cannot be tested. "
            "Install it: apt-get install -y prometheus-pushgateway (./dev test does)"
        )
    return path


@contextmanager
def running_pushgateway() -> Iterator[Pushgateway]:
    """Start a Pushgateway on a free port, in memory only (Debian's default persists to /var/lib)."""
    port = free_port()
    handle, name = tempfile.mkstemp(prefix="pushgateway-", suffix=".log")
    os.close(handle)
    log_path = Path(name)
    # An empty --persistence.file keeps the metrics in memory only.
    command = [binary(), f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    gateway = Pushgateway(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"the Pushgateway exited with {process.returncode}: {log_path.read_text()}"
                )
            try:
                if httpx.get(f"{gateway.url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Pushgateway did not start: {log_path.read_text()}")
            time.sleep(0.1)
        yield gateway
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log_path.unlink(missing_ok=True)
