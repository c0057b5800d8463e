"""Compare what the service (or the lake) holds with the validated source, exactly.

Two checks, both per invoice day:
- figures: lines, invoices, customers (distinct, non-null), sum of quantity and sum of
  quantity * unit_price, computed in Arrow decimals (never floats), so an amount agrees to the last
  thousandth or it differs;
- rows: the lines matched on `(invoice_no, line_no)` must be equal on every LINE_SCHEMA column. A row
  check catches what figures cannot (a changed description, or two changes that cancel in a sum).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.errors import ReconciliationError
from etl.json_texts import JsonTexts, compact
from etl.schema import LINE_SCHEMA

KEY = ("invoice_no", "line_no")
#: The columns compared row by row besides the key, in LINE_SCHEMA order.
COMPARED_COLUMNS: tuple[str, ...] = tuple(name for name in LINE_SCHEMA.names if name not in KEY)
#: Keys shown per kind of row difference (missing, extra, different).
SHOWN_KEYS = 5
#: Days spelled out in the one-line message; the report has them all.
SHOWN_DAYS = 5

# Both sides are cast to LINE_SCHEMA's types, but a null where the schema forbids one must show up as
# a difference in the report, not as a failed cast.
_COMPARABLE_SCHEMA = pa.schema([f.with_nullable(True) for f in LINE_SCHEMA])
# int64 quantities as exact decimals: 19 digits hold any int64, so the cast can never fail.
_QUANTITY_DECIMAL = pa.decimal128(19, 0)
_ZERO = Decimal("0.000")

LineKey = tuple[str, int]


@dataclass(frozen=True)
class DayFigures:
    """The reconciled measures of one invoice day on one side."""

    lines: int = 0
    invoices: int = 0
    customers: int = 0
    quantity: int = 0
    amount: Decimal = _ZERO

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the amount as a decimal string."""
        return {
            "lines": self.lines,
            "invoices": self.invoices,
            "customers": self.customers,
            "quantity": self.quantity,
            "amount": str(self.amount),
        }


MEASURES: tuple[str, ...] = ("lines", "invoices", "customers", "quantity", "amount")


@dataclass(frozen=True)
class DayComparison:
    """One invoice day: the source's figures, the other side's, and the rows that differ that day."""

    day: dt.date
    source: DayFigures
    other: DayFigures
    missing_rows: int = 0
    extra_rows: int = 0
    #: Column name → rows of this day present on both sides whose value in that column differs.
    different_columns: Mapping[str, int] = field(default_factory=dict)

    @property
    def measures_differing(self) -> tuple[str, ...]:
        """The figures (lines, invoices, customers, quantity, amount) that do not agree."""
        return tuple(m for m in MEASURES if getattr(self.source, m) != getattr(self.other, m))

    @property
    def ok(self) -> bool:
        """Whether the day agrees on every figure and every row."""
        return not (self.measures_differing or self.missing_rows or self.extra_rows or self.different_columns)

    def describe(self) -> str:
        """E.g. `2010-12-01 lines 3108 vs 3107, amount 58635.560 vs 58630.460, 1 line missing`
        (source first)."""
        parts = [
            f"{m} {getattr(self.source, m)} vs {getattr(self.other, m)}" for m in self.measures_differing
        ]
        if self.missing_rows:
            parts.append(f"{_lines(self.missing_rows)} missing")
        if self.extra_rows:
            parts.append(f"{_lines(self.extra_rows)} extra")
        parts.extend(f"{column} differs on {_lines(n)}" for column, n in self.different_columns.items())
        return f"{self.day.isoformat()} " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures and differences of the day."""
        return {
            "day": self.day.isoformat(),
            "ok": self.ok,
            "source": self.source.to_dict(),
            "other": self.other.to_dict(),
            "measures_differing": list(self.measures_differing),
            "missing_rows": self.missing_rows,
            "extra_rows": self.extra_rows,
            "different_columns": dict(self.different_columns),
        }


@dataclass(frozen=True)
class RowCheck:
    """The row-level comparison on `(invoice_no, line_no)`, over all days."""

    source_rows: int
    other_rows: int
    missing: int = 0
    extra: int = 0
    different: int = 0
    missing_keys: tuple[LineKey, ...] = ()
    extra_keys: tuple[LineKey, ...] = ()
    different_keys: tuple[LineKey, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every row of each side has an equal row on the other."""
        return not (self.missing or self.extra or self.different)

    def describe(self) -> str:
        """E.g. `rows: 1 missing (536365/3), 1 different (536366/1)`."""
        parts = [
            f"{n} {kind} ({', '.join(f'{i}/{ln}' for i, ln in keys)}{', ...' if n > len(keys) else ''})"
            for kind, n, keys in (
                ("missing", self.missing, self.missing_keys),
                ("extra", self.extra, self.extra_keys),
                ("different", self.different, self.different_keys),
            )
            if n
        ]
        return "rows: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts and the first keys of each kind, as `[invoice_no, line_no]`."""
        return {
            "source_rows": self.source_rows,
            "other_rows": self.other_rows,
            "missing": self.missing,
            "extra": self.extra,
            "different": self.different,
            "missing_keys": [list(k) for k in self.missing_keys],
            "extra_keys": [list(k) for k in self.extra_keys],
            "different_keys": [list(k) for k in self.different_keys],
        }


