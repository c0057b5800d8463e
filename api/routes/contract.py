"""What the resource routers share: the documented error answers, conditional-request headers, and
GET routes that answer HEAD too.

Every status code a route can answer is declared here once (see `errors`), so the OpenAPI document
lists exactly what the service sends (schemathesis holds the two to each other: tests/api/test_contract.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Response
from pydantic import BaseModel, WithJsonSchema

from api.core.merge_patch import MERGE_PATCH

_ERROR = {
    "type": "object",
    "properties": {"detail": {}},
    "required": ["detail"],
}
_ETAG_HEADER = {"ETag": {"description": "Strong tag of the body the GET sends", "schema": {"type": "string"}}}

#: The error answers by status code, with their meaning.
_DESCRIPTIONS: dict[int, str] = {
    304: "Not Modified: `If-None-Match` names the current ETag; no body",
    400: "Malformed request (an invalid Content-Length)",
    401: "Missing or invalid credentials",
    404: "Not found",
    406: "Not Acceptable: `Accept` admits none of the types offered (`offered` lists them)",
    409: "Conflicts with stored data",
    412: "Precondition Failed: `If-Match` / `If-None-Match` does not hold for the current state",
    413: "Request body over the service's limit",
    429: "Rate limit exceeded; `Retry-After` says when to retry",
    503: "The database is unavailable; retry later",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for the status codes `codes`."""
    documented: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"description": _DESCRIPTIONS[code]}
        if code == 304:
            entry["headers"] = _ETAG_HEADER
            entry["content"] = {}
        else:
            entry["content"] = {"application/json": {"schema": _ERROR}}
        if code == 429:
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        documented[code] = entry
    return documented


#: What any data route may answer besides its own: authentication, rate limit, body size, database.
DATA_ROUTE_ERRORS = errors(400, 401, 413, 429, 503)

# `If-Match` / `If-None-Match` are read as RFC 9110 §8.8.3 lists (`*`, `"tag"`, `W/"tag"`); a value that
# names no current tag, malformed ones included, simply does not match (412 for If-Match).
_ENTITY_TAGS_SCHEMA = {"type": "string", "examples": ['"5e0bfc6042da8bc6ab34a7de73fe36e0"']}

IfNoneMatch = Annotated[
    str | None,
    Header(description="An ETag (or `*`) from a previous GET: 304 when it is still current"),
    # Documented without the null that `None` would add: the header is absent or a tag list.
    WithJsonSchema(_ENTITY_TAGS_SCHEMA),
]
IfMatch = Annotated[
    str | None,
    Header(description="The ETag of the state the change is based on (or `*`): 412 when it is not current"),
    WithJsonSchema(_ENTITY_TAGS_SCHEMA),
]


def merge_patch_schema(replace: type[BaseModel], *, nullable: tuple[str, ...] = ()) -> dict[str, Any]:
    """The schema of a merge patch (RFC 7396) of a resource whose PUT body is `replace`: the same members,
    none required; null (which removes a member) only where the result stays valid (`nullable`, and
    members already optional)."""
    schema = replace.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    schema.pop("required", None)
    # What the whole resource must hold (a country or a customer) is checked on the patched result.
    schema.pop("anyOf", None)
    # The member naming the resource may only be null in a patch (removing what is not there).
    for name in schema.pop("not", {}).get("required", []):
        schema["properties"][name] = {"type": "null"}
    for name in nullable:
        schema["properties"][name] = {"anyOf": [schema["properties"][name], {"type": "null"}]}
    schema["description"] = "JSON Merge Patch (RFC 7396) of the resource"
    return schema


#: The merge-patch bodies' schemas by name, for the OpenAPI document's components (`with_patch_schemas`).
PATCH_SCHEMAS: dict[str, dict[str, Any]] = {}


