"""The commit protocol: objects first, each under a name unique to the write; then the unit's manifest,
in one PUT conditional on the manifest the writer read (locally a compare and a rename under a lock).
Also what a commit cleans up (retired objects, orphans of dead writes) and adopting a concurrent
writer's identical commit. docs/design.md ("The lake") has the steps and the failure cases.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa

from etl.errors import LakeError
from etl.lake import storage
from etl.lake.encoding import content_digest, parquet_bytes
from etl.lake.tables import FILE_SCHEMAS, Unit
from retail_contract.lake_layout import (
    DEFAULT_PARTITION,
    LAKE_DIR,
    MANIFEST_DIR,
    MANIFEST_FORMAT,
    OBJECT_DIR,
    PARTITION_COLUMN,
    TABLES,
)

#: An object no manifest names is removed once this old: younger, it may belong to a write in progress.
ORPHAN_GRACE = dt.timedelta(hours=1)


_LOCK_NAME = ".commit.lock"


# On object stores a write of up to this many units (a daily run: its day, perhaps the undated
# rejects) looks only at its units' keys, a few requests each; a larger one lists the whole lake once,
# which a per-unit lookup would outnumber. Listing the whole lake for every daily run would make a
# year's catch-up quadratic in the lake's size.
PER_UNIT_LOOKUPS_UP_TO = 8


@dataclass
class Committed:
    """A manifest as read: its bytes (compared again under the local lock) and its S3 ETag."""

    body: bytes
    manifest: dict[str, Any]
    etag: str | None


class Conflict(Exception):
    """Another writer committed the unit after this write read its manifest."""


class UnitPlan:
    """One unit through a write: what is committed now, what this write adds, what it then commits."""

    def __init__(self, unit: Unit, committed: Committed | None) -> None:
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
        raise LakeError(f"the lake's manifest {path} is not JSON: {storage.one_line(exc)}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise LakeError(f"the lake's manifest {path} is not a format-{MANIFEST_FORMAT} lake manifest")
    return manifest


def read_manifests(
    fs: fsspec.AbstractFileSystem, base: str, keys: Sequence[str] | None
) -> dict[str, Committed]:
    """The committed manifests among `keys` (None: all of them), with what a conditional commit needs.

    On S3 the ETags come from the listing (for a few keys: from a HEAD of each), before the bodies
    are read: if a manifest changes in between, the commit based on it fails its `If-Match` instead
    of overwriting the newer one.
    """
    directory = f"{base}/{MANIFEST_DIR}"
    found: dict[str, tuple[bytes, str | None]] = {}
    if storage.is_local_filesystem(fs):
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
        if keys is not None and len(keys) <= PER_UNIT_LOOKUPS_UP_TO:
            listing = {
                key: info for key in keys if (info := storage.object_info(fs, _manifest_path(base, key)))
            }
        else:
            listing = {
                path.rsplit("/", 1)[1][: -len(".json")]: info
                for path, info in storage.listing(fs, directory).items()
                if path.endswith(".json")
            }
        wanted = [key for key in (sorted(listing) if keys is None else keys) if key in listing]
        if wanted:
            bodies = fs.cat([_manifest_path(base, key) for key in wanted])
            for key in wanted:
                found[key] = (bodies[_manifest_path(base, key)], listing[key].get("ETag"))
    return {
        key: Committed(body, _parse_manifest(_manifest_path(base, key), body), etag)
        for key, (body, etag) in found.items()
    }


@dataclass
class CommitState:
    """What a local writer knows while it holds the commit lock: which manifests exist (no other
    writer can add one meanwhile) and which directories it made."""

    manifests: set[str] = field(default_factory=set)
    directories: set[str] = field(default_factory=set)


@contextlib.contextmanager
def commit_lock(fs: fsspec.AbstractFileSystem, base: str) -> Iterator[CommitState]:
    """Locally, writers of one lake commit one at a time (compare, then rename, under the lock); on
    object stores the conditional PUT is the lock, so nothing is held there."""
    state = CommitState()
    if not storage.is_local_filesystem(fs):
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


def commit_manifest(
    fs: fsspec.AbstractFileSystem,
    base: str,
    key: str,
    manifest: Mapping[str, Any],
    committed: Committed | None,
    state: CommitState,
) -> None:
    """Write the unit's manifest if it is still the one this write read; else raise `Conflict`."""
    path = _manifest_path(base, key)
    body = _manifest_bytes(manifest)
    if storage.is_local_filesystem(fs):
        current: bytes | None = None
        if key in state.manifests:  # listed under the lock: no other writer adds one now
            with open(path, "rb") as handle:
                current = handle.read()
        if current != (committed.body if committed else None):
            raise Conflict(key)
        storage.put_whole(fs, path, body, state.directories)
        state.manifests.add(key)
    elif storage.is_s3(fs):
        condition = {"IfMatch": committed.etag} if committed and committed.etag else {"IfNoneMatch": "*"}
        try:
            fs.pipe_file(path, body, **condition)
        except OSError as exc:
            if storage.precondition_failed(exc):
                raise Conflict(key) from exc
            raise
    else:
        # Other fsspec stores (memory://, ...): one PUT is whole, but without a condition two writers
        # of one day at once are not detected.
        fs.pipe_file(path, body)


