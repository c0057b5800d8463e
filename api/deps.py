"""The dependencies route handlers declare, named once."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Path, Request, Security, status
from fastapi.security import APIKeyHeader
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from api import models, schemas
from api.core.config import Settings

#: Declared as a security scheme, so /docs offers an "Authorize" button and the schema shows it.
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The service's API_KEY")


T = TypeVar("T")


# The small dependencies below are coroutines on purpose: they never block, and FastAPI runs a plain
# `def` dependency in the thread pool, a thread hop (~50 µs of a 1 ms request on two cores) each.
async def get_settings(request: Request) -> Settings:
    """The settings of the app serving this request (each app built by `create_app` has its own)."""
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """A session for the request, closed (and rolled back if still open) when it is done."""
    with request.app.state.sessions() as session:
        yield session


def reading(request: Request, read: Callable[..., T], **arguments: Any) -> Callable[[], T]:
    """`read(session, **arguments)` in a session of its own, as a call for the thread pool: what a
    resource GET runs on a cache miss (`api.cache.read_through`)."""

    def run() -> T:
        with request.app.state.sessions() as session:
            return read(session, **arguments)

    return run


def reading_rows(request: Request, read: Callable[..., T], **arguments: Any) -> Callable[[], T]:
    """`read(connection, **arguments)` on a connection of its own (one transaction), as a call for the
    thread pool: `reading` without the ORM session, for the reads that need none."""

    def run() -> T:
        engine: Engine = request.app.state.engine
        with engine.connect() as connection:
            return read(connection, **arguments)

    return run


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


async def require_api_key(settings: SettingsDep, key: Annotated[str | None, Security(api_key_header)]) -> str:
    """The request's `X-API-Key`, if it is the service's key; 401 otherwise."""
    # Bytes, because compare_digest refuses non-ASCII str and a header may carry any latin-1 byte.
    if key is None or not secrets.compare_digest(key.encode(), settings.API_KEY.encode()):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid X-API-Key header",
            headers={"WWW-Authenticate": "APIKey"},
        )
    return key


#: Every data router declares this, so no data endpoint can forget the key.
REQUIRE_API_KEY = [Depends(require_api_key)]

# Path parameters, validated like the body fields they name: bad values are 422, never a database error.
CustomerIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=models.CUSTOMER_ID_LENGTH,
        pattern=schemas.CUSTOMER_ID_PATTERN,
        examples=["17850"],
    ),
]
InvoiceNoPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=models.INVOICE_NO_LENGTH,
        pattern=schemas.INVOICE_NO_PATTERN,
        examples=["536365"],
    ),
]
StockCodePath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=models.STOCK_CODE_LENGTH,
        pattern=schemas.STOCK_CODE_PATTERN,
        description="URL-encoded: `BANK CHARGES` is `BANK%20CHARGES`",
        examples=["85123A"],
    ),
]
