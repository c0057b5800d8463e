"""Entity tags and conditional requests (RFC 9110 §8.8.3, §13), in one place.

A resource's ETag is the quoted hex digest of the exact body bytes its GET sends, so a cache that
stores a body can store its ETag with it (`etag_of(body)`), and a write can tell whether the client saw
the current state by serialising that state the way the GET does. Tags are strong: equal tags mean
byte-equal bodies.
"""

from __future__ import annotations

import hashlib

from starlette.responses import Response

from api.errors import PreconditionFailedError

JSON = "application/json"


def etag_of(body: bytes) -> str:
    """The strong ETag of a representation: `"<32 hex digits>"` (BLAKE2b-128 of the body bytes).

    BLAKE2b rather than SHA-256: as collision-resistant for this use, and cheaper on the hot GETs.
    """
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def _tags(header: str) -> list[str]:
    """The entity tags of an `If-Match` / `If-None-Match` list (`"a", W/"b"`), as written."""
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def none_match(if_none_match: str | None, current: str) -> bool:
    """Whether `If-None-Match` lets the request through: False when it names `current` (weak comparison,
    as RFC 9110 §13.1.2 says for GET and HEAD) or is `*`; True when absent."""
    if if_none_match is None:
        return True
    return not any(tag == "*" or tag.removeprefix("W/") == current for tag in _tags(if_none_match))


def require_match(if_match: str | None, current: str | None) -> None:
    """Raise PreconditionFailedError unless `If-Match` holds for the resource whose current ETag is
    `current` (None: the resource does not exist). Strong comparison (RFC 9110 §13.1.1): a weak tag never
    matches; `*` matches any existing representation; an absent header always holds."""
    if if_match is None:
        return
    tags = _tags(if_match)
    if current is not None and ("*" in tags or current in tags):
        return
    raise PreconditionFailedError(
        "If-Match does not match the current ETag"
        + (f" {current}: read the resource again" if current else ": the resource does not exist")
    )


def require_none_match(if_none_match: str | None, current: str | None) -> None:
    """Raise PreconditionFailedError when a write's `If-None-Match` names the current state (`*`: the
    resource exists at all), so `PUT` with `If-None-Match: *` only ever creates."""
    if if_none_match is not None and current is not None and not none_match(if_none_match, current):
        raise PreconditionFailedError("If-None-Match: the resource exists")


def json_response(
    body: bytes,
    *,
    method: str = "GET",
    if_none_match: str | None = None,
    status_code: int = 200,
    etag: str | None = None,
) -> Response:
    """A JSON answer carrying its ETag: 304 without a body when `If-None-Match` names it, and for HEAD
    the headers of the GET (its Content-Length included) without the body."""
    tag = etag or etag_of(body)
    if status_code == 200 and not none_match(if_none_match, tag):
        return Response(status_code=304, headers={"ETag": tag})
    if method == "HEAD":
        headers = {"ETag": tag, "Content-Length": str(len(body))}
        return Response(status_code=status_code, media_type=JSON, headers=headers)
    return Response(content=body, status_code=status_code, media_type=JSON, headers={"ETag": tag})
