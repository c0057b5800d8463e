"""What a write commits: the lake's tables derived from a run's lines, customers and rejects (invoices
and customers from the lines), sorted and cut into units, one per day plus one for the source's
undated rejects. No storage here: these are the rows, before anything is written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.lake import storage
from etl.schema import (
    AMOUNT_TYPE,
    CUSTOMER_SCHEMA,
    INVOICE_SCHEMA,
    LINE_SCHEMA,
    REJECT_SCHEMA,
    ServiceSnapshot,
    is_sorted,
)
from retail_contract.lake_layout import DAY_FILE, DEFAULT_PARTITION, OBJECT_DIR, PARTITION_COLUMN

_EPOCH = dt.date(1970, 1, 1)


def _without_partition(schema: pa.Schema) -> pa.Schema:
    index = schema.get_field_index(PARTITION_COLUMN)
    return schema.remove(index) if index >= 0 else schema


#: What each file holds: the table's schema minus the partition column (the path carries it).
FILE_SCHEMAS: dict[str, pa.Schema] = {
    "invoice_lines": _without_partition(LINE_SCHEMA),
    "invoices": _without_partition(INVOICE_SCHEMA),
    "customers": CUSTOMER_SCHEMA,
    "rejects": _without_partition(REJECT_SCHEMA),
}


#: What `read_lake_table` returns: the file schema plus `invoice_day` (date32) last.
TABLE_SCHEMAS: dict[str, pa.Schema] = {
    "invoice_lines": LINE_SCHEMA,
    "invoices": INVOICE_SCHEMA,
    "customers": CUSTOMER_SCHEMA.append(pa.field(PARTITION_COLUMN, pa.date32(), nullable=False)),
    "rejects": REJECT_SCHEMA,
}


# Row order inside a file (and, after the day, of a read): deterministic, so reruns are byte-identical.
SORT_KEYS: dict[str, list[str]] = {
    "invoice_lines": ["invoice_no", "line_no"],
    "invoices": ["invoice_no"],
    "customers": ["customer_id"],
    "rejects": ["source_row"],
}


@dataclass
class Unit:
    """What commits together: a day's four tables, or one source's undated rejects."""

    key: str  # the manifest's name: "invoice_day=2010-12-01", "invoice_day=__HIVE_...__.<fingerprint>"
    partition: str  # "invoice_day=2010-12-01"
    file_name: str  # the published file's name in each table's partition
    object_prefix: str  # "<table>." or "rejects.<fingerprint>." before the write id
    tables: dict[str, pa.Table | None]  # None: the table has no rows in this unit (any old file goes)

    def published(self, table: str) -> str:
        """The published file of `table` in this unit, relative to the lake's root."""
        return f"{table}/{self.partition}/{self.file_name}"

    def object_name(self, table: str, write_id: str) -> str:
        """The object `write_id` writes for `table` in this unit, relative to the lake's root."""
        prefix = self.object_prefix or f"{table}."
        return f"{OBJECT_DIR}/{self.partition}/{prefix}{write_id}.parquet"


def plan_units(
    days: tuple[dt.date, ...],
    snapshot: ServiceSnapshot,
    rejects: pa.Table,
    fingerprint: str | None,
) -> list[Unit]:
    """Every unit this write commits, with each table's rows (None: no rows), before anything is written.

    Day by day, then the source's undated rejects (none without a `fingerprint`). Each table is derived
    and sorted by (day, its key) once and then sliced per day: per-day filters and group-bys cost a pass
    over the data, or a compute call, per day.
    """
    lines = _conform(snapshot.lines, LINE_SCHEMA, "snapshot.lines")
    customers = _conform(snapshot.customers, CUSTOMER_SCHEMA, "snapshot.customers")
    rejects = _conform(rejects, REJECT_SCHEMA, "rejects")
    _check_days(lines, days, "snapshot.lines")
    dated_rejects = rejects.filter(pc.is_valid(rejects[PARTITION_COLUMN]))
    _check_days(dated_rejects, days, "rejects")
    countries = _customer_countries(customers)

    lines = _sorted_by_day(lines, "invoice_lines")
    by_table = {
        "invoice_lines": lines,
        "invoices": _invoices(lines),
        "customers": _customers(lines, countries),
        "rejects": _sorted_by_day(dated_rejects, "rejects"),
    }
    bounds = {table: _day_bounds(data, days) for table, data in by_table.items()}
    units: list[Unit] = []
    for index, day in enumerate(days):
        partition = f"{PARTITION_COLUMN}={day.isoformat()}"
        tables: dict[str, pa.Table | None] = {}
        for table, data in by_table.items():
            first, stop = bounds[table][index]
            tables[table] = _day_rows(data, first, stop, table) if stop > first else None
        units.append(Unit(partition, partition, DAY_FILE, "", tables))
    undated = _sorted(rejects.filter(pc.is_null(rejects[PARTITION_COLUMN])), "rejects")
    if fingerprint is None:
        if undated.num_rows:
            raise ValueError("rejects without a day need the source's fingerprint")
        return units
    partition = f"{PARTITION_COLUMN}={DEFAULT_PARTITION}"
    units.append(
        Unit(
            f"{partition}.{fingerprint}",
            partition,
            f"part-{fingerprint}.parquet",
            f"rejects.{fingerprint}.",
            {"rejects": undated if undated.num_rows else None},
        )
    )
    return units


def _sorted_by_day(table: pa.Table, name: str) -> pa.Table:
    """`table` sorted by day, then its key, in one chunk: each day's slice is then one chunk too."""
    names = (PARTITION_COLUMN, *SORT_KEYS[name])
    table = table.combine_chunks()
    if is_sorted(table, names):
        return table  # as the service's read-back delivers lines: a (stable) sort would change nothing
    return table.sort_by([(k, "ascending") for k in names]).combine_chunks()


