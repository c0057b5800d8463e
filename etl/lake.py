"""Stage 6: the Parquet lake, partitioned by invoice day, on a local path or an object store.

Layout (hive partitions; `invoice_day` lives in the path, not in the files):

    <root>/invoice_lines/invoice_day=2010-12-01/part-0.parquet   LINE_SCHEMA
    <root>/invoices/invoice_day=2010-12-01/part-0.parquet        INVOICE_SCHEMA, derived from the lines
    <root>/customers/invoice_day=2010-12-01/part-0.parquet       CUSTOMER_SCHEMA, customers invoiced that day
    <root>/rejects/invoice_day=2010-12-01/part-0.parquet         REJECT_SCHEMA
    <root>/rejects/invoice_day=__HIVE_DEFAULT_PARTITION__/part-<source fingerprint>.parquet
    <root>/_runs/<run_id>.json

Every file is written under a hidden name (`.part-0.parquet.<token>.tmp`, which pyarrow, pandas,
Spark and a DuckDB `*.parquet` glob all skip) in its partition directory and then moved over the
visible name in one step (`os.replace` locally, a server-side copy on object stores), so a reader
sees a day's old file or its new one, never a half-written one. One writer at a time is assumed
(the DAG runs one job per lake): each write starts by listing each table once, deleting the temporary
files a crash left behind; that listing then answers which files exist, so no partition is looked up
on its own. Partitions are encoded and written to their temporary names by a few threads at once
(Parquet encoding and zstd release the GIL; object-store uploads wait on the network); the moves into
place happen one by one, in order, only after every file is complete.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import hashlib
import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
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

__all__ = ["TABLES", "LakeReport", "filesystem", "read_lake_table", "write_lake", "write_run_report"]

PARTITION_COLUMN = "invoice_day"
DEFAULT_PARTITION = "__HIVE_DEFAULT_PARTITION__"
TABLES = ("invoice_lines", "invoices", "customers", "rejects")

_PARTITION_FIELD = pa.field(PARTITION_COLUMN, pa.date32())
_LOCAL_FS = LocalFileSystem()  # stateless: one instance serves every thread
_PARTITIONING = ds.HivePartitioning(pa.schema([_PARTITION_FIELD]), null_fallback=DEFAULT_PARTITION)
_FILE_NAME = "part-0.parquet"
#: Footer metadata key of a file's content digest (`content_digest`).
DIGEST_KEY = b"retail_etl.content_sha256"
_EPOCH = dt.date(1970, 1, 1)
_TEMP_SUFFIX = ".tmp"
_FINGERPRINT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Airflow run ids look like "scheduled__2024-01-01T00:00:00+00:00".
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+=-]{0,199}$")
#: Partition files encoded and written at once by `write_lake` unless told otherwise. Measured on two
#: cores with the full data set, a first run: 1 thread clearly slower, 2 to 8 within the machine's
#: noise of each other. Each thread holds one partition's bytes; object stores, where a write mostly
#: waits on the network, may want more (`max_writers`).
DEFAULT_WRITERS = 4


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
    files_written: tuple[str, ...]
    files_removed: tuple[str, ...] = field(default=())
    #: Files whose new content was byte for byte what the lake already held: left as they were.
    files_unchanged: tuple[str, ...] = field(default=())

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
        }


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

    A day in `days` without rows in a table loses its old partition there; days not in `days` are
    untouched. Rejects without an invoice day go to the default partition, in a file named after
    `source_fingerprint` (so a rerun of the same source replaces it and other sources' files stay).
    `root` is a local path or an fsspec URL (`s3://bucket/lake`, `memory://lake`); `storage_options`
    go to the filesystem (e.g. `{"endpoint_url": ...}` for an S3-compatible server). Up to
    `max_writers` files (default `DEFAULT_WRITERS`) are encoded and written at once.

    Raises `LakeError` when the root cannot be written, and `ValueError` when the inputs break the
    contract (wrong schema, rows on a day outside `days`, customers missing from the snapshot).
    """
    if not _FINGERPRINT.match(source_fingerprint):
        raise ValueError(f"source_fingerprint {source_fingerprint!r} is not a safe file-name part")
    writers = DEFAULT_WRITERS if max_writers is None else max_writers
    if writers < 1:
        raise ValueError(f"max_writers must be at least 1, got {max_writers}")
    run_days = tuple(sorted(set(days)))
    partitions = _partitions(run_days, snapshot, rejects, source_fingerprint)

    fs, base = _open(root, storage_options)
    written: list[str] = []
    removed: list[str] = []
    unchanged: list[str] = []
    # Every temporary file this write started, until it is moved into place. A set: writer threads
    # add to it (atomic under the GIL), and a failure discards whatever is left in it.
    temporaries: set[str] = set()
    try:
        stored = _list_tables(fs, base)
        files = [
            (f"{base}/{relative}/{name}", table, data) for (table, relative, name), data in partitions.items()
        ]
        emptied = [final for final, _table, data in files if data is None]  # the run's days without rows
        to_write = [(final, table, data) for final, table, data in files if data is not None]
        directories = set(stored)  # local directories known to exist: those holding a file
        staged = _stage_all(fs, to_write, stored, temporaries, directories, writers)
        # Every file is complete on storage before the first move: a failure up to here changes
        # nothing a reader sees. From here on each step swaps one whole partition, in partition order.
        for (final, _table, _data), temporary in zip(to_write, staged, strict=True):
            if temporary is None:
                unchanged.append(final)
                continue
            _move(fs, temporary, final)
            temporaries.discard(temporary)
            written.append(final)
            removed.extend(_remove_other_files(fs, final, stored))
        for final in emptied:
            directory, name = final.rsplit("/", 1)
            if name in stored.get(directory, ()):
                fs.rm(final)
                removed.append(final)
                _remove_if_empty(fs, directory)
    except BaseException as exc:
        # Files already moved stay (each is a complete day); the rest must not linger as clutter.
        _discard(fs, sorted(temporaries))
        if isinstance(exc, OSError):
            raise LakeError(f"cannot write the lake at {root}: {_one_line(exc)}") from exc
        raise

    rows = {table: 0 for table in TABLES}
    for (table, _directory, _name), data in partitions.items():
        rows[table] += 0 if data is None else data.num_rows
    return LakeReport(
        root=root,
        days=run_days,
        rows=rows,
        files_written=tuple(_display(fs, p) for p in written),
        files_removed=tuple(_display(fs, p) for p in removed),
        files_unchanged=tuple(_display(fs, p) for p in unchanged),
    )


