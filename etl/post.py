"""Post validated lines to the service: customers first, then whole invoices in bounded batches.

Bodies are built from Arrow columns (`to_pylist` per column, then zipped), one batch at a time when the
batch is about to be sent, so that at most `concurrency` request bodies exist at once rather than the
whole data set as Python dicts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from etl.client import (
    MAX_CUSTOMERS_PER_REQUEST,
    MAX_INVOICES_PER_REQUEST,
    MAX_LINES_PER_REQUEST,
    RetailClient,
    RetryStats,
    gather_bounded,
)
from etl.errors import ServiceError
from etl.schema import LINE_SCHEMA

#: How the service reads a naive timestamp (docs/design.md: naive local time, ISO form, no zone).
ISO_SECONDS = "%Y-%m-%dT%H:%M:%S"


@dataclass(frozen=True)
class PostReport:
    """What the service acknowledged for one `post_lines` call."""

    customers_created: int
    customers_existing: int
    #: Customers the service already holds under another country; not an error, invoices keep their own.
    customer_conflicts: tuple[str, ...]
    invoices_created: int
    #: Invoices the service already held identically, whether found by their hash or when posted.
    invoices_unchanged: int
    #: Of those, the invoices not sent at all because the service's content hash equalled the job's.
    invoices_skipped: int
    lines_created: int
    #: Bulk requests sent (customers and invoices), not counting retries.
    requests: int
    #: Retries made by the client while posting, by cause.
    retries: RetryStats


@dataclass(frozen=True)
class InvoiceBatch:
    """Rows `[start, stop)` of the invoice-sorted lines: whole invoices, one request."""

    start: int
    stop: int
    invoices: int

    @property
    def lines(self) -> int:
        """Lines in the batch."""
        return self.stop - self.start


async def post_lines(
    lines: pa.Table,
    client: RetailClient,
    *,
    concurrency: int = 4,
    max_lines_per_request: int = 20_000,
    on_progress: Callable[[int], None] | None = None,
    skip_unchanged: bool = True,
) -> PostReport:
    """Post the customers of `lines` (LINE_SCHEMA), then its invoices with all their lines.

    Customers go first because an invoice naming an unknown customer is refused. Invoices are packed
    whole into requests of at most `max_lines_per_request` lines and 5,000 invoices; an invoice larger
    than the line limit travels alone. `on_progress` receives the number of lines of each batch the
    service acknowledged. Replaying the same lines is safe: the service reports them as unchanged.
    With `skip_unchanged`, each batch's content hashes are compared first (`/bulk/invoices/compare`)
    and only the invoices the service does not hold identically are sent.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if not 1 <= max_lines_per_request <= MAX_LINES_PER_REQUEST:
        raise ValueError(f"max_lines_per_request must be within 1..{MAX_LINES_PER_REQUEST}")
    retries_before = client.retry_stats

    customers = customer_payloads(lines)
    customer_batches = [
        customers[i : i + MAX_CUSTOMERS_PER_REQUEST]
        for i in range(0, len(customers), MAX_CUSTOMERS_PER_REQUEST)
    ]

    async def post_customer_batch(batch: list[dict[str, Any]]) -> dict[str, Any]:
        answer = await client.post_customers(batch)
        created, existing = _count(answer, "created"), _count(answer, "existing")
        if created + existing != len(batch):
            raise ServiceError(
                f"the service acknowledged {created} created + {existing} existing of {len(batch)} customers"
            )
        return answer

    customer_answers = await gather_bounded(
        [partial(post_customer_batch, batch) for batch in customer_batches], concurrency
    )

    ordered = sort_for_posting(lines)
    batches = plan_invoice_batches(
        ordered, max_lines=max_lines_per_request, max_invoices=MAX_INVOICES_PER_REQUEST
    )

    async def post_invoice_batch(batch: InvoiceBatch) -> dict[str, Any]:
        # Built here, once the batch holds a slot, so that bodies exist only for requests in flight.
        invoices = invoice_payloads(ordered.slice(batch.start, batch.lines))
        skipped: set[str] = set()
        if skip_unchanged:
            # A rerun: what the service holds with the same content hash need not travel again.
            comparison = await client.compare_invoices(
                {inv["invoice_no"]: content_hash(inv) for inv in invoices}
            )
            skipped = set(_numbers(comparison, "unchanged"))
            invoices = [invoice for invoice in invoices if invoice["invoice_no"] not in skipped]
        answer = {"created": 0, "unchanged": 0, "lines_created": 0}
        if invoices:
            answer = await client.post_invoices(invoices)
        created, unchanged = _count(answer, "created"), _count(answer, "unchanged")
        if created + unchanged + len(skipped) != batch.invoices:
            raise ServiceError(
                f"the service acknowledged {created} created + {unchanged} unchanged "
                f"(+ {len(skipped)} by hash) of {batch.invoices} invoices"
            )
        if on_progress is not None:
            on_progress(batch.lines)
        return {**answer, "unchanged": unchanged + len(skipped), "skipped": len(skipped)}

    invoice_answers = await gather_bounded(
        [partial(post_invoice_batch, batch) for batch in batches], concurrency
    )

    conflicts = sorted({str(c) for answer in customer_answers for c in answer.get("conflicts") or ()})
    return PostReport(
        customers_created=sum(_count(a, "created") for a in customer_answers),
        customers_existing=sum(_count(a, "existing") for a in customer_answers),
        customer_conflicts=tuple(conflicts),
        invoices_created=sum(_count(a, "created") for a in invoice_answers),
        invoices_unchanged=sum(_count(a, "unchanged") for a in invoice_answers),
        invoices_skipped=sum(_count(a, "skipped") for a in invoice_answers),
        lines_created=sum(_count(a, "lines_created") for a in invoice_answers),
        requests=len(customer_batches) + len(batches),
        retries=client.retry_stats.since(retries_before),
    )