def adopt(fs: fsspec.AbstractFileSystem, base: str, plan: UnitPlan, uncommitted: set[str]) -> UnitPlan | None:
    """After a lost commit: the plan of the unit's current commit if it holds exactly this write's
    rows (this write's own objects for it are then deleted), else None."""
    current = read_manifests(fs, base, [plan.unit.key]).get(plan.unit.key)
    if current is None:
        return None
    theirs = {table: entry.get("content_sha256") for table, entry in current.manifest["tables"].items()}
    ours = {table: entry.get("content_sha256") for table, entry in plan.tables.items()}
    if theirs != ours:
        return None
    mine = sorted(f"{base}/{entry['object']}" for entry in plan.new_entries.values())
    storage.discard(fs, mine)
    uncommitted.difference_update(mine)
    adopted = UnitPlan(plan.unit, current)
    adopted.kept = dict(current.manifest["tables"])
    return adopted


def delete_garbage(
    fs: fsspec.AbstractFileSystem, base: str, plan: UnitPlan, manifest: Mapping[str, Any]
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


def _is_object_of(unit: Unit, name: str) -> bool:
    """Whether `name` in the unit's object folder is one of the unit's objects (the default partition
    holds every source's undated rejects)."""
    prefixes = [unit.object_prefix] if unit.object_prefix else [f"{table}." for table in TABLES]
    return any(name.startswith(p) and _WRITE_ID.match(name[len(p) :]) for p in prefixes)


def list_objects(fs: fsspec.AbstractFileSystem, base: str, plans: Sequence[UnitPlan]) -> None:
    """Fill each plan's `stored_objects`: the objects in its unit's folder, with their times."""
    if storage.is_local_filesystem(fs):
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
    if len(plans) <= PER_UNIT_LOOKUPS_UP_TO:
        partitions = {plan.unit.partition for plan in plans}
        listings = [storage.listing(fs, f"{base}/{OBJECT_DIR}/{p}") for p in partitions]
    else:
        listings = [storage.listing(fs, f"{base}/{OBJECT_DIR}")]
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


def stage_all(
    fs: fsspec.AbstractFileSystem,
    base: str,
    write_id: str,
    files: Sequence[tuple[UnitPlan, str, pa.Table, str | None]],
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
    md5 = not storage.is_local_filesystem(fs)  # object stores compare a published copy by its ETag
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
    data = parquet_bytes(rows, digest)
    path = f"{base}/{relative}"
    uncommitted.add(path)  # before writing: a half-written object is discarded too
    storage.write_bytes(fs, path, data, directories)
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
