"""Post validated lines to the service: customers first, then whole invoices in bounded batches.

Invoice bodies are Arrow IPC streams built straight from the invoice-sorted line table (one row per
invoice, its lines nested as a list of structs; docs/design.md "Bulk write"), and their content hashes
are computed with Arrow compute functions over the same columns: no Python object is made per line, which
made building JSON bodies and hashing them per dict the job's largest cost of posting. A batch is built
when it is about to be sent, so at most `concurrency` bodies exist at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from api.content_hash import content_hashes as canonical_content_hashes
from etl.client import (
    MAX_CUSTOMERS_PER_REQUEST,
    MAX_INVOICES_PER_REQUEST,
    MAX_LINES_PER_REQUEST,
    RetailClient,
    RetryStats,
    gather_bounded,
)
from etl.errors import ServiceError
from etl.schema import LINE_SCHEMA, TIMESTAMP_TYPE

#: One line inside an invoice row of the Arrow body: api/arrow_pages.py LINE_STRUCT, with the job's
#: second-resolution timestamps (the contract takes `timestamp[s]` or `timestamp[us]`): LINE_SCHEMA's fields.
LINE_BODY_TYPE = pa.struct(
    [
        LINE_SCHEMA.field(name)
        for name in ("line_no", "stock_code", "description", "quantity", "unit_price", "invoice_date")
    ]
)

#: The Arrow body of `POST /bulk/invoices`: one row per invoice, its lines in `line_no` order. The
#: read-back page schema (api/arrow_pages.py INVOICE_PAGE_SCHEMA) minus the derived `invoice_day`.
INVOICE_BODY_SCHEMA = pa.schema(
    [
        pa.field("invoice_no", pa.string(), nullable=False),
        pa.field("invoice_date", TIMESTAMP_TYPE, nullable=False),
        pa.field("customer_id", pa.string()),
        pa.field("country", pa.string(), nullable=False),
        pa.field("lines", pa.list_(pa.field("item", LINE_BODY_TYPE, nullable=False)), nullable=False),
    ]
)


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
    # Sorted first: a table without LINE_SCHEMA's columns stops the stage before anything is sent.
    ordered = sort_for_posting(lines)

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

    batches = plan_invoice_batches(
        ordered, max_lines=max_lines_per_request, max_invoices=MAX_INVOICES_PER_REQUEST
    )

    async def post_invoice_batch(batch: InvoiceBatch) -> dict[str, Any]:
        # Built here, once the batch holds a slot, so that bodies exist only for requests in flight.
        invoices = invoice_table(ordered.slice(batch.start, batch.lines))
        skipped: set[str] = set()
        if skip_unchanged:
            # A rerun: what the service holds with the same content hash need not travel again.
            numbers = invoices["invoice_no"].to_pylist()
            comparison = await client.compare_invoices(
                dict(zip(numbers, content_hashes(invoices), strict=True))
            )
            skipped = set(_numbers(comparison, "unchanged"))
            if skipped:
                held = pc.is_in(invoices["invoice_no"], value_set=pa.array(sorted(skipped), pa.string()))
                invoices = invoices.filter(pc.invert(held))
        answer = {"created": 0, "unchanged": 0, "lines_created": 0}
        if invoices.num_rows:
            answer = await client.post_invoice_table(invoices)
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
    """The lines with every invoice contiguous and its lines in `line_no` order: as given when they
    already are (the job's lines come in `LINE_ORDER`), else sorted by `(invoice_no, line_no)`."""
    missing = [name for name in LINE_SCHEMA.names if name not in lines.column_names]
    if missing:
        raise ValueError(f"lines lack column(s) {', '.join(missing)} of LINE_SCHEMA")
    lines = lines.select(LINE_SCHEMA.names)
    if _invoices_contiguous(lines):
        return lines
    # Sorting by invoice number alone (not day first) makes each invoice one run of rows by construction.
    return lines.sort_by([("invoice_no", "ascending"), ("line_no", "ascending")])


def _invoices_contiguous(lines: pa.Table) -> bool:
    """Whether each invoice is one run of rows with increasing `line_no`."""
    n = lines.num_rows
    if n < 2:
        return True
    if lines["invoice_no"].null_count or lines["line_no"].null_count:
        return False  # the sort decides where nulls go; the service refuses them
    starts = invoice_starts(lines)
    if len(starts) != pc.count_distinct(lines["invoice_no"]).as_py():
        return False  # some invoice comes back after another one
    line_nos = lines["line_no"].combine_chunks()
    increasing = pc.greater(line_nos.slice(1), line_nos.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    within = np.ones(n - 1, dtype=bool)
    within[starts[1:] - 1] = False  # a new invoice may start at any line_no
    return bool(np.all(increasing | ~within))


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


def invoice_table(ordered: pa.Table) -> pa.Table:
    """The `/bulk/invoices` Arrow body (`INVOICE_BODY_SCHEMA`) of invoice-sorted lines holding whole
    invoices: one row per invoice, its lines nested in table order (`line_no` order).

    Invoice-level fields come from each invoice's first row, its lowest `line_no`. The line columns are
    used as they are (no copy when `ordered` is one chunk): the nesting is only an offsets array.
    """
    starts = invoice_starts(ordered)
    columns = {
        name: ordered[name].combine_chunks()
        for name in ("invoice_no", "customer_id", "country", *LINE_BODY_TYPE.names)
    }
    # The contract takes seconds or microseconds; a no-op for LINE_SCHEMA's own `timestamp[s]`.
    columns["invoice_date"] = pc.cast(columns["invoice_date"], TIMESTAMP_TYPE)
    struct = pa.StructArray.from_arrays(
        [columns[name] for name in LINE_BODY_TYPE.names], fields=list(LINE_BODY_TYPE)
    )
    offsets = pa.array(np.append(starts, ordered.num_rows), pa.int32())
    lines = pa.ListArray.from_arrays(offsets, struct, type=INVOICE_BODY_SCHEMA.field("lines").type)
    firsts = pa.array(starts, pa.int64())
    return pa.Table.from_arrays(
        [
            columns["invoice_no"].take(firsts),
            columns["invoice_date"].take(firsts),
            columns["customer_id"].take(firsts),
            columns["country"].take(firsts),
            lines,
        ],
        schema=INVOICE_BODY_SCHEMA,
    )


def content_hashes(invoices: pa.Table) -> list[str]:
    """The service's content hash of each row of an `invoice_table` (`api.content_hash`, the one
    definition the service uses too; `invoice_table` nests the lines in `line_no` order)."""
    return canonical_content_hashes(
        invoices["invoice_no"],
        invoices["customer_id"],
        invoices["invoice_date"],
        invoices["country"],
        invoices["lines"],
    )


def _numbers(answer: dict[str, Any], key: str) -> list[str]:
    value = answer.get(key)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ServiceError(f"the service's answer lacks the list {key!r}: {answer!r:.200}")
    return value


def _count(answer: dict[str, Any], key: str) -> int:
    value = answer.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ServiceError(f"the service's answer lacks the count {key!r}: {answer!r:.200}")
    return value
