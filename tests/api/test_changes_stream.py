"""GET /changes/stream: the change feed over a WebSocket, against a real uvicorn process (issue 28)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.support.service import LiveService, live_service


@pytest.fixture
def service(database_url: str) -> Iterator[LiveService]:
    with live_service(database_url) as running:
        yield running


def stream_url(service: LiveService, after: str) -> str:
    return f"ws://127.0.0.1:{service.port}/changes/stream?after={after}"


def receive(connection: ClientConnection, count: int) -> list[dict[str, Any]]:
    """The next `count` changes; fails if they do not come within 10 s each."""
    return [json.loads(connection.recv(timeout=10)) for _ in range(count)]


def post_customer(client: httpx.Client, customer_id: str) -> None:
    response = client.post("/customer", json={"customer_id": customer_id, "country": "France"})
    assert response.status_code == 201, response.text


def test_the_stream_sends_the_feed_then_each_new_change_and_resumes(service: LiveService) -> None:
    with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
        post_customer(client, "a")
        post_customer(client, "b")
        with connect(stream_url(service, "0"), additional_headers=service.headers) as connection:
            assert connection.response.status_code == 101
            first = receive(connection, 2)
            assert [(c["position"], c["kind"], c["id"]) for c in first] == [
                (1, "created", "a"),
                (2, "created", "b"),
            ]
            # A change committed while the stream is open arrives without asking.
            assert client.put("/customer/a", json={"country": "Spain"}).status_code == 200
            (live,) = receive(connection, 1)
            assert (live["position"], live["kind"], live["id"]) == (3, "replaced", "a")
            assert live["content"] == {"customer_id": "a", "country": "Spain"}
            # Same shape as a page of GET /changes.
            assert client.get("/changes").json()["changes"] == [*first, live]
        # Disconnected; a change meanwhile; resuming from the last position gives it, and only it.
        post_customer(client, "c")
        with connect(stream_url(service, "3"), additional_headers=service.headers) as connection:
            (resumed,) = receive(connection, 1)
            assert (resumed["position"], resumed["id"]) == (4, "c")
            with pytest.raises(TimeoutError):
                connection.recv(timeout=1.5)


@pytest.mark.parametrize(
    ("headers", "after", "status"),
    [
        ({}, "0", 401),
        ({"X-API-Key": "wrong"}, "0", 401),
        ({"Authorization": "Bearer not-a-token"}, "0", 401),
        (None, "7", 400),
        (None, "x", 422),
    ],
)
def test_a_refused_handshake_is_an_http_answer(
    service: LiveService, headers: dict[str, str] | None, after: str, status: int
) -> None:
    with (
        pytest.raises(InvalidStatus) as refused,
        connect(
            stream_url(service, after), additional_headers=service.headers if headers is None else headers
        ),
    ):
        pass
    assert refused.value.response.status_code == status
    if status in (400, 422):
        assert json.loads(refused.value.response.body)["detail"][0]["loc"] == ["query", "after"]