def customer_payloads(lines: pa.Table) -> list[dict[str, Any]]:
    """Each distinct non-null customer once, with the country of its first line in `lines`' order.

    A customer has one stored country, the first posted (docs/design.md); the first line in source order
    is the natural "first".
    """
    customers = lines.select(["customer_id", "country"]).filter(pc.is_valid(lines["customer_id"]))
    # use_threads=False keeps the rows in table order, which is what makes "first" the first line.
    firsts = customers.group_by("customer_id", use_threads=False).aggregate([("country", "first")])
    return [
        {"customer_id": customer_id, "country": country}
        for customer_id, country in zip(
            firsts["customer_id"].to_pylist(), firsts["country_first"].to_pylist(), strict=True
        )
    ]


def sort_for_posting(lines: pa.Table) -> pa.Table:
    """The lines in `(invoice_no, line_no)` order: every invoice contiguous, its lines in order."""
    missing = [name for name in LINE_SCHEMA.names if name not in lines.column_names]
    if missing:
        raise ValueError(f"lines lack column(s) {', '.join(missing)} of LINE_SCHEMA")
    # Sorting by invoice number alone (not day first) makes each invoice one run of rows by construction.
    return lines.select(LINE_SCHEMA.names).sort_by([("invoice_no", "ascending"), ("line_no", "ascending")])


