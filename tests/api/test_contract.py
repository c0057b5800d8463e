"""The OpenAPI document is the contract: schemathesis, every check, against a live service.

Schemathesis (`run --checks all`) generates requests from /openapi.json, valid and invalid ones, sends
them to a real uvicorn process on a fresh SQLite file, and checks every answer: no 5xx, every status
code and header documented, bodies matching their schemas, schema-valid requests accepted and
schema-violating ones refused. Bounded: a fixed number of examples per operation and a fixed seed, so a
run is repeatable (tests/api/schemathesis.toml holds the one setting: 412 is a documented answer to a
schema-valid but stale If-Match).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.service import live_service

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
#: Examples per operation and phase: enough to reach every documented answer, few enough for CI.
MAX_EXAMPLES = 25


def test_schemathesis_finds_nothing_against_a_live_service(sqlite_url: str, tmp_path: Path) -> None:
    with live_service(sqlite_url) as service:
        # A customer and an invoice to find, so reads and writes reach more than their 404.
        seed = [
            ("POST", "/customer", {"customer_id": "17850", "country": "United Kingdom"}),
            (
                "POST",
                "/customer/17850/invoice",
                {
                    "invoice_no": "536365",
                    "invoice_date": "2010-12-01T08:26:00",
                    "lines": [{"stock_code": "85123A", "quantity": 6, "unit_price": "2.55"}],
                },
            ),
        ]
        for method, path, body in seed:
            response = httpx.request(method, service.url + path, json=body, headers=service.headers)
            assert response.status_code == 201, response.text
        operations = sum(
            len(item) for item in httpx.get(f"{service.url}/openapi.json").json()["paths"].values()
        )
        result = subprocess.run(
            [
                str(SCHEMATHESIS),
                "--config-file",
                str(CONFIG),
                "run",
                f"{service.url}/openapi.json",
                "--checks",
                "all",
                "--header",
                f"X-API-Key: {service.api_key}",
                "--max-examples",
                str(MAX_EXAMPLES),
                "--seed",
                "1",
                "--workers",
                "1",
                "--generation-database",
                "none",
                "--request-timeout",
                "30",
                "--no-color",
                "--report",
                "ndjson",
                "--report-dir",
                str(tmp_path / "report"),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        server_log = service.log_tail(80)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:] + "\n--- service log ---\n" + server_log
    # It really ran: every operation of the document, and every generated case passed.
    tested = re.search(r"Tested: (\d+)", output)
    assert tested is not None and int(tested.group(1)) == operations, output[-3000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", output)
    assert cases is not None, output[-3000:]
    generated, passed = int(cases.group(1)), int(cases.group(2))
    assert generated == passed >= 1000, cases.group(0)
