"""What an uncached read pays for: py-spy's samples of the service's worker, each given to one cost.

`benchmarks/api_throughput.py --profile` records the worker with py-spy while wrk sends one path, then
gives each sample to a cost by the frames on its stack:

- the innermost frame of the project's own code that belongs to a cost decides (the key lookup's
  SQLAlchemy calls are authentication's, the document's encoding inside the read is serialization's);
- a sample with no such frame goes to the innermost library frame that belongs to one (prometheus_client:
  metrics, the logging module: access log; then the framework's parts: FastAPI and pydantic, Starlette,
  uvicorn, the event loop and the thread pool);
- the rest is "other".

Only samples that hold the GIL are recorded (`py-spy --gil`): one worker runs Python on one core at a
time, so the GIL's time is what bounds its requests per second. Each cost's µs per request is its
samples ÷ the sampling rate ÷ the requests wrk counted meanwhile; the wall time per request (1 / req/s)
minus their sum is the time the worker held no GIL (waiting for the socket, for a thread, in SQLite).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: The costs, in the order the tables print them.
COSTS = (
    "authentication",
    "rate limiting",
    "metrics",
    "access log",
    "ETag",
    "serialization",
    "cache",
    "query",
    "FastAPI",
    "Starlette",
    "uvicorn",
    "event loop, thread pool",
    "other",
)

#: (cost, file suffix, function or None for every function of the file): the project's own frames.
PROJECT_FRAMES: tuple[tuple[str, str, str | None], ...] = (
    ("rate limiting", "api/auth/deps.py", "count"),
    ("rate limiting", "api/observability/ratelimit.py", None),
    ("authentication", "api/auth/deps.py", None),
    ("authentication", "api/auth/security.py", None),
    ("authentication", "api/auth/keys.py", None),
    ("authentication", "api/deps.py", "get_identity"),
    ("metrics", "api/observability/metrics.py", None),
    ("metrics", "api/observability/middleware.py", "_route"),
    ("access log", "api/observability/middleware.py", "_log_access"),
    ("access log", "api/observability/logging.py", None),
    ("ETag", "api/core/etag.py", None),
    ("serialization", "api/core/representation.py", None),
    ("serialization", "api/crud/customers.py", "customer_json"),
    ("serialization", "api/crud/invoices.py", "to_json"),
    ("serialization", "api/crud/common.py", "invoice_dict"),
    ("serialization", "api/crud/common.py", "line_public"),
    ("cache", "api/cache.py", None),
    ("query", "api/crud/customers.py", "read_customer_json"),
    ("query", "api/crud/invoices.py", "read_invoice_json"),
    ("query", "api/deps.py", "run"),
)
#: (cost, a path fragment of a library): frames of code the project calls for that cost.
LIBRARY_FRAMES: tuple[tuple[str, str], ...] = (
    ("metrics", "/prometheus_client/"),
    ("cache", "/redis/"),
    ("access log", "/logging/"),
    ("FastAPI", "/fastapi/"),
    ("FastAPI", "/pydantic"),
    ("Starlette", "/starlette/"),
    ("uvicorn", "/uvicorn/"),
    ("uvicorn", "/httptools/"),
    ("event loop, thread pool", "/asyncio/"),
    ("event loop, thread pool", "/anyio/"),
    ("event loop, thread pool", "/threading.py"),
    ("event loop, thread pool", "/concurrent/"),
)

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]+)(?::\d+)?\)$")


def _project_cost(function: str, file: str) -> str | None:
    # py-spy names a method `Class.method` and a closure `outer.<locals>.inner`.
    name_only = function.rsplit(".", 1)[-1]
    for cost, suffix, name in PROJECT_FRAMES:
        if file.endswith(suffix) and (name is None or name_only == name):
            return cost
    return None


def _library_cost(file: str) -> str | None:
    # py-spy shortens a library's path to its import path (`fastapi/routing.py`, `json/__init__.py`).
    path = f"/{file.lstrip('/')}"
    for cost, fragment in LIBRARY_FRAMES:
        if fragment in path:
            return cost
    return None


def cost_of(stack: list[str]) -> str:
    """The cost a sample's stack (root first, py-spy's `function (file:line)` frames) is given to."""
    library: str | None = None
    for frame in reversed(stack):
        match = _FRAME.match(frame)
        if match is None:
            continue
        function, file = match["function"], match["file"]
        if (cost := _project_cost(function, file)) is not None:
            return cost
        if library is None:
            library = _library_cost(file)
    return library or "other"


def attribute(raw_lines: Iterable[str]) -> Counter[str]:
    """Samples per cost from py-spy's `--format raw` output (`frame;frame;... count` per line)."""
    samples: Counter[str] = Counter()
    for line in raw_lines:
        line = line.rstrip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples[cost_of(stack.split(";"))] += int(count)
    return samples


#: py-spy's samples per second (`record`).
RATE = 250


@dataclass
class CostTable:
    """One profiled wrk run: its samples per cost, the requests answered and their rate meanwhile."""

    samples: Counter[str]
    requests: int
    requests_per_second: float
    rate: int = RATE

    def microseconds(self) -> dict[str, float]:
        """µs of GIL time per request of each cost (COSTS order)."""
        return {cost: self.samples[cost] / self.rate / self.requests * 1e6 for cost in COSTS}

    def wall_microseconds(self) -> float:
        """The worker's wall time per request: 1e6 / req/s."""
        return 1e6 / self.requests_per_second


def py_spy() -> str:
    """The py-spy program (the dev install set carries it); exits with what to install otherwise."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        sys.exit("py-spy is not installed: pip install py-spy (./dev setup installs it)")
    return found


def record(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    """Start py-spy on `pid` for `seconds`, writing raw stacks to `out`; the caller waits for it."""
    command = [py_spy(), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(RATE)]
    command += ["--gil", "--format", "raw", "--output", str(out), "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
