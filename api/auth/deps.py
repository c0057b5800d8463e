"""Who is calling, and may they: the one dependency every data operation declares.

A request carries `X-API-Key` (the service's bootstrap `API_KEY`, or a client's `rk_...` key) or
`Authorization: Bearer <access token>` from `POST /token`. `authorize` turns it into an `Identity` with
scopes, counts it against the rate limit, and checks the scopes the operation declares with
`Security(authorize, scopes=[...])` (FastAPI's `SecurityScopes`): 401 when the credentials are missing,
wrong, expired or revoked, 403 when they are good but lack the scope.

Cost per request: the bootstrap key and the token's signature are checked in memory; a client's key
or token then costs one lookup by a unique index (its prefix, or the client id), with no cache, so a
revocation or rotation holds from the very next request, in every worker. On SQLite the lookup runs on
the event loop (`api.core.db.reads_on_the_event_loop`); on PostgreSQL in the thread pool.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Request, Security, params, status
from fastapi.openapi.models import OAuthFlowClientCredentials, OAuthFlows
from fastapi.security import APIKeyHeader, OAuth2, SecurityScopes
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from api.auth import keys, security
from api.auth.schemas import AuthErrorPublic
from api.cache import count_and_look_up
from api.core.config import Settings
from api.core.db import reads_on_the_event_loop
from api.observability.metrics import Metrics
from api.observability.ratelimit import Limiter

REALM = "retail-api"
TOKEN_URL = "/token"
#: The 401 of a request without credentials or with a wrong API key (the text clients already know).
INVALID_API_KEY = "missing or invalid X-API-Key header"

#: `X-API-Key`: the service's bootstrap API_KEY, or a client's key from `retail-api keys create`.
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The service's API_KEY")


class OAuth2ClientCredentials(OAuth2):
    """The bearer token of OAuth2's client-credentials flow, declared with its token URL and scopes."""

    def __init__(self, *, token_url: str, scopes: dict[str, str], description: str) -> None:
        flows = OAuthFlows(clientCredentials=OAuthFlowClientCredentials(tokenUrl=token_url, scopes=scopes))
        super().__init__(flows=flows, description=description, auto_error=False)

    async def __call__(self, request: Request) -> str | None:
        """The token of `Authorization: Bearer <token>`; None without one (an API key may be given)."""
        scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
        if scheme.lower() != "bearer" or not token:
            return None
        return token


oauth2_scheme = OAuth2ClientCredentials(
    token_url=TOKEN_URL,
    scopes=security.SCOPE_DESCRIPTIONS,
    description="`POST /token` with a client's id and secret (`retail-api clients create`)",
)


@dataclass(frozen=True)
class Identity:
    """Who sent the request: the bootstrap key, a client's API key, or an OAuth2 client's token."""

    kind: Literal["bootstrap", "key", "client"]
    name: str
    #: Every scope held, the included ones too (`write` holds `read`).
    scopes: frozenset[str]
    via: Literal["api_key", "bearer"]
    #: What the rate limit counts by: one counter per identity, however many workers answer it.
    rate_key: str

    @property
    def subject(self) -> str:
        """`bootstrap`, `key:<name>` or `client:<name>`: the identity in logs and answers."""
        return "bootstrap" if self.kind == "bootstrap" else f"{self.kind}:{self.name}"


class RateLimitExceeded(Exception):
    """The identity is over the rate limit (429, with `Retry-After`)."""

    def __init__(self, limit: str, retry_after: int) -> None:
        super().__init__(f"rate limit of {limit} per API key exceeded; retry after {retry_after} s")
        self.limit = limit
        self.retry_after = retry_after


class Authenticator:
    """The app's credentials check: built once per app (`app.state.authenticator`)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        limiter: Limiter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.bootstrap_key = settings.API_KEY.encode()
        # Named as before: its rate-limit counters and log id are unchanged.
        self.bootstrap = Identity(
            kind="bootstrap",
            name="bootstrap",
            scopes=security.granted([security.ADMIN]),
            via="api_key",
            rate_key=hashlib.sha256(self.bootstrap_key).hexdigest()[:32],
        )
        signing_key = settings.token_signing_key
        self.tokens = (
            None
            if signing_key is None
            else security.TokenSettings(
                signing_key=signing_key,
                issuer=settings.TOKEN_ISSUER,
                audience=settings.TOKEN_AUDIENCE,
                expire_seconds=settings.TOKEN_EXPIRE_SECONDS,
            )
        )
        self.engine = engine
        # The lookup by a unique index is a point read: on SQLite it runs on the event loop.
        self.reads_inline = reads_on_the_event_loop(engine)
        self.limiter = limiter
        self.metrics = metrics

    async def from_api_key(self, key: str) -> Identity:
        """The identity of an `X-API-Key`; 401 if it is no key in use."""
        # Bytes: compare_digest refuses non-ASCII str, and a header may carry any latin-1 byte.
        if hmac.compare_digest(key.encode(), self.bootstrap_key):
            return self.bootstrap
        prefix = security.api_key_prefix(key)
        if prefix is None:
            raise _unauthorized(INVALID_API_KEY, "APIKey")
        row = self._find_key(prefix) if self.reads_inline else await run_in_threadpool(self._find_key, prefix)
        if row is None or not security.api_key_matches(key, row.digest):
            raise _unauthorized(INVALID_API_KEY, "APIKey")
        return Identity(
            kind="key",
            name=row.name,
            scopes=security.granted(row.scopes.split()),
            via="api_key",
            rate_key=f"key:{row.name}",
        )

    async def from_bearer(self, token: str) -> Identity:
        """The identity of an access token; 401 (`invalid_token`) if forged, expired or revoked."""
        if self.tokens is None:
            raise _invalid_token("this service accepts no access tokens (TOKEN_SECRET is not set)")
        try:
            claims = security.verify_token(self.tokens, token)
        except security.InvalidToken as error:
            raise _invalid_token(str(error)) from None
        client = (
            self.find_client(claims.client_id)
            if self.reads_inline
            else await run_in_threadpool(self.find_client, claims.client_id)
        )
        if client is None or client.generation != claims.generation:
            raise _invalid_token("the access token's client was revoked or its secret rotated")
        # What the token was issued for, and never more than the client holds now.
        held = security.granted(claims.scopes) & security.granted(client.scopes.split())
        return Identity(
            kind="client", name=client.name, scopes=held, via="bearer", rate_key=f"client:{client.name}"
        )

    async def count(self, request: HTTPConnection, identity: Identity) -> None:
        """Count the request against the identity's rate limit; `RateLimitExceeded` when over it."""
        if self.limiter is None:
            return
        # A cached read's lookup goes in the same Redis round trip as its count, when it can.
        decision = await count_and_look_up(request, self.limiter, identity.rate_key)
        if decision is None:
            decision = await self.limiter.hit(identity.rate_key)
        if not decision.allowed:
            if self.metrics is not None:
                route = getattr(request.scope.get("route"), "path", None) or "unmatched"
                self.metrics.rate_limited.labels(route).inc()
            raise RateLimitExceeded(self.limiter.rate.text, decision.retry_after)

    def _find_key(self, prefix: str) -> keys.ActiveKey | None:
        with self.engine.connect() as connection:
            return keys.find_active_key(connection, prefix=prefix)

    def find_client(self, client_id: str) -> keys.ActiveClient | None:
        """The client in use with this id (blocking: call it from the thread pool)."""
        with self.engine.connect() as connection:
            return keys.find_active_client(connection, client_id=client_id)


