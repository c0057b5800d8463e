"""`write_lake`, the lake stage: derive the run's tables (`tables`), stage their objects and commit each
unit (`commit`), then publish it (`publish`); `LakeReport` says what it did.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from etl.errors import LakeError
from etl.lake import commit, publish, storage
from etl.lake.tables import plan_units
from etl.schema import ServiceSnapshot
from retail_contract.lake_layout import TABLES

_FINGERPRINT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


#: Partition files encoded and written at once by `write_lake` unless told otherwise. Measured on two
#: cores with the full data set, a first run: 1 thread clearly slower, 2 to 8 within the machine's
#: noise of each other. Each thread holds one partition's bytes; object stores, where a write mostly
#: waits on the network, may want more (`max_writers`).
DEFAULT_WRITERS = 4


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


def write_lake(
    root: str,
    days: Sequence[dt.date],
    snapshot: ServiceSnapshot,
    rejects: pa.Table,
    *,
    source_fingerprint: str | None,
    storage_options: Mapping[str, Any] | None = None,
    max_writers: int | None = None,
    sweep_whole_lake: bool = True,
) -> LakeReport:
    """Replace the partitions of `days` in every table with what `snapshot` and `rejects` hold.

    Each day is committed as a whole by its manifest (see the module's docstring), then published.
    A day in `days` without rows in a table loses its old partition there; days not in `days` are
    untouched. Rejects without an invoice day go to the default partition, in a file named after
    `source_fingerprint` (so a rerun of the same source replaces it and other sources' files stay);
    with `source_fingerprint` None (a sync, which rewrites days from the service and reads no source)
    `rejects` must have a day each, and the undated rejects stay as they are.
    A day whose content equals what is committed writes nothing. `root` is a local path or an fsspec
    URL (`s3://bucket/lake`, `memory://lake`); `storage_options` go to the storage.filesystem (e.g.
    `{"endpoint_url": ...}` for an S3-compatible server). Up to `max_writers` files (default
    `DEFAULT_WRITERS`) are encoded and written at once. Locally, a write deletes the temporary files
    an interrupted write left anywhere in the lake; with `sweep_whole_lake` False (a run's later
    batches, after its first write swept) only those in its own partitions.

    Raises `LakeError` when the root cannot be written or another writer committed one of the days
    meanwhile (the days committed before it stay, each whole; a rerun completes the rest), and
    `ValueError` when the inputs break the contract (wrong schema, rows on a day outside `days`,
    customers missing from the snapshot).
    """
    if source_fingerprint is not None and not _FINGERPRINT.match(source_fingerprint):
        raise ValueError(f"source_fingerprint {source_fingerprint!r} is not a safe file-name part")
    writers = DEFAULT_WRITERS if max_writers is None else max_writers
    if writers < 1:
        raise ValueError(f"max_writers must be at least 1, got {max_writers}")
    run_days = tuple(sorted(set(days)))
    units = plan_units(run_days, snapshot, rejects, source_fingerprint)

    fs, base = storage.filesystem(root, storage_options)
    write_id = uuid.uuid4().hex[:16]
    written: list[str] = []
    removed: list[str] = []
    unchanged: list[str] = []
    commits: list[str] = []
    # Objects this write created that no manifest names yet. A set: writer threads add to it (atomic
    # under the GIL), and a failure deletes whatever is left in it.
    uncommitted: set[str] = set()
    try:
        committed = commit.read_manifests(fs, base, [unit.key for unit in units])
        published = publish.list_tables(fs, base, units, whole_lake=sweep_whole_lake)
        plans = [commit.UnitPlan(unit, committed.get(unit.key)) for unit in units]
        commit.list_objects(fs, base, plans)
        to_write = [
            (plan, table, rows, digest) for plan in plans for table, rows, digest in plan.tables_to_write()
        ]
        directories: set[str] = set()
        entries = commit.stage_all(fs, base, write_id, to_write, uncommitted, directories, writers)
        for (plan, table, _rows, _digest), entry in zip(to_write, entries, strict=True):
            plan.new_entries[table] = entry
        # Every object is complete on storage before the first commit: a failure up to here changes
        # nothing a reader sees. From here on each commit publishes one whole day, in day order.
        with commit.commit_lock(fs, base) as state:
            for plan in plans:
                manifest = plan.manifest()
                if manifest is not None:
                    try:
                        commit.commit_manifest(fs, base, plan.unit.key, manifest, plan.committed, state)
                    except commit.Conflict:
                        # Another writer committed the unit meanwhile. The same rows (two runs of one
                        # source racing over its undated rejects, a retried task and its zombie) are
                        # this write's outcome too; other rows are refused.
                        adopted = commit.adopt(fs, base, plan, uncommitted)
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
                        commit.delete_garbage(fs, base, plan, manifest)
                new, gone, same = publish.publish_unit(fs, base, plan, published, state.directories)
                written.extend(new)
                removed.extend(gone)
                unchanged.extend(same)
            if not storage.is_local_filesystem(fs):
                written.extend(publish.publish_later_commits(fs, base, plans, state.directories))
    except BaseException as exc:
        # Committed days stay (each is whole); objects no manifest names must not linger.
        storage.discard(fs, sorted(uncommitted))
        if isinstance(exc, OSError):
            raise LakeError(f"cannot write the lake at {root}: {storage.one_line(exc)}") from exc
        raise

    rows = {table: 0 for table in TABLES}
    for unit in units:
        for table, data in unit.tables.items():
            rows[table] += 0 if data is None else data.num_rows
    return LakeReport(
        root=root,
        days=run_days,
        rows=rows,
        files_written=tuple(storage.display(fs, p) for p in written),
        files_removed=tuple(storage.display(fs, p) for p in removed),
        files_unchanged=tuple(storage.display(fs, p) for p in unchanged),
        manifests_committed=tuple(commits),
    )