def read_lake_table(
    root: str,
    table: str,
    days: Sequence[dt.date] | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> pa.Table:
    """One lake table (`TABLE_SCHEMAS[table]`, with `invoice_day` as date32) for `days`, or all of it.

    Rows come sorted by day, then the table's key (rejects without a day last). With `days` given,
    only those partitions are read (the default partition of rejects is not among them). A table not
    written yet reads as empty.
    """
    if table not in TABLES:
        raise ValueError(f"unknown lake table {table!r}; expected one of {', '.join(TABLES)}")
    schema = TABLE_SCHEMAS[table]
    fs, base = _open(root, storage_options)
    path = f"{base}/{table}"
    try:
        fs.invalidate_cache(path)  # object-store listings are cached per filesystem instance
        if not fs.exists(path):
            return schema.empty_table()
        dataset = ds.dataset(
            path, schema=schema, format="parquet", partitioning=_PARTITIONING, filesystem=_arrow_fs(fs)
        )
        wanted = None if days is None else ds.field(PARTITION_COLUMN).isin(list(days))
        result = dataset.to_table(filter=wanted)
    except (OSError, pa.ArrowInvalid) as exc:
        raise LakeError(f"cannot read lake table {table} at {root}: {_one_line(exc)}") from exc
    result = result.combine_chunks()
    names = (PARTITION_COLUMN, *_SORT_KEYS[table])
    if is_sorted(result, names):
        # The usual case: the scan yields the day directories in path (= date) order and each file
        # is sorted by the key, so sorting would only copy every row. (The sort is stable: on rows
        # already in order it changes nothing.)
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
    directory = f"{base}/_runs"
    final = f"{directory}/{run_id}.json"
    temporary = f"{directory}/.{run_id}.json.{uuid.uuid4().hex}{_TEMP_SUFFIX}"
    try:
        _make_parent(fs, temporary)
        with fs.open(temporary, "wb") as out:
            out.write(body.encode("utf-8") + b"\n")
        _move(fs, temporary, final)
    except OSError as exc:
        _discard(fs, [temporary])
        raise LakeError(f"cannot write the run report at {root}: {_one_line(exc)}") from exc
    return _display(fs, final)


# --- what to write -----------------------------------------------------------------------------


def _partitions(
    days: tuple[dt.date, ...], snapshot: ServiceSnapshot, rejects: pa.Table, fingerprint: str
) -> dict[tuple[str, str, str], pa.Table | None]:
    """Every file this write touches, with its rows (None: remove the file), before anything is written.

    Keys are (table, partition directory relative to the root, file name), day by day in the order of
    `TABLES`. Each table is derived and sorted by (day, its key) once and then sliced per day: per-day
    filters and group-bys cost a pass over the data, or a compute call, per day.
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
    planned: dict[tuple[str, str, str], pa.Table | None] = {}
    for index, day in enumerate(days):
        directory = f"{PARTITION_COLUMN}={day.isoformat()}"
        for table, data in by_table.items():
            first, stop = bounds[table][index]
            planned[(table, f"{table}/{directory}", _FILE_NAME)] = (
                _day_rows(data, first, stop, table) if stop > first else None
            )
    undated = _sorted(rejects.filter(pc.is_null(rejects[PARTITION_COLUMN])), "rejects")
    planned[("rejects", f"rejects/{PARTITION_COLUMN}={DEFAULT_PARTITION}", f"part-{fingerprint}.parquet")] = (
        undated if undated.num_rows else None
    )
    return planned


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


# --- storage -----------------------------------------------------------------------------------


def filesystem(
    root: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of a lake root and the root's path on it (for the pipeline's work files)."""
    return _open(root, storage_options)


def _open(root: str, storage_options: Mapping[str, Any] | None) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        fs, path = fsspec.core.url_to_fs(root, **dict(storage_options or {}))
    except (ImportError, ValueError, OSError) as exc:  # unknown protocol, missing s3fs, bad options
        raise LakeError(f"cannot open the lake at {root}: {_one_line(exc)}") from exc
    return fs, str(path).rstrip("/")


def _arrow_fs(fs: fsspec.AbstractFileSystem) -> FileSystem:
    if isinstance(fs, FsspecLocalFileSystem):
        return _LOCAL_FS
    return PyFileSystem(FSSpecHandler(fs))


def content_digest(table: pa.Table) -> str:
    """sha256 of `table`'s rows and schema (its Arrow IPC stream): equal digests, equal files.

    Stored in each file's key-value metadata (`DIGEST_KEY`), so that a rerun compares a partition with
    the file in place by reading only the file's footer.
    """
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue()).hexdigest()