def invoice_starts(ordered: pa.Table) -> np.ndarray:
    """Row index where each invoice begins in invoice-sorted lines."""
    n = ordered.num_rows
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    numbers = ordered["invoice_no"].combine_chunks()
    changed = pc.not_equal(numbers.slice(1), numbers.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return np.flatnonzero(np.concatenate([[True], changed])).astype(np.int64)


def plan_invoice_batches(ordered: pa.Table, *, max_lines: int, max_invoices: int) -> list[InvoiceBatch]:
    """Pack whole invoices, in order, into batches of at most `max_lines` lines and `max_invoices`
    invoices; an invoice larger than `max_lines` gets a batch of its own (it is never split)."""
    starts = invoice_starts(ordered)
    stops = np.append(starts[1:], ordered.num_rows)
    batches: list[InvoiceBatch] = []
    first = 0  # index of the batch's first invoice
    batch_lines = 0
    for index, size in enumerate((stops - starts).tolist()):
        taken = index - first
        if taken and (batch_lines + size > max_lines or taken == max_invoices):
            batches.append(InvoiceBatch(int(starts[first]), int(starts[index]), taken))
            first, batch_lines = index, 0
        batch_lines += size
    if len(starts):
        batches.append(InvoiceBatch(int(starts[first]), ordered.num_rows, len(starts) - first))
    return batches


def invoice_payloads(ordered: pa.Table) -> list[dict[str, Any]]:
    """The `/bulk/invoices` items for invoice-sorted lines holding whole invoices.

    Invoice-level fields come from each invoice's lowest `line_no`; prices travel as decimal strings
    (never floats), timestamps as `YYYY-MM-DDTHH:MM:SS`.
    """
    numbers = ordered["invoice_no"].to_pylist()
    customer_ids = ordered["customer_id"].to_pylist()
    countries = ordered["country"].to_pylist()
    dates = _iso_seconds(ordered["invoice_date"])
    prices = pc.cast(ordered["unit_price"], pa.string()).to_pylist()
    lines = [
        {
            "line_no": line_no,
            "stock_code": stock_code,
            "description": description,
            "quantity": quantity,
            "unit_price": price,
            "invoice_date": date,
        }
        for line_no, stock_code, description, quantity, price, date in zip(
            ordered["line_no"].to_pylist(),
            ordered["stock_code"].to_pylist(),
            ordered["description"].to_pylist(),
            ordered["quantity"].to_pylist(),
            prices,
            dates,
            strict=True,
        )
    ]
    starts = invoice_starts(ordered).tolist()
    stops = [*starts[1:], ordered.num_rows]
    return [
        {
            "invoice_no": numbers[start],
            "customer_id": customer_ids[start],
            "invoice_date": dates[start],
            "country": countries[start],
            "lines": lines[start:stop],
        }
        for start, stop in zip(starts, stops, strict=True)
    ]


def content_hash(invoice: dict[str, Any]) -> str:
    """The service's content hash of an `invoice_payloads` item (docs/design.md, "Content hash"):
    sha256 of the compact JSON of `[invoice_no, customer_id, invoice_date, country, [[line_no,
    stock_code, description, quantity, unit_price, invoice_date], ...]]`, lines in `line_no` order,
    prices with three decimals and timestamps as `YYYY-MM-DDTHH:MM:SS`, as the payload spells them."""
    lines = sorted(invoice["lines"], key=lambda line: line["line_no"])
    canonical = [
        invoice["invoice_no"],
        invoice["customer_id"],
        invoice["invoice_date"],
        invoice["country"],
        [
            [
                line["line_no"],
                line["stock_code"],
                line["description"],
                line["quantity"],
                line["unit_price"],
                line["invoice_date"],
            ]
            for line in lines
        ],
    ]
    return hashlib.sha256(orjson.dumps(canonical)).hexdigest()


def _numbers(answer: dict[str, Any], key: str) -> list[str]:
    value = answer.get(key)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ServiceError(f"the service's answer lacks the list {key!r}: {answer!r:.200}")
    return value


def _iso_seconds(timestamps: pa.ChunkedArray) -> list[str]:
    """Timestamps as `YYYY-MM-DDTHH:MM:SS` strings.

    Formatted once per distinct value (an invoice's lines share theirs): `strftime` over every line was
    the largest part of building request bodies.
    """
    encoded = pc.dictionary_encode(timestamps.combine_chunks())
    texts = pc.strftime(encoded.dictionary, format=ISO_SECONDS).to_pylist()
    return [texts[index] for index in encoded.indices.to_pylist()]


def _count(answer: dict[str, Any], key: str) -> int:
    value = answer.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ServiceError(f"the service's answer lacks the count {key!r}: {answer!r:.200}")
    return value
