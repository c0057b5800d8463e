"""The FastAPI application: `uvicorn api.main:app` or `fastapi run api/main.py`."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import arrow_pages
from api.auth import token
from api.auth.deps import Authenticator, RateLimitExceeded
from api.cache import make_cache
from api.core.config import Settings
from api.core.db import make_engine, make_session_factory, migrate, reads_on_the_event_loop
from api.core.memory import limit_heap_retention, release_free_heap
from api.errors import (
    ConflictError,
    InvalidBodyError,
    InvalidInputError,
    NotAcceptableError,
    NotFoundError,
    PreconditionFailedError,
)
from api.events import relay
from api.observability.logging import configure_logging
from api.observability.metrics import Metrics, metrics_endpoint
from api.observability.middleware import ObservabilityMiddleware
from api.observability.ratelimit import make_limiter
from api.routes import bulk, changes, customers, docs, health, invoices, stockcodes
from api.routes.contract import with_patch_schemas
from retail_contract.wire import ARROW_STREAM

logger = logging.getLogger(__name__)

#: Longest input echoed back in a 422 error; longer ones are left out of the response.
MAX_ECHOED_INPUT = 200


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413: by Content-Length, and while streaming."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > self.max_bytes:
                    await self._refuse(send, declared)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPException from body reading; its handler answers 413.
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, self._detail())
            return message

        await self.app(scope, limited_receive, send)

    def _detail(self) -> str:
        return f"request body over the limit of {self.max_bytes} bytes"

    async def _refuse(self, send: Send, declared: int) -> None:
        if declared < 0:
            response = JSONResponse({"detail": "invalid Content-Length"}, status_code=400)
        else:
            response = JSONResponse({"detail": self._detail()}, status_code=413)
        await response({"type": "http"}, _no_receive, send)


class BulkWriteLimit:
    """At most `max_in_flight` bulk writes per worker process at once; later ones wait before their body
    is read.

    A bulk body of 20,000 lines takes ~50 MB of Python objects once parsed and validated, so the number
    parsed at once, not the number of clients, must bound a worker's memory. A waiting request has not
    read its body yet: it costs a socket buffer, not memory. Writes contend for the same two cores and
    the same tables anyway, so more at once would not finish sooner.
    """

    def __init__(self, app: ASGIApp, *, max_in_flight: int, paths: frozenset[str]) -> None:
        self.app = app
        self.paths = paths
        self.slots = asyncio.Semaphore(max_in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        async with self.slots:
            await self.app(scope, receive, send)


class ReleaseHeapAfterBulk:
    """After each request that moves many rows (a bulk write or compare, an Arrow page), the heap's
    free pages go back to the system (`release_free_heap`, ~2 ms). Without it a worker kept what those
    bodies had used: over a 10x-data run each worker grew from 190 to 295 MiB."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accept = dict(scope.get("headers") or ()).get(b"accept", b"")
        heavy = scope["path"].startswith("/bulk/") or ARROW_STREAM.encode() in accept
        try:
            await self.app(scope, receive, send)
        finally:
            if heavy:
                release_free_heap()


