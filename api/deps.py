"""The dependencies route handlers declare, named once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Path, Request
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from api import models, schemas
from api.auth.deps import Identity
from api.auth.deps import SecuredRouter as SecuredRouter
from api.auth.deps import requires as requires
from api.core.config import Settings

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
    """`read(connection, **arguments)` on a pooled connection of its own (one transaction), as a call
    for the thread pool: `reading` without the ORM session, for the reads that need none."""

    def run() -> T:
        engine: Engine = request.app.state.engine
        connection: Connection
        with engine.connect() as connection:
            return read(connection, **arguments)

    return run


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


async def get_identity(request: Request) -> Identity:
    """The caller, as the operation's scope check found it (data routers are `SecuredRouter`s, which
    check the credentials and scope of every operation before its handler's parameters)."""
    identity: Identity = request.state.identity
    return identity


CurrentIdentity = Annotated[Identity, Depends(get_identity)]

# Path parameters, validated like the body fields they name: bad values are 422, never a database error.
CustomerIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=models.CUSTOMER_ID_LENGTH,
        pattern=schemas.CUSTOMER_ID_PATTERN,
        description="Any text without `/` or control characters, URL-encoded (`22ff32f22f`, `17850`)",
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
