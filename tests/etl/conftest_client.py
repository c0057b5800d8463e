"""Helpers for the tests of the service-facing stages (client, post, readback, reconcile).

Not a conftest: the tests import what they use. `FakeService` is an in-memory stand-in for the
service's bulk and paged endpoints, behind `httpx.MockTransport`, so the real `RetailClient` runs
end to end without a server or a database.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from etl.client import RetailClient, RetryPolicy
from etl.schema import LINE_SCHEMA, SOURCE_COLUMNS, TIMESTAMP_TYPE
from retail_contract.content_hash import content_hash
from retail_contract.wire import ARROW_STREAM, MAX_BULK_INVOICES, MAX_BULK_LINES, PRICE_TYPE

SAMPLE_CSV = Path(__file__).resolve().parents[2] / "sample_data" / "online_retail_sample.csv"
BASE_URL = "http://retail.test"
API_KEY = "test-key"

#: Waits small enough to matter nowhere, deterministic (no jitter); tests also inject a no-op sleep.
FAST_POLICY = RetryPolicy(
    max_attempts=5, total_budget_seconds=300, initial_wait=0.01, min_wait=0.01, jitter=0
)


class RecordingSleep:
    """An async `sleep` that records each wait the retry policy computed and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def make_client(
    transport: httpx.AsyncBaseTransport | None = None,
    *,
    policy: RetryPolicy = FAST_POLICY,
    sleep: RecordingSleep | None = None,
) -> RetailClient:
    """A client for BASE_URL; with `transport=None` it goes through httpx's own transport (for respx)."""
    return RetailClient(
        BASE_URL, API_KEY, policy=policy, transport=transport, sleep=sleep or RecordingSleep()
    )


def sample_lines(days: tuple[str, ...] | None = None) -> pa.Table:
    """LINE_SCHEMA lines built from the sample CSV (all four days unless `days` names some).

    A minimal stand-in for `etl.validate` (not used here, as it is written concurrently): every sample row
    is representable; line_no is the position among the invoice's lines in file order.
    """
    raw = pv.read_csv(
        SAMPLE_CSV,
        parse_options=pv.ParseOptions(newlines_in_values=True),
        convert_options=pv.ConvertOptions(
            column_types={c: pa.string() for c in SOURCE_COLUMNS}, strings_can_be_null=False
        ),
    )
    numbers = raw["InvoiceNo"].to_pylist()
    seen: dict[str, int] = {}
    line_nos = []
    for number in numbers:
        seen[number] = seen.get(number, 0) + 1
        line_nos.append(seen[number])
    customer_ids = [c.removesuffix(".0") or None for c in raw["CustomerID"].to_pylist()]
    descriptions = [d or None for d in raw["Description"].to_pylist()]
    stamps = pc.strptime(raw["InvoiceDate"], format="%Y-%m-%d %H:%M:%S", unit="s")
    table = pa.Table.from_pydict(
        {
            "invoice_no": numbers,
            "line_no": pa.array(line_nos, pa.int32()),
            "stock_code": raw["StockCode"],
            "description": descriptions,
            "quantity": pc.cast(raw["Quantity"], pa.int64()),
            "unit_price": pc.cast(raw["UnitPrice"], PRICE_TYPE),
            "invoice_date": pc.cast(stamps, TIMESTAMP_TYPE),
            "customer_id": customer_ids,
            "country": raw["Country"],
            "invoice_day": pc.cast(stamps, pa.date32()),
        },
        schema=LINE_SCHEMA,
    )
    if days is not None:
        wanted = pa.array([dt.date.fromisoformat(d) for d in days], pa.date32())
        table = table.filter(pc.is_in(table["invoice_day"], value_set=wanted))
    return table


def line_rows(rows: list[dict[str, Any]]) -> pa.Table:
    """A LINE_SCHEMA table from row dicts with friendly values: prices and timestamps as strings,
    missing fields defaulted."""
    defaults: dict[str, Any] = {
        "description": "ITEM",
        "quantity": 1,
        "unit_price": "1.00",
        "invoice_date": "2010-12-01 08:26:00",
        "customer_id": "17850",
        "country": "United Kingdom",
    }
    full = [{**defaults, **row} for row in rows]
    for row in full:
        stamp = dt.datetime.fromisoformat(row["invoice_date"])
        row["invoice_date"] = stamp
        row["unit_price"] = Decimal(row["unit_price"])
        row.setdefault("invoice_day", stamp.date())
    return pa.Table.from_pylist(full, schema=LINE_SCHEMA)


def service_hash(invoice: dict[str, Any]) -> str:
    """the contract's `content_hash` (the service's) of an invoice in this fake's stored form."""
    return content_hash(
        invoice_no=invoice["invoice_no"],
        customer_id=invoice["customer_id"],
        invoice_date=dt.datetime.fromisoformat(invoice["invoice_date"]),
        country=invoice["country"],
        lines=[
            (
                line["line_no"],
                line["stock_code"],
                line.get("description"),
                line["quantity"],
                Decimal(line["unit_price"]),
                dt.datetime.fromisoformat(line["invoice_date"]),
            )
            for line in invoice["lines"]
        ],
    )