@dataclass(frozen=True)
class ReconcileReport:
    """Source against one other side (`label`: "service" or "lake"), per invoice day and per row."""

    label: str
    days: tuple[DayComparison, ...]
    rows: RowCheck
    total_source: DayFigures
    total_other: DayFigures

    @property
    def ok(self) -> bool:
        """Whether the other side holds exactly the source's lines."""
        return self.rows.ok and all(day.ok for day in self.days)

    @property
    def differing_days(self) -> tuple[DayComparison, ...]:
        """The days that do not agree, in day order."""
        return tuple(day for day in self.days if not day.ok)

    def message(self) -> str:
        """One line saying where the sides differ (source figures first), or that they agree."""
        differing = self.differing_days
        return _message(
            self.label,
            len(self.days),
            self.total_source.lines,
            differing[:SHOWN_DAYS],
            len(differing),
            self.rows,
        )

    def raise_for_differences(self) -> None:
        """Raise `ReconciliationError` with `message()` unless the sides agree."""
        if not self.ok:
            raise ReconciliationError(self.message())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form for the run report (decimals as strings, days in ISO form)."""
        return {
            "label": self.label,
            "ok": self.ok,
            "message": self.message(),
            "totals": {"source": self.total_source.to_dict(), "other": self.total_other.to_dict()},
            "rows": self.rows.to_dict(),
            "days": [day.to_dict() for day in self.days],
        }


def reconcile(source_lines: pa.Table, service_lines: pa.Table, *, label: str = "service") -> ReconcileReport:
    """Compare `service_lines` (or the lake's, with `label="lake"`) with `source_lines`, exactly.

    Both tables must have LINE_SCHEMA's columns; their order and extra columns do not matter.
    """
    source = _comparable(source_lines, "source")
    other = _comparable(service_lines, label)

    # The usual case: both sides in `LINE_ORDER` and equal. Equal tables are equal multisets of rows
    # with equal figures, and one comparison is much cheaper than sorting and summing the other side.
    identical = source.equals(other)
    source_days, total_source = _figures_by_day(source), _total_figures(source)
    if identical:
        other_days, total_other = source_days, total_source
    else:
        other_days, total_other = _figures_by_day(other), _total_figures(other)
    rows, missing_by_day, extra_by_day, columns_by_day = _compare_rows(source, other, identical=identical)

    days = sorted(set(source_days) | set(other_days))
    comparisons = tuple(
        DayComparison(
            day=day,
            source=source_days.get(day, DayFigures()),
            other=other_days.get(day, DayFigures()),
            missing_rows=missing_by_day.get(day, 0),
            extra_rows=extra_by_day.get(day, 0),
            different_columns={
                column: by_day[day] for column, by_day in columns_by_day.items() if day in by_day
            },
        )
        for day in days
    )
    return ReconcileReport(
        label=label,
        days=comparisons,
        rows=rows,
        total_source=total_source,
        total_other=total_other,
    )


def lines_of_source_invoices(source_lines: pa.Table, service_lines: pa.Table) -> pa.Table:
    """What the service holds of the source's own invoices: the side the source is reconciled with.

    The service is the system of record and other clients write to it: invoices they added to the same
    days are theirs, not a difference (the lake shows them, and is checked against the service's whole
    days). An invoice of the source that another client changed is one (`--on-conflict` decides
    before anything is posted)."""
    ours = pc.is_in(service_lines.column("invoice_no"), value_set=source_lines.column("invoice_no").unique())
    return service_lines.filter(ours)


def _comparable(lines: pa.Table, side: str) -> pa.Table:
    missing = [name for name in LINE_SCHEMA.names if name not in lines.column_names]
    if missing:
        raise ValueError(f"{side} lines lack column(s) {', '.join(missing)} of LINE_SCHEMA")
    return lines.select(LINE_SCHEMA.names).cast(_COMPARABLE_SCHEMA)


def _with_amount(lines: pa.Table) -> pa.Table:
    """`lines` plus `amount` = quantity * unit_price as an exact decimal."""
    amount = pc.multiply(pc.cast(lines["quantity"], _QUANTITY_DECIMAL), lines["unit_price"])
    return lines.append_column("amount", amount)


_AGGREGATES = [
    ("invoice_no", "count", pc.CountOptions(mode="all")),
    ("invoice_no", "count_distinct"),
    ("customer_id", "count_distinct"),  # default mode counts non-null values only
    ("quantity", "sum"),
    ("amount", "sum"),
]


def _figures_by_day(lines: pa.Table) -> dict[dt.date, DayFigures]:
    by_day = _with_amount(lines).group_by("invoice_day").aggregate(_AGGREGATES)
    result: dict[dt.date, DayFigures] = {}
    for row in by_day.to_pylist():
        result[row["invoice_day"]] = DayFigures(
            lines=row["invoice_no_count"],
            invoices=row["invoice_no_count_distinct"],
            customers=row["customer_id_count_distinct"],
            quantity=row["quantity_sum"] or 0,
            amount=row["amount_sum"] if row["amount_sum"] is not None else _ZERO,
        )
    return result


def _total_figures(lines: pa.Table) -> DayFigures:
    with_amount = _with_amount(lines)
    quantity = pc.sum(with_amount["quantity"]).as_py()
    amount = pc.sum(with_amount["amount"]).as_py()
    return DayFigures(
        lines=lines.num_rows,
        invoices=pc.count_distinct(lines["invoice_no"]).as_py(),
        customers=pc.count_distinct(lines["customer_id"]).as_py(),
        quantity=quantity or 0,
        amount=amount if amount is not None else _ZERO,
    )


def _with_occurrence(lines: pa.Table) -> pa.Table:
    """Sorted by key, plus `_occurrence`: 0 for the first row of a key, 1 for its first repeat, ...

    Matching on (key, occurrence) compares the sides as multisets: a line stored twice is one matched
    row plus one extra, rather than a cross product of the repeats.
    """
    ordered = lines.sort_by([(name, "ascending") for name in KEY])
    n = ordered.num_rows
    index = np.arange(n, dtype=np.int64)
    if n:
        new_key = np.ones(n, dtype=bool)
        numbers, line_nos = ordered["invoice_no"].combine_chunks(), ordered["line_no"].combine_chunks()
        changed = pc.or_(
            pc.not_equal(numbers.slice(1), numbers.slice(0, n - 1)),
            pc.not_equal(line_nos.slice(1), line_nos.slice(0, n - 1)),
        )
        new_key[1:] = pc.fill_null(changed, True).to_numpy(zero_copy_only=False)
        occurrence = index - np.maximum.accumulate(np.where(new_key, index, 0))
    else:
        occurrence = index
    return ordered.append_column("_occurrence", pa.array(occurrence, pa.int64()))


def _compare_rows(
    source: pa.Table, other: pa.Table, *, identical: bool
) -> tuple[RowCheck, dict[dt.date, int], dict[dt.date, int], dict[str, dict[dt.date, int]]]:
    """The row check, plus per day: rows missing, rows extra, and per column rows that differ.
    `identical`: the tables are equal as they stand (`source.equals(other)`)."""
    if identical:
        return RowCheck(source.num_rows, other.num_rows), {}, {}, {}
    left, right = _with_occurrence(source), _with_occurrence(other)
    if left.equals(right):  # equal rows in another order
        return RowCheck(source.num_rows, other.num_rows), {}, {}, {}

    keys = [*KEY, "_occurrence"]
    joined = left.append_column("_in_source", pa.repeat(True, left.num_rows)).join(
        right.append_column("_in_other", pa.repeat(True, right.num_rows)),
        keys=keys,
        join_type="full outer",
        left_suffix="_source",
        right_suffix="_other",
    )
    in_source = pc.is_valid(joined["_in_source"])
    in_other = pc.is_valid(joined["_in_other"])
    day = pc.coalesce(joined["invoice_day_source"], joined["invoice_day_other"])
    keyed = pa.table({"invoice_no": joined["invoice_no"], "line_no": joined["line_no"], "day": day})

    missing = pc.and_(in_source, pc.invert(in_other))
    extra = pc.and_(in_other, pc.invert(in_source))
    both = pc.and_(in_source, in_other)
    different = pa.repeat(False, joined.num_rows)
    columns_by_day: dict[str, dict[dt.date, int]] = {}
    for column in COMPARED_COLUMNS:
        differs = pc.and_(both, pc.invert(_same(joined[f"{column}_source"], joined[f"{column}_other"])))
        if pc.any(differs).as_py():
            columns_by_day[column] = _count_by_day(keyed, differs)
            different = pc.or_(different, differs)

    check = RowCheck(
        source_rows=source.num_rows,
        other_rows=other.num_rows,
        missing=pc.sum(missing).as_py() or 0,
        extra=pc.sum(extra).as_py() or 0,
        different=pc.sum(different).as_py() or 0,
        missing_keys=_first_keys(keyed, missing),
        extra_keys=_first_keys(keyed, extra),
        different_keys=_first_keys(keyed, different),
    )
    return check, _count_by_day(keyed, missing), _count_by_day(keyed, extra), columns_by_day


def _same(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
    """Element-wise equality where two nulls are equal and a null never equals a value."""
    equal = pc.fill_null(pc.equal(a, b), False)
    return pc.or_(equal, pc.and_(pc.is_null(a), pc.is_null(b)))


def _count_by_day(keyed: pa.Table, mask: pa.ChunkedArray | pa.Array) -> dict[dt.date, int]:
    counts = keyed.filter(mask).group_by("day").aggregate([("day", "count", pc.CountOptions(mode="all"))])
    return dict(zip(counts["day"].to_pylist(), counts["day_count"].to_pylist(), strict=True))


def _first_keys(keyed: pa.Table, mask: pa.ChunkedArray | pa.Array) -> tuple[LineKey, ...]:
    rows = keyed.filter(mask).sort_by([(name, "ascending") for name in KEY]).slice(0, SHOWN_KEYS)
    return tuple(zip(rows["invoice_no"].to_pylist(), rows["line_no"].to_pylist(), strict=True))


def _lines(n: int) -> str:
    return f"{n} line" if n == 1 else f"{n} lines"


def _days(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"


def _message(
    label: str,
    day_count: int,
    source_lines: int,
    shown_days: Sequence[DayComparison],
    differing_count: int,
    rows: RowCheck,
) -> str:
    if rows.ok and not differing_count:
        return f"{label} matches source on {_days(day_count)} ({source_lines} lines)"
    shown = "; ".join(day.describe() for day in shown_days)
    more = f"; and {_days(differing_count - SHOWN_DAYS)} more" if differing_count > SHOWN_DAYS else ""
    described_rows = f"; {rows.describe()}" if not rows.ok else ""
    return f"{label} differs from source on {_days(differing_count)}: {shown}{more}{described_rows}"


class RunReconciliation:
    """A run's check against one side, added up from its batches' reports (over disjoint days, in day
    order) without keeping them: row counts and totals as running sums, the first keys and differing
    days the message shows, and each day's figures as one compact JSON text for the report (~250
    bytes a day, where the report objects took ~1.3 KiB and re-adding them all after every batch made
    a 100x run's reconciliation quadratic)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.batches = 0
        self._days: list[str] = []
        self._differing: list[DayComparison] = []
        self._differing_count = 0
        self._rows = RowCheck(0, 0)
        self._total_source = DayFigures()
        self._total_other = DayFigures()

    def add(self, part: ReconcileReport) -> None:
        """Add one batch's report."""
        if part.label != self.label:
            raise ValueError(f"a {part.label} check added to the run's {self.label} check")
        self.batches += 1
        self._days.extend(compact(day.to_dict()) for day in part.days)
        differing = part.differing_days
        self._differing_count += len(differing)
        self._differing.extend(differing[: SHOWN_DAYS - len(self._differing)])
        rows, more = self._rows, part.rows
        self._rows = RowCheck(
            source_rows=rows.source_rows + more.source_rows,
            other_rows=rows.other_rows + more.other_rows,
            missing=rows.missing + more.missing,
            extra=rows.extra + more.extra,
            different=rows.different + more.different,
            missing_keys=(rows.missing_keys + more.missing_keys)[:SHOWN_KEYS],
            extra_keys=(rows.extra_keys + more.extra_keys)[:SHOWN_KEYS],
            different_keys=(rows.different_keys + more.different_keys)[:SHOWN_KEYS],
        )
        self._total_source = _add_figures(self._total_source, part.total_source)
        self._total_other = _add_figures(self._total_other, part.total_other)

    @property
    def ok(self) -> bool:
        """Whether every batch so far agreed."""
        return self._rows.ok and not self._differing_count

    def to_dict(self, *, customers: tuple[int, int]) -> dict[str, Any]:
        """The run's check as `ReconcileReport.to_dict` gives it for one report over all the days.
        `customers`: the run's distinct customers on (source, other side); a customer buys on several
        days, so the batches' counts do not add up."""
        source = replace(self._total_source, customers=customers[0])
        other = replace(self._total_other, customers=customers[1])
        return {
            "label": self.label,
            "ok": self.ok,
            "message": _message(
                self.label, len(self._days), source.lines, self._differing, self._differing_count, self._rows
            ),
            "totals": {"source": source.to_dict(), "other": other.to_dict()},
            "rows": self._rows.to_dict(),
            "days": JsonTexts(self._days),  # written as they are (`etl.lake.reports`)
        }


def _add_figures(a: DayFigures, b: DayFigures) -> DayFigures:
    # An invoice has one day, so batches never share one; customers are counted apart (see above).
    return DayFigures(
        lines=a.lines + b.lines,
        invoices=a.invoices + b.invoices,
        quantity=a.quantity + b.quantity,
        amount=a.amount + b.amount,
    )


class DistinctValues:
    """The distinct non-null values of a column seen over a run's batches, exactly, as Arrow arrays:
    each batch's distinct values wait in a list that is merged into the seen ones once it outgrows
    them (amortised linear time). 437,200 customer ids take ~5 MiB here against ~40 MiB as a set."""

    _MERGE_FROM = 1 << 16

    def __init__(self) -> None:
        self._seen: pa.Array | None = None
        self._pending: list[pa.Array] = []
        self._pending_size = 0

    def add(self, column: pa.Array | pa.ChunkedArray) -> None:
        """Add a batch's values (nulls are not counted)."""
        distinct = pc.unique(column.drop_null())
        if isinstance(distinct, pa.ChunkedArray):
            distinct = distinct.combine_chunks()
        self._pending.append(distinct)
        self._pending_size += len(distinct)
        if self._pending_size > max(self._MERGE_FROM, len(self._seen or ())):
            self._merge()

    def __len__(self) -> int:
        self._merge()
        return 0 if self._seen is None else len(self._seen)

    def _merge(self) -> None:
        if not self._pending:
            return
        parts = self._pending if self._seen is None else [self._seen, *self._pending]
        self._seen = pc.unique(pa.chunked_array(parts))
        if isinstance(self._seen, pa.ChunkedArray):
            self._seen = self._seen.combine_chunks()
        self._pending, self._pending_size = [], 0
