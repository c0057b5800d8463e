"""Post validated lines to the service: customers first, then whole invoices in bounded batches.

Invoice bodies are Arrow IPC streams built straight from the invoice-sorted line table (one row per
invoice, its lines nested as a list of structs; docs/design.md "Bulk write"), and their content hashes
are computed with Arrow compute functions over the same columns: no Python object is made per line, which
made building JSON bodies and hashing them per dict the job's largest cost of posting. A batch is built
when it is about to be sent, so at most `concurrency` bodies exist at once.

`post_lines` runs its phases in order, each returning a small frozen dataclass: `plan_posting` (the
requests), `post_customers`, `compare_hashes` (or `not_compared`), `refuse_corrections` under `fail` or
`replace_customers` under `replace`, then `post_invoices` (`post_invoice_batch` per request).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.client import REPLACE_HINT, RetailClient, RetryStats, gather_bounded
from etl.errors import InvoiceConflictError, ServiceError
from etl.schema import LINE_SCHEMA, TIMESTAMP_TYPE
from retail_contract import content_hash
from retail_contract.wire import (
    MAX_BULK_CUSTOMERS,
    MAX_BULK_INVOICES,
    MAX_BULK_LINES,
    invoice_body_schema,
    line_struct,
)

#: One line inside an invoice row of the Arrow body, with the job's second-resolution timestamps (the
#: contract takes `timestamp[s]` or `timestamp[us]`): LINE_SCHEMA's fields.
LINE_BODY_TYPE = line_struct(TIMESTAMP_TYPE)
#: The Arrow body of `POST /bulk/invoices` as the job sends it (`retail_contract.wire`).
INVOICE_BODY_SCHEMA = invoice_body_schema(TIMESTAMP_TYPE)


#: What a run does with an invoice the service holds with other content (`--on-conflict`): `fail`
#: stops before any invoice is posted; `replace` stores the source's version with `PUT /invoice/{no}`.
OnConflict = Literal["fail", "replace"]
ON_CONFLICT_CHOICES: tuple[str, ...] = get_args(OnConflict)


def parse_on_conflict(value: str | None) -> OnConflict:
    """`fail` or `replace` (None: `fail`); `ValueError` naming the choices for anything else."""
    if value is None or value == "fail":
        return "fail"
    if value == "replace":
        return "replace"
    raise ValueError(f"on_conflict is {value!r}; expected one of {', '.join(ON_CONFLICT_CHOICES)}")


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
    #: Invoices stored with other content that `on_conflict="replace"` replaced by PUT, by number.
    replaced_invoices: tuple[str, ...] = ()
    #: The invoice days of those invoices as the source now has them: the days destinations replace.
    replaced_days: tuple[dt.date, ...] = ()
    #: Customers whose stored country `on_conflict="replace"` replaced with the source's one.
    customers_replaced: tuple[str, ...] = field(default=())

    @property
    def invoices_replaced(self) -> int:
        """How many invoices were replaced."""
        return len(self.replaced_invoices)


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
    on_conflict: OnConflict = "fail",
) -> PostReport:
    """Post the customers of `lines` (LINE_SCHEMA), then its invoices with all their lines.

    Customers go first because an invoice naming an unknown customer is refused. Invoices are packed
    whole into requests of at most `max_lines_per_request` lines and 5,000 invoices; an invoice larger
    than the line limit travels alone. `on_progress` receives the number of lines of each batch the
    service acknowledged. Replaying the same lines is safe: the service reports them as unchanged.
    With `skip_unchanged`, each batch's content hashes are compared first (`/bulk/invoices/compare`)
    and only the invoices the service does not hold identically are sent.

    An invoice the service holds with other content is a correction. Every batch is compared before any
    invoice is posted, so that with `on_conflict="fail"` the run stops with a `ServiceError` naming
    them all and no invoice stored; with `"replace"` each is stored whole by `PUT /invoice/{no}` (its
    `invoice.updated` event says so), and each customer stored with another country than the one the
    source gives it everywhere is replaced by `PUT /customer/{id}`.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if not 1 <= max_lines_per_request <= MAX_BULK_LINES:
        raise ValueError(f"max_lines_per_request must be within 1..{MAX_BULK_LINES}")
    on_conflict = parse_on_conflict(on_conflict)
    replacing = on_conflict == "replace"
    retries_before = client.retry_stats

    plan = plan_posting(lines, max_lines_per_request=max_lines_per_request)
    customers = await post_customers(client, plan, concurrency=concurrency)
    # Replacing needs to know which invoices differ, which only the comparison tells.
    if skip_unchanged or replacing:
        comparisons = await compare_hashes(client, plan, concurrency=concurrency)
    else:
        comparisons = not_compared(plan)
    if not replacing:
        refuse_corrections(comparisons)
    replaced_customers = (
        await replace_customers(client, lines, customers.conflicts) if replacing else CustomersReplaced(())
    )
    invoices = await post_invoices(
        client,
        plan,
        comparisons,
        concurrency=concurrency,
        skip_unchanged=skip_unchanged,
        on_progress=on_progress,
    )

    replaced_ids = set(replaced_customers.customer_ids)
    # Invoices a client had deleted, posted again from the source (replacing only): named as replaced.
    restored = {number for comparison in comparisons for number in comparison.deleted}
    replaced = {*invoices.replaced, *_with_days(plan.ordered, restored)}
    return PostReport(
        customers_created=customers.created,
        customers_existing=customers.existing,
        customer_conflicts=tuple(c for c in customers.conflicts if c not in replaced_ids),
        invoices_created=invoices.created,
        invoices_unchanged=invoices.unchanged,
        invoices_skipped=invoices.skipped,
        lines_created=invoices.lines_created,
        requests=len(plan.customer_batches) + len(plan.invoice_batches),
        retries=client.retry_stats.since(retries_before),
        replaced_invoices=tuple(sorted(number for number, _day in replaced)),
        replaced_days=tuple(sorted({day for _number, day in replaced})),
        customers_replaced=replaced_customers.customer_ids,
    )