def _arrow_invoices(body: bytes) -> list[dict[str, Any]]:
    """An Arrow invoice stream (one row per invoice, lines nested) in the JSON body's shape."""

    def iso(stamp: dt.datetime | None) -> str | None:
        return None if stamp is None else stamp.isoformat(timespec="seconds")

    return [
        {
            **invoice,
            "invoice_date": iso(invoice["invoice_date"]),
            "lines": [
                {**line, "unit_price": str(line["unit_price"]), "invoice_date": iso(line["invoice_date"])}
                for line in invoice["lines"]
            ],
        }
        for invoice in pa.ipc.open_stream(body).read_all().to_pylist()
    ]


def _encode_cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[str, ...]:
    return tuple(json.loads(base64.urlsafe_b64decode(cursor.encode())))


class FakeService:
    """The service's bulk write and paged read-back contract (docs/design.md), in memory.

    Idempotent like the real one: an identical invoice is `unchanged`, other content is 409 for the
    whole request. Prices are stored as decimals and returned as 3-decimal strings, as the real service
    does. Records every bulk body, and how many requests were in flight at once.
    """

    def __init__(self, *, yields_per_request: int = 3) -> None:
        self.customers: dict[str, str] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.customer_bodies: list[list[dict[str, Any]]] = []
        self.invoice_bodies: list[list[dict[str, Any]]] = []
        self.compare_bodies: list[dict[str, str]] = []
        #: Every `PUT /invoice/{no}` and `PUT /customer/{id}` body, with the path's number or id.
        self.invoice_puts: list[tuple[str, dict[str, Any]]] = []
        self.customer_puts: list[tuple[str, dict[str, Any]]] = []
        self.requests: list[httpx.Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        #: Answers to give instead of handling, one per request, while any are left (fault injection).
        self.faults: list[httpx.Response | Exception] = []
        self.yields_per_request = yields_per_request

    def transport(self) -> httpx.MockTransport:
        """The transport to give `RetailClient`."""
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """Serve one request, yielding to the loop meanwhile so that concurrent requests overlap."""
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            for _ in range(self.yields_per_request):
                await asyncio.sleep(0)
            if self.faults:
                fault = self.faults.pop(0)
                if isinstance(fault, Exception):
                    raise fault
                return fault
            return self._route(request)
        finally:
            self.in_flight -= 1

    def _route(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("X-API-Key") != API_KEY:
            return httpx.Response(401, json={"detail": "bad or missing API key"})
        path, method = request.url.path, request.method
        if (method, path) == ("POST", "/bulk/customers"):
            return self._bulk_customers(json.loads(request.content)["customers"])
        if (method, path) == ("POST", "/bulk/invoices"):
            if request.headers.get("Content-Type") == ARROW_STREAM:  # the job's body (docs/design.md)
                return self._bulk_invoices(_arrow_invoices(request.content))
            return self._bulk_invoices(json.loads(request.content)["invoices"])
        if (method, path) == ("POST", "/bulk/invoices/compare"):
            return self._compare(json.loads(request.content)["invoices"])
        if method == "PUT" and path.startswith("/invoice/"):
            return self._put_invoice(path.removeprefix("/invoice/"), json.loads(request.content))
        if method == "PUT" and path.startswith("/customer/"):
            return self._put_customer(path.removeprefix("/customer/"), json.loads(request.content))
        if (method, path) == ("GET", "/invoices"):
            return self._invoice_page(request.url.params)
        if (method, path) == ("GET", "/customers"):
            return self._customer_page(request.url.params)
        if (method, path) == ("GET", "/health"):
            return httpx.Response(200, json={"status": "ok", "database": "ok"})
        return httpx.Response(404, json={"detail": f"no route {method} {path}"})

    def _bulk_customers(self, customers: list[dict[str, Any]]) -> httpx.Response:
        self.customer_bodies.append(customers)
        created = existing = 0
        conflicts = []
        for customer in customers:
            customer_id, country = str(customer["customer_id"]), customer["country"]
            if customer_id in self.customers:
                existing += 1
                if self.customers[customer_id] != country:
                    conflicts.append(customer_id)
            else:
                self.customers[customer_id] = country
                created += 1
        return httpx.Response(200, json={"created": created, "existing": existing, "conflicts": conflicts})

    def _bulk_invoices(self, invoices: list[dict[str, Any]]) -> httpx.Response:
        self.invoice_bodies.append(invoices)
        if len(invoices) > MAX_BULK_INVOICES or sum(len(i["lines"]) for i in invoices) > MAX_BULK_LINES:
            return httpx.Response(413, json={"detail": "too many invoices or lines"})
        stored = [self._as_stored(invoice) for invoice in invoices]
        for invoice in stored:
            customer_id = invoice["customer_id"]
            if customer_id is not None and customer_id not in self.customers:
                return httpx.Response(
                    422, json={"detail": [{"loc": ["body", "invoices", "customer_id"], "msg": "unknown"}]}
                )
        clashing = [
            i["invoice_no"]
            for i in stored
            if i["invoice_no"] in self.invoices and self.invoices[i["invoice_no"]] != i
        ]
        if clashing:
            return httpx.Response(
                409, json={"detail": "invoices exist with other content", "invoice_nos": clashing}
            )
        created = unchanged = lines_created = 0
        for invoice in stored:  # one transaction: nothing above stored anything
            if invoice["invoice_no"] in self.invoices:
                unchanged += 1
            else:
                self.invoices[invoice["invoice_no"]] = invoice
                created += 1
                lines_created += len(invoice["lines"])
        return httpx.Response(
            200, json={"created": created, "unchanged": unchanged, "lines_created": lines_created}
        )

    def _put_invoice(self, invoice_no: str, body: dict[str, Any]) -> httpx.Response:
        """PUT: the whole invoice stored as given (201 when it was missing); the body names no number."""
        self.invoice_puts.append((invoice_no, body))
        if "invoice_no" in body:
            return httpx.Response(422, json={"detail": "the path names the resource"})
        created = invoice_no not in self.invoices
        self.invoices[invoice_no] = self._as_stored({**body, "invoice_no": invoice_no})
        return httpx.Response(201 if created else 200, json=self.invoices[invoice_no])

    def _put_customer(self, customer_id: str, body: dict[str, Any]) -> httpx.Response:
        self.customer_puts.append((customer_id, body))
        created = customer_id not in self.customers
        self.customers[customer_id] = body["country"]
        return httpx.Response(
            201 if created else 200, json={"customer_id": customer_id, "country": body["country"]}
        )

    def _compare(self, hashes: dict[str, str]) -> httpx.Response:
        """The real service's answer, with its own hash function over what this fake stores."""
        answer: dict[str, list[str]] = {"unchanged": [], "different": [], "missing": []}
        for invoice_no in sorted(hashes):
            stored = self.invoices.get(invoice_no)
            if stored is None:
                answer["missing"].append(invoice_no)
            elif service_hash(stored) == hashes[invoice_no]:
                answer["unchanged"].append(invoice_no)
            else:
                answer["different"].append(invoice_no)
        self.compare_bodies.append(hashes)
        return httpx.Response(200, json=answer)

    @staticmethod
    def _as_stored(invoice: dict[str, Any]) -> dict[str, Any]:
        """The invoice as the service would return it: Numeric(12, 3) prices, the invoice day."""
        lines = [
            {
                **line,
                "unit_price": str(Decimal(line["unit_price"]).quantize(Decimal("0.001"))),
                "invoice_date": line.get("invoice_date") or invoice["invoice_date"],
            }
            for line in invoice["lines"]
        ]
        return {
            "invoice_no": invoice["invoice_no"],
            "invoice_date": invoice["invoice_date"],
            "invoice_day": invoice["invoice_date"][:10],
            "country": invoice["country"],
            "customer_id": invoice["customer_id"],
            "customer": {"url": f"/customer/{invoice['customer_id']}"} if invoice["customer_id"] else None,
            "lines": sorted(lines, key=lambda line: line["line_no"]),
        }

    def _invoice_page(self, params: httpx.QueryParams) -> httpx.Response:
        start, end, limit = params["start"], params["end"], int(params.get("limit", 1000))
        ordered = sorted(
            (i for i in self.invoices.values() if start <= i["invoice_day"] <= end),
            key=lambda i: (i["invoice_day"], i["invoice_no"]),
        )
        if "cursor" in params:
            after = _decode_cursor(params["cursor"])
            ordered = [i for i in ordered if (i["invoice_day"], i["invoice_no"]) > after]
        page = ordered[:limit]
        more = len(ordered) > limit
        cursor = _encode_cursor(page[-1]["invoice_day"], page[-1]["invoice_no"]) if more else None
        return httpx.Response(200, json={"items": page, "next_cursor": cursor})

    def _customer_page(self, params: httpx.QueryParams) -> httpx.Response:
        start, end, limit = params["start"], params["end"], int(params.get("limit", 1000))
        ids = sorted(
            {
                i["customer_id"]
                for i in self.invoices.values()
                if start <= i["invoice_day"] <= end and i["customer_id"] is not None
            }
        )
        if "cursor" in params:
            (after,) = _decode_cursor(params["cursor"])
            ids = [c for c in ids if c > after]
        page = ids[:limit]
        cursor = _encode_cursor(page[-1]) if len(ids) > limit else None
        items = [{"customer_id": c, "country": self.customers[c]} for c in page]
        return httpx.Response(200, json={"items": items, "next_cursor": cursor})

    def stored_line_count(self) -> int:
        """Lines the service holds."""
        return sum(len(i["lines"]) for i in self.invoices.values())


def run(coroutine_factory: Callable[[], Any]) -> Any:
    """Run an async test body on a fresh event loop (no pytest async plugin is needed)."""
    return asyncio.run(coroutine_factory())
