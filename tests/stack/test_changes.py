"""The change feed through the stack (issue 28): the `retail_sync` DAG on the Celery workers brings other
clients' writes through nginx into the S3 lake, row for row; the feed's WebSocket works through nginx.

The writes touch only 2011-08-12 (and the day one invoice moves to) and customers with invoices on that
day only: the other stack tests work on DAYS (2010-12-01/02) and compare their lakes with a reference.
"""

from __future__ import annotations

import json
import secrets
from decimal import Decimal
from typing import Any

import fsspec
import httpx
import pyarrow.parquet as pq
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from etl.lake import read_lake_table
from tests.api.helpers import invoice, line
from tests.stack.support import Stack, backfill, wait_for, wait_until_finished
from tests.support.lines import Lines, lake_lines, service_lines

pytestmark = pytest.mark.stack

#: A day of sample_data/ (1,122 lines) that no other stack test uses.
DAY = "2011-08-12"
NEXT_DAY = "2011-08-13"
#: Bounds on waits (never asserted on): a triggered sync run is queued, scheduled and run in ~10 s here.
SYNC_TIMEOUT_SECONDS = 300


def key(stack: Stack) -> dict[str, str]:
    return {"X-API-Key": stack.env["RETAIL_API_KEY"]}


def nginx(stack: Stack) -> httpx.Client:
    """A client of the service through nginx, as any other client."""
    return httpx.Client(base_url=stack.url("nginx"), headers=key(stack), timeout=30)


def airflow(stack: Stack) -> httpx.Client:
    """A client of Airflow's REST API (the stack's simple auth manager makes every caller an admin)."""
    return httpx.Client(base_url=f"{stack.url('airflow')}/api/v2", timeout=30)


def trigger_sync(stack: Stack, lake: str) -> str:
    """POST a `retail_sync` run with the lake as its conf; its run id."""
    with airflow(stack) as api:
        answer = api.post("/dags/retail_sync/dagRuns", json={"logical_date": None, "conf": {"lake": lake}})
    assert answer.status_code == 200, answer.text
    run_id: str = answer.json()["dag_run_id"]
    return run_id


def finished_run(stack: Stack, run_id: str) -> dict[str, Any]:
    """Wait until the run has finished; the run, its task and what the task returned (XCom)."""

    def finished() -> dict[str, Any] | None:
        with airflow(stack) as api:
            run = api.get(f"/dags/retail_sync/dagRuns/{run_id}").json()
        return run if run["state"] in ("success", "failed") else None

    run: dict[str, Any] = wait_for(f"retail_sync run {run_id} finished", finished, SYNC_TIMEOUT_SECONDS, 1.0)
    with airflow(stack) as api:
        (task,) = api.get(f"/dags/retail_sync/dagRuns/{run_id}/taskInstances").json()["task_instances"]
        xcom = api.get(
            f"/dags/retail_sync/dagRuns/{run_id}/taskInstances/sync/xcomEntries/return_value",
            params={"deserialize": True},
        )
    value = xcom.json()["value"] if xcom.status_code == 200 else None
    return {"run": run, "task": task, "returned": json.loads(value) if isinstance(value, str) else value}