def _unauthorized(detail: str, challenge: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": challenge})


def _invalid_token(description: str) -> HTTPException:
    challenge = f'Bearer realm="{REALM}", error="invalid_token", error_description="{description}"'
    return _unauthorized(f"invalid bearer token: {description}", challenge)


async def authorize(
    security_scopes: SecurityScopes,
    request: Request,
    api_key: Annotated[str | None, Security(api_key_header)],
    bearer: Annotated[str | None, Security(oauth2_scheme)],
) -> Identity:
    """The request's identity, if it holds every scope the operation declares (by default the scope of
    its method: `read` for GET and HEAD, `write` for the others)."""
    required = security_scopes.scopes or [security.scope_for_methods([request.method])]
    return await _identify(request, api_key, bearer, required)


async def authorize_connection(connection: HTTPConnection, scopes: Sequence[str]) -> Identity:
    """`authorize` for a connection that no route dependency checks (a WebSocket handshake): the same
    headers (`X-API-Key`, or `Authorization: Bearer`), rate limit and scope check; raises the same
    HTTPException (401, 403) or RateLimitExceeded."""
    scheme, token = get_authorization_scheme_param(connection.headers.get("Authorization"))
    bearer = token if scheme.lower() == "bearer" and token else None
    return await _identify(connection, connection.headers.get("X-API-Key"), bearer, scopes)


async def _identify(
    request: HTTPConnection, api_key: str | None, bearer: str | None, required: Sequence[str]
) -> Identity:
    authenticator: Authenticator = request.app.state.authenticator
    if api_key is not None:
        identity = await authenticator.from_api_key(api_key)
    elif bearer is not None:
        identity = await authenticator.from_bearer(bearer)
    else:
        raise _unauthorized(INVALID_API_KEY, f'APIKey, Bearer realm="{REALM}"')
    # For the access log (api.observability.middleware), whatever the answer.
    request.state.identity = identity
    await authenticator.count(request, identity)
    lacking = [scope for scope in required if scope not in identity.scopes]
    if lacking:
        scope = " ".join(required)
        headers = (
            {"WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope", scope="{scope}"'}
            if identity.via == "bearer"
            else None
        )
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"{identity.subject} lacks the {' and '.join(lacking)} scope this operation needs",
            headers=headers,
        )
    return identity


#: What a secured operation may answer besides its own codes, for the OpenAPI document.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": AuthErrorPublic,
        "description": "Missing, wrong, expired or revoked credentials (`WWW-Authenticate` says which)",
    },
    403: {"model": AuthErrorPublic, "description": "Valid credentials without the operation's scope"},
}


def requires(*scopes: str) -> params.Security:
    """The dependency of an operation that needs `scopes` rather than its method's scope."""
    return Security(authorize, scopes=list(scopes))


class SecuredRouter(APIRouter):
    """A router whose every operation requires credentials with the scope of its methods: `read` for
    GET and HEAD, `write` for POST, PUT, PATCH and DELETE. An operation that declares `requires(...)`
    in its dependencies gets those scopes instead. Its 401 and 403 are documented on each operation.
    """

    def add_api_route(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        dependencies: Sequence[params.Depends] | None = None,
        responses: dict[int | str, dict[str, Any]] | None = None,
        methods: set[str] | list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Add the route with its scope check (see the class)."""
        declared = list(dependencies or [])
        if not any(getattr(depends, "dependency", None) is authorize for depends in declared):
            declared.insert(0, requires(security.scope_for_methods(methods)))
        super().add_api_route(
            path,
            endpoint,
            dependencies=declared,
            responses={**AUTH_RESPONSES, **(responses or {})},
            methods=methods,
            **kwargs,
        )
