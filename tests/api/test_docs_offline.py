"""The interactive docs render with no network but loopback: their assets come from the service itself."""

from __future__ import annotations

import re

import httpx

from tests.support.browser import render
from tests.support.service import live_service

_METHODS = {"get", "put", "post", "patch", "delete", "head", "options"}


def _operations(document: dict) -> set[str]:
    return {
        operation["operationId"]
        for path in document["paths"].values()
        for method, operation in path.items()
        if method in _METHODS
    }


def test_swagger_ui_and_redoc_show_every_operation_offline(sqlite_url: str) -> None:
    with live_service(sqlite_url) as service:
        document = httpx.get(f"{service.url}/openapi.json").json()
        operations = _operations(document)
        for page in ("/docs", "/redoc"):
            html = httpx.get(f"{service.url}{page}").text
            assert "cdn." not in html and "fonts.googleapis" not in html, page
        swagger = render(f"{service.url}/docs")
        redoc = render(f"{service.url}/redoc")

    # Swagger UI: one summary per operation, each naming its path.
    paths = re.findall(r'<span class="opblock-summary-path" data-path="([^"]*)"', swagger.dom)
    assert len(paths) == len(operations) > 30
    assert set(paths) == set(document["paths"])
    # ReDoc: a section per operation, by its id.
    sections = set(re.findall(r'data-section-id="operation/([^"]*)"', redoc.dom))
    assert sections == operations
    # Nothing failed to load or run (a CDN link would, offline: "SwaggerUIBundle is not defined").
    for page in (swagger, redoc):
        assert not [line for line in page.console if re.search(r"Failed to load|net::ERR|Uncaught", line)]
