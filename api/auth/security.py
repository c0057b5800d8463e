"""The service's credentials, made and checked with kept libraries: scopes, API keys, client secrets
(Argon2 through pwdlib) and access tokens (HS256 JWTs through PyJWT).

An API key is checked on every request, so it is a random 256-bit secret compared by its SHA-256: a slow
password hash there would cap the service's throughput, and a key this long needs none. A client secret
is checked only at `POST /token`, once per token, so it gets Argon2 like a password would.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from api.models import API_KEY_PREFIX_LENGTH

# --- Scopes

READ, WRITE, ADMIN = "read", "write", "admin"
#: Each scope and the scopes it includes: admin ⊇ write ⊇ read.
IMPLIED: dict[str, frozenset[str]] = {
    READ: frozenset({READ}),
    WRITE: frozenset({READ, WRITE}),
    ADMIN: frozenset({READ, WRITE, ADMIN}),
}
SCOPE_DESCRIPTIONS = {
    READ: "Read customers, invoices, lines and stock codes (GET, HEAD)",
    WRITE: "Create and change them (POST, PUT, PATCH, DELETE); includes read",
    ADMIN: "Everything, including what may come for managing the service; includes write",
}
#: Methods that only read: they need `read`; every other method needs `write`.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ScopeError(ValueError):
    """A scope list that names an unknown scope, or none."""


def parse_scopes(text: str, *, separator: str | None = None) -> tuple[str, ...]:
    """The scopes of `"read write"` (OAuth2's form) or, with `separator=","`, of `"read,write"`."""
    names = [name.strip() for name in text.split(separator)] if text.strip() else []
    names = [name for name in names if name]
    unknown = sorted(set(names) - IMPLIED.keys())
    if unknown:
        raise ScopeError(f"unknown scope {', '.join(unknown)}; the scopes are read, write and admin")
    if not names:
        raise ScopeError("no scope given; the scopes are read, write and admin")
    return tuple(dict.fromkeys(names))  # in the given order, once each


def granted(scopes: Iterable[str]) -> frozenset[str]:
    """Every scope that `scopes` include (`write` grants `read` too); unknown names grant nothing."""
    result: frozenset[str] = frozenset()
    for scope in scopes:
        result |= IMPLIED.get(scope, frozenset())
    return result


def scope_for_methods(methods: Iterable[str] | None) -> str:
    """The scope an operation with these HTTP methods needs: `read` if all only read, else `write`."""
    return READ if set(methods or {"GET"}) <= READ_METHODS else WRITE


# --- API keys: rk_<prefix>_<secret>

API_KEY_PREFIX = "rk_"
_API_KEY = re.compile(rf"rk_([0-9a-f]{{{API_KEY_PREFIX_LENGTH}}})_[A-Za-z0-9_-]{{43}}")


@dataclass(frozen=True)
class NewApiKey:
    """A key just made: `key` is shown once, `prefix` and `digest` are what is stored."""

    key: str
    prefix: str
    digest: str


def new_api_key() -> NewApiKey:
    """A fresh key: a 48-bit public prefix to find it by, and a 256-bit secret."""
    prefix = secrets.token_hex(API_KEY_PREFIX_LENGTH // 2)
    key = f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    return NewApiKey(key=key, prefix=prefix, digest=api_key_digest(key))


def api_key_prefix(key: str) -> str | None:
    """The public prefix of a well-formed key; None for anything else (no lookup is worth doing)."""
    match = _API_KEY.fullmatch(key)
    return match.group(1) if match else None


def api_key_digest(key: str) -> str:
    """Hex SHA-256 of the key, as stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_matches(key: str, digest: str) -> bool:
    """Whether `key` is the key stored as `digest`, in constant time."""
    return hmac.compare_digest(api_key_digest(key).encode(), digest.encode())


# --- OAuth2 client secrets: Argon2id (pwdlib's parameters)

_password_hash = PasswordHash((Argon2Hasher(),))


@functools.cache
def _dummy_hash() -> str:
    """Checked against when the client id is unknown, so an unknown id costs as long as a wrong secret."""
    return _password_hash.hash(secrets.token_urlsafe(16))


_CLIENT_ID = re.compile(r"rc_[0-9a-f]{24}")


def new_client_id() -> str:
    """A public client id, `rc_` and 24 hex digits."""
    return f"rc_{secrets.token_hex(12)}"


def is_client_id(text: str) -> bool:
    """Whether `text` has the form of a client id."""
    return _CLIENT_ID.fullmatch(text) is not None


def new_client_secret() -> str:
    """A 256-bit client secret."""
    return secrets.token_urlsafe(32)


def hash_client_secret(secret: str) -> str:
    """The Argon2id hash (PHC string) to store."""
    return _password_hash.hash(secret)


def client_secret_matches(secret: str, secret_hash: str | None) -> bool:
    """Whether `secret` is the one hashed as `secret_hash`; with None, spends the same time and is False."""
    if secret_hash is None:
        _password_hash.verify(secret, _dummy_hash())
        return False
    return _password_hash.verify(secret, secret_hash)


# --- Access tokens

ALGORITHM = "HS256"
_REQUIRED_CLAIMS = ["iss", "aud", "sub", "scope", "iat", "exp", "jti", "gen"]


@dataclass(frozen=True)
class TokenSettings:
    """How tokens are signed and what they say about their issuer."""

    signing_key: str
    issuer: str
    audience: str
    expire_seconds: int


@dataclass(frozen=True)
class AccessToken:
    """The verified claims of a token that matter here."""

    client_id: str
    scopes: tuple[str, ...]
    generation: int
    token_id: str


def issue_token(
    config: TokenSettings,
    *,
    client_id: str,
    scopes: Iterable[str],
    generation: int,
    now: dt.datetime | None = None,
) -> str:
    """A signed access token for the client, valid for `config.expire_seconds` from `now`."""
    issued = now or dt.datetime.now(dt.UTC)
    claims = {
        "iss": config.issuer,
        "aud": config.audience,
        "sub": client_id,
        "scope": " ".join(scopes),
        "iat": issued,
        "exp": issued + dt.timedelta(seconds=config.expire_seconds),
        "jti": uuid.uuid4().hex,
        # The client's generation when issued: a rotation or revocation ends the token (api.auth.deps).
        "gen": generation,
    }
    import jwt  # here, not at the top: see verify_token

    return jwt.encode(claims, config.signing_key, algorithm=ALGORITHM)


class InvalidToken(Exception):
    """A token that is not ours, was altered, is malformed or has expired; the text says which."""


def verify_token(config: TokenSettings, token: str) -> AccessToken:
    """The claims of a token this service signed and that has not expired; `InvalidToken` otherwise."""
    # Imported on the first token, not with the service: PyJWT loads `cryptography` (~10 MiB in each
    # worker) and most traffic, the job's included, carries API keys only.
    import jwt

    try:
        claims = jwt.decode(
            token,
            config.signing_key,
            algorithms=[ALGORITHM],  # one algorithm: never "none", never one the token picks
            audience=config.audience,
            issuer=config.issuer,
            options={"require": _REQUIRED_CLAIMS},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("the access token has expired") from None
    except jwt.InvalidTokenError:
        raise InvalidToken("the access token is invalid") from None
    scope, generation = claims["scope"], claims["gen"]
    if not isinstance(scope, str) or not isinstance(generation, int) or not isinstance(claims["sub"], str):
        raise InvalidToken("the access token is invalid")
    return AccessToken(
        client_id=claims["sub"],
        scopes=tuple(scope.split()),
        generation=generation,
        token_id=str(claims["jti"]),
    )
