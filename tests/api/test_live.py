"""The service as a real uvicorn process (and through `fastapi run`) on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.api.helpers import invoice, line
from tests.support.service import REPO_ROOT, free_port, live_service


def test_live_service_end_to_end(database_url: str) -> None:
    with live_service(database_url, extra_env={"MAX_BODY_BYTES": "200000"}) as service:
        with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
            assert client.get("/health").json() == {"status": "ok", "database": "ok"}
            assert httpx.get(f"{service.url}/customer/17850").status_code == 401
            assert client.get("/customer/17850", headers={"X-API-Key": "wrong"}).status_code == 401

            # Endpoints of record.
            assert (
                client.post("/customer", json={"customer_id": 17850, "country": "United Kingdom"}).status_code
                == 201
            )
            assert (
                client.post(
                    "/customer", json={"customer_id": "17850", "country": "United Kingdom"}
                ).status_code
                == 200
            )
            assert (
                client.post("/customer", json={"customer_id": "17850", "country": "France"}).status_code
                == 409
            )
            lines = [
                line("85123A", line_no=1),
                line("BANK CHARGES", line_no=2, unit_price="-11062.06", quantity=1),
            ]
            created = client.post("/customer/17850/invoice", json=invoice("A563185", lines=lines))
            assert created.status_code == 201
            assert created.json()["customer"] == {"url": "/customer/17850"}
            assert (
                client.post("/customer/17850/invoice", json=invoice("A563185", lines=lines)).status_code
                == 200
            )
            assert client.post("/customer/17850/invoice", json=invoice("A563185")).status_code == 409
            assert client.post("/customer/1/invoice", json=invoice("1")).status_code == 404
            added = client.post(
                "/invoice/A563185/BANK%20CHARGES/", json={"quantity": -1, "unit_price": "0.001"}
            )
            assert added.status_code == 201
            assert added.json()["line_no"] == 3
            assert [x["unit_price"] for x in client.get("/invoice/A563185/BANK%20CHARGES/").json()] == [
                "-11062.060",
                "0.001",
            ]
            assert client.get("/stockcode/BANK%20CHARGES").json()["line_count"] == 2
            assert client.get("/customer/17850/invoice").json() == {"id_A563185": "/invoice/A563185"}
            assert client.get("/invoice/nope").status_code == 404

            # Bulk write, replay, conflict, and paged read-back.
            batch = [
                invoice(str(536365 + n), invoice_date=f"2010-12-0{1 + n % 3}T08:26:00") for n in range(9)
            ]
            assert client.post("/bulk/invoices", json={"invoices": batch}).json() == {
                "created": 9,
                "unchanged": 0,
                "lines_created": 18,
            }
            assert client.post("/bulk/invoices", json={"invoices": batch}).json()["unchanged"] == 9
            batch[0]["country"] = "France"
            conflict = client.post("/bulk/invoices", json={"invoices": batch})
            assert conflict.status_code == 409
            assert conflict.json()["invoice_nos"] == ["536365"]
            seen: list[str] = []
            cursor = None
            while True:
                page = client.get(
                    "/invoices",
                    params={
                        "start": "2010-12-01",
                        "end": "2010-12-03",
                        "limit": 4,
                        **({"cursor": cursor} if cursor else {}),
                    },
                ).json()
                seen += [x["invoice_no"] for x in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert sorted(seen) == sorted(["A563185", *(x["invoice_no"] for x in batch)])
            assert client.get("/invoices", params={"cursor": "bogus"}).status_code == 422

            # The body limit, by Content-Length and while streaming.
            big = {"invoices": [invoice(str(n)) for n in range(1000)]}
            assert client.post("/bulk/invoices", json=big).status_code == 413
            streamed = client.post(
                "/bulk/invoices",
                content=(b" " * 10_000 for _ in range(30)),
                headers={"Content-Type": "application/json"},
            )
            assert streamed.status_code == 413

        # Committed data survives a restart and a kill.
        service.stop()
        service.start()
        assert httpx.get(f"{service.url}/invoice/A563185", headers=service.headers).status_code == 200
        service.kill()
        service.start()
        assert len(httpx.get(f"{service.url}/invoice/A563185", headers=service.headers).json()["lines"]) == 3


def test_concurrent_writers_on_two_worker_processes(database_url: str) -> None:
    # Two workers also migrate a fresh database at the same time on start.
    with live_service(database_url, workers=2) as service:
        deadline = time.monotonic() + 30
        while service.log_tail(200).count("Application startup complete") < 2:
            assert time.monotonic() < deadline, service.log_tail()
            time.sleep(0.1)
        assert "Traceback" not in service.log_tail(200)

        def post(path: str, body: Any) -> httpx.Response:
            return httpx.post(f"{service.url}{path}", json=body, headers=service.headers, timeout=60)

        customer = {"customer_id": "17850", "country": "United Kingdom"}
        with ThreadPoolExecutor(8) as pool:
            statuses = sorted(
                r.status_code for r in pool.map(lambda _: post("/customer", customer), range(8))
            )
        assert statuses == [200] * 7 + [201]

        batch = {"invoices": [invoice(str(536365 + n), customer_id="17850") for n in range(50)]}
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: post("/bulk/invoices", batch), range(6)))
        assert [r.status_code for r in results] == [200] * 6
        assert sum(r.json()["created"] for r in results) == 50
        assert sum(r.json()["lines_created"] for r in results) == 100
        assert all(r.json()["created"] + r.json()["unchanged"] == 50 for r in results)

        with ThreadPoolExecutor(8) as pool:
            added = list(
                pool.map(
                    lambda n: post("/invoice/536365/POST/", {"quantity": n, "unit_price": "18"}), range(8)
                )
            )
        assert [r.status_code for r in added] == [201] * 8
        assert sorted(r.json()["line_no"] for r in added) == list(range(3, 11))

        stored = httpx.get(f"{service.url}/invoices", params={"limit": 5000}, headers=service.headers).json()
        assert len(stored["items"]) == 50
        assert sum(len(x["lines"]) for x in stored["items"]) == 108


def test_fastapi_run_starts_the_service(sqlite_url: str) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": sqlite_url, "API_KEY": "run-key", "ENVIRONMENT": "local"}
    command = [
        sys.executable,
        "-m",
        "fastapi",
        "run",
        "api/main.py",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "fastapi run did not answer /health within 30 s"
            time.sleep(0.2)
        response = httpx.post(
            f"http://127.0.0.1:{port}/customer",
            json={"customer_id": "1", "country": "X"},
            headers={"X-API-Key": "run-key"},
        )
        assert response.status_code == 201
    finally:
        process.terminate()
        process.wait(10)


def test_production_start_with_the_development_key_fails(sqlite_url: str) -> None:
    production = {"ENVIRONMENT": "production"}
    with (
        pytest.raises(RuntimeError, match="API_KEY is the development default"),
        live_service(sqlite_url, api_key="dev-api-key", extra_env=production),
    ):
        pass
