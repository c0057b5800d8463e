"""Stage 6: the Parquet lake, partitioned by invoice day, on a local path or an object store.

Layout (hive partitions; `invoice_day` lives in the path, not in the files):

    <root>/invoice_lines/invoice_day=2010-12-01/part-0.parquet   LINE_SCHEMA        } the published
    <root>/invoices/invoice_day=2010-12-01/part-0.parquet        INVOICE_SCHEMA     } view: what plain
    <root>/customers/invoice_day=2010-12-01/part-0.parquet       CUSTOMER_SCHEMA    } Parquet readers
    <root>/rejects/invoice_day=2010-12-01/part-0.parquet         REJECT_SCHEMA      } list and read
    <root>/rejects/invoice_day=__HIVE_DEFAULT_PARTITION__/part-<source fingerprint>.parquet
    <root>/_lake/objects/invoice_day=2010-12-01/<table>.<write id>.parquet   immutable committed files
    <root>/_lake/manifests/invoice_day=2010-12-01.json                       a day's commit point
    <root>/_lake/manifests/invoice_day=__HIVE_DEFAULT_PARTITION__.<source fingerprint>.json
    <root>/_runs/<run_id>.json

A day is published in three steps that hold on S3, where one PUT is atomic and nothing can be renamed:

1. Every table of the day is written as a new object under a name no one else uses
   (`_lake/objects/...<write id>.parquet`); no reader looks there before step 2.
2. The day's manifest (tables, objects, rows, sizes, sha256) is written last, in one PUT that is
   conditional on the manifest the writer read (S3 `If-Match`/`If-None-Match`; locally a lock and a
   compare, then a rename): that PUT is the commit. Readers that follow the manifest
   (`read_lake_table`, `committed_files`) see the old day or the new day, all tables together.
3. Each table's object is copied to its published name (a server-side copy on S3, a hard link then a
   rename locally): one whole file per table and day, so a reader that just lists the table sees no
   duplicate and no half-written file, only committed days.

A write that dies before step 2 changed nothing any reader sees; after step 2 the next write of the day
finishes step 3. The objects a commit replaced stay one more commit (for readers that read the old
manifest a moment ago); objects of writes that never committed are removed by a later write of the day
once they are `ORPHAN_GRACE` old. docs/design.md ("The lake") has the failure cases.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem as FsspecLocalFileSystem
from pyarrow.fs import FileSystem, FSSpecHandler, LocalFileSystem, PyFileSystem

from etl.errors import LakeError
from etl.schema import (
    AMOUNT_TYPE,
    CUSTOMER_SCHEMA,
    INVOICE_SCHEMA,
    LINE_SCHEMA,
    REJECT_SCHEMA,
    ServiceSnapshot,
    is_sorted,
)
from retail_contract.lake_layout import (
    DAY_FILE,
    DEFAULT_PARTITION,
    DIGEST_KEY,
    LAKE_DIR,
    MANIFEST_DIR,
    MANIFEST_FORMAT,
    OBJECT_DIR,
    PARTITION_COLUMN,
    RUNS_DIR,
    TABLES,
)

__all__ = [
    "TABLES",
    "LakeReport",
    "committed_files",
    "filesystem",
    "prepare_s3_client",
    "read_lake_table",
    "write_lake",
    "write_run_report",
]

#: An object no manifest names is removed once this old: younger, it may belong to a write in progress.
ORPHAN_GRACE = dt.timedelta(hours=1)

_PARTITION_FIELD = pa.field(PARTITION_COLUMN, pa.date32())
_LOCAL_FS = LocalFileSystem()  # stateless: one instance serves every thread
_PARTITIONING = ds.HivePartitioning(pa.schema([_PARTITION_FIELD]), null_fallback=DEFAULT_PARTITION)
_EPOCH = dt.date(1970, 1, 1)
_TEMP_SUFFIX = ".tmp"
_LOCK_NAME = ".commit.lock"
_FINGERPRINT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Airflow run ids look like "scheduled__2024-01-01T00:00:00+00:00".
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+=-]{0,199}$")
#: Partition files encoded and written at once by `write_lake` unless told otherwise. Measured on two
#: cores with the full data set, a first run: 1 thread clearly slower, 2 to 8 within the machine's
#: noise of each other. Each thread holds one partition's bytes; object stores, where a write mostly
#: waits on the network, may want more (`max_writers`).
DEFAULT_WRITERS = 4
# On object stores a write of up to this many units (a daily run: its day, perhaps the undated
# rejects) looks only at its units' keys, a few requests each; a larger one lists the whole lake once,
# which a per-unit lookup would outnumber. Listing the whole lake for every daily run would make a
# year's catch-up quadratic in the lake's size.
_PER_UNIT_LOOKUPS_UP_TO = 8


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
_SORT_KEYS: dict[str, list[str]] = {
    "invoice_lines": ["invoice_no", "line_no"],
    "invoices": ["invoice_no"],
    "customers": ["customer_id"],
    "rejects": ["source_row"],
}


@dataclass(frozen=True)
class LakeReport:
    """What one `write_lake` call did."""

    root: str
    days: tuple[dt.date, ...]
    rows: Mapping[str, int]  # rows written per table
    #: Published files this write put in place (each a copy of a newly committed object).
    files_written: tuple[str, ...]
    files_removed: tuple[str, ...] = field(default=())
    #: Published files whose committed content was already these rows: no new object, no new commit.
    files_unchanged: tuple[str, ...] = field(default=())
    #: Manifests this write committed (one per day whose content changed).
    manifests_committed: tuple[str, ...] = field(default=())

    @property
    def partitions_written(self) -> int:
        """How many partition files this write put in place."""
        return len(self.files_written)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary for the run report."""
        return {
            "root": self.root,
            "days": [d.isoformat() for d in self.days],
            "rows": dict(self.rows),
            "partitions_written": self.partitions_written,
            "files_written": list(self.files_written),
            "files_removed": list(self.files_removed),
            "files_unchanged": len(self.files_unchanged),
            "manifests_committed": len(self.manifests_committed),
        }


