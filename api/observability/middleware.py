"""One pure ASGI middleware for every HTTP request: request id, rate limit, metrics, access log.

Pure ASGI (not BaseHTTPMiddleware): no extra task or body copy per request, a few microseconds in all.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from typing import Any

from starlette.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.observability.logging import accept_request_id, api_key_id, request_id_var
from api.observability.metrics import UNMATCHED, Metrics
from api.observability.ratelimit import Limiter

access_log = logging.getLogger("api.access")

#: Never rate limited: probes and scrapes must get through whatever clients do.
UNLIMITED_PATHS = frozenset({"/health", "/metrics"})


class ObservabilityMiddleware:
    """Tags the request with an id (kept from `X-Request-ID` when well formed, echoed in the response),
    refuses it with 429 when its API key is over the rate limit, then counts and logs it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        limiter: Limiter | None,
        api_key: str,
        routes: Any,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.limiter = limiter
        self.api_key = api_key.encode()
        # Only the service's own key is limited; its hash names it in Redis and in logs.
        self.limit_key = hashlib.sha256(self.api_key).hexdigest()[:32]
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming_id: str | None = None
        key: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming_id = value.decode("latin-1")
            elif name == b"x-api-key":
                key = value
        request_id = accept_request_id(incoming_id)
        token = request_id_var.set(request_id)
        id_header = (b"x-request-id", request_id.encode())
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            if (
                self.limiter is not None
                and key is not None
                and scope["path"] not in UNLIMITED_PATHS
                and secrets.compare_digest(key, self.api_key)
            ):
                decision = await self.limiter.hit(self.limit_key)
                if not decision.allowed:
                    self.metrics.rate_limited.labels(self._route(scope)).inc()
                    await self._refuse(scope, receive, send_with_id, decision.retry_after)
                    return
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = self._route(scope)
            method = scope["method"]
            self.metrics.observe(method, route, status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                self._log_access(scope, method, route, status, seconds, key)
            request_id_var.reset(token)

    @staticmethod
    def _log_access(
        scope: Scope, method: str, route: str, status: int, seconds: float, key: bytes | None
    ) -> None:
        client = scope.get("client")
        access_log.info(
            "%s %s %d %.1f ms",
            method,
            scope["path"],
            status,
            seconds * 1000,
            extra={
                "method": method,
                "route": route,
                "path": scope["path"],
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "client": f"{client[0]}:{client[1]}" if client else None,
                "api_key_id": api_key_id(key) if key is not None else None,
            },
        )

    def _route(self, scope: Scope) -> str:
        """The route template that answered (or would answer) the request; `unmatched` if none."""
        route = scope.get("route")
        if route is None:
            # Refused before routing (429, 413): find the route the router would have picked.
            for candidate in self.routes:
                match, _ = candidate.matches(scope)
                if match is not Match.NONE:
                    route = candidate
                    break
        path = getattr(route, "path", None)
        return path if isinstance(path, str) and path else UNMATCHED

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, retry_after: int) -> None:
        assert self.limiter is not None
        limit = self.limiter.rate.text
        response = JSONResponse(
            {
                "detail": f"rate limit of {limit} per API key exceeded; retry after {retry_after} s",
                "limit": limit,
                "retry_after": retry_after,
            },
            status_code=429,
            headers={"Retry-After": str(retry_after)},
        )
        await response(scope, receive, send)