async def _no_receive() -> Message:  # pragma: no cover - a plain response never reads the request
    return {"type": "http.disconnect"}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Apply pending migrations before serving; release the connection pool at shutdown."""
    settings: Settings = app.state.settings
    if settings.MIGRATE_ON_START:
        await run_in_threadpool(migrate, app.state.engine, wait_seconds=settings.DB_WAIT_SECONDS)
    # Arrow's kernels initialise on first use (~0.2 s): pay it here, not in the first read-back request.
    await run_in_threadpool(arrow_pages.warm_up)
    # The outbox relay thread, when RABBITMQ_URL is set (and RELAY_IN_SERVICE); stopped before the pool.
    app.state.relay = relay.start_in_service(settings, app.state.sessions)
    try:
        yield
    finally:
        if app.state.relay is not None:
            await run_in_threadpool(app.state.relay.stop)
    app.state.engine.dispose()


def _json_safe(value: Any) -> tuple[bool, Any]:
    """Whether `value` can be echoed in an error body, and how.

    Small scalars only: a large input is left out, and so are values JSON cannot carry (NaN, which
    Python's JSON parser accepts) or UTF-8 cannot encode (lone surrogates from `"\\ud800"`).
    """
    if value is None or isinstance(value, bool):
        return True, value
    if isinstance(value, float):
        return math.isfinite(value), value
    if isinstance(value, int):
        return len(str(value)) <= MAX_ECHOED_INPUT, value
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return False, None
        return len(value) <= MAX_ECHOED_INPUT, value
    return False, None


def _validation_errors(errors: Any) -> list[dict[str, Any]]:
    """FastAPI's error list (type, loc, msg), with only small, JSON-safe inputs and context echoed."""
    cleaned = []
    for error in errors:
        item: dict[str, Any] = {"type": error["type"], "loc": list(error["loc"]), "msg": error["msg"]}
        echo, value = _json_safe(error.get("input"))
        if echo:
            item["input"] = value
        context = {}
        for key, raw in (error.get("ctx") or {}).items():
            # Context may hold an exception object; its text is what a client can use.
            echo, value = _json_safe(raw if isinstance(raw, str | int | float | bool | None) else str(raw))
            if echo:
                context[key] = value
        if context:
            item["ctx"] = context
        cleaned.append(item)
    return cleaned


#: The order `Allow` lists methods in.
_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(routes: Any, path: str) -> list[str]:
    """Every method some route answers at `path`: a path's methods are spread over several routes."""
    methods: set[str] = set()
    for route in routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and getattr(route, "methods", None) and regex.match(path):
            methods.update(route.methods)
    return sorted(methods, key=lambda method: (*_METHOD_ORDER, method).index(method))


def _add_exception_handlers(app: FastAPI) -> None:
    """One response shape per error; bodies never carry tracebacks or SQL."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            # Starlette names only the methods of the first route matching the path (RFC 9110 §15.5.6
            # wants all of them).
            allowed = _allowed_methods(request.app.router.routes, request.scope["path"])
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _validation_errors(exc.errors())})

    @app.exception_handler(InvalidInputError)
    async def _invalid_input(_request: Request, exc: InvalidInputError) -> JSONResponse:
        error = {"type": exc.error_type, "loc": list(exc.loc), "msg": str(exc)}
        return JSONResponse(status_code=exc.status_code, content={"detail": [error]})

    @app.exception_handler(InvalidBodyError)
    async def _invalid_body(_request: Request, exc: InvalidBodyError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _validation_errors(exc.errors)})

    @app.exception_handler(PreconditionFailedError)
    async def _precondition_failed(_request: Request, exc: PreconditionFailedError) -> JSONResponse:
        return JSONResponse(status_code=412, content={"detail": str(exc)})

    @app.exception_handler(NotAcceptableError)
    async def _not_acceptable(_request: Request, exc: NotAcceptableError) -> JSONResponse:
        return JSONResponse(status_code=406, content={"detail": str(exc), "offered": exc.offered})

    @app.exception_handler(NotFoundError)
    async def _not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(ConflictError)
    async def _conflict(_request: Request, exc: ConflictError) -> JSONResponse:
        content: dict[str, Any] = {"detail": str(exc)}
        if exc.invoice_nos:
            content["invoice_nos"] = exc.invoice_nos
        if exc.invoice_count is not None:
            content["invoice_count"] = exc.invoice_count
        return JSONResponse(status_code=409, content=content)

    @app.exception_handler(RateLimitExceeded)
    async def _rate_limited(_request: Request, exc: RateLimitExceeded) -> JSONResponse:
        return JSONResponse(
            status_code=429,
            content={"detail": str(exc), "limit": exc.limit, "retry_after": exc.retry_after},
            headers={"Retry-After": str(exc.retry_after)},
        )

    @app.exception_handler(IntegrityError)
    async def _integrity(_request: Request, exc: IntegrityError) -> JSONResponse:
        # A concurrent request stored the same key first.
        logger.info("integrity error answered with 409: %s", exc.orig)
        return JSONResponse(status_code=409, content={"detail": "conflicts with data stored concurrently"})

    @app.exception_handler(DataError)
    async def _data_error(_request: Request, exc: DataError) -> JSONResponse:
        logger.warning("database refused a value: %s", exc.orig)
        return JSONResponse(status_code=422, content={"detail": "a value cannot be stored"})

    @app.exception_handler(SQLAlchemyError)
    async def _database_error(_request: Request, _exc: SQLAlchemyError) -> JSONResponse:
        logger.exception("database error answered with 503")
        return JSONResponse(status_code=503, content={"detail": "the database is unavailable, retry later"})

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, _exc: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return JSONResponse(status_code=500, content={"detail": "internal server error"})


def operation_id(route: APIRoute) -> str:
    """`customers-read_customer`: the route's first tag and its name, as the FastAPI full-stack template
    names operations (a generated client's function is then `customers_read_customer`, not FastAPI's
    default `read_customer_customer__customer_id__get`)."""
    tag = str(route.tags[0]) if route.tags else "service"
    return f"{tag.replace(' ', '-')}-{route.name}"


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service for `settings` (default: read from the environment and `.env`)."""
    settings = settings or Settings()
    limit_heap_retention()  # before the worker threads start allocating
    app = FastAPI(
        title="Online Retail API",
        version="1.0.0",
        summary="Customers, invoices and invoice lines of the UCI Online Retail data set.",
        lifespan=lifespan,
        # Served by api.routes.docs with their assets from the service itself, not from a CDN.
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    # Connecting is lazy: building the app touches no database.
    app.state.engine = make_engine(settings.DATABASE_URL)
    app.state.sessions = make_session_factory(app.state.engine)
    app.state.reads_inline = reads_on_the_event_loop(app.state.engine)
    app.add_middleware(
        BulkWriteLimit,
        max_in_flight=settings.MAX_BULK_WRITES_IN_FLIGHT,
        paths=frozenset({"/bulk/invoices", "/bulk/customers"}),
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.MAX_BODY_BYTES)
    app.add_middleware(ReleaseHeapAfterBulk)
    _add_observability(app, settings)
    # The credentials check of every data operation (api/auth/deps.py), with the per-identity rate limit.
    app.state.authenticator = Authenticator(
        settings, app.state.engine, limiter=app.state.limiter, metrics=app.state.metrics
    )
    _add_exception_handlers(app)
    routers = (
        health.router,
        token.router,
        customers.router,
        invoices.router,
        stockcodes.router,
        bulk.router,
        changes.router,
        docs.router,
    )
    for router in routers:
        app.include_router(router)
    docs.mount_assets(app)
    build_document = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_patch_schemas(build_document())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to amend the document
    return app


def _add_observability(app: FastAPI, settings: Settings) -> None:
    """JSON logs, request ids, the rate limiter (counted by api.auth.deps) and `/metrics` (see
    docs/design.md, "Metrics, logs ...")."""
    configure_logging(log_format=settings.LOG_FORMAT, level=settings.LOG_LEVEL)
    app.state.metrics = Metrics(app.state.engine, app.state.sessions)
    app.state.limiter = make_limiter(
        settings.RATE_LIMIT, settings.REDIS_URL, prefix=settings.REDIS_KEY_PREFIX
    )
    app.state.cache = make_cache(
        settings.REDIS_URL,
        prefix=settings.CACHE_KEY_PREFIX,
        ttl_seconds=settings.CACHE_TTL_SECONDS,
        registry=app.state.metrics.own_registry,
    )
    # Added last, so it is the outermost: it also counts and logs the 413s of BodySizeLimit.
    app.add_middleware(ObservabilityMiddleware, metrics=app.state.metrics, routes=app.router.routes)
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)


app = create_app()