@dataclass(frozen=True)
class PostingPlan:
    """What `post_lines` sends, decided before anything is sent."""

    #: The lines with each invoice contiguous, in `line_no` order (`sort_for_posting`).
    ordered: pa.Table
    #: The customers' `/bulk/customers` bodies, in order.
    customer_batches: tuple[tuple[dict[str, Any], ...], ...]
    #: The invoice requests: whole invoices of `ordered`.
    invoice_batches: tuple[InvoiceBatch, ...]


def plan_posting(lines: pa.Table, *, max_lines_per_request: int) -> PostingPlan:
    """Order `lines` for posting and cut customers and invoices into requests within the bulk limits."""
    # Sorted first: a table without LINE_SCHEMA's columns stops the stage before anything is sent.
    ordered = sort_for_posting(lines)
    customers = customer_payloads(lines)
    return PostingPlan(
        ordered=ordered,
        customer_batches=tuple(
            tuple(customers[i : i + MAX_BULK_CUSTOMERS]) for i in range(0, len(customers), MAX_BULK_CUSTOMERS)
        ),
        invoice_batches=tuple(
            plan_invoice_batches(ordered, max_lines=max_lines_per_request, max_invoices=MAX_BULK_INVOICES)
        ),
    )


@dataclass(frozen=True)
class CustomersPosted:
    """What the service acknowledged for the plan's customers."""

    created: int
    existing: int
    #: Customers it holds under another country, sorted (not an error: invoices keep their own).
    conflicts: tuple[str, ...]