def _day_rows(data: pa.Table, first: int, stop: int, table: str) -> pa.Table:
    """Rows `first:stop` of `data`, built as each table's files have always been built.

    The content digest hashes the Arrow IPC stream, and a sliced array streams with other buffer
    lengths than a fresh one holding the same values. Line files have always been digested as slices
    of the day-sorted lines; the other tables' as fresh arrays (a per-day sort). Keeping each so keeps
    every file byte-identical to what earlier versions wrote, so their reruns still skip it.
    """
    rows = data.slice(first, stop - first)
    if table == "invoice_lines":
        return rows
    return rows.take(pa.array(np.arange(stop - first, dtype=np.int64)))


def _day_bounds(table: pa.Table, days: Sequence[dt.date]) -> list[tuple[int, int]]:
    """Where the rows of each of `days` start and stop in `table`, which is sorted by day (no nulls)."""
    values = pc.cast(table[PARTITION_COLUMN], pa.int32()).to_numpy()
    ordinals = np.array([(day - _EPOCH).days for day in days], dtype=np.int32)
    starts = np.searchsorted(values, ordinals, side="left")
    stops = np.searchsorted(values, ordinals, side="right")
    return [(int(first), int(stop)) for first, stop in zip(starts, stops, strict=True)]


def _conform(table: pa.Table, schema: pa.Schema, label: str) -> pa.Table:
    try:
        return table.select(schema.names).cast(schema)
    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"{label} does not match its schema: {storage.one_line(exc)}") from exc


def _check_days(table: pa.Table, days: tuple[dt.date, ...], label: str) -> None:
    outside = table.filter(pc.invert(pc.is_in(table[PARTITION_COLUMN], pa.array(days, pa.date32()))))
    if outside.num_rows:
        found = sorted(set(outside[PARTITION_COLUMN].to_pylist()))[:5]
        raise ValueError(f"{label} has rows on day(s) {', '.join(map(str, found))} outside the days written")


def _sorted(table: pa.Table, name: str) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in SORT_KEYS[name]]).combine_chunks()


def _invoices(lines: pa.Table) -> pa.Table:
    """One row per invoice and day: first timestamp, customer, country, line count, totals (exact
    decimals); sorted by day, then invoice number."""
    # decimal128(12,3) x decimal128(19,0) is decimal128(32,3): exact, summed exactly, then narrowed
    # to AMOUNT_TYPE, which fails loudly rather than rounding if a total ever outgrew 18 digits.
    amount = pc.multiply(lines["unit_price"], pc.cast(lines["quantity"], pa.decimal128(19, 0)))
    # Grouped by day too: each day's file holds the invoice as that day's lines make it up.
    grouped = (
        lines.append_column("amount", amount)
        .group_by([PARTITION_COLUMN, "invoice_no"], use_threads=False)
        .aggregate(
            [
                ("invoice_date", "min"),
                ("customer_id", "min"),  # one customer and country per invoice: min is that value
                ("country", "min"),
                ("line_no", "count"),
                ("quantity", "sum"),
                ("amount", "sum"),
            ]
        )
    )
    invoices = pa.table(
        {
            "invoice_no": grouped["invoice_no"],
            "invoice_date": grouped["invoice_date_min"],
            "customer_id": grouped["customer_id_min"],
            "country": grouped["country_min"],
            "line_count": pc.cast(grouped["line_no_count"], pa.int32()),
            "total_quantity": grouped["quantity_sum"],
            "total_amount": pc.cast(grouped["amount_sum"], AMOUNT_TYPE),
            PARTITION_COLUMN: grouped[PARTITION_COLUMN],
        }
    )
    return _sorted_by_day(invoices.cast(INVOICE_SCHEMA), "invoices")


def _customer_countries(customers: pa.Table) -> dict[str, str]:
    countries: dict[str, str] = {}
    for customer_id, country in zip(
        customers["customer_id"].to_pylist(), customers["country"].to_pylist(), strict=True
    ):
        if countries.setdefault(customer_id, country) != country:
            raise ValueError(f"snapshot.customers lists customer {customer_id} under two countries")
    return countries


def _customers(lines: pa.Table, countries: Mapping[str, str]) -> pa.Table:
    """The customers invoiced on each day of `lines`, with the country the service stores for them;
    sorted by day, then customer."""
    invoiced = lines.select([PARTITION_COLUMN, "customer_id"])  # before filtering: copies 2 columns, not 10
    invoiced = invoiced.filter(pc.is_valid(invoiced["customer_id"]))
    pairs = _sorted_by_day(
        invoiced.group_by([PARTITION_COLUMN, "customer_id"], use_threads=False).aggregate([]), "customers"
    )
    index = pc.index_in(pairs["customer_id"], value_set=pa.array(list(countries), pa.string()))
    if index.null_count:
        unknown = pairs.filter(pc.is_null(index))
        day = unknown[PARTITION_COLUMN][0].as_py()  # the first day with one, as a day-by-day check finds
        ids = unknown.filter(pc.equal(unknown[PARTITION_COLUMN], pa.scalar(day, pa.date32())))["customer_id"]
        listed = ids.to_pylist()
        shown = ", ".join(listed[:5]) + (", ..." if len(listed) > 5 else "")
        raise ValueError(f"snapshot.customers lacks customer(s) {shown} invoiced on {day}")
    country = pc.take(pa.array(list(countries.values()), pa.string()), index)
    return pa.table(
        {"customer_id": pairs["customer_id"], "country": country, PARTITION_COLUMN: pairs[PARTITION_COLUMN]}
    ).combine_chunks()
