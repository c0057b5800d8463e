"""The job's command line as tests and benchmarks start it: `python -m etl.cli run ...`, `... sync ...`."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data" / "online_retail_sample.csv"


def job_command(api_url: str, lake: Path | str, *args: str, source: Path | str = SAMPLE) -> list[str]:
    """`retail-etl run` from `source` through the service at `api_url` into `lake`, in this
    interpreter, with `args` (`--start`, `--end`, ...) appended."""
    return [
        sys.executable,
        "-m",
        "etl.cli",
        "run",
        "--source",
        str(source),
        "--api-url",
        api_url,
        "--lake",
        str(lake),
        *args,
    ]


def sync_command(api_url: str, lake: Path | str, *args: str) -> list[str]:
    """`retail-etl sync` of `lake` from the service at `api_url`, in this interpreter, with `args`."""
    return [sys.executable, "-m", "etl.cli", "sync", "--api-url", api_url, "--lake", str(lake), *args]
