"""The README's first command: the whole flow on `sample_data/`, on this machine, in one go.

Starts the service on its SQLite default (a fresh file under `.retail-etl/`), runs `retail-etl run` over
the sample into `./lake`, prints the summary and what the lake holds, then stops the service.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from retail_contract.lake_layout import TABLES

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data" / "online_retail_sample.csv"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, service: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if service.poll() is not None:
            sys.exit(
                f"error: the service stopped at start (exit {service.returncode}): "
                f"{_last_error_line(log_path)}; see {log_path}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    sys.exit(f"error: the service did not become healthy within 60 s; see {log_path}")


def _last_error_line(log_path: Path) -> str:
    """The line of the service's log that says why it died: a traceback's last line (the exception), else
    the last line written."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    if not lines:
        return "it wrote nothing"
    # A traceback ends with "SomeError: message"; uvicorn may log a line or two after it.
    for line in reversed(lines):
        if line.split(":", 1)[0].endswith(("Error", "Exception")) and not line.startswith("File "):
            return line
    return lines[-1]


def main() -> int:
    """Run the demo; returns the job's exit code."""
    work = ROOT / ".retail-etl"
    work.mkdir(exist_ok=True)
    database = work / "demo.db"
    database.unlink(missing_ok=True)
    lake = Path(os.environ.get("RETAIL_LAKE", ROOT / "lake"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    key = secrets.token_urlsafe(24)
    log_path = work / "service.log"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}", "API_KEY": key}
    print(f"==> starting the service on {url} (SQLite {database}, log {log_path})", flush=True)
    with log_path.open("wb") as service_log:
        service = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=service_log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_healthy(url, service, log_path)
            print(f"==> retail-etl run --source {SAMPLE.relative_to(ROOT)} --lake {lake}", flush=True)
            job = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "etl.cli",
                    "run",
                    "--source",
                    str(SAMPLE),
                    "--api-url",
                    url,
                    "--lake",
                    str(lake),
                ],
                cwd=ROOT,
                env={**os.environ, "RETAIL_API_KEY": key},
                check=False,
            )
        finally:
            service.terminate()
            service.wait(timeout=30)
    if job.returncode == 0:
        _show_lake(lake)
    return job.returncode


def _show_lake(lake: Path) -> None:
    import pyarrow.dataset as ds

    print(f"==> the lake at {lake}:")
    for table in TABLES:
        path = lake / table
        rows = ds.dataset(path, format="parquet", partitioning="hive").count_rows() if path.exists() else 0
        files = len(list(path.glob("*/*.parquet"))) if path.exists() else 0
        print(f"    {table:<14} {rows:>7,} rows in {files} partition file(s)")


if __name__ == "__main__":
    sys.exit(main())
