"""The service as a real uvicorn process, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveService:
    """A running `uvicorn api.main:app`; `url` is its base URL, `api_key` the key it expects."""

    url: str
    api_key: str
    port: int
    process: subprocess.Popen[bytes]
    database_url: str
    env: dict[str, str] = field(repr=False)
    log_path: Path = field(repr=False)
    workers: int = 1

    @property
    def headers(self) -> dict[str, str]:
        """Headers that authenticate a request."""
        return {"X-API-Key": self.api_key}

    def start(self) -> None:
        """(Re)start the process on the same port and wait until GET /health answers 200."""
        if self.process.poll() is None:
            raise RuntimeError("the service is still running; stop() or kill() it first")
        self.process = _spawn(self.port, self.workers, self.env, self.log_path)
        self._wait_until_healthy()

    def stop(self) -> None:
        """SIGTERM (uvicorn's graceful shutdown), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL: the process dies without any shutdown."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(STOP_TIMEOUT_SECONDS)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the process wrote."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the service exited with {self.process.returncode} while starting; log tail:\n"
                    + self.log_tail()
                )
            try:
                response = httpx.get(f"{self.url}/health", timeout=2)
                if response.status_code == 200:
                    return
                last_error = f"GET /health answered {response.status_code}"
            except httpx.TransportError as error:
                last_error = repr(error)
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(
            f"the service was not healthy within {START_TIMEOUT_SECONDS:.0f} s ({last_error}); log tail:\n"
            + self.log_tail()
        )


def _spawn(
    port: int, workers: int, env: dict[str, str], log_path: Path, app: str = "api.main:app"
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(workers), "--no-access-log"]
    with log_path.open("ab") as log:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


@contextmanager
def live_service(
    database_url: str,
    *,
    api_key: str = "test-key",
    extra_env: dict[str, str] | None = None,
    workers: int = 1,
    app: str = "api.main:app",
) -> Iterator[LiveService]:
    """Start the service (`app`, uvicorn's import string) on a free port against `database_url`; stop
    it (and remove its log) at exit."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "API_KEY": api_key,
        "ENVIRONMENT": "local",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    port = free_port()
    handle, log_name = tempfile.mkstemp(prefix="retail-service-", suffix=".log")
    os.close(handle)
    log_path = Path(log_name)
    service = LiveService(
        url=f"http://127.0.0.1:{port}",
        api_key=api_key,
        port=port,
        process=_spawn(port, workers, env, log_path, app),
        database_url=database_url,
        env=env,
        log_path=log_path,
        workers=workers,
    )
    try:
        service._wait_until_healthy()
        yield service
    finally:
        service.stop()
        log_path.unlink(missing_ok=True)