async def post_customers(client: RetailClient, plan: PostingPlan, *, concurrency: int) -> CustomersPosted:
    """Post the plan's customers first: an invoice naming an unknown customer is refused."""

    async def post_batch(batch: tuple[dict[str, Any], ...]) -> dict[str, Any]:
        answer = await client.post_customers(list(batch))
        created, existing = _count(answer, "created"), _count(answer, "existing")
        if created + existing != len(batch):
            raise ServiceError(
                f"the service acknowledged {created} created + {existing} existing of {len(batch)} customers"
            )
        return answer

    jobs = [partial(post_batch, batch) for batch in plan.customer_batches]
    answers = await gather_bounded(jobs, concurrency)
    return CustomersPosted(
        created=sum(_count(a, "created") for a in answers),
        existing=sum(_count(a, "existing") for a in answers),
        conflicts=tuple(sorted({str(c) for answer in answers for c in answer.get("conflicts") or ()})),
    )


@dataclass(frozen=True)
class HashComparison:
    """The service's verdict on one invoice batch's content hashes, by invoice number."""

    unchanged: frozenset[str]
    #: Held with other content: corrections.
    different: frozenset[str]
    #: Not held because a client deleted them: posted again only when replacing.
    deleted: frozenset[str] = frozenset()


async def compare_hashes(
    client: RetailClient, plan: PostingPlan, *, concurrency: int
) -> tuple[HashComparison, ...]:
    """Ask the service which invoices of each batch it holds with the same content hash
    (`/bulk/invoices/compare`), for every batch before any invoice is posted."""

    async def compare_batch(batch: InvoiceBatch) -> HashComparison:
        # The hashes only: the body is built again when the batch is posted, so that bodies exist only
        # for requests in flight (building one is offsets; hashing is the cost, and it is done once).
        invoices = invoice_table(plan.ordered.slice(batch.start, batch.lines))
        numbers = invoices["invoice_no"].to_pylist()
        comparison = await client.compare_invoices(dict(zip(numbers, content_hashes(invoices), strict=True)))
        return HashComparison(
            frozenset(_numbers(comparison, "unchanged")),
            frozenset(_numbers(comparison, "different")),
            # A service from before the change feed names no deletion.
            frozenset(_numbers(comparison, "deleted")) if "deleted" in comparison else frozenset(),
        )

    jobs = [partial(compare_batch, batch) for batch in plan.invoice_batches]
    return tuple(await gather_bounded(jobs, concurrency))


def not_compared(plan: PostingPlan) -> tuple[HashComparison, ...]:
    """The comparisons of a run that compares nothing: every invoice is posted."""
    return (HashComparison(frozenset(), frozenset()),) * len(plan.invoice_batches)


def refuse_corrections(comparisons: Sequence[HashComparison]) -> None:
    """Raise `InvoiceConflictError` naming the invoices the service holds with other content, and those
    a client deleted from it, if any: under `on_conflict="fail"` no invoice has been stored yet, and
    none is (a deleted invoice is not posted again unasked)."""
    different = sorted(number for comparison in comparisons for number in comparison.different)
    deleted = sorted(number for comparison in comparisons for number in comparison.deleted)
    if different or deleted:
        what = [f"holds invoice(s) {_shown(different)} with other content"] if different else []
        what += [f"had invoice(s) {_shown(deleted)} deleted by a client"] if deleted else []
        raise InvoiceConflictError(f"the service {' and '.join(what)}; no invoice was stored; {REPLACE_HINT}")


def _shown(numbers: Sequence[str]) -> str:
    return ", ".join(numbers[:5]) + (f" and {len(numbers) - 5} more" if len(numbers) > 5 else "")


@dataclass(frozen=True)
class CustomersReplaced:
    """Customers whose stored country was replaced with the source's, in the order they were PUT."""

    customer_ids: tuple[str, ...]


async def replace_customers(
    client: RetailClient, lines: pa.Table, conflicts: Sequence[str]
) -> CustomersReplaced:
    """PUT the source's country of each of `conflicts` whose lines all name one country (one by one:
    they are few)."""
    replaced: list[str] = []
    if conflicts:
        countries = unambiguous_countries(lines, conflicts)
        for customer_id in conflicts:
            if customer_id in countries:
                await client.replace_customer(customer_id, countries[customer_id])
                replaced.append(customer_id)
    return CustomersReplaced(tuple(replaced))