def _stage_all(
    fs: fsspec.AbstractFileSystem,
    files: Sequence[tuple[str, str, pa.Table]],
    stored: Mapping[str, set[str]],
    temporaries: set[str],
    directories: set[str],
    writers: int,
) -> list[str | None]:
    """For each (final path, table, rows) in `files`, in order: None when the file at the final path
    already holds exactly these rows, else the temporary file the rows were written to.

    Files in place are compared here, one after another: that is mostly short Python-level steps,
    which threads only contend for (a rerun measured slower with them). Each file to write is handed
    on at once to one of up to `writers` threads, where encoding (which releases the GIL) and writing
    (which waits on storage) overlap with each other and with the comparing.
    """
    staged: list[str | None] = [None] * len(files)
    # Threads start only when the first file is submitted: a rerun without changes starts none.
    executor = (
        ThreadPoolExecutor(max_workers=writers, thread_name_prefix="lake-writer") if writers > 1 else None
    )
    futures: list[Future[None]] = []
    try:
        for index, (final, table, data) in enumerate(files):
            file_schema = FILE_SCHEMAS[table]
            rows = data.select(file_schema.names)
            # Usually equal already (metadata too), and a cast costs a compute call per column.
            if not rows.schema.equals(file_schema, check_metadata=True):
                rows = rows.cast(file_schema)
            directory, name = final.rsplit("/", 1)
            digest = None  # for a new file, computed by its writer
            if name in stored.get(directory, ()):
                digest = content_digest(rows)
                if _stored_digest(fs, final) == digest:
                    # A rerun of the same day: the file already holds exactly these rows. Leaving it is
                    # what rewriting it would give (the same bytes), without encoding, writing or renaming.
                    continue
            staged[index] = temporary = f"{directory}/.{name}.{uuid.uuid4().hex}{_TEMP_SUFFIX}"
            if executor is None:
                _write_temporary(fs, temporary, rows, digest, temporaries, directories)
            else:
                futures.append(
                    executor.submit(_write_temporary, fs, temporary, rows, digest, temporaries, directories)
                )
        for future in futures:
            future.result()  # the first failure in order is raised
    finally:
        if executor is not None:
            # After a failure: files not started yet never start, and those in progress finish before
            # the caller discards the temporaries (a thread cannot be stopped halfway through a write).
            executor.shutdown(wait=True, cancel_futures=True)
    return staged


