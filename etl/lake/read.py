"""Reading the lake as committed: the files the manifests name (published files for days written
before manifests existed), and a table read from them with its day column.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from etl.errors import LakeError
from etl.lake import commit, storage
from etl.lake.tables import SORT_KEYS, TABLE_SCHEMAS
from etl.schema import is_sorted
from retail_contract.lake_layout import DEFAULT_PARTITION, PARTITION_COLUMN, TABLES

_PARTITION_FIELD = pa.field(PARTITION_COLUMN, pa.date32())


_PARTITIONING = ds.HivePartitioning(pa.schema([_PARTITION_FIELD]), null_fallback=DEFAULT_PARTITION)


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
    fs, base = storage.filesystem(root, storage_options)
    try:
        paths = _table_files(fs, base, table, days)
    except (OSError, ValueError) as exc:
        raise LakeError(f"cannot read lake table {table} at {root}: {storage.one_line(exc)}") from exc
    return [storage.display(fs, p) for p in paths]


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
    fs, base = storage.filesystem(root, storage_options)
    try:
        paths = _table_files(fs, base, table, days)
        if not paths:
            return schema.empty_table()
        dataset = ds.dataset(
            paths,
            schema=schema,
            format="parquet",
            partitioning=_PARTITIONING,
            filesystem=storage.arrow_fs(fs),
        )
        result = dataset.to_table()
    except (OSError, ValueError, pa.ArrowInvalid) as exc:
        raise LakeError(f"cannot read lake table {table} at {root}: {storage.one_line(exc)}") from exc
    result = result.combine_chunks()
    names = (PARTITION_COLUMN, *SORT_KEYS[table])
    if is_sorted(result, names):
        # The usual case: the files are listed in day order and each is sorted by the key, so sorting
        # would only copy every row. (The sort is stable: on rows already in order it changes nothing.)
        return result
    order = pc.sort_indices(result, sort_keys=[(k, "ascending", "at_end") for k in names])
    return result.take(order).combine_chunks()


def _table_files(
    fs: fsspec.AbstractFileSystem, base: str, table: str, days: Sequence[dt.date] | None
) -> list[str]:
    """The files of `table`'s committed rows: the objects its units' manifests name, and the published
    files of units without a manifest (written before manifests existed); in day order."""
    keys = None if days is None else [f"{PARTITION_COLUMN}={d.isoformat()}" for d in sorted(set(days))]
    manifests = commit.read_manifests(fs, base, keys)
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
        return storage.files_under(fs, f"{base}/{table}")
    found: list[str] = []
    for key in keys:
        directory = f"{base}/{table}/{key}"
        if storage.is_local_filesystem(fs):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                found.extend(f"{directory}/{name}" for name in os.listdir(directory))
        else:
            found.extend(storage.listing(fs, directory))
    return found
