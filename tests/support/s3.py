"""moto's S3 server as its own process (`moto_server -H 127.0.0.1 -p PORT`), as the stack runs it.

A real HTTP S3 API in another process: what the lake's code sees is what it would see from any
S3-compatible server (conditional PUTs, CopyObject, listings), and nothing of moto runs in the test's
own process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.service import free_port

START_TIMEOUT_SECONDS = 30.0
#: moto accepts any key; the region only has to be one.
CREDENTIALS = {"key": "testing", "secret": "testing"}


@dataclass(frozen=True)
class S3Server:
    """A running moto server: its endpoint URL and how to reach it from s3fs or from the environment."""

    endpoint: str
    process: subprocess.Popen[bytes]

    @property
    def storage_options(self) -> dict[str, Any]:
        """s3fs options for this server (`skip_instance_cache`: each test sees the bucket fresh)."""
        return {"endpoint_url": self.endpoint, **CREDENTIALS, "skip_instance_cache": True}

    @property
    def env(self) -> dict[str, str]:
        """The environment with which botocore (and so the job's `--lake s3://...`) talks to this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": CREDENTIALS["key"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["secret"],
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def new_bucket(self) -> str:
        """A bucket nobody else uses."""
        import fsspec

        name = f"lake-{uuid.uuid4().hex[:12]}"
        fsspec.filesystem("s3", **self.storage_options).mkdir(name)
        return name


@contextmanager
def moto_server() -> Iterator[S3Server]:
    """Start `moto_server` on a free loopback port, wait until it answers, stop it afterwards."""
    port = free_port()
    executable = Path(sys.executable).with_name("moto_server")
    command = [str(executable)] if executable.exists() else [sys.executable, "-m", "moto.server"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MOTO_CALL_RESET_API": "false"},
        )
        endpoint = f"http://127.0.0.1:{port}"
        try:
            _wait_until_up(endpoint, process, log)
            yield S3Server(endpoint, process)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_until_up(endpoint: str, process: subprocess.Popen[bytes], log: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"moto_server exited with {process.returncode}: {log.read()[-2000:]!r}")
        try:
            if httpx.get(f"{endpoint}/moto-api/", timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer at {endpoint} within {START_TIMEOUT_SECONDS:.0f} s")
