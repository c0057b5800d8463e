"""ETags on every resource GET, 304 for If-None-Match, 412 for a stale If-Match, and HEAD."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.core.etag import etag_of, none_match, require_match
from api.errors import PreconditionFailedError
from tests.api.helpers import invoice

RESOURCES = [
    "/customer/17850",
    "/customer/17850/invoice",
    "/invoice/536365",
    "/invoice/536365/85123A/",
    "/stockcode/85123A",
]


@pytest.fixture
def stored(client: TestClient) -> None:
    assert (
        client.post("/customer", json={"customer_id": "17850", "country": "United Kingdom"}).status_code
        == 201
    )
    assert client.post("/customer/17850/invoice", json=invoice("536365")).status_code == 201


@pytest.mark.usefixtures("stored")
@pytest.mark.parametrize("path", RESOURCES)
def test_every_resource_get_sends_the_etag_of_its_body(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    # The tag is of the exact bytes sent: a cache can store body and tag together.
    assert response.headers["ETag"] == etag_of(response.content)
    assert response.headers["ETag"].startswith('"') and not response.headers["ETag"].startswith("W/")


@pytest.mark.usefixtures("stored")
@pytest.mark.parametrize("path", RESOURCES)
def test_if_none_match_with_the_current_tag_is_304_without_a_body(client: TestClient, path: str) -> None:
    tag = client.get(path).headers["ETag"]
    for header in (tag, f"W/{tag}", f'"other", {tag}', "*"):
        response = client.get(path, headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["ETag"] == tag
    assert client.get(path, headers={"If-None-Match": '"other"'}).status_code == 200


@pytest.mark.usefixtures("stored")
@pytest.mark.parametrize("path", RESOURCES)
def test_head_sends_the_get_headers_without_the_body(client: TestClient, path: str) -> None:
    get = client.get(path)
    head = client.head(path)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["ETag"] == get.headers["ETag"]
    assert head.headers["Content-Length"] == str(len(get.content))
    assert head.headers["Content-Type"] == "application/json"
    assert client.head(path, headers={"If-None-Match": get.headers["ETag"]}).status_code == 304


def test_head_of_a_missing_resource_is_404(client: TestClient) -> None:
    assert client.head("/customer/404").status_code == 404
    assert client.head("/invoice/404").status_code == 404


def test_a_change_changes_the_tag(client: TestClient, stored: None) -> None:
    before = client.get("/customer/17850").headers["ETag"]
    assert client.patch("/customer/17850", json={"country": "France"}).status_code == 200
    after = client.get("/customer/17850")
    assert after.headers["ETag"] != before
    assert client.get("/customer/17850", headers={"If-None-Match": before}).status_code == 200
    # The write answers the new state with its tag.
    assert client.put("/customer/17850", json={"country": "Spain"}).headers["ETag"] == etag_of(
        b'{"customer_id":"17850","country":"Spain"}'
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/customer/17850", {"country": "France"}),
        ("PATCH", "/customer/17850", {"country": "France"}),
        ("DELETE", "/customer/17850", None),
        ("PUT", "/invoice/536365", {"invoice_date": "2010-12-01", "country": "France"}),
        ("PATCH", "/invoice/536365", {"country": "France"}),
        ("DELETE", "/invoice/536365", None),
        ("DELETE", "/invoice/536365/85123A/", None),
    ],
)
def test_a_stale_if_match_is_412_and_changes_nothing(
    client: TestClient, method: str, path: str, body: dict[str, object] | None
) -> None:
    """Two clients read the same state; the second one's write, based on what it read, must not
    silently overwrite the first one's."""
    assert (
        client.post("/customer", json={"customer_id": "17850", "country": "United Kingdom"}).status_code
        == 201
    )
    if path.startswith("/invoice"):
        assert client.post("/invoice", json=invoice("536365")).status_code == 201
    read_path = path
    seen = client.get(read_path).headers["ETag"]
    # Another client changes the resource meanwhile.
    if path.startswith("/customer"):
        assert client.patch("/customer/17850", json={"country": "EIRE"}).status_code == 200
    elif path.endswith("85123A/"):
        assert (
            client.post("/invoice/536365/85123A/", json={"quantity": 1, "unit_price": "1"}).status_code == 201
        )
    else:
        assert client.patch("/invoice/536365", json={"country": "EIRE"}).status_code == 200
    current = client.get(read_path)

    stale = client.request(method, path, json=body, headers={"If-Match": seen})
    assert stale.status_code == 412, stale.text
    assert "If-Match" in stale.json()["detail"]
    assert client.get(read_path).content == current.content  # nothing changed

    fresh = client.request(method, path, json=body, headers={"If-Match": current.headers["ETag"]})
    assert fresh.status_code in (200, 204), fresh.text


def test_if_match_star_needs_an_existing_resource(client: TestClient) -> None:
    assert client.put("/customer/1", json={"country": "X"}, headers={"If-Match": "*"}).status_code == 412
    assert client.get("/customer/1").status_code == 404
    assert client.put("/customer/1", json={"country": "X"}).status_code == 201
    assert client.put("/customer/1", json={"country": "Y"}, headers={"If-Match": "*"}).status_code == 200
    # If-None-Match: * makes PUT create-only.
    assert client.put("/customer/1", json={"country": "Z"}, headers={"If-None-Match": "*"}).status_code == 412
    assert client.get("/customer/1").json()["country"] == "Y"


def test_a_weak_tag_never_matches_if_match() -> None:
    tag = etag_of(b"{}")
    require_match(tag, tag)
    require_match(f'"x", {tag}', tag)
    with pytest.raises(PreconditionFailedError):
        require_match(f"W/{tag}", tag)
    with pytest.raises(PreconditionFailedError):
        require_match("*", None)
    assert none_match(None, tag) and not none_match(f"W/{tag}", tag)