@dataclass(frozen=True)
class BatchPosted:
    """What the service acknowledged for one invoice batch."""

    #: Stored new, by `POST /bulk/invoices` or (deleted since compared) by PUT.
    created: int
    #: Held identically, found by their hash or when posted.
    unchanged: int
    #: Of those, not sent because their hash matched.
    skipped: int
    #: (number, invoice day) of each correction replaced by PUT.
    replaced: tuple[tuple[str, dt.date], ...]
    #: The bulk answer as it came: its `lines_created` is checked once every batch is acknowledged,
    #: as it always was (checking it here would cancel batches still in flight).
    answer: Mapping[str, Any]


@dataclass(frozen=True)
class InvoicesPosted:
    """What the service acknowledged for all the plan's invoice batches."""

    created: int
    unchanged: int
    skipped: int
    lines_created: int
    replaced: tuple[tuple[str, dt.date], ...]


async def post_invoices(
    client: RetailClient,
    plan: PostingPlan,
    comparisons: Sequence[HashComparison],
    *,
    concurrency: int,
    skip_unchanged: bool,
    on_progress: Callable[[int], None] | None,
) -> InvoicesPosted:
    """Post each batch's invoices the service does not hold identically (all of them without
    `skip_unchanged`), and PUT its corrections whole (`comparisons`' `different`)."""
    jobs = [
        partial(post_invoice_batch, client, plan.ordered, batch, comparison, skip_unchanged, on_progress)
        for batch, comparison in zip(plan.invoice_batches, comparisons, strict=True)
    ]
    batches = await gather_bounded(jobs, concurrency)
    return InvoicesPosted(
        created=sum(b.created for b in batches),
        unchanged=sum(b.unchanged for b in batches),
        skipped=sum(b.skipped for b in batches),
        lines_created=sum(_count(b.answer, "lines_created") for b in batches),
        replaced=tuple(pair for b in batches for pair in b.replaced),
    )


async def post_invoice_batch(
    client: RetailClient,
    ordered: pa.Table,
    batch: InvoiceBatch,
    comparison: HashComparison,
    skip_unchanged: bool,
    on_progress: Callable[[int], None] | None,
) -> BatchPosted:
    """Post one batch (those of its invoices not held, or all) and replace its corrections by PUT."""
    # Built here, once the batch holds a slot, so that bodies exist only for requests in flight.
    invoices = invoice_table(ordered.slice(batch.start, batch.lines))
    # A rerun: what the service holds with the same content hash need not travel again.
    skipped = comparison.unchanged if skip_unchanged else frozenset()
    changed = comparison.different
    corrections = invoices.slice(0, 0)
    held = skipped | changed
    if held:
        taken = pc.is_in(invoices["invoice_no"], value_set=pa.array(sorted(held), pa.string()))
        corrections = invoices.filter(
            pc.is_in(invoices["invoice_no"], value_set=pa.array(sorted(changed), pa.string()))
        )
        invoices = invoices.filter(pc.invert(taken))
    answer: dict[str, Any] = {"created": 0, "unchanged": 0, "lines_created": 0}
    if invoices.num_rows:
        answer = await client.post_invoice_table(invoices)
    replaced, created_by_put = await _replace_invoices(client, corrections)
    created, unchanged = _count(answer, "created"), _count(answer, "unchanged")
    if created + unchanged + len(skipped) + len(replaced) + created_by_put != batch.invoices:
        by_put = len(replaced) + created_by_put
        raise ServiceError(
            f"the service acknowledged {created} created + {unchanged} unchanged "
            f"(+ {len(skipped)} by hash{f', {by_put} by PUT' if by_put else ''}) "
            f"of {batch.invoices} invoices"
        )
    if on_progress is not None:
        on_progress(batch.lines)
    return BatchPosted(
        created=created + created_by_put,
        unchanged=unchanged + len(skipped),
        skipped=len(skipped),
        replaced=tuple(replaced),
        answer=answer,
    )


