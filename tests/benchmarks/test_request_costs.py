"""How `benchmarks/request_costs.py` gives py-spy's samples to costs."""

from __future__ import annotations

from benchmarks.request_costs import COSTS, CostTable, attribute, cost_of

SITE = "/work/.venv/lib/python3.11/site-packages"
STDLIB = "/usr/lib/python3.11"
PROJECT = "/work/main"


def frame(function: str, path: str, line: int = 1) -> str:
    """One frame as py-spy's raw format writes it."""
    return f"{function} ({path}:{line})"


LOOP = frame("run", f"{STDLIB}/asyncio/base_events.py")
UVICORN = frame("run_asgi", f"{SITE}/uvicorn/protocols/http/httptools_impl.py")
MIDDLEWARE = frame("__call__", f"{PROJECT}/api/observability/middleware.py")
WORKER = frame("run", f"{SITE}/anyio/_backends/_asyncio.py")
READ = frame("run", f"{PROJECT}/api/deps.py")


def test_the_innermost_project_frame_decides() -> None:
    # The key lookup's SQLAlchemy calls are authentication's, not the query's.
    lookup = [
        WORKER,
        frame("_find_key", f"{PROJECT}/api/auth/deps.py"),
        frame("find_active_key", f"{PROJECT}/api/auth/keys.py"),
        frame("execute", f"{SITE}/sqlalchemy/engine/base.py"),
    ]
    assert cost_of(lookup) == "authentication"
    # Counting the request is rate limiting, though `_identify` (authentication) called it.
    counted = [
        LOOP,
        UVICORN,
        MIDDLEWARE,
        frame("_identify", f"{PROJECT}/api/auth/deps.py"),
        frame("count", f"{PROJECT}/api/auth/deps.py"),
        frame("hit", f"{PROJECT}/api/observability/ratelimit.py"),
    ]
    assert cost_of(counted) == "rate limiting"
    # The document's encoding inside the read is serialization; the read's own statements the query.
    read = [WORKER, READ, frame("read_invoice_json", f"{PROJECT}/api/crud/invoices.py")]
    assert cost_of(read) == "query"
    assert cost_of([*read, frame("to_json", f"{PROJECT}/api/crud/invoices.py")]) == "serialization"


def test_library_frames_count_only_without_a_project_frame() -> None:
    observe = [LOOP, UVICORN, MIDDLEWARE, frame("inc", f"{SITE}/prometheus_client/metrics.py")]
    assert cost_of(observe) == "metrics"
    # The access log's JSON is the access log's, though the json module encodes it.
    log = [
        LOOP,
        UVICORN,
        MIDDLEWARE,
        frame("_log_access", f"{PROJECT}/api/observability/middleware.py"),
        frame("info", f"{STDLIB}/logging/__init__.py"),
        frame("dumps", f"{STDLIB}/json/__init__.py"),
    ]
    assert cost_of(log) == "access log"
    # Else the framework's part that runs the innermost frame.
    assert cost_of([LOOP, UVICORN, MIDDLEWARE]) == "uvicorn"
    assert cost_of([LOOP]) == "event loop, thread pool"
    solving = frame("solve_dependencies", f"{SITE}/fastapi/dependencies/utils.py")
    assert cost_of([LOOP, UVICORN, solving]) == "FastAPI"
    assert cost_of(["<not a frame>"]) == "other"


def test_py_spys_short_paths_and_qualified_names_are_understood() -> None:
    # As py-spy writes them: a library's import path, a method with its class, a closure with its outer.
    counted = [
        frame("Server.serve", "uvicorn/server.py"),
        frame("Authenticator.count", "api/auth/deps.py"),
        frame("MemoryLimiter.hit", "api/observability/ratelimit.py"),
    ]
    assert cost_of(counted[:2]) == "rate limiting"
    logged = [frame("ObservabilityMiddleware._log_access", "api/observability/middleware.py")]
    assert cost_of(logged) == "access log"
    assert cost_of([frame("Logger.info", "logging/__init__.py")]) == "access log"
    read = frame("reading_rows.<locals>.run", "api/deps.py")
    assert cost_of([frame("run_sync", "anyio/to_thread.py"), read]) == "query"
    assert cost_of([frame("Route.handle", "starlette/routing.py")]) == "Starlette"


def test_raw_lines_are_summed_per_cost_and_turned_into_microseconds() -> None:
    read = frame("read_customer_json", f"{PROJECT}/api/crud/customers.py")
    raw = [
        f"{LOOP};{UVICORN};{MIDDLEWARE} 60",
        f"{WORKER};{READ};{read} 30",
        f"{LOOP};{UVICORN};{frame('etag_of', f'{PROJECT}/api/core/etag.py')} 10",
        "",
        "garbage without a count",
    ]
    samples = attribute(raw)
    assert samples == {"uvicorn": 60, "query": 30, "ETag": 10}
    # 100 samples at 100 a second for 2,000 requests: 1 s of GIL time, 500 µs a request, shared as the
    # samples are; at 1,000 req/s the wall time is 1,000 µs a request.
    table = CostTable(samples, requests=2000, requests_per_second=1000.0, rate=100)
    costs = table.microseconds()
    assert list(costs) == list(COSTS)
    assert (costs["uvicorn"], costs["query"], costs["ETag"], costs["metrics"]) == (300.0, 150.0, 50.0, 0.0)
    assert table.wall_microseconds() == 1000.0


def test_redis_calls_belong_to_whoever_made_them() -> None:
    # The cache's script call is the cache's; the limiter's is rate limiting's, though both run in redis-py.
    lookup = [
        LOOP,
        frame("read_through", f"{PROJECT}/api/cache.py"),
        frame("get", f"{PROJECT}/api/cache.py"),
        frame("execute_command", f"{SITE}/redis/asyncio/client.py"),
    ]
    assert cost_of(lookup) == "cache"
    counted = [
        LOOP,
        frame("hit", f"{PROJECT}/api/observability/ratelimit.py"),
        frame("execute_command", f"{SITE}/redis/asyncio/client.py"),
    ]
    assert cost_of(counted) == "rate limiting"
    # A reply parsed outside the project's frames counts as the cache's (the limiter shares redis-py).
    parsed = [LOOP, frame("_read_response", f"{SITE}/redis/asyncio/connection.py")]
    assert cost_of(parsed) == "cache"