def lake_of(stack: Stack, root: str, table: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = read_lake_table(
        root, table, storage_options=stack.storage_options()
    ).to_pylist()
    return rows


def figures_of_lake(lines: Lines) -> dict[str, tuple[int, int, Decimal]]:
    """Lines, invoices and money per day of the lake's lines."""
    per_day: dict[str, tuple[int, set[str], Decimal]] = {}
    for (invoice_no, _), (_, quantity, unit_price, _, day) in lines.items():
        count, invoices, amount = per_day.get(day, (0, set(), Decimal(0)))
        invoices.add(invoice_no)
        per_day[day] = (count + 1, invoices, amount + quantity * unit_price)
    return {day: (count, len(invoices), amount) for day, (count, invoices, amount) in per_day.items()}


def figures_of_service(stack: Stack) -> dict[str, tuple[int, int, Decimal]]:
    """The service's own figures per day (`GET /invoice-days`, computed by its database)."""
    with nginx(stack) as client:
        days = client.get("/invoice-days").json()["days"]
    return {d["invoice_day"]: (d["lines"], d["invoices"], Decimal(d["amount"])) for d in days}


def feed_after(stack: Stack, cursor: str) -> list[dict[str, Any]]:
    """Every change of the service's feed after `cursor`, through nginx."""
    changes: list[dict[str, Any]] = []
    with nginx(stack) as client:
        while True:
            page = client.get("/changes", params={"after": cursor}).json()
            changes += page["changes"]
            cursor = page["next_cursor"]
            if not page["more"]:
                return changes


def other_clients_write(stack: Stack) -> list[tuple[str, str, str]]:
    """PUT, PATCH and DELETE of invoices, lines and customers and one bulk write, through nginx, on
    DAY; (resource, kind, id) of each change, in order."""
    with nginx(stack) as client:
        moved = client.get("/invoice/563097").json()
        body = {k: v for k, v in moved.items() if k not in ("invoice_no", "invoice_day")}
        body["invoice_date"] = f"{NEXT_DAY}T09:00:00"
        for row in body["lines"]:
            row.pop("invoice_date", None)
        assert client.put("/invoice/563097", json=body).status_code == 200
        lines = client.get("/invoice/563099").json()["lines"]
        kept = ("line_no", "stock_code", "description", "unit_price")
        doubled = [{**{k: r[k] for k in kept}, "quantity": r["quantity"] * 2} for r in lines]
        assert client.patch("/invoice/563099", json={"lines": doubled}).status_code == 200
        assert client.delete("/invoice/563103").status_code == 204
        added = client.post("/invoice/563104/85123A/", json={"quantity": 4, "unit_price": "2.55"})
        assert added.status_code == 201, added.text
        assert client.delete("/invoice/563095/23209/").status_code == 204
        assert client.patch("/customer/12381", json={"country": "Sweden"}).status_code == 200
        assert client.put("/customer/13888", json={"country": "France"}).status_code == 200
        bulk = invoice(
            "999812",
            invoice_date=f"{DAY}T15:00:00",
            customer_id="13158",
            lines=[line("85123A", line_no=1), line("22633", line_no=2, unit_price="1.85")],
        )
        answer = client.post("/bulk/invoices", json={"invoices": [bulk]})
        assert answer.status_code == 200 and answer.json()["created"] == 1, answer.text
    return [
        ("invoice", "replaced", "563097"),
        ("invoice", "patched", "563099"),
        ("invoice", "deleted", "563103"),
        ("line", "created", "563104/85123A"),
        ("line", "deleted", "563095/23209"),
        ("customer", "patched", "12381"),
        ("customer", "replaced", "13888"),
        ("invoice", "created", "999812"),
    ]


@pytest.mark.timeout(600)
def test_the_sync_dag_on_the_celery_workers_brings_other_clients_writes_into_the_s3_lake(
    stack: Stack, unpaused_dag: str
) -> None:
    lake = f"s3://retail-lake/sync-{secrets.token_hex(3)}"
    # The lake as a backfill through the workers writes it.
    states = wait_until_finished(stack, backfill(stack, conf={"lake": lake}, days=[DAY]), runs=1)
    assert set(states.values()) == {"success"}, states
    with airflow(stack) as api:
        wait_for("retail_sync parsed", lambda: api.get("/dags/retail_sync").status_code == 200, 120)
        assert api.patch("/dags/retail_sync", json={"is_paused": False}).status_code == 200

    # The first sync of a lake written by runs reads the service whole and keeps the feed's head.
    first = finished_run(stack, trigger_sync(stack, lake))
    assert first["run"]["state"] == "success" and first["task"]["state"] == "success", first
    assert first["returned"]["sync"]["snapshot"]["why"] == "no sync state in the lake"
    cursor = first["returned"]["sync"]["cursor_after"]

    writes = other_clients_write(stack)

    run_id = trigger_sync(stack, lake)
    second = finished_run(stack, run_id)
    assert second["run"]["state"] == "success" and second["task"]["state"] == "success", second
    # It ran on a Celery worker, which logged it.
    assert any(run_id in stack.log(f"worker-{i}") for i in (1, 2)), stack.log("worker-1")[-2000:]
    synced = second["returned"]
    assert synced["lake"] == lake and synced["sync"]["snapshot"] is None
    assert synced["sync"]["cursor_before"] == cursor and synced["sync"]["changes"] == len(writes)
    # The cost follows the changes: the day written and the day an invoice moved to.
    assert synced["days"] == [DAY, NEXT_DAY]

    # The lake against the service through nginx: line by line, and per day (lines, invoices, money).
    in_lake = lake_lines(lake_of(stack, lake, "invoice_lines"))
    assert in_lake == service_lines(stack.url("nginx"), key(stack))
    assert figures_of_lake(in_lake) == figures_of_service(stack)
    assert in_lake[("563097", 1)][4] == NEXT_DAY
    assert ("999812", 2) in in_lake and ("563104", 1) in in_lake
    assert not any(number == "563103" for number, _ in in_lake)
    assert not any(row["invoice_no"] == "563103" for row in lake_of(stack, lake, "invoices"))
    countries = {(row["customer_id"], row["country"]) for row in lake_of(stack, lake, "customers")}
    assert {c for c in countries if c[0] in ("12381", "13888")} == {("12381", "Sweden"), ("13888", "France")}

    # The lake's `changes` table holds the writes, each once, as the feed has them.
    fs = fsspec.filesystem("s3", **stack.storage_options())
    kept = (
        pq.read_table(f"{lake.removeprefix('s3://')}/changes", filesystem=fs).sort_by("position").to_pylist()
    )
    feed = feed_after(stack, cursor)
    assert [c["position"] for c in kept] == [c["position"] for c in feed]
    assert [(c["resource"], c["kind"], c["id"]) for c in kept] == writes


def test_the_change_stream_through_nginx_sends_new_changes_and_resumes_from_a_cursor(stack: Stack) -> None:
    base = stack.url("nginx").replace("http://", "ws://")
    customer = f"ws-{secrets.token_hex(4)}"
    with nginx(stack) as client:
        head = client.get("/changes/head").json()["cursor"]
        with connect(f"{base}/changes/stream?after={head}", additional_headers=key(stack)) as stream:
            assert stream.response.status_code == 101
            upstreams = {f"127.0.0.1:{stack.state['ports'][r]}" for r in ("api-1", "api-2")}
            assert stream.response.headers["X-Retail-Upstream"] in upstreams
            # A change made through nginx after connecting arrives without asking.
            created = client.post("/customer", json={"customer_id": customer, "country": "Spain"})
            assert created.status_code == 201, created.text
            change = json.loads(stream.recv(timeout=30))
            assert (change["resource"], change["kind"], change["id"]) == ("customer", "created", customer)
            assert change["content"] == {"customer_id": customer, "country": "Spain"}
        # Disconnected; a change meanwhile; resuming from the last position gives it, and only it.
        assert client.patch(f"/customer/{customer}", json={"country": "Portugal"}).status_code == 200
        with connect(
            f"{base}/changes/stream?after={change['position']}", additional_headers=key(stack)
        ) as stream:
            assert stream.response.status_code == 101
            resumed = json.loads(stream.recv(timeout=30))
            assert (resumed["position"], resumed["kind"], resumed["id"]) == (
                change["position"] + 1,
                "patched",
                customer,
            )
            # Then what commits next, and nothing in between.
            assert client.delete(f"/customer/{customer}").status_code == 204
            deleted = json.loads(stream.recv(timeout=30))
            assert (deleted["position"], deleted["kind"], deleted["content"]) == (
                resumed["position"] + 1,
                "deleted",
                None,
            )
        # Without a key, nginx passes the refusal on as HTTP.
        with pytest.raises(InvalidStatus) as refused, connect(f"{base}/changes/stream?after=0"):
            pass
        assert refused.value.response.status_code == 401
