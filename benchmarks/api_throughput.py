"""Requests per second of the service's resource GETs against the lean FastAPI + SQLAlchemy Core route.

    .venv/bin/python benchmarks/api_throughput.py [--start 2010-12-01 --end 2010-12-31] [--rounds 3]
        [--threads 2 --connections 32 --duration 10] [--redis-url redis://127.0.0.1:6379/0] [--profile]

What it does, all with real processes:

1. Loads a slice of the data set (default: December 2010 of `../shared/datasets/online_retail/`, else
   `sample_data/`) into a fresh SQLite file with the job, through the service.
2. Picks up to `--ids` real customer ids and invoice numbers from that file (seeded, so reruns ask for the
   same rows) and writes wrk Lua scripts that rotate over them, each wrk thread from its own offset, so no
   run hammers one hot row.
3. For each target in turn, alone on the machine: the lean route (`benchmarks/bare_app.py`: Core on a
   pooled connection, no ORM session, no dependency), the service (one uvicorn worker, as deployed:
   middleware, logs at INFO to a file) called with the bootstrap key (`service`), with a client's key
   (`service-key`: a read-scoped `rk_...` key from `retail-api keys create`) and with an OAuth2 access
   token (`service-token`: client credentials from `retail-api clients create`, a token from
   `POST /token`), all uncached, and the service with `REDIS_URL` (`cached`: its cache warmed by one
   GET of every path first). Each is measured with wrk on
   `GET /customer/{id}` and `GET /invoice/{no}` (`--connections`), then once more at 64 connections on
   both paths mixed, counting socket errors, timeouts and non-2xx answers.
4. Prints req/s per target and path (the median over `--rounds`), the ratios service ÷ bare and
   cached ÷ bare measured in the same run, the errors at 64 connections, the cache's hits and misses
   from `/metrics`, the load average before and after (the figures are only comparable on a quiet
   machine), the wall time and the peak memory of every process.
5. With `--profile`, once more per service target and path, wrk while py-spy samples the worker: what
   each request pays for authentication, rate limiting, metrics, the access log, the ETag, serialization,
   the query and the framework (`benchmarks/request_costs.py` says how samples are given to costs).

Goals (issue 32): a client's key and a token ≥ 0.9x the lean route, cached ≥ 2x, zero errors at 64
connections. The bootstrap key is reported beside them, without a goal of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.request_costs import COSTS, CostTable, attribute, py_spy, record  # noqa: E402
from tests.support.job import SAMPLE, job_command  # noqa: E402
from tests.support.service import free_port, live_service  # noqa: E402

DATASET = ROOT.parent / "shared" / "datasets" / "online_retail" / "online_retail.csv.gz"
API_KEY = "bench-key"
PATHS = {"customer": "/customer/{}", "invoice": "/invoice/{}"}
TARGETS = ("bare", "service", "service-key", "service-token", "cached", "floor", "floor-redis")
GOALS = {"service-key": 0.9, "service-token": 0.9, "cached": 2.0}
#: The service targets profiled by `--profile`: how clients call it, uncached, and a warm cache's hit.
PROFILED = ("service-key", "service-token", "cached")
#: Tokens outlive the benchmark: each target's service is a new process, signing with the same secret.
TOKEN_SETTINGS = {"TOKEN_SECRET": secrets.token_hex(32), "TOKEN_EXPIRE_SECONDS": "86400"}

# A wrk script: rotate over PATHS_TABLE from a per-thread offset; print the summary as one JSON line.
WRK_LUA = """
local paths = {%(paths)s}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("offset", counter * 7919)
end
function init(args)
  position = offset or 0
  wrk.headers["%(header)s"] = "%(value)s"