@dataclass
class _Unit:
    """What commits together: a day's four tables, or one source's undated rejects."""

    key: str  # the manifest's name: "invoice_day=2010-12-01", "invoice_day=__HIVE_...__.<fingerprint>"
    partition: str  # "invoice_day=2010-12-01"
    file_name: str  # the published file's name in each table's partition
    object_prefix: str  # "<table>." or "rejects.<fingerprint>." before the write id
    tables: dict[str, pa.Table | None]  # None: the table has no rows in this unit (any old file goes)

    def published(self, table: str) -> str:
        return f"{table}/{self.partition}/{self.file_name}"

    def object_name(self, table: str, write_id: str) -> str:
        prefix = self.object_prefix or f"{table}."
        return f"{OBJECT_DIR}/{self.partition}/{prefix}{write_id}.parquet"


@dataclass
class _Committed:
    """A manifest as read: its bytes (compared again under the local lock) and its S3 ETag."""

    body: bytes
    manifest: dict[str, Any]
    etag: str | None


class _Conflict(Exception):
    """Another writer committed the unit after this write read its manifest."""


def write_lake(
    root: str,
    days: Sequence[dt.date],
    snapshot: ServiceSnapshot,
    rejects: pa.Table,
    *,
    source_fingerprint: str,
    storage_options: Mapping[str, Any] | None = None,
    max_writers: int | None = None,
) -> LakeReport:
    """Replace the partitions of `days` in every table with what `snapshot` and `rejects` hold.

    Each day is committed as a whole by its manifest (see the module's docstring), then published.
    A day in `days` without rows in a table loses its old partition there; days not in `days` are
    untouched. Rejects without an invoice day go to the default partition, in a file named after
    `source_fingerprint` (so a rerun of the same source replaces it and other sources' files stay).
    A day whose content equals what is committed writes nothing. `root` is a local path or an fsspec
    URL (`s3://bucket/lake`, `memory://lake`); `storage_options` go to the filesystem (e.g.
    `{"endpoint_url": ...}` for an S3-compatible server). Up to `max_writers` files (default
    `DEFAULT_WRITERS`) are encoded and written at once.

    Raises `LakeError` when the root cannot be written or another writer committed one of the days
    meanwhile (the days committed before it stay, each whole; a rerun completes the rest), and
    `ValueError` when the inputs break the contract (wrong schema, rows on a day outside `days`,
    customers missing from the snapshot).
    """
    if not _FINGERPRINT.match(source_fingerprint):
        raise ValueError(f"source_fingerprint {source_fingerprint!r} is not a safe file-name part")
    writers = DEFAULT_WRITERS if max_writers is None else max_writers
    if writers < 1:
        raise ValueError(f"max_writers must be at least 1, got {max_writers}")
    run_days = tuple(sorted(set(days)))
    units = _plan(run_days, snapshot, rejects, source_fingerprint)

    fs, base = _open(root, storage_options)
    write_id = uuid.uuid4().hex[:16]
    written: list[str] = []
    removed: list[str] = []
    unchanged: list[str] = []
    commits: list[str] = []
    # Objects this write created that no manifest names yet. A set: writer threads add to it (atomic
    # under the GIL), and a failure deletes whatever is left in it.
    uncommitted: set[str] = set()
    try:
        committed = _read_manifests(fs, base, [unit.key for unit in units])
        published = _list_tables(fs, base, units)
        plans = [_UnitPlan(unit, committed.get(unit.key)) for unit in units]
        _list_objects(fs, base, plans)
        to_write = [
            (plan, table, rows, digest) for plan in plans for table, rows, digest in plan.tables_to_write()
        ]
        directories: set[str] = set()
        entries = _stage_all(fs, base, write_id, to_write, uncommitted, directories, writers)
        for (plan, table, _rows, _digest), entry in zip(to_write, entries, strict=True):
            plan.new_entries[table] = entry
        # Every object is complete on storage before the first commit: a failure up to here changes
        # nothing a reader sees. From here on each commit publishes one whole day, in day order.
        with _commit_lock(fs, base) as state:
            for plan in plans:
                manifest = plan.manifest()
                if manifest is not None:
                    try:
                        _commit(fs, base, plan.unit.key, manifest, plan.committed, state)
                    except _Conflict:
                        # Another writer committed the unit meanwhile. The same rows (two runs of one
                        # source racing over its undated rejects, a retried task and its zombie) are
                        # this write's outcome too; other rows are refused.
                        adopted = _adopt(fs, base, plan, uncommitted)
                        if adopted is None:
                            raise LakeError(
                                f"cannot write the lake at {root}: {manifest['unit']} was committed by "
                                "another writer while this one ran; the days before it are committed, "
                                "rerun for the rest"
                            ) from None
                        plan = adopted
                    else:
                        commits.append(plan.unit.key)
                        uncommitted.difference_update(
                            f"{base}/{entry['object']}" for entry in manifest["tables"].values()
                        )
                        _delete_garbage(fs, base, plan, manifest)
                new, gone, same = _publish_unit(fs, base, plan, published, state.directories)
                written.extend(new)
                removed.extend(gone)
                unchanged.extend(same)
            if not _is_local(fs):
                written.extend(_publish_later_commits(fs, base, plans, state.directories))
    except BaseException as exc:
        # Committed days stay (each is whole); objects no manifest names must not linger.
        _discard(fs, sorted(uncommitted))
        if isinstance(exc, OSError):
            raise LakeError(f"cannot write the lake at {root}: {_one_line(exc)}") from exc
        raise

    rows = {table: 0 for table in TABLES}
    for unit in units:
        for table, data in unit.tables.items():
            rows[table] += 0 if data is None else data.num_rows
    return LakeReport(
        root=root,
        days=run_days,
        rows=rows,
        files_written=tuple(_display(fs, p) for p in written),
        files_removed=tuple(_display(fs, p) for p in removed),
        files_unchanged=tuple(_display(fs, p) for p in unchanged),
        manifests_committed=tuple(commits),
    )


