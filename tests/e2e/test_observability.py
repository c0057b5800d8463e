"""One invoice followed from the job's log into the service's log by the request id.

The real `retail-etl` command (stderr off a terminal: JSON lines) against the real service process (uvicorn
on SQLite, its JSON log lines captured to a file by `live_service`). The job logs one INFO line per bulk
invoices request with its `X-Request-ID` and the invoice numbers it carries; the service logs, per
request, the request id with the invoices it created or found unchanged: the counts at INFO, the numbers
at DEBUG (on the full data one request names ~26,000 invoices), so this service runs at DEBUG.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_job import run_job
from tests.support.service import LiveService, live_service

DAY = "2010-12-01"
INVOICE = "536365"  # the sample's first invoice, on DAY


@pytest.fixture
def service(sqlite_url: str) -> Iterator[LiveService]:
    with live_service(sqlite_url, extra_env={"LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"}) as running:
        yield running


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among `text`'s lines (a process may print a plain line or two as well)."""
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def names(value: Any, needle: str) -> bool:
    """Whether `needle` is `value`, or a string in it, or an item of a list or dict within it."""
    if isinstance(value, str):
        return value == needle
    if isinstance(value, list | tuple):
        return any(names(item, needle) for item in value)
    if isinstance(value, dict):
        return any(names(item, needle) for item in value.values())
    return False


def test_an_invoice_is_followed_from_the_job_log_to_the_service_log(
    service: LiveService, tmp_path: Path
) -> None:
    done = run_job(service, tmp_path / "lake", "--start", DAY, "--end", DAY)
    assert done.returncode == 0, done.stderr

    # The job: one line per bulk invoices request, with its request id and its invoice numbers.
    job_records = json_lines(done.stderr)
    requests = [r for r in job_records if r.get("logger") == "etl.client" and "invoice_nos" in r]
    assert requests, done.stderr[-2000:]
    for record in requests:
        assert record["level"] == "info"
        assert uuid.UUID(record["request_id"]).version == 4
        assert record["request_id"] in record["msg"]
    posted = [number for record in requests for number in record["invoice_nos"]]
    assert len(posted) == len(set(posted)), "each invoice travels in one request"
    (carrier,) = [r for r in requests if INVOICE in r["invoice_nos"]]
    request_id = carrier["request_id"]

    # The service: the same request id, on a line naming the invoice.
    service_records = json_lines(service.log_path.read_text(errors="replace"))
    same_request = [r for r in service_records if r.get("request_id") == request_id]
    assert same_request, f"the service logged nothing with request_id {request_id}:\n{service.log_tail()}"
    naming = [r for r in same_request if names({k: v for k, v in r.items() if k != "request_id"}, INVOICE)]
    assert naming, (
        f"no service log line with request_id {request_id} names invoice {INVOICE}; its lines: {same_request}"
    )
    # Every bulk request of the job reached the service's log under the id the job logged.
    logged_ids = {r.get("request_id") for r in service_records}
    assert {r["request_id"] for r in requests} <= logged_ids
