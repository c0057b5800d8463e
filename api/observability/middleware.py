"""One pure ASGI middleware for every HTTP request: request id, metrics, access log.

Pure ASGI (not BaseHTTPMiddleware): no extra task or body copy per request, a few microseconds in all.
Rate limits are counted per identity by the scope check (api/auth/deps.py), once the caller is known.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.observability.logging import accept_request_id, api_key_id, request_id_var
from api.observability.metrics import UNMATCHED, Metrics

access_log = logging.getLogger("api.access")


class ObservabilityMiddleware:
    """Tags the request with an id (kept from `X-Request-ID` when well formed, echoed in the response),
    then counts and logs it, with the caller's identity when the request was authenticated."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, routes: Any) -> None:
        self.app = app
        self.metrics = metrics
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
                # Set by the scope check (api.auth.deps) on the request's state, which is this dict.
                "identity": getattr(scope.get("state", {}).get("identity"), "subject", None),
            },
        )

    def _route(self, scope: Scope) -> str:
        """The route template that answered (or would answer) the request; `unmatched` if none."""
        route = scope.get("route")
        if route is None:
            # Refused before routing (413): find the route the router would have picked.
            for candidate in self.routes:
                match, _ = candidate.matches(scope)
                if match is not Match.NONE:
                    route = candidate
                    break
        path = getattr(route, "path", None)
        return path if isinstance(path, str) and path else UNMATCHED
