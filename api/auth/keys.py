"""The clients' credentials in the database: API keys and OAuth2 clients, created, listed, rotated,
revoked, and found per request.

A revoked credential keeps its row (who had access, and until when) and frees its name for a new one.
Secrets are returned once, by the function that makes them, and stored only as a digest or a hash.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.auth import security
from api.core.db import begin_write
from api.errors import ConflictError, InvalidInputError, NotFoundError
from api.models import CREDENTIAL_NAME_LENGTH, ApiKey, OAuthClient

_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{CREDENTIAL_NAME_LENGTH - 1}}}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def check_name(name: str) -> str:
    """`name` if it is a credential name: letters, digits, `.`, `_`, `-`, up to 64, not starting with
    punctuation; `InvalidInputError` otherwise."""
    if not _NAME.fullmatch(name):
        raise InvalidInputError(
            f"{name!r} is not a name: use up to {CREDENTIAL_NAME_LENGTH} letters, digits, '.', '_' or '-'",
            loc=("name",),
        )
    return name


# --- API keys


def create_key(session: Session, *, name: str, scopes: tuple[str, ...]) -> tuple[ApiKey, str]:
    """Store a new key named `name`; returns it and the key itself, which is not stored."""
    check_name(name)
    begin_write(session)
    if _active_key(session, name) is not None:
        raise ConflictError(f"an API key named {name!r} exists; rotate or revoke it, or choose another name")
    made = security.new_api_key()
    row = ApiKey(
        name=name,
        prefix=made.prefix,
        digest=made.digest,
        scopes=" ".join(scopes),
        created_at=_now(),
        rotated_at=None,
        revoked_at=None,
    )
    session.add(row)
    _commit(session, f"an API key named {name!r} was created concurrently")
    return row, made.key


def list_keys(session: Session, *, include_revoked: bool = False) -> list[ApiKey]:
    """The keys in use (and the revoked ones if asked), by name, then newest first."""
    query = select(ApiKey).order_by(ApiKey.name, ApiKey.created_at.desc(), ApiKey.id.desc())
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query))


def rotate_key(session: Session, *, name: str) -> tuple[ApiKey, str]:
    """Give the key named `name` a new secret (and prefix); the old key stops working at once."""
    begin_write(session)
    row = _require_key(session, name)
    made = security.new_api_key()
    row.prefix, row.digest, row.rotated_at = made.prefix, made.digest, _now()
    _commit(session, f"the API key {name!r} was changed concurrently")
    return row, made.key


def revoke_key(session: Session, *, name: str) -> ApiKey:
    """Revoke the key named `name`: from the next request on it is refused."""
    begin_write(session)
    row = _require_key(session, name)
    row.revoked_at = _now()
    session.commit()
    return row


@dataclass(frozen=True)
class ActiveKey:
    """What a request's check needs of a key in use."""

    name: str
    digest: str
    scopes: str


# Per-request lookups are Core statements on a pooled connection: ~4x cheaper than an ORM session.
_KEY_BY_PREFIX = select(ApiKey.name, ApiKey.digest, ApiKey.scopes).where(
    ApiKey.prefix == bindparam("prefix"), ApiKey.revoked_at.is_(None)
)


def find_active_key(connection: Connection, *, prefix: str) -> ActiveKey | None:
    """The key in use with this public prefix: the one lookup an API-key request costs (unique index)."""
    row = connection.execute(_KEY_BY_PREFIX, {"prefix": prefix}).first()
    return None if row is None else ActiveKey(name=row.name, digest=row.digest, scopes=row.scopes)


def _active_key(session: Session, name: str) -> ApiKey | None:
    return session.scalars(
        select(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
    ).one_or_none()


def _require_key(session: Session, name: str) -> ApiKey:
    row = _active_key(session, name)
    if row is None:
        raise NotFoundError(f"no API key named {name!r} is in use (see `retail-api keys list`)")
    return row


# --- OAuth2 clients


def create_client(session: Session, *, name: str, scopes: tuple[str, ...]) -> tuple[OAuthClient, str]:
    """Store a new client named `name`; returns it (with its `client_id`) and its secret, not stored."""
    check_name(name)
    # Hashed before the write transaction begins: Argon2 takes a while, the write lock should not.
    secret = security.new_client_secret()
    secret_hash = security.hash_client_secret(secret)
    begin_write(session)
    if _active_client(session, name) is not None:
        raise ConflictError(f"an OAuth2 client named {name!r} exists; rotate or revoke it, or choose another")
    row = OAuthClient(
        name=name,
        client_id=security.new_client_id(),
        secret_hash=secret_hash,
        scopes=" ".join(scopes),
        generation=1,
        created_at=_now(),
        rotated_at=None,
        revoked_at=None,
    )
    session.add(row)
    _commit(session, f"an OAuth2 client named {name!r} was created concurrently")
    return row, secret


def list_clients(session: Session, *, include_revoked: bool = False) -> list[OAuthClient]:
    """The clients in use (and the revoked ones if asked), by name, then newest first."""
    query = select(OAuthClient).order_by(
        OAuthClient.name, OAuthClient.created_at.desc(), OAuthClient.id.desc()
    )
    if not include_revoked:
        query = query.where(OAuthClient.revoked_at.is_(None))
    return list(session.scalars(query))


def rotate_client(session: Session, *, name: str) -> tuple[OAuthClient, str]:
    """A new secret for the client named `name`; the old secret and every token issued so far stop
    working at once (the client id stays)."""
    secret = security.new_client_secret()
    secret_hash = security.hash_client_secret(secret)
    begin_write(session)
    row = _require_client(session, name)
    row.secret_hash, row.generation, row.rotated_at = secret_hash, row.generation + 1, _now()
    _commit(session, f"the OAuth2 client {name!r} was changed concurrently")
    return row, secret


def revoke_client(session: Session, *, name: str) -> OAuthClient:
    """Revoke the client named `name`: no new tokens, and its tokens are refused from the next request."""
    begin_write(session)
    row = _require_client(session, name)
    row.revoked_at = _now()
    session.commit()
    return row


@dataclass(frozen=True)
class ActiveClient:
    """What a token's issue or check needs of a client in use."""

    name: str
    client_id: str
    secret_hash: str
    scopes: str
    generation: int


_CLIENT_BY_ID = select(
    OAuthClient.name,
    OAuthClient.client_id,
    OAuthClient.secret_hash,
    OAuthClient.scopes,
    OAuthClient.generation,
).where(OAuthClient.client_id == bindparam("client_id"), OAuthClient.revoked_at.is_(None))


def find_active_client(connection: Connection, *, client_id: str) -> ActiveClient | None:
    """The client in use with this id: the one lookup a bearer request costs (unique index)."""
    row = connection.execute(_CLIENT_BY_ID, {"client_id": client_id}).first()
    if row is None:
        return None
    return ActiveClient(
        name=row.name,
        client_id=row.client_id,
        secret_hash=row.secret_hash,
        scopes=row.scopes,
        generation=row.generation,
    )


def _active_client(session: Session, name: str) -> OAuthClient | None:
    return session.scalars(
        select(OAuthClient).where(OAuthClient.name == name, OAuthClient.revoked_at.is_(None))
    ).one_or_none()


def _require_client(session: Session, name: str) -> OAuthClient:
    row = _active_client(session, name)
    if row is None:
        raise NotFoundError(f"no OAuth2 client named {name!r} is in use (see `retail-api clients list`)")
    return row


def _commit(session: Session, conflict: str) -> None:
    """Commit; a unique index that refuses the row (a concurrent create) is a `ConflictError`."""
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ConflictError(conflict) from None