async def _replace_invoices(
    client: RetailClient, corrections: pa.Table
) -> tuple[list[tuple[str, dt.date]], int]:
    """PUT each invoice of `corrections` (an `invoice_table`) whole; returns the (number, invoice day)
    of those replaced, and how many the service created instead (deleted since they were compared).

    Without `If-Match`: the source is what the service must hold after a `replace` run, whatever was
    stored, and a PUT of the same body is idempotent, so a retry after a lost answer is harmless; with
    `If-Match` that retry would be refused (412) by our own first attempt. A writer that changes the
    invoice after the PUT is caught by the read-back's reconciliation.
    """
    replaced: list[tuple[str, dt.date]] = []
    created = 0
    # One by one: corrections are few, and the batch already holds one of the run's request slots.
    for invoice in corrections.to_pylist():
        number = invoice["invoice_no"]
        if await client.replace_invoice(number, replace_body(invoice)):
            created += 1
        else:
            replaced.append((number, invoice["invoice_date"].date()))
    return replaced, created


def replace_body(invoice: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of `PUT /invoice/{no}` (`schemas.InvoiceReplace`) for one `invoice_table` row:
    prices as decimal text (never a float), times as ISO text without a zone, as the service stores."""
    return {
        "invoice_date": invoice["invoice_date"].isoformat(),
        "customer_id": invoice["customer_id"],
        "country": invoice["country"],
        "lines": [
            {
                "line_no": line["line_no"],
                "stock_code": line["stock_code"],
                "description": line["description"],
                "quantity": line["quantity"],
                "unit_price": str(line["unit_price"]),
                "invoice_date": line["invoice_date"].isoformat(),
            }
            for line in invoice["lines"]
        ],
    }


def unambiguous_countries(lines: pa.Table, customer_ids: Sequence[str]) -> dict[str, str]:
    """The country of each of `customer_ids` whose lines in `lines` all name the same one.

    A customer whose lines name several countries keeps the one the service stores (the first posted):
    the source does not say which is right, and replacing it with the first of the run's lines would
    change it back and forth between runs of different days.
    """
    wanted = pa.array(sorted(customer_ids), pa.string())
    rows = lines.select(["customer_id", "country"]).filter(pc.is_in(lines["customer_id"], value_set=wanted))
    per_customer = rows.group_by("customer_id").aggregate([("country", "distinct")])
    return {
        customer_id: countries[0]
        for customer_id, countries in zip(
            per_customer["customer_id"].to_pylist(), per_customer["country_distinct"].to_pylist(), strict=True
        )
        if len(countries) == 1
    }


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
    """The service's content hash of each row of an `invoice_table` (`retail_contract.content_hash`,
    the one definition the service uses too; `invoice_table` nests the lines in `line_no` order)."""
    return content_hash.content_hashes(
        invoices["invoice_no"],
        invoices["customer_id"],
        invoices["invoice_date"],
        invoices["country"],
        invoices["lines"],
    )


def _with_days(ordered: pa.Table, numbers: set[str]) -> set[tuple[str, dt.date]]:
    """(invoice number, its day) of each of `numbers` in the posting order's lines."""
    if not numbers:
        return set()
    rows = ordered.filter(pc.is_in(ordered["invoice_no"], value_set=pa.array(sorted(numbers), pa.string())))
    pairs = rows.select(["invoice_no", "invoice_day"]).group_by(["invoice_no", "invoice_day"]).aggregate([])
    return set(zip(pairs["invoice_no"].to_pylist(), pairs["invoice_day"].to_pylist(), strict=True))


def _numbers(answer: Mapping[str, Any], key: str) -> list[str]:
    value = answer.get(key)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ServiceError(f"the service's answer lacks the list {key!r}: {answer!r:.200}")
    return value


def _count(answer: Mapping[str, Any], key: str) -> int:
    value = answer.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ServiceError(f"the service's answer lacks the count {key!r}: {answer!r:.200}")
    return value