def _write_temporary(
    fs: fsspec.AbstractFileSystem,
    temporary: str,
    rows: pa.Table,
    digest: str | None,
    temporaries: set[str],
    directories: set[str],
) -> None:
    """Write `rows` as a Parquet file (their digest in the footer) at `temporary`."""
    digest = content_digest(rows) if digest is None else digest
    temporaries.add(temporary)  # before writing: a half-written file is discarded too
    _write_bytes(fs, temporary, _parquet_bytes(rows, digest), directories)


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
        if isinstance(fs, FsspecLocalFileSystem):
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
    parent = path.rsplit("/", 1)[0]
    if parent not in directories:
        _make_parent(fs, path)  # two threads may both get here: makedirs(exist_ok=True) allows that
        directories.add(parent)
    if isinstance(fs, FsspecLocalFileSystem):
        # The same bytes as through fsspec's local file, without its per-open Python overhead.
        with open(path, "wb") as out:
            out.write(data)
    else:
        with fs.open(path, "wb") as out:
            out.write(data)


def _make_parent(fs: fsspec.AbstractFileSystem, path: str) -> None:
    # Only local directories must exist before a write. On object stores `makedirs` would create a
    # missing *bucket*, which is the operator's decision (region, policy), not the job's: a missing
    # bucket must fail the write instead.
    if isinstance(fs, FsspecLocalFileSystem):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)


def _move(fs: fsspec.AbstractFileSystem, source: str, target: str) -> None:
    """Put `source` in place of `target` in one step."""
    if isinstance(fs, FsspecLocalFileSystem):
        os.replace(source, target)  # atomic rename within the directory
    else:
        fs.mv(source, target)  # object stores: a server-side copy is visible whole or not at all


def _list_tables(fs: fsspec.AbstractFileSystem, base: str) -> dict[str, set[str]]:
    """The files of every table under `base`, as {directory: file names}, after deleting the temporary
    files an interrupted write left behind. One listing per table: with one writer at a time it stays
    true for the whole write, so no file needs looking up (or a directory listing) of its own."""
    stored: dict[str, set[str]] = {}
    for table in TABLES:
        for found in _files_under(fs, f"{base}/{table}"):
            directory, name = found.rsplit("/", 1)
            if name.startswith(".") and name.endswith(_TEMP_SUFFIX):
                fs.rm(found)
            else:
                stored.setdefault(directory, set()).add(name)
    return stored


def _files_under(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """Every file below `path` (none when it does not exist), as paths on `fs`."""
    if isinstance(fs, FsspecLocalFileSystem):
        # os.walk reads directory entries only; fsspec's find also stats every file. Like find, it
        # follows links to directories.
        return [
            f"{directory}/{name}"
            for directory, _subdirectories, names in os.walk(path, followlinks=True)
            for name in names
        ]
    fs.invalidate_cache(path)  # object-store listings are cached per filesystem instance
    if not fs.exists(path):
        return []
    return list(fs.find(path))


def _remove_other_files(
    fs: fsspec.AbstractFileSystem, final: str, stored: Mapping[str, set[str]]
) -> list[str]:
    """In a day partition, any visible data file besides `final` (an older layout's) is stale."""
    directory, name = final.rsplit("/", 1)
    if directory.endswith(DEFAULT_PARTITION) or name != _FILE_NAME:
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
    if isinstance(fs, FsspecLocalFileSystem):
        # Not empty (e.g. another source's default-partition file): then it stays.
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def _discard(fs: fsspec.AbstractFileSystem, paths: Sequence[str]) -> None:
    """Best-effort removal of this write's temporary files after a failure."""
    for path in paths:
        # The original error matters more; the next write cleans up anyway.
        with contextlib.suppress(Exception):
            fs.rm(path)


def _display(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if isinstance(fs, FsspecLocalFileSystem) else str(fs.unstrip_protocol(path))


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