def merge_patch_component(
    name: str, replace: type[BaseModel], *, nullable: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A reference to the merge-patch schema of `replace` (see `merge_patch_schema`), kept as the
    component `name`: one schema for both media types a patch is accepted as (inline, a generated
    client made one model per media type, of the same name, and warned of a duplicate)."""
    PATCH_SCHEMAS[name] = {**merge_patch_schema(replace, nullable=nullable), "title": name}
    return {"$ref": f"#/components/schemas/{name}"}


def with_patch_schemas(document: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI `document` with the merge-patch schemas among its components."""
    document.setdefault("components", {}).setdefault("schemas", {}).update(PATCH_SCHEMAS)
    return document


def merge_patch_body(schema: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` documenting a merge-patch request body (both media types it is accepted as)."""
    content = {"schema": schema, "example": example}
    return {
        "requestBody": {
            "required": True,
            "content": {MERGE_PATCH: content, "application/json": content},
        }
    }


#: `Accept`, which the negotiated reads read (documented on the responses, not as a parameter).
AcceptHeader = Annotated[str | None, Header(include_in_schema=False)]

#: The other representations a resource read offers besides JSON (`api.core.representation`).
NEGOTIATED_CONTENT: dict[str, Any] = {
    "text/csv": {
        "schema": {"type": "string"},
        "example": "customer_id,country\r\n17850,United Kingdom\r\n",
    },
    "application/xml": {
        "schema": {"type": "string"},
        "example": "<customer><customer_id>17850</customer_id><country>United Kingdom</country></customer>",
    },
}
_NEGOTIATED_HEADERS = {
    **_ETAG_HEADER,
    "Vary": {"description": "Accept: the representation follows it", "schema": {"type": "string"}},
}


def negotiated_ok(extra: dict[str, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries of a negotiated read: 200 in JSON, CSV or XML (by `Accept`, each with its
    own ETag), and 406 when `Accept` admits none of them."""
    ok = {"headers": _NEGOTIATED_HEADERS, "content": {**NEGOTIATED_CONTENT, **(extra or {})}}
    return {200: ok, **errors(406)}


def get_with_head(
    router: APIRouter,
    path: str,
    *,
    response_model: Any,
    responses: dict[int | str, dict[str, Any]],
    **kwargs: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated endpoint for GET `path` and for HEAD `path` (the GET's headers, its ETag
    and Content-Length included, without the body), both negotiating JSON, CSV or XML by `Accept`. The
    endpoint reads `request.method` to leave the body out (`api.core.representation.respond`)."""

    def register(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        ok = negotiated_ok(responses.get(200, {}).get("content"))
        router.add_api_route(
            path,
            endpoint,
            methods=["GET"],
            response_model=response_model,
            responses={**errors(304), **responses, **ok},
            **kwargs,
        )
        router.add_api_route(
            path,
            endpoint,
            methods=["HEAD"],
            name=f"head_{endpoint.__name__}",
            response_class=Response,
            response_model=None,
            summary=f"Headers of GET {path}",
            description="The headers GET would send (ETag, Content-Length), without the body.",
            responses={
                200: {"description": "The GET's headers", "headers": _NEGOTIATED_HEADERS},
                **errors(304, 406),
                **{
                    code: {"description": entry.get("description", "See GET")}
                    for code, entry in responses.items()
                    if code != 200
                },
            },
            **kwargs,
        )
        return endpoint

    return register


def add_head_route(router: APIRouter, path: str, endpoint: Callable[..., Any]) -> None:
    """Answer HEAD `path` with what `endpoint` (the GET's) would send, without the body: its status and
    headers, Content-Length included (for endpoints that do not build their answer with
    `api.core.etag.json_response`)."""

    @functools.wraps(endpoint)
    def head(*args: Any, **kwargs: Any) -> Response:
        answer = endpoint(*args, **kwargs)
        if isinstance(answer, Response):
            return Response(status_code=answer.status_code, headers=dict(answer.headers))
        body = answer.model_dump_json().encode() if isinstance(answer, BaseModel) else orjson.dumps(answer)
        return Response(headers={"Content-Length": str(len(body)), "Content-Type": "application/json"})

    router.add_api_route(
        path,
        head,
        methods=["HEAD"],
        name=f"head_{endpoint.__name__}",
        response_class=Response,
        response_model=None,
        summary=f"Headers of GET {path}",
        description="The headers GET would send (Content-Length), without the body.",
        responses={200: {"description": "The GET's headers"}},
    )
