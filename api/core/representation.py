"""Content negotiation of the resource reads: the representation `Accept` prefers among JSON (the
default), CSV and XML (RFC 9110 §12.5.1, §12.5.5), each with its own strong ETag and `Vary: Accept`.

Every representation is made from the JSON the read already has (cached or fresh), so the three always
say the same: money stays the exact decimal text ("2.550") in each. CSV gives one row per innermost
record (an invoice's lines, a page's invoices' lines, a stock code's descriptions), with the fields of
what holds it repeated on each row and nested objects' fields as `customer.url`; XML mirrors the JSON,
a list's items named by its singular (`lines` → `line`) and null as `nil="true"`.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from starlette.responses import Response

from api.core import etag
from api.errors import NotAcceptableError

JSON = "application/json"
CSV = "text/csv"
XML = "application/xml"
#: What the resource reads offer, in the order that breaks ties (JSON first: the default).
OFFERED: tuple[str, ...] = (JSON, CSV, XML)
#: What a response in each type says it is.
_CONTENT_TYPES = {JSON: JSON, CSV: "text/csv; charset=utf-8", XML: "application/xml; charset=utf-8"}
_QUALITY = re.compile(r"^q=(0(\.\d{0,3})?|1(\.0{0,3})?)$")
_ANYTHING = frozenset({"*/*", "application/json"})
# Characters XML 1.0 cannot hold at all; none passes the service's validation, but a read must never fail.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _ranges(accept: str) -> list[tuple[str, float]] | None:
    """(media range, quality) of each member of `accept`; None when the header cannot be parsed."""
    ranges = []
    for member in accept.split(","):
        if not member.strip():
            continue
        media_range, *parameters = (piece.strip().lower() for piece in member.split(";"))
        kind, slash, subtype = media_range.partition("/")
        if not (slash and kind and subtype) or (kind == "*" and subtype != "*"):
            return None
        quality = 1.0
        for parameter in parameters:
            if parameter.startswith("q="):
                if not _QUALITY.match(parameter.replace(" ", "")):
                    return None
                quality = float(parameter.replace(" ", "")[2:])
        ranges.append((media_range, quality))
    return ranges


def choose(accept: str | None, offered: Sequence[str] = OFFERED) -> str:
    """The type of `offered` that `accept` prefers: for each, the quality of the most specific range
    that matches it (`text/csv` over `text/*` over `*/*`); the highest quality wins, ties go to the
    earlier offered. No `Accept`, or one that cannot be parsed, accepts anything (the first offered).
    NotAcceptableError (406) when every offered type has quality 0 or matches no range."""
    if not accept or accept in _ANYTHING:  # the usual request: no parsing
        return offered[0]
    ranges = _ranges(accept)
    if not ranges:  # malformed, or no range at all
        return offered[0]
    best, best_quality = None, 0.0
    for media_type in offered:
        kind = media_type.split("/")[0]
        matching = [
            (specificity, quality)
            for media_range, quality in ranges
            if (specificity := _specificity(media_range, media_type, kind)) is not None
        ]
        if matching:
            quality = max(matching)[1]
            if quality > best_quality:
                best, best_quality = media_type, quality
    if best is None:
        raise NotAcceptableError(offered)
    return best


def _specificity(media_range: str, media_type: str, kind: str) -> int | None:
    if media_range == media_type:
        return 2
    if media_range == f"{kind}/*":
        return 1
    if media_range == "*/*":
        return 0
    return None


def respond(
    json_body: bytes,
    media_type: str,
    *,
    root: str,
    method: str = "GET",
    if_none_match: str | None = None,
    json_etag: str | None = None,
    rows: Callable[[Any], list[dict[str, Any]]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The read's answer in `media_type`, made from its JSON: with its own ETag (304 when
    `If-None-Match` names it), `Vary: Accept`, and for HEAD the headers without the body. `root` names
    the XML document's element; `rows` replaces the generic CSV rows (`csv_rows`) where the JSON's shape
    calls for others."""
    if media_type == JSON:
        body, tag = json_body, json_etag or etag.etag_of(json_body)
    else:
        document = orjson.loads(json_body)
        body = to_csv((rows or csv_rows)(document)) if media_type == CSV else to_xml(root, document)
        tag = etag.etag_of(body)
    answer_headers = {"ETag": tag, "Vary": "Accept", **(headers or {})}
    if not etag.none_match(if_none_match, tag):
        return Response(status_code=304, headers=answer_headers)
    content_type = _CONTENT_TYPES[media_type]
    if method == "HEAD":
        return Response(
            headers={**answer_headers, "Content-Length": str(len(body)), "Content-Type": content_type}
        )
    return Response(content=body, headers={**answer_headers, "Content-Type": content_type})


def csv_rows(document: Any) -> list[dict[str, Any]]:
    """One row per innermost record of `document`: a list's items in turn; of an object, its scalar
    fields (a nested object's as `name.field`), repeated on each row of its first list (a list of
    scalars gives a row per value, in a column named by the list's singular)."""
    if isinstance(document, list):
        return [row for item in document for row in csv_rows(item)]
    if not isinstance(document, dict):
        return [{"value": document}]
    fields: dict[str, Any] = {}
    lists: list[tuple[str, list[Any]]] = []
    for name, value in document.items():
        if isinstance(value, dict):
            fields.update({f"{name}.{key}": inner for key, inner in _flat(value).items()})
        elif isinstance(value, list):
            lists.append((name, value))
        else:
            fields[name] = value
    if not lists or not lists[0][1]:
        return [fields]
    name, items = lists[0]
    if isinstance(items[0], dict):
        return [{**fields, **row} for row in csv_rows(items)]
    return [{**fields, _singular(name): item} for item in items]


def _flat(document: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in document.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{key}": inner for key, inner in _flat(value).items()})
        else:
            flat[name] = value
    return flat


def to_csv(rows: Sequence[dict[str, Any]]) -> bytes:
    """`rows` as CSV (RFC 4180: CRLF, quoted where needed), the columns in order of first appearance;
    null is an empty cell."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\r\n", extrasaction="ignore")
    if columns:
        writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return out.getvalue().encode("utf-8")


def to_xml(root: str, document: Any) -> bytes:
    """`document` as an XML document whose element is `root`."""
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n']
    _element(parts, root, document)
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def _element(parts: list[str], name: str, value: Any) -> None:
    tag = name if _XML_NAME.match(name) else "item"
    if value is None:
        parts.append(f'<{tag} nil="true"/>')
    elif isinstance(value, dict):
        parts.append(f"<{tag}>")
        for key, inner in value.items():
            _element(parts, key, inner)
        parts.append(f"</{tag}>")
    elif isinstance(value, list):
        parts.append(f"<{tag}>")
        for item in value:
            _element(parts, _singular(tag), item)
        parts.append(f"</{tag}>")
    else:
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        parts.append(f"<{tag}>{_escape(text)}</{tag}>")


_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _escape(text: str) -> str:
    text = _NOT_XML.sub("\ufffd", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _singular(name: str) -> str:
    return name[:-1] if name.endswith("s") and len(name) > 1 else "item"