end
function request()
  position = position + 1
  return wrk.format("GET", paths[(position %% #paths) + 1])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, "write": %%d, ' ..
    '"status": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class WrkResult:
    """One wrk run: requests answered per second, errors of each kind, latency percentiles."""

    requests_per_second: float
    requests: int
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class TargetRun:
    """Everything measured on one target in one round."""

    rps: dict[str, WrkResult] = field(default_factory=dict)
    stress: WrkResult | None = None
    peak_rss: int = 0
    cache: dict[str, float] = field(default_factory=dict)
    costs: dict[str, CostTable] = field(default_factory=dict)


@dataclass(frozen=True)
class Credentials:
    """What the clients of the service targets hold: a client's key and an OAuth2 client."""

    client_key: str
    client_id: str
    client_secret: str

    def header(self, target_name: str, url: str) -> tuple[str, str]:
        """The header `target_name` sends (a token is asked of the running target itself)."""
        if target_name == "service-key":
            return "X-API-Key", self.client_key
        if target_name == "service-token":
            form = {"grant_type": "client_credentials", "client_id": self.client_id}
            form |= {"client_secret": self.client_secret, "scope": "read"}
            answer = httpx.post(f"{url}/token", data=form, timeout=30)
            if answer.status_code != 200:
                sys.exit(f"POST /token answered {answer.status_code}: {answer.text[:300]}")
            return "Authorization", f"Bearer {answer.json()['access_token']}"
        return "X-API-Key", API_KEY


class PeakRss:
    """Samples the resident memory of a process tree until stopped; keeps the peak of the sum."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(self.interval)


def load_data(source: Path, database_url: str, start: str | None, end: str | None, work: Path) -> None:
    """Run the job over `source` (days [start, end]) into the database, through a one-worker service."""
    days = ("--start", start, "--end", end) if start and end else ()
    with live_service(database_url, api_key=API_KEY) as service:
        command = job_command(service.url, work / "lake", *days, source=source)
        env = {**os.environ, "RETAIL_API_KEY": API_KEY}
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"loading the data failed (exit {done.returncode}):\n{done.stderr[-2000:]}")


def pick_ids(database: Path, count: int) -> dict[str, list[str]]:
    """Up to `count` customer ids and invoice numbers stored in the file, in a seeded random order."""
    with sqlite3.connect(database) as connection:
        customers = [row[0] for row in connection.execute("SELECT customer_id FROM customers ORDER BY 1")]
        invoices = [row[0] for row in connection.execute("SELECT invoice_no FROM invoices ORDER BY 1")]
        lines = connection.execute("SELECT count(*) FROM invoice_lines").fetchone()[0]
    if not customers or not invoices:
        sys.exit("the loaded database holds no customers or no invoices")
    shuffle = random.Random(16)
    shuffle.shuffle(customers)
    shuffle.shuffle(invoices)
    print(f"data: {len(customers):,} customers, {len(invoices):,} invoices, {lines:,} lines", flush=True)
    return {"customer": customers[:count], "invoice": invoices[:count]}


def write_lua(path: Path, paths: list[str], header: tuple[str, str] = ("X-API-Key", API_KEY)) -> Path:
    """A wrk script rotating over `paths`, sending the header `header` (name, value)."""
    quoted = ",".join(json.dumps(p) for p in paths)
    path.write_text(WRK_LUA % {"paths": quoted, "header": header[0], "value": header[1]})
    return path


def _retail_api(database_url: str, *args: str) -> str:
    """`retail-api <args>` against the database; its stdout."""
    command = [str(Path(sys.executable).with_name("retail-api")), *args]
    env = {**os.environ, "DATABASE_URL": database_url}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"retail-api {' '.join(args[:2])} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


def create_credentials(database_url: str) -> Credentials:
    """A read-scoped client key and a read-scoped OAuth2 client, made with the `retail-api` command."""
    name = f"bench-{secrets.token_hex(4)}"
    key = _retail_api(database_url, "keys", "create", "--name", name, "--scopes", "read")
    client = _retail_api(database_url, "clients", "create", "--name", name, "--scopes", "read")
    fields = dict(line.split("=", 1) for line in client.strip().splitlines() if "=" in line)
    return Credentials(key.strip().splitlines()[-1], fields["client_id"], fields["client_secret"])


def run_wrk(url: str, script: Path, *, threads: int, connections: int, seconds: int) -> WrkResult:
    """wrk against `url` with `script`; its figures as a WrkResult."""
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    match = re.search(r"^WRK_JSON (.*)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        sys.exit(f"wrk failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    figures = json.loads(match.group(1))
    errors = {name: figures[name] for name in ("connect", "read", "write", "timeout", "status")}
    return WrkResult(
        requests_per_second=figures["requests"] / (figures["duration_us"] / 1e6),
        requests=figures["requests"],
        errors=errors,
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
    )


@contextmanager
def bare_app(database_url: str, work: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`benchmarks/bare_app.py` under one uvicorn worker; yields its URL and process."""
    port = free_port()
    log = (work / "bare.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.bare_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
        ],
        cwd=ROOT,
        env={**os.environ, "BARE_DATABASE_URL": database_url},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/docs", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    sys.exit("the bare app did not start; see " + str(work / "bare.log"))
                time.sleep(0.1)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:  # a loaded machine: do not let the teardown fail the run
            process.kill()
            process.wait(10)
        log.close()


@contextmanager
def target(name: str, database_url: str, work: Path, redis_url: str) -> Iterator[tuple[str, int]]:
    """Start one target; yields its base URL and the pid to sample memory of."""
    if name == "bare":
        with bare_app(database_url, work) as (url, process):
            yield url, process.pid
        return
    env = {"LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "MIGRATE_ON_START": "false", **TOKEN_SETTINGS}
    # Counted per identity as deployed (the stack: 200/second), high enough never to refuse here: in
    # memory for the uncached targets, in Redis for `cached` (REDIS_URL serves both).
    env["RATE_LIMIT"] = "1000000/minute"
    if name == "cached":
        env |= {"REDIS_URL": redis_url, "CACHE_KEY_PREFIX": f"retail-bench:{secrets.token_hex(6)}"}
    # `floor`: the service's stack with reads that cost nothing (benchmarks/floor_app.py); `floor-redis`:
    # the same with one Redis round trip per read, the least a cache hit costs.
    app = "benchmarks.floor_app:app" if name.startswith("floor") else "api.main:app"
    if name == "floor-redis":
        env["FLOOR_REDIS_URL"] = redis_url
    with live_service(database_url, api_key=API_KEY, extra_env=env, app=app) as service:
        yield service.url, service.process.pid


def cache_counters(url: str) -> dict[str, float]:
    """The cache's hit, miss and error counters from `/metrics`, summed over resources."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    counters: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^retail_cache_(\w+)_total(?:\{[^}]*\})? ([0-9.e+]+)$", line)
        if match:
            counters[match.group(1)] = counters.get(match.group(1), 0.0) + float(match.group(2))
    return counters


def warm(url: str, ids: dict[str, list[str]]) -> None:
    """One GET of every path the wrk scripts ask for, each answered 200."""
    with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=30) as client:
        for resource_name, values in ids.items():
            for value in values:
                response = client.get(PATHS[resource_name].format(value))
                if response.status_code != 200:
                    sys.exit(f"warming {response.url} answered {response.status_code}")


def write_scripts(work: Path, ids: dict[str, list[str]], header: tuple[str, str]) -> dict[str, Path]:
    """A wrk script per path, and `mixed` over both, each sending `header`."""
    lists = {name: [PATHS[name].format(v) for v in values] for name, values in ids.items()}
    lists["mixed"] = [
        PATHS[name].format(v)
        for pair in zip(ids["customer"], ids["invoice"], strict=False)
        for name, v in zip(PATHS, pair, strict=True)
    ]
    tag = secrets.token_hex(3)
    return {name: write_lua(work / f"{name}-{tag}.lua", paths, header) for name, paths in lists.items()}


def profile(
    url: str, pid: int, scripts: dict[str, Path], work: Path, args: argparse.Namespace
) -> dict[str, CostTable]:
    """Per path: wrk while py-spy samples the worker; the samples per cost."""
    tables: dict[str, CostTable] = {}
    for resource_name in PATHS:
        out = work / f"profile-{resource_name}-{secrets.token_hex(3)}.txt"
        spy = record(pid, args.duration, out)
        result = run_wrk(
            url, scripts[resource_name], threads=args.threads, connections=args.connections,
            seconds=args.duration,
        )  # fmt: skip
        _, err = spy.communicate(timeout=args.duration + 60)
        if spy.returncode != 0 or not out.exists():
            sys.exit(f"py-spy failed (exit {spy.returncode}): {err.decode(errors='replace')[-500:]}")
        samples = attribute(out.read_text().splitlines())
        tables[resource_name] = CostTable(samples, result.requests, result.requests_per_second)
    return tables


def measure(
    name: str,
    database_url: str,
    work: Path,
    ids: dict[str, list[str]],
    credentials: Credentials,
    args: argparse.Namespace,
    *,
    profiled: bool = False,
) -> TargetRun:
    """One round on one target: wrk per path, then the 64-connection run (then the profile)."""
    run = TargetRun()
    with target(name, database_url, work, args.redis_url) as (url, pid), PeakRss(pid) as rss:
        warm(url, ids)  # every target: same page cache, same connection pool state; the cache fills
        scripts = write_scripts(work, ids, credentials.header(name, url))
        before = cache_counters(url) if name != "bare" else {}
        for resource_name in PATHS:
            run.rps[resource_name] = run_wrk(
                url,
                scripts[resource_name],
                threads=args.threads,
                connections=args.connections,
                seconds=args.duration,
            )
        run.stress = run_wrk(
            url,
            scripts["mixed"],
            threads=args.threads,
            connections=args.stress_connections,
            seconds=args.duration,
        )
        if name != "bare":
            after = cache_counters(url)
            run.cache = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
        if profiled:
            run.costs = profile(url, pid, scripts, work, args)
    run.peak_rss = rss.peak
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DATASET if DATASET.exists() else SAMPLE)
    parser.add_argument("--start", default="2010-12-01", help="first invoice day loaded (with --end)")
    parser.add_argument("--end", default="2010-12-31", help="last invoice day loaded")
    parser.add_argument("--ids", type=int, default=1000, help="distinct ids per path the scripts rotate over")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--stress-connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over all targets; medians are printed")
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help="comma-separated subset of " + ",".join(TARGETS)
    )
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument(
        "--keep", type=Path, help="keep the loaded SQLite file here (and reuse it if present)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also sample the worker with py-spy: the cost of each part"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    if args.profile:
        py_spy()
    targets = [name for name in args.targets.split(",") if name]
    if unknown := set(targets) - set(TARGETS):
        sys.exit(f"unknown targets: {sorted(unknown)}")

    started = time.perf_counter()
    load_before = os.getloadavg()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="retail-throughput-") as tmp:
        work = Path(tmp)
        database = args.keep or work / "retail.db"
        database_url = f"sqlite:///{database.resolve()}"
        if args.keep is None or not database.exists():
            print(f"loading {args.source.name} days {args.start}..{args.end} into {database} ...", flush=True)
            load_started = time.perf_counter()
            load_data(args.source, database_url, args.start, args.end, work)
            print(f"  loaded in {time.perf_counter() - load_started:.1f} s", flush=True)
        ids = pick_ids(database, args.ids)
        credentials = create_credentials(database_url)

        runs: dict[str, list[TargetRun]] = {name: [] for name in targets}
        for round_no in range(1, args.rounds + 1):
            for name in targets:
                # Profiled in the last round, after its timed runs: py-spy does not slow those.
                profiled = args.profile and round_no == args.rounds and name in PROFILED
                run = measure(name, database_url, work, ids, credentials, args, profiled=profiled)
                runs[name].append(run)
                assert run.stress is not None
                print(
                    f"round {round_no} {name:>11}: "
                    + ", ".join(
                        f"{path} {result.requests_per_second:,.0f} req/s (p99 {result.p99_ms:.1f} ms)"
                        for path, result in run.rps.items()
                    )
                    + f"; {args.stress_connections} conns {run.stress.requests_per_second:,.0f} req/s, "
                    f"errors {run.stress.error_count} {run.stress.errors}"
                    + (f"; cache {run.cache}" if run.cache else ""),
                    flush=True,
                )
    report(runs, args, started, load_before)


def print_costs(runs: dict[str, list[TargetRun]]) -> None:
    """µs per request of each cost, per profiled target and path (`--profile`)."""
    columns = [(name, path, run.costs[path]) for name in PROFILED for run in runs.get(name, []) for path in
               run.costs]  # fmt: skip
    if not columns:
        return
    print()
    print("what a read pays for, µs per request (py-spy, GIL held; benchmarks/request_costs.py):")
    print(f"{'cost':>23} " + " ".join(f"{name + ' ' + path:>22}" for name, path, _ in columns))
    tables = [table.microseconds() for _, _, table in columns]
    for cost in COSTS:
        print(f"{cost:>23} " + " ".join(f"{table[cost]:>19,.0f} µs" for table in tables))
    print(f"{'GIL held':>23} " + " ".join(f"{sum(table.values()):>19,.0f} µs" for table in tables))
    walls = [table.wall_microseconds() for _, _, table in columns]
    idle = [wall - sum(table.values()) for wall, table in zip(walls, tables, strict=True)]
    print(f"{'no GIL':>23} " + " ".join(f"{value:>19,.0f} µs" for value in idle))
    print(f"{'wall':>23} " + " ".join(f"{wall:>19,.0f} µs" for wall in walls))
    samples = " ".join(f"{sum(t.samples.values()):>22,}" for _, _, t in columns)
    print(f"{'samples':>23} {samples}")


def report(
    runs: dict[str, list[TargetRun]],
    args: argparse.Namespace,
    started: float,
    load_before: tuple[float, float, float],
) -> None:
    """The medians, ratios against the goals, errors, wall time and memory."""

    def median_rps(name: str, path: str) -> float:
        return statistics.median(run.rps[path].requests_per_second for run in runs[name])

    print()
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, {args.ids} ids per path, "
        f"median of {args.rounds} round(s):"
    )
    print(
        f"{'target':>11} "
        + " ".join(f"{'GET ' + PATHS[p].format('…'):>18}" for p in PATHS)
        + f" {'errors@' + str(args.stress_connections):>10} {'peak RSS':>9}"
    )
    for name, target_runs in runs.items():
        errors = sum(run.stress.error_count for run in target_runs if run.stress)
        peak = max(run.peak_rss for run in target_runs)
        print(
            f"{name:>11} "
            + " ".join(f"{median_rps(name, p):>12,.0f} req/s" for p in PATHS)
            + f" {errors:>10} {peak / 2**20:>5.0f} MiB"
        )
    if "bare" in runs:
        print()
        for name in ("service", "service-key", "service-token", "cached", "floor", "floor-redis"):
            if name not in runs:
                continue
            for path in PATHS:
                ratio = median_rps(name, path) / median_rps("bare", path)
                if name in GOALS:
                    verdict = f"(goal ≥ {GOALS[name]}x: {'yes' if ratio >= GOALS[name] else 'NO'})"
                elif name == "floor":
                    verdict = "(reads that cost nothing: no read of the service can pass it)"
                elif name == "floor-redis":
                    verdict = "(reads that cost one Redis round trip: no cache hit can pass it)"
                else:
                    verdict = "(the bootstrap key: no goal of its own)"
                print(f"{name} ÷ lean route, GET {PATHS[path].format('…')}: {ratio:.2f}x {verdict}")
    print_costs(runs)
    for name in ("service", "cached"):
        for run in runs.get(name, []):
            if run.cache:
                print(
                    f"{name} cache during the runs: "
                    + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(run.cache.items()))
                )
    all_errors = sum(run.stress.error_count for rs in runs.values() for run in rs if run.stress)
    print(
        f"errors at {args.stress_connections} connections, all targets: {all_errors} (goal 0: "
        f"{'yes' if all_errors == 0 else 'NO'})"
    )
    load_after = os.getloadavg()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(
        f"wall time: {time.perf_counter() - started:.1f} s; peak memory: this process {own / 2**20:.0f} MiB, "
        f"largest child process {children / 2**20:.0f} MiB, targets' process trees as above"
    )


if __name__ == "__main__":
    main()
