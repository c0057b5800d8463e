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
(the DAG runs one job per lake): each write starts by deleting temporary files a crash left behind.
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
)

__all__ = ["TABLES", "LakeReport", "filesystem", "read_lake_table", "write_lake", "write_run_report"]

PARTITION_COLUMN = "invoice_day"
DEFAULT_PARTITION = "__HIVE_DEFAULT_PARTITION__"
TABLES = ("invoice_lines", "invoices", "customers", "rejects")

_PARTITION_FIELD = pa.field(PARTITION_COLUMN, pa.date32())
_PARTITIONING = ds.HivePartitioning(pa.schema([_PARTITION_FIELD]), null_fallback=DEFAULT_PARTITION)
_FILE_NAME = "part-0.parquet"
#: Footer metadata key of a file's content digest (`content_digest`).
DIGEST_KEY = b"retail_etl.content_sha256"
_EPOCH = dt.date(1970, 1, 1)
_TEMP_SUFFIX = ".tmp"
_FINGERPRINT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Airflow run ids look like "scheduled__2024-01-01T00:00:00+00:00".
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+=-]{0,199}$")


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
) -> LakeReport:
    """Replace the partitions of `days` in every table with what `snapshot` and `rejects` hold.

    A day in `days` without rows in a table loses its old partition there; days not in `days` are
    untouched. Rejects without an invoice day go to the default partition, in a file named after
    `source_fingerprint` (so a rerun of the same source replaces it and other sources' files stay).
    `root` is a local path or an fsspec URL (`s3://bucket/lake`, `memory://lake`); `storage_options`
    go to the filesystem (e.g. `{"endpoint_url": ...}` for an S3-compatible server).

    Raises `LakeError` when the root cannot be written, and `ValueError` when the inputs break the
    contract (wrong schema, rows on a day outside `days`, customers missing from the snapshot).
    """
    if not _FINGERPRINT.match(source_fingerprint):
        raise ValueError(f"source_fingerprint {source_fingerprint!r} is not a safe file-name part")
    run_days = tuple(sorted(set(days)))
    partitions = _partitions(run_days, snapshot, rejects, source_fingerprint)

    fs, base = _open(root, storage_options)
    written: list[str] = []
    removed: list[str] = []
    unchanged: list[str] = []
    pending: list[tuple[str, str]] = []  # (temporary, final)
    emptied: list[str] = []  # partitions of the run's days that now have no rows
    directories: set[str] = set()  # local directories known to exist
    try:
        for table in TABLES:
            _remove_temp_files(fs, f"{base}/{table}")
        for (table, relative, file_name), data in partitions.items():
            final = f"{base}/{relative}/{file_name}"
            if data is None:
                emptied.append(final)
                continue
            file_schema = FILE_SCHEMAS[table]
            rows = data.select(file_schema.names).cast(file_schema)
            digest = content_digest(rows)
            if _stored_digest(fs, final) == digest:
                # A rerun of the same day: the file already holds exactly these rows. Leaving it is
                # what rewriting it would give (the same bytes), without encoding, writing or renaming.
                unchanged.append(final)
                continue
            temporary = f"{base}/{relative}/.{file_name}.{uuid.uuid4().hex}{_TEMP_SUFFIX}"
            pending.append((temporary, final))
            _write_bytes(fs, temporary, _parquet_bytes(rows, digest), directories)
        # Every file is complete on storage before the first move: a failure up to here changes
        # nothing a reader sees. From here on each step swaps one whole partition.
        while pending:
            temporary, final = pending[0]
            _move(fs, temporary, final)
            pending.pop(0)
            written.append(final)
            removed.extend(_remove_other_files(fs, final))
        for final in emptied:
            if fs.exists(final):
                fs.rm(final)
                removed.append(final)
                _remove_if_empty(fs, final.rsplit("/", 1)[0])
    except BaseException as exc:
        # Files already moved stay (each is a complete day); the rest must not linger as clutter.
        _discard(fs, [temporary for temporary, _ in pending])
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
    keys = [(k, "ascending", "at_end") for k in (PARTITION_COLUMN, *_SORT_KEYS[table])]
    order = pc.sort_indices(result, sort_keys=keys)
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

    Keys are (table, partition directory relative to the root, file name).
    """
    lines = _conform(snapshot.lines, LINE_SCHEMA, "snapshot.lines")
    customers = _conform(snapshot.customers, CUSTOMER_SCHEMA, "snapshot.customers")
    rejects = _conform(rejects, REJECT_SCHEMA, "rejects")
    _check_days(lines, days, "snapshot.lines")
    _check_days(rejects.filter(pc.is_valid(rejects[PARTITION_COLUMN])), days, "rejects")
    countries = _customer_countries(customers)

    # Sorted by day once, then one slice per day: filtering the whole table per day was quadratic.
    lines = lines.sort_by(
        [(PARTITION_COLUMN, "ascending"), *((k, "ascending") for k in _SORT_KEYS["invoice_lines"])]
    )
    line_days = pc.cast(lines[PARTITION_COLUMN], pa.int32()).to_numpy()
    planned: dict[tuple[str, str, str], pa.Table | None] = {}
    for day in days:
        directory = f"{PARTITION_COLUMN}={day.isoformat()}"
        ordinal = (day - _EPOCH).days
        first, stop = np.searchsorted(line_days, [ordinal, ordinal + 1])
        day_lines = lines.slice(int(first), int(stop - first)).combine_chunks()
        day_rejects = rejects.filter(pc.equal(rejects[PARTITION_COLUMN], day))
        tables = {
            "invoice_lines": day_lines,
            "invoices": _invoices(day_lines),
            "customers": _customers(day_lines, countries, day),
            "rejects": _sorted(day_rejects, "rejects"),
        }
        for table, data in tables.items():
            planned[(table, f"{table}/{directory}", _FILE_NAME)] = data if data.num_rows else None
    undated = _sorted(rejects.filter(pc.is_null(rejects[PARTITION_COLUMN])), "rejects")
    planned[("rejects", f"rejects/{PARTITION_COLUMN}={DEFAULT_PARTITION}", f"part-{fingerprint}.parquet")] = (
        undated if undated.num_rows else None
    )
    return planned


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
    """One row per invoice: first timestamp, customer, country, line count, totals (exact decimals)."""
    # decimal128(12,3) x decimal128(19,0) is decimal128(32,3): exact, summed exactly, then narrowed
    # to AMOUNT_TYPE, which fails loudly rather than rounding if a total ever outgrew 18 digits.
    amount = pc.multiply(lines["unit_price"], pc.cast(lines["quantity"], pa.decimal128(19, 0)))
    grouped = (
        lines.append_column("amount", amount)
        .group_by("invoice_no", use_threads=False)
        .aggregate(
            [
                ("invoice_date", "min"),
                ("customer_id", "min"),  # one customer and country per invoice: min is that value
                ("country", "min"),
                ("line_no", "count"),
                ("quantity", "sum"),
                ("amount", "sum"),
                (PARTITION_COLUMN, "min"),
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
            PARTITION_COLUMN: grouped[f"{PARTITION_COLUMN}_min"],
        }
    )
    return _sorted(invoices.cast(INVOICE_SCHEMA), "invoices")


def _customer_countries(customers: pa.Table) -> dict[str, str]:
    countries: dict[str, str] = {}
    for customer_id, country in zip(
        customers["customer_id"].to_pylist(), customers["country"].to_pylist(), strict=True
    ):
        if countries.setdefault(customer_id, country) != country:
            raise ValueError(f"snapshot.customers lists customer {customer_id} under two countries")
    return countries


def _customers(lines: pa.Table, countries: Mapping[str, str], day: dt.date) -> pa.Table:
    """The customers invoiced in `lines`, with the country the service stores for them."""
    ids = sorted(i for i in pc.unique(lines["customer_id"]).to_pylist() if i is not None)
    unknown = [i for i in ids if i not in countries]
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise ValueError(f"snapshot.customers lacks customer(s) {shown} invoiced on {day}")
    return pa.table({"customer_id": ids, "country": [countries[i] for i in ids]}, schema=CUSTOMER_SCHEMA)


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
        return LocalFileSystem()
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
        with fs.open(path, "rb") as handle:
            metadata = pq.read_metadata(handle).metadata or {}
    except (FileNotFoundError, OSError, pa.ArrowInvalid):
        return None
    value = metadata.get(DIGEST_KEY)
    return value.decode() if value is not None else None


def _write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes, directories: set[str]) -> None:
    parent = path.rsplit("/", 1)[0]
    if parent not in directories:
        _make_parent(fs, path)
        directories.add(parent)
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


def _remove_temp_files(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Delete temporary files that an interrupted write left under `path`."""
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return
    for found in fs.find(path):
        name = found.rsplit("/", 1)[-1]
        if name.startswith(".") and name.endswith(_TEMP_SUFFIX):
            fs.rm(found)


def _remove_other_files(fs: fsspec.AbstractFileSystem, final: str) -> list[str]:
    """In a day partition, any visible data file besides `final` (an older layout's) is stale."""
    directory, name = final.rsplit("/", 1)
    if directory.endswith(DEFAULT_PARTITION) or name != _FILE_NAME:
        return []  # the default partition holds one file per source: the others are not ours
    stale = [
        p
        for p in fs.ls(directory, detail=False)
        if p.rsplit("/", 1)[-1] != name and not p.rsplit("/", 1)[-1].startswith((".", "_"))
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