def committed_files(
    root: str,
    table: str,
    days: Sequence[dt.date] | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """The files that hold `table`'s committed rows for `days` (or all days), as URLs (local: paths).

    Hand them to any Parquet reader (DuckDB's `read_parquet([...], hive_partitioning = true)`,
    `polars.read_parquet`, `pyarrow.dataset.dataset`): `invoice_day` is in each path. Days committed
    by a manifest are its objects; days written before manifests existed are their published files.
    """
    if table not in TABLES:
        raise ValueError(f"unknown lake table {table!r}; expected one of {', '.join(TABLES)}")
    fs, base = _open(root, storage_options)
    try:
        paths = _table_files(fs, base, table, days)
    except (OSError, ValueError) as exc:
        raise LakeError(f"cannot read lake table {table} at {root}: {_one_line(exc)}") from exc
    return [_display(fs, p) for p in paths]


def read_lake_table(
    root: str,
    table: str,
    days: Sequence[dt.date] | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> pa.Table:
    """One lake table (`TABLE_SCHEMAS[table]`, with `invoice_day` as date32) for `days`, or all of it,
    as committed (`committed_files`).

    Rows come sorted by day, then the table's key (rejects without a day last). With `days` given,
    only those partitions are read (the default partition of rejects is not among them). A table not
    written yet reads as empty.
    """
    if table not in TABLES:
        raise ValueError(f"unknown lake table {table!r}; expected one of {', '.join(TABLES)}")
    schema = TABLE_SCHEMAS[table]
    fs, base = _open(root, storage_options)
    try:
        paths = _table_files(fs, base, table, days)
        if not paths:
            return schema.empty_table()
        dataset = ds.dataset(
            paths, schema=schema, format="parquet", partitioning=_PARTITIONING, filesystem=_arrow_fs(fs)
        )
        result = dataset.to_table()
    except (OSError, ValueError, pa.ArrowInvalid) as exc:
        raise LakeError(f"cannot read lake table {table} at {root}: {_one_line(exc)}") from exc
    result = result.combine_chunks()
    names = (PARTITION_COLUMN, *_SORT_KEYS[table])
    if is_sorted(result, names):
        # The usual case: the files are listed in day order and each is sorted by the key, so sorting
        # would only copy every row. (The sort is stable: on rows already in order it changes nothing.)
        return result
    order = pc.sort_indices(result, sort_keys=[(k, "ascending", "at_end") for k in names])
    return result.take(order).combine_chunks()


def write_run_report(
    root: str,
    run_id: str,
    report: Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write `report` as `<root>/_runs/<run_id>.json` (atomically) and return its location.

    Dates, datetimes and decimals are written as ISO / decimal strings.
    """
    if not _RUN_ID.match(run_id):
        raise ValueError(f"run_id {run_id!r} is not a safe file name")
    body = json.dumps(report, indent=2, sort_keys=True, default=_json_value, ensure_ascii=False)
    fs, base = _open(root, storage_options)
    final = f"{base}/{RUNS_DIR}/{run_id}.json"
    try:
        _put_whole(fs, final, body.encode("utf-8") + b"\n")
    except OSError as exc:
        raise LakeError(f"cannot write the run report at {root}: {_one_line(exc)}") from exc
    return _display(fs, final)


# --- what to write -----------------------------------------------------------------------------


def _plan(
    days: tuple[dt.date, ...], snapshot: ServiceSnapshot, rejects: pa.Table, fingerprint: str
) -> list[_Unit]:
    """Every unit this write commits, with each table's rows (None: no rows), before anything is written.

    Day by day, then the source's undated rejects. Each table is derived and sorted by (day, its key)
    once and then sliced per day: per-day filters and group-bys cost a pass over the data, or a
    compute call, per day.
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
    units: list[_Unit] = []
    for index, day in enumerate(days):
        partition = f"{PARTITION_COLUMN}={day.isoformat()}"
        tables: dict[str, pa.Table | None] = {}
        for table, data in by_table.items():
            first, stop = bounds[table][index]
            tables[table] = _day_rows(data, first, stop, table) if stop > first else None
        units.append(_Unit(partition, partition, DAY_FILE, "", tables))
    undated = _sorted(rejects.filter(pc.is_null(rejects[PARTITION_COLUMN])), "rejects")
    partition = f"{PARTITION_COLUMN}={DEFAULT_PARTITION}"
    units.append(
        _Unit(
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
    names = (PARTITION_COLUMN, *_SORT_KEYS[name])
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
        raise ValueError(f"{label} does not match its schema: {_one_line(exc)}") from exc


def _check_days(table: pa.Table, days: tuple[dt.date, ...], label: str) -> None:
    outside = table.filter(pc.invert(pc.is_in(table[PARTITION_COLUMN], pa.array(days, pa.date32()))))
    if outside.num_rows:
        found = sorted(set(outside[PARTITION_COLUMN].to_pylist()))[:5]
        raise ValueError(f"{label} has rows on day(s) {', '.join(map(str, found))} outside the days written")


def _sorted(table: pa.Table, name: str) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in _SORT_KEYS[name]]).combine_chunks()


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


# --- committing --------------------------------------------------------------------------------


class _UnitPlan:
    """One unit through a write: what is committed now, what this write adds, what it then commits."""

    def __init__(self, unit: _Unit, committed: _Committed | None) -> None:
        self.unit = unit
        self.committed = committed
        self.old_tables: dict[str, dict[str, Any]] = dict(committed.manifest["tables"]) if committed else {}
        self.kept: dict[str, dict[str, Any]] = {}  # tables whose committed object already holds the rows
        self.new_entries: dict[str, dict[str, Any]] = {}  # tables this write put in new objects
        self.stored_objects: dict[str, dt.datetime | None] = {}  # the unit's objects before the write

    def tables_to_write(self) -> list[tuple[str, pa.Table, str | None]]:
        """(table, rows in the file schema, their digest when already computed) of each table whose
        rows differ from the committed ones."""
        result: list[tuple[str, pa.Table, str | None]] = []
        for table, data in self.unit.tables.items():
            if data is None:
                continue
            file_schema = FILE_SCHEMAS[table]
            rows = data.select(file_schema.names)
            # Usually equal already (metadata too), and a cast costs a compute call per column.
            if not rows.schema.equals(file_schema, check_metadata=True):
                rows = rows.cast(file_schema)
            digest = None  # for a table not committed yet, computed by its writer thread
            old = self.old_tables.get(table)
            if old is not None:
                digest = content_digest(rows)
                if old.get("content_sha256") == digest:
                    # A rerun of the same day: the committed object already holds exactly these rows.
                    self.kept[table] = old
                    continue
            result.append((table, rows, digest))
        return result

    @property
    def tables(self) -> dict[str, dict[str, Any]]:
        """The unit's tables once this write is committed (or as committed, if it changes nothing)."""
        merged = {**self.kept, **self.new_entries}
        return {table: merged[table] for table in TABLES if table in merged}

    def manifest(self) -> dict[str, Any] | None:
        """The manifest to commit; None when the committed one already says exactly this."""
        tables = self.tables
        if not self.new_entries and self.committed is not None and tables == self.old_tables:
            return None
        if not self.new_entries and self.committed is None and not tables:
            return None  # nothing was ever committed here and there is nothing to commit
        current = {entry["object"] for entry in tables.values()}
        retired = sorted({entry["object"] for entry in self.old_tables.values()} - current)
        day = self.unit.partition.split("=", 1)[1]
        return {
            "format": MANIFEST_FORMAT,
            "unit": self.unit.key,
            PARTITION_COLUMN: None if day == DEFAULT_PARTITION else day,
            "tables": tables,
            # Replaced by this commit; kept until the next one, for readers of the previous manifest.
            "retired": retired,
        }


def _manifest_path(base: str, key: str) -> str:
    return f"{base}/{MANIFEST_DIR}/{key}.json"


def _manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """Deterministic: the same commit is the same bytes, so a rerun's lake is byte for byte the same."""
    # No indent: then json uses its C encoder (a year is 305 manifests per first run).
    return json.dumps(manifest, sort_keys=True).encode("utf-8") + b"\n"


def _parse_manifest(path: str, body: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(body)
    except ValueError as exc:
        raise LakeError(f"the lake's manifest {path} is not JSON: {_one_line(exc)}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise LakeError(f"the lake's manifest {path} is not a format-{MANIFEST_FORMAT} lake manifest")
    return manifest


def _read_manifests(
    fs: fsspec.AbstractFileSystem, base: str, keys: Sequence[str] | None
) -> dict[str, _Committed]:
    """The committed manifests among `keys` (None: all of them), with what a conditional commit needs.

    On S3 the ETags come from the listing (for a few keys: from a HEAD of each), before the bodies
    are read: if a manifest changes in between, the commit based on it fails its `If-Match` instead
    of overwriting the newer one.
    """
    directory = f"{base}/{MANIFEST_DIR}"
    found: dict[str, tuple[bytes, str | None]] = {}
    if _is_local(fs):
        # One listing, then only the manifests that exist are opened (a first run opens none).
        try:
            present = {n[: -len(".json")] for n in os.listdir(directory) if n.endswith(".json")}
        except FileNotFoundError:
            return {}
        for key in sorted(present) if keys is None else [k for k in keys if k in present]:
            try:
                with open(_manifest_path(base, key), "rb") as handle:
                    found[key] = (handle.read(), None)
            except FileNotFoundError:
                continue  # removed since the listing: not committed
    else:
        if keys is not None and len(keys) <= _PER_UNIT_LOOKUPS_UP_TO:
            listing = {key: info for key in keys if (info := _object_info(fs, _manifest_path(base, key)))}
        else:
            listing = {
                path.rsplit("/", 1)[1][: -len(".json")]: info
                for path, info in _listing(fs, directory).items()
                if path.endswith(".json")
            }
        wanted = [key for key in (sorted(listing) if keys is None else keys) if key in listing]
        if wanted:
            bodies = fs.cat([_manifest_path(base, key) for key in wanted])
            for key in wanted:
                found[key] = (bodies[_manifest_path(base, key)], listing[key].get("ETag"))
    return {
        key: _Committed(body, _parse_manifest(_manifest_path(base, key), body), etag)
        for key, (body, etag) in found.items()
    }


@dataclass
class _CommitState:
    """What a local writer knows while it holds the commit lock: which manifests exist (no other
    writer can add one meanwhile) and which directories it made."""

    manifests: set[str] = field(default_factory=set)
    directories: set[str] = field(default_factory=set)


@contextlib.contextmanager
def _commit_lock(fs: fsspec.AbstractFileSystem, base: str) -> Iterator[_CommitState]:
    """Locally, writers of one lake commit one at a time (compare, then rename, under the lock); on
    object stores the conditional PUT is the lock, so nothing is held there."""
    state = _CommitState()
    if not _is_local(fs):
        yield state
        return
    import fcntl  # POSIX only, like the rest of the local path's guarantees

    directory = f"{base}/{MANIFEST_DIR}"
    os.makedirs(directory, exist_ok=True)
    state.directories.add(directory)
    handle = os.open(f"{base}/{LAKE_DIR}/{_LOCK_NAME}", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        state.manifests = {n[: -len(".json")] for n in os.listdir(directory) if n.endswith(".json")}
        yield state
    finally:
        os.close(handle)  # releases the lock


def _commit(
    fs: fsspec.AbstractFileSystem,
    base: str,
    key: str,
    manifest: Mapping[str, Any],
    committed: _Committed | None,
    state: _CommitState,
) -> None:
    """Write the unit's manifest if it is still the one this write read; else raise `_Conflict`."""
    path = _manifest_path(base, key)
    body = _manifest_bytes(manifest)
    if _is_local(fs):
        current: bytes | None = None
        if key in state.manifests:  # listed under the lock: no other writer adds one now
            with open(path, "rb") as handle:
                current = handle.read()
        if current != (committed.body if committed else None):
            raise _Conflict(key)
        _put_whole(fs, path, body, state.directories)
        state.manifests.add(key)
    elif _is_s3(fs):
        condition = {"IfMatch": committed.etag} if committed and committed.etag else {"IfNoneMatch": "*"}
        try:
            fs.pipe_file(path, body, **condition)
        except OSError as exc:
            if _precondition_failed(exc):
                raise _Conflict(key) from exc
            raise
    else:
        # Other fsspec stores (memory://, ...): one PUT is whole, but without a condition two writers
        # of one day at once are not detected.
        fs.pipe_file(path, body)


def _adopt(
    fs: fsspec.AbstractFileSystem, base: str, plan: _UnitPlan, uncommitted: set[str]
) -> _UnitPlan | None:
    """After a lost commit: the plan of the unit's current commit if it holds exactly this write's
    rows (this write's own objects for it are then deleted), else None."""
    current = _read_manifests(fs, base, [plan.unit.key]).get(plan.unit.key)
    if current is None:
        return None
    theirs = {table: entry.get("content_sha256") for table, entry in current.manifest["tables"].items()}
    ours = {table: entry.get("content_sha256") for table, entry in plan.tables.items()}
    if theirs != ours:
        return None
    mine = sorted(f"{base}/{entry['object']}" for entry in plan.new_entries.values())
    _discard(fs, mine)
    uncommitted.difference_update(mine)
    adopted = _UnitPlan(plan.unit, current)
    adopted.kept = dict(current.manifest["tables"])
    return adopted


def _precondition_failed(exc: OSError) -> bool:
    """Whether s3fs's error is S3's answer to a failed `If-Match` / `If-None-Match`."""
    if isinstance(exc, FileExistsError):
        return True
    response = getattr(exc.__cause__, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code in {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


def _delete_garbage(
    fs: fsspec.AbstractFileSystem, base: str, plan: _UnitPlan, manifest: Mapping[str, Any]
) -> None:
    """After a commit: delete what the previous commit retired, and objects of writes that died
    before committing once they are `ORPHAN_GRACE` old (younger ones may be another writer's)."""
    keep = {entry["object"] for entry in manifest["tables"].values()} | set(manifest["retired"])
    doomed = set(plan.committed.manifest.get("retired", ())) if plan.committed else set()
    oldest = dt.datetime.now(dt.UTC) - ORPHAN_GRACE
    for name, modified in plan.stored_objects.items():
        relative = f"{OBJECT_DIR}/{plan.unit.partition}/{name}"
        if relative in keep or not _is_object_of(plan.unit, name):
            continue
        if relative in doomed or (modified is not None and modified < oldest):
            with contextlib.suppress(FileNotFoundError):
                fs.rm(f"{base}/{relative}")


_WRITE_ID = re.compile(r"^[0-9a-f]{16}\.parquet$")


def _is_object_of(unit: _Unit, name: str) -> bool:
    """Whether `name` in the unit's object folder is one of the unit's objects (the default partition
    holds every source's undated rejects)."""
    prefixes = [unit.object_prefix] if unit.object_prefix else [f"{table}." for table in TABLES]
    return any(name.startswith(p) and _WRITE_ID.match(name[len(p) :]) for p in prefixes)


def _list_objects(fs: fsspec.AbstractFileSystem, base: str, plans: Sequence[_UnitPlan]) -> None:
    """Fill each plan's `stored_objects`: the objects in its unit's folder, with their times."""
    if _is_local(fs):
        try:
            partitions = set(os.listdir(f"{base}/{OBJECT_DIR}"))
        except FileNotFoundError:
            return  # a first write: no object yet
        for plan in plans:
            if plan.unit.partition not in partitions:
                continue
            with (
                contextlib.suppress(FileNotFoundError),
                os.scandir(f"{base}/{OBJECT_DIR}/{plan.unit.partition}") as entries,
            ):
                for entry in entries:
                    if entry.is_file():
                        plan.stored_objects[entry.name] = dt.datetime.fromtimestamp(
                            entry.stat().st_mtime, dt.UTC
                        )
        return
    by_partition: dict[str, dict[str, dt.datetime | None]] = {}
    if len(plans) <= _PER_UNIT_LOOKUPS_UP_TO:
        listings = [_listing(fs, f"{base}/{OBJECT_DIR}/{p}") for p in {plan.unit.partition for plan in plans}]
    else:
        listings = [_listing(fs, f"{base}/{OBJECT_DIR}")]
    for path, info in (item for listing in listings for item in listing.items()):
        partition, name = path.rsplit("/", 2)[-2:]
        by_partition.setdefault(partition, {})[name] = _modified(info)
    for plan in plans:
        plan.stored_objects = dict(by_partition.get(plan.unit.partition, {}))


def _modified(info: Mapping[str, Any]) -> dt.datetime | None:
    value = info.get("LastModified", info.get("mtime", info.get("created")))
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    return None  # unknown: never removed for its age


# --- publishing --------------------------------------------------------------------------------


def _publish_unit(
    fs: fsspec.AbstractFileSystem,
    base: str,
    plan: _UnitPlan,
    published: Mapping[str, Mapping[str, Mapping[str, Any] | None]],
    directories: set[str],
) -> tuple[list[str], list[str], list[str]]:
    """Make each table's published file the unit's committed object (or remove it if the table has
    no rows now): (files put in place, files removed, files already right)."""
    written: list[str] = []
    removed: list[str] = []
    unchanged: list[str] = []
    tables = plan.tables
    for table in plan.unit.tables:
        target = f"{base}/{plan.unit.published(table)}"
        directory, name = target.rsplit("/", 1)
        present = name in published.get(directory, {})
        entry = tables.get(table)
        if entry is None:
            if present:
                fs.rm(target)
                removed.append(target)
                _remove_if_empty(fs, directory)
            continue
        source = f"{base}/{entry['object']}"
        if present and _is_published(fs, source, target, entry, published[directory][name]):
            unchanged.append(target)
        else:
            _publish_file(fs, source, target, replace=present, directories=directories)
            written.append(target)
        removed.extend(_remove_other_files(fs, target, published))
    return written, removed, unchanged


def _publish_later_commits(
    fs: fsspec.AbstractFileSystem, base: str, plans: Sequence[_UnitPlan], directories: set[str]
) -> list[str]:
    """On object stores, after publishing: republish the days another writer committed meanwhile.

    Without a lock, writer A may still be copying its objects when B, who committed over A's commit,
    has published B's; A's copies would then win in the published view. Reading the manifests again
    after A's copies closes that: any commit later than A's re-read publishes after it. Returns the
    files put in place."""
    keys = [plan.unit.key for plan in plans]
    latest = _read_manifests(fs, base, keys)
    written: list[str] = []
    for plan in plans:
        now = latest.get(plan.unit.key)
        if now is None or now.manifest["tables"] == plan.tables:
            continue
        later = _UnitPlan(plan.unit, now)
        later.kept = dict(now.manifest["tables"])
        # A fresh listing of the day's published files: the one taken before this write is stale.
        fresh: dict[str, dict[str, Mapping[str, Any] | None]] = {}
        for table in plan.unit.tables:
            directory = f"{base}/{plan.unit.published(table)}".rsplit("/", 1)[0]
            fresh[directory] = {p.rsplit("/", 1)[1]: info for p, info in _listing(fs, directory).items()}
        new, _gone, _same = _publish_unit(fs, base, later, fresh, directories)
        written.extend(new)
    return written


def _is_published(
    fs: fsspec.AbstractFileSystem,
    source: str,
    target: str,
    entry: Mapping[str, Any],
    info: Mapping[str, Any] | None,
) -> bool:
    """Whether the published file at `target` already holds the committed object's rows."""
    if _is_local(fs):
        with contextlib.suppress(OSError):
            if os.path.samefile(source, target):  # the hard link this lake publishes with
                return True
    elif info is not None and entry.get("md5") and str(info.get("ETag", "")).strip('"') == entry["md5"]:
        return True  # a single-part object's ETag is its MD5, and a copy keeps it
    return _stored_digest(fs, target) == entry.get("content_sha256")


def _publish_file(
    fs: fsspec.AbstractFileSystem, source: str, target: str, *, replace: bool, directories: set[str]
) -> None:
    """Put a copy of the committed object `source` at `target`, whole: a reader sees the old file or
    this one."""
    if not _is_local(fs):
        # S3: a HEAD, then CopyObject, server-side; the new object appears whole. (copy() would
        # first list both paths, to expand folders and globs, which these never are.)
        fs.cp_file(source, target)
        return
    directory, name = target.rsplit("/", 1)
    if directory not in directories:
        os.makedirs(directory, exist_ok=True)
        directories.add(directory)
    if not replace:
        try:
            os.link(source, target)  # a new name appears pointing at a complete file
            return
        except OSError as exc:
            # Someone published it meanwhile, or no hard links here: a copy must not be seen half
            # made, so it goes by a temporary name like a replacement.
            if exc.errno != errno.EEXIST and exc.errno not in _NO_LINKS:
                raise
    temporary = f"{directory}/.{name}.{uuid.uuid4().hex}{_TEMP_SUFFIX}"
    try:
        _link_or_copy(source, temporary)
        os.replace(temporary, target)  # atomic within the directory
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


_NO_LINKS = (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EOPNOTSUPP)


def _link_or_copy(source: str, target: str) -> None:
    """`target` (a temporary name) as the same file as `source`, or a copy of it."""
    try:
        os.link(source, target)  # no bytes copied: the committed object and its published name share them
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        shutil.copyfile(source, target)  # a filesystem without hard links


# --- reading -----------------------------------------------------------------------------------


def _table_files(
    fs: fsspec.AbstractFileSystem, base: str, table: str, days: Sequence[dt.date] | None
) -> list[str]:
    """The files of `table`'s committed rows: the objects its units' manifests name, and the published
    files of units without a manifest (written before manifests existed); in day order."""
    keys = None if days is None else [f"{PARTITION_COLUMN}={d.isoformat()}" for d in sorted(set(days))]
    manifests = _read_manifests(fs, base, keys)
    files = [
        f"{base}/{entry['object']}"
        for committed in manifests.values()
        if (entry := committed.manifest["tables"].get(table)) is not None
    ]
    if keys is None or len(manifests) < len(keys):
        for path in _published_files(fs, base, table, keys):
            directory, name = path.rsplit("/", 1)
            partition = directory.rsplit("/", 1)[1]
            if partition == f"{PARTITION_COLUMN}={DEFAULT_PARTITION}":
                fingerprint = name.removeprefix("part-").removesuffix(".parquet")
                key = f"{partition}.{fingerprint}"
            else:
                key = partition
            if key not in manifests and not name.startswith((".", "_")) and name.endswith(".parquet"):
                files.append(path)
    return sorted(files, key=_day_order)


def _day_order(path: str) -> tuple[bool, str, str]:
    partition = next(p for p in reversed(path.split("/")) if p.startswith(f"{PARTITION_COLUMN}="))
    return (partition.endswith(DEFAULT_PARTITION), partition, path)


def _published_files(
    fs: fsspec.AbstractFileSystem, base: str, table: str, keys: Sequence[str] | None
) -> list[str]:
    """Published files of `table`: in the partitions of `keys`, or all of them."""
    if keys is None:
        return _files_under(fs, f"{base}/{table}")
    found: list[str] = []
    for key in keys:
        directory = f"{base}/{table}/{key}"
        if _is_local(fs):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                found.extend(f"{directory}/{name}" for name in os.listdir(directory))
        else:
            found.extend(_listing(fs, directory))
    return found


# --- storage -----------------------------------------------------------------------------------


def filesystem(
    root: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of a lake root and the root's path on it (for the pipeline's work files)."""
    return _open(root, storage_options)


def _open(root: str, storage_options: Mapping[str, Any] | None) -> tuple[fsspec.AbstractFileSystem, str]:
    options = dict(storage_options or {})
    if _is_s3_url(root) and not {"session", "profile"} & options.keys():
        options["session"] = _s3_session()
    try:
        fs, path = fsspec.core.url_to_fs(root, **options)
    except (ImportError, ValueError, OSError) as exc:  # unknown protocol, missing s3fs, bad options
        raise LakeError(f"cannot open the lake at {root}: {_one_line(exc)}") from exc
    return fs, str(path).rstrip("/")


def _is_s3_url(root: str) -> bool:
    return root.split("://", 1)[0] in {"s3", "s3a"} if "://" in root else False


# One botocore session per process and AWS environment, shared by its S3 filesystems. A session caches
# what every S3 client is made from (the service model, the endpoint rules: ~0.15 s of parsing JSON), so
# a process forked after `prepare_s3_client()` (each Airflow task, from its Celery pool process) makes
# its first request without that cost. Keyed by the AWS_* variables: a changed environment (endpoint,
# credentials) gets a new session, as each filesystem used to.
_S3_SESSIONS: dict[tuple[tuple[str, str], ...], Any] = {}


def _s3_session() -> Any:
    from aiobotocore.session import AioSession  # s3fs's own dependency: there whenever s3:// works

    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    session = _S3_SESSIONS.get(key)
    if session is None:
        session = _S3_SESSIONS[key] = AioSession()
    return session


def prepare_s3_client() -> None:
    """Make (without any request) an S3 client of this process's environment, so that the shared
    session has loaded what clients are made from: processes forked afterwards inherit it. Does
    nothing when s3fs is not installed."""
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem(session=_s3_session(), skip_instance_cache=True).connect()


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, FsspecLocalFileSystem)


def is_local_filesystem(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether `fs` is the local disk (where directories must exist before a file is written)."""
    return _is_local(fs)


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return "s3" in protocol


def _arrow_fs(fs: fsspec.AbstractFileSystem) -> FileSystem:
    if _is_local(fs):
        return _LOCAL_FS
    return PyFileSystem(FSSpecHandler(fs))


def content_digest(table: pa.Table) -> str:
    """sha256 of `table`'s rows and schema (its Arrow IPC stream): equal digests, equal files.

    Stored in each file's key-value metadata (`DIGEST_KEY`) and in the manifest, so that a rerun
    compares a day with what is committed without reading any file.
    """
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue()).hexdigest()


def _stage_all(
    fs: fsspec.AbstractFileSystem,
    base: str,
    write_id: str,
    files: Sequence[tuple[_UnitPlan, str, pa.Table, str | None]],
    uncommitted: set[str],
    directories: set[str],
    writers: int,
) -> list[dict[str, Any]]:
    """Write each (unit, table, rows, digest) in `files` as a new object; return their manifest
    entries, in order.

    Each file is handed to one of up to `writers` threads, where encoding (which releases the GIL) and
    writing (which waits on storage) overlap with each other.
    """
    # Threads start only when the first file is submitted: a rerun without changes starts none.
    executor = (
        ThreadPoolExecutor(max_workers=writers, thread_name_prefix="lake-writer") if writers > 1 else None
    )
    futures: list[Future[dict[str, Any]]] = []
    results: list[dict[str, Any]] = []
    md5 = not _is_local(fs)  # object stores compare a published copy by its ETag
    try:
        for plan, table, rows, digest in files:
            relative = plan.unit.object_name(table, write_id)
            arguments = (fs, base, relative, plan.unit.published(table), rows, digest, md5)
            if executor is None:
                results.append(_write_object(*arguments, uncommitted, directories))
            else:
                futures.append(executor.submit(_write_object, *arguments, uncommitted, directories))
        results.extend(future.result() for future in futures)  # the first failure in order is raised
    finally:
        if executor is not None:
            # After a failure: files not started yet never start, and those in progress finish before
            # the caller discards the objects (a thread cannot be stopped halfway through a write).
            executor.shutdown(wait=True, cancel_futures=True)
    return results


def _write_object(
    fs: fsspec.AbstractFileSystem,
    base: str,
    relative: str,
    published: str,
    rows: pa.Table,
    digest: str | None,
    md5: bool,
    uncommitted: set[str],
    directories: set[str],
) -> dict[str, Any]:
    """Write `rows` as a Parquet object (their digest in the footer) at `relative`; its manifest entry."""
    digest = content_digest(rows) if digest is None else digest
    data = _parquet_bytes(rows, digest)
    path = f"{base}/{relative}"
    uncommitted.add(path)  # before writing: a half-written object is discarded too
    _write_bytes(fs, path, data, directories)
    entry: dict[str, Any] = {
        "object": relative,
        "published": published,
        "rows": rows.num_rows,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "content_sha256": digest,
    }
    if md5:
        entry["md5"] = hashlib.md5(data, usedforsecurity=False).hexdigest()
    return entry


def _parquet_bytes(table: pa.Table, digest: str) -> bytes:
    """`table` as a Parquet file in memory, its digest in the footer: the same bytes for the same rows."""
    tagged = table.replace_schema_metadata({**(table.schema.metadata or {}), DIGEST_KEY: digest.encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(tagged, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _stored_digest(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """The content digest in the footer of the file at `path`; None when there is no such file (or
    it has none, or cannot be read: it is then rewritten)."""
    try:
        if _is_local(fs):
            # pyarrow's own file reads just the footer, without fsspec's per-open Python overhead.
            metadata = pq.read_metadata(path, filesystem=_LOCAL_FS).metadata or {}
        else:
            with fs.open(path, "rb") as handle:
                metadata = pq.read_metadata(handle).metadata or {}
    except (FileNotFoundError, OSError, pa.ArrowInvalid):
        return None
    value = metadata.get(DIGEST_KEY)
    return value.decode() if value is not None else None


def _write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes, directories: set[str]) -> None:
    """Write `data` at `path`, which no reader looks at before a manifest names it."""
    parent = path.rsplit("/", 1)[0]
    if parent not in directories:
        _make_parent(fs, path)  # two threads may both get here: makedirs(exist_ok=True) allows that
        directories.add(parent)
    if _is_local(fs):
        # The same bytes as through fsspec's local file, without its per-open Python overhead.
        with open(path, "wb") as out:
            out.write(data)
    else:
        fs.pipe_file(path, data)


def _put_whole(
    fs: fsspec.AbstractFileSystem, path: str, data: bytes, directories: set[str] | None = None
) -> None:
    """Write `data` at `path` so that readers see the old content or all of the new (`directories`:
    local directories known to exist)."""
    if not _is_local(fs):
        fs.pipe_file(path, data)  # one PUT: an object store shows it whole or not at all
        return
    directory, name = path.rsplit("/", 1)
    if directories is None or directory not in directories:
        _make_parent(fs, path)
    temporary = f"{directory}/.{name}.{uuid.uuid4().hex}{_TEMP_SUFFIX}"
    try:
        with open(temporary, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def _make_parent(fs: fsspec.AbstractFileSystem, path: str) -> None:
    # Only local directories must exist before a write. On object stores `makedirs` would create a
    # missing *bucket*, which is the operator's decision (region, policy), not the job's: a missing
    # bucket must fail the write instead.
    if _is_local(fs):
        os.makedirs(path.rsplit("/", 1)[0], exist_ok=True)


def _listing(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, dict[str, Any]]:
    """Every file below `path` on an object store, with its details (ETag, LastModified)."""
    fs.invalidate_cache(path)  # object-store listings are cached per filesystem instance
    try:
        if _is_s3(fs) and "/" in path:
            # One LIST of the keys under `path/`: s3fs's find(path) follows an empty listing with a
            # HEAD and a second LIST to tell a missing folder from a file, three requests for the
            # usual answer of a daily write (nothing there yet).
            parent, name = path.rsplit("/", 1)
            found = fs.find(parent, prefix=f"{name}/", detail=True)
        else:
            found = fs.find(path, detail=True)
    except FileNotFoundError:
        return {}
    return {p: info for p, info in found.items() if info.get("type", "file") != "directory"}


def _list_tables(
    fs: fsspec.AbstractFileSystem, base: str, units: Sequence[_Unit]
) -> dict[str, dict[str, Mapping[str, Any] | None]]:
    """The published files of every table under `base` (on object stores, of `units`' partitions
    when they are few), as {directory: {file name: details}}, after deleting the temporary files an
    interrupted write left behind (details: object stores only). One listing per table (or table
    partition): it then answers which files exist, so none is looked up on its own."""
    if _is_local(fs) or len(units) > _PER_UNIT_LOOKUPS_UP_TO:
        folders = [f"{base}/{table}" for table in TABLES]
    else:
        # Temporary files are a local write's (an object store's PUT and copy are whole), so the
        # folders outside these units hold nothing to clean up here.
        folders = sorted({f"{base}/{table}/{unit.partition}" for unit in units for table in unit.tables})
    stored: dict[str, dict[str, Mapping[str, Any] | None]] = {}
    for folder in folders:
        for found, info in _files_with_details(fs, folder):
            directory, name = found.rsplit("/", 1)
            if name.startswith(".") and name.endswith(_TEMP_SUFFIX):
                fs.rm(found)
            else:
                stored.setdefault(directory, {})[name] = info
    return stored


def _object_info(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """The details (ETag) of the object at `path` on an object store, fresh; None when absent."""
    fs.invalidate_cache(path)  # not an answer from an earlier listing
    try:
        if _is_s3(fs):
            # One HEAD; s3fs's info() follows a 404 with a LIST, to see whether it is a folder.
            bucket, key, _version = fs.split_path(path)
            return dict(fs.call_s3("head_object", Bucket=bucket, Key=key))
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return dict(info) if info.get("type", "file") != "directory" else None


def _files_with_details(
    fs: fsspec.AbstractFileSystem, path: str
) -> list[tuple[str, Mapping[str, Any] | None]]:
    if _is_local(fs):
        return [(p, None) for p in _files_under(fs, path)]
    return list(_listing(fs, path).items())


def _files_under(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """Every file below `path` (none when it does not exist), as paths on `fs`."""
    if _is_local(fs):
        # os.walk reads directory entries only; fsspec's find also stats every file. Like find, it
        # follows links to directories.
        return [
            f"{directory}/{name}"
            for directory, _subdirectories, names in os.walk(path, followlinks=True)
            for name in names
        ]
    return list(_listing(fs, path))


def _remove_other_files(
    fs: fsspec.AbstractFileSystem, final: str, stored: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """In a day partition, any visible data file besides `final` (an older layout's) is stale."""
    directory, name = final.rsplit("/", 1)
    if directory.endswith(DEFAULT_PARTITION) or name != DAY_FILE:
        return []  # the default partition holds one file per source: the others are not ours
    stale = [
        f"{directory}/{other}"
        for other in sorted(stored.get(directory, ()))
        if other != name and not other.startswith((".", "_"))
    ]
    for path in stale:
        fs.rm(path)
    return stale


def _remove_if_empty(fs: fsspec.AbstractFileSystem, directory: str) -> None:
    # Only local directories exist on their own; object stores have none to remove.
    if _is_local(fs):
        # Not empty (e.g. another source's default-partition file): then it stays.
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def _discard(fs: fsspec.AbstractFileSystem, paths: Sequence[str]) -> None:
    """Best-effort removal of this write's uncommitted objects after a failure."""
    for path in paths:
        # The original error matters more; a later write removes what is left once it is old.
        with contextlib.suppress(Exception):
            fs.rm(path)


def _display(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if _is_local(fs) else str(fs.unstrip_protocol(path))


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return str(value)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def put_if_absent(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Write `data` at `path` only if nothing is there yet; False when another writer was first.

    The commit of anything written once by whichever of several writers comes first (the source's
    staging): locally a hard link of a complete temporary file (atomic, and refused when the name
    exists), on S3 a PUT with `If-None-Match: *`. Other fsspec stores check, then write (not atomic).
    """
    if _is_local(fs):
        directory, name = path.rsplit("/", 1)
        os.makedirs(directory, exist_ok=True)
        temporary = f"{directory}/.{name}.{uuid.uuid4().hex}{_TEMP_SUFFIX}"
        try:
            with open(temporary, "wb") as out:
                out.write(data)
            os.link(temporary, path)
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.remove(temporary)
        return True
    if _is_s3(fs):
        try:
            fs.pipe_file(path, data, IfNoneMatch="*")
        except OSError as exc:
            if _precondition_failed(exc):
                return False
            raise
        return True
    if fs.exists(path):
        return False
    fs.pipe_file(path, data)
    return True
