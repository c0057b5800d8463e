"""The source staged once, by invoice day, for the DAG's runs: each run reads only its own days.

A DAG run covers one invoice day, but the source is one file for the whole year: loading and validating
it in every run made each day cost as much as the year's load (2-3 s on the full data set, growing with
the source). The first run to need a source validates all of it once and stages the result under the
lake; every later run of that source reads its days from there.

    <lake>/_staging/<key>/manifest.json            written last: no manifest, no staging
    <lake>/_staging/<key>/<build>/lines.parquet    LINE_SCHEMA + `_order`, one row group per day
    <lake>/_staging/<key>/<build>/rejects.parquet  REJECT_SCHEMA + `_order`, one row group per day,
                                                   and one for the rejects without a day

- **What a day gets** is exactly what `validate(load_source(...), DayRange(start, end))` returns: the
  validation rules that look across rows (line numbers, an invoice's consistency) see only an invoice's
  own rows, and every row of an invoice is staged, so validating everything once and then cutting by day
  gives the same rows. `_order` (the row's `source_row`) puts a range of days back in source order.
  Rejects without a parseable day belong to every run, as in `validate`.
- **Any size in bounded memory.** The source is read in blocks (`etl.load.read_in_blocks`). Up to
  `ROWS_IN_MEMORY` rows are validated at once, as they are. A larger source is spilled to temporary
  files by a hash of the invoice number (every row of an invoice in one file), validated a group of
  whole invoices at a time, each group sorted by day and put on disk, and the groups merged a day at
  a time into the staging's files: memory holds one group, or one slice of each group and one day.
- **The key** is the sha256 of a local file's bytes (milliseconds: no parsing), or a URL itself (the
  download cache keeps a URL's first download, so its content is taken as fixed there too), and, in
  both, the dialect options given. A source rewritten in place gets a new key, so an old staging is
  never read for new content; two copies of one file share a staging.
- **Several builders at once** (the catch-up starts 4 runs together, on different workers): each writes
  its files under a folder of its own and then commits its manifest only if there is none
  (`put_if_absent`: a hard link locally, `If-None-Match: *` on S3). The loser deletes its files and reads
  the winner's staging. No lock server, and a builder killed before its commit leaves only files that
  no manifest names.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import heapq
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl.dialect import SourceOptions
from etl.lake import filesystem, is_local_filesystem, put_if_absent
from etl.load import read_in_blocks
from etl.memory import release_free_heap
from etl.schema import LINE_SCHEMA, REJECT_SCHEMA, DayRange, RawSource, ValidatedSource
from etl.validate import invoice_numbers, validate_with_rows
from retail_contract.lake_layout import STAGING_DIR

# 2: `_order` is the row's `source_row` (was: its position among the validated rows), and sources
# larger than memory are staged in groups of invoices. A staging of format 1 is built again.
STAGING_FORMAT = 3
#: Rows validated at once, in memory. A larger source is spilled to disk by invoice number and validated
#: a group of whole invoices (at most half this) at a time, so the job's peak stays under 1 GiB at any
#: size; the data set itself (541,909 lines) is still validated whole, as fast as before.
ROWS_IN_MEMORY = 600_000
#: Spill files of a large source; each holds about 1/256 of its invoices.
_BUCKETS = 256
#: Sorted arrays of closed invoices kept apart before they are merged into one.
_CLOSED_ARRAYS = 16
#: Rows gathered before they are spilled to the buckets.
_SPILL_ROWS = 131_072
#: Rows per slice when a spilled group's sorted rows are read back for the merge by day.
_RUN_SLICE_ROWS = 4_096
_ORDER = "_order"
_NO_DAY = -(2**40)
#: The row group key of the rejects without a parseable day.
_UNDATED = "undated"
_EPOCH = dt.date(1970, 1, 1)


@dataclass(frozen=True)
class StagedSource:
    """A run's days as staged, and what the staging knows of the whole source."""

    validated: ValidatedSource
    fingerprint: str
    dialect: dict[str, str]
    shape: str
    source_rows: int
    #: "built" when this call validated the source, "reused" when it read a committed staging.
    staging: str


def staging_key(source: str, options: SourceOptions) -> str:
    """The staging's name for `source` read with `options`: changes whenever the file's bytes do."""
    digest = hashlib.sha256(f"format={STAGING_FORMAT}\noptions={options!r}\n".encode())
    if "://" in source and not source.startswith("file:"):
        digest.update(f"url={source}".encode())
    else:
        path = Path(source.removeprefix("file://")).expanduser()
        try:
            with path.open("rb") as handle:
                # The bytes, not the modification time: a file rewritten within one clock tick keeps
                # its mtime. sha256 reads ~1.5 GB/s here (the full data set's .csv.gz: 4 ms).
                digest.update(hashlib.file_digest(handle, "sha256").digest())
        except OSError:
            # Unreadable: the load reports why; a key that matches no staging.
            digest.update(f"unreadable={path}:{uuid.uuid4().hex}".encode())
    return digest.hexdigest()[:20]


@dataclass(frozen=True)
class Staging:
    """A committed staging of one source: what it knows of the whole source, and its days to read."""

    fs: fsspec.AbstractFileSystem
    base: str
    manifest: Mapping[str, Any]
    #: "built" when this process validated the source, "reused" when it read a committed staging.
    how: str
    #: The Parquet footers read last (a few: `_FOOTERS_KEPT`), as a run reads its days in order.
    _footers: dict[str, pq.FileMetaData] = field(default_factory=dict, compare=False, repr=False)

    @property
    def fingerprint(self) -> str:
        """The source's content fingerprint (`etl.load.source_fingerprint`)."""
        return str(self.manifest["fingerprint"])

    @property
    def dialect(self) -> dict[str, str]:
        """How the source was read (`SourceDialect.describe`)."""
        return dict(self.manifest["dialect"])

    @property
    def shape(self) -> str:
        """The source's shape ("uci-xlsx", "csv+gzip", ...)."""
        return str(self.manifest["shape"])

    @property
    def source_rows(self) -> int:
        """Data rows in the source."""
        return int(self.manifest["source_rows"])

    @property
    def days(self) -> tuple[dt.date, ...]:
        """Every invoice day with lines or dated rejects, sorted."""
        return tuple(dt.date.fromisoformat(day) for day in self.manifest["days"])

    def lines_per_day(self) -> dict[dt.date, int]:
        """Valid lines of each day, from the Parquet footers (no rows are read)."""
        groups: Mapping[str, list[int]] = self.manifest["row_groups"]["lines"]
        by_part: dict[int, list[tuple[str, int]]] = {}
        for day, (part, index) in groups.items():
            by_part.setdefault(part, []).append((day, index))
        counts: dict[dt.date, int] = {}
        for part, days in sorted(by_part.items()):
            path = _part_path(f"{self.base}/{self.manifest['build']}", "lines", part)
            with self.fs.open(path, "rb") as handle:
                metadata = _parquet_file(handle, path, self._footers).metadata
                counts.update((dt.date.fromisoformat(day), metadata.row_group(i).num_rows) for day, i in days)
        return counts

    def read(self, days: DayRange | Sequence[dt.date]) -> ValidatedSource:
        """The lines and rejects of `days` (a range, or those days), as `validate` returns them: the
        rejects without a day come with every read, as they belong to every run of the source."""
        return _read(self.fs, self.base, self.manifest, days, self._footers)


def stage_source(
    source: str,
    root: str,
    *,
    options: SourceOptions | None = None,
    cache_dir: Path | None = None,
    storage_options: Mapping[str, Any] | None = None,
    rows_in_memory: int = ROWS_IN_MEMORY,
) -> Staging:
    """The staging of `source` under `root` (the lake, or any folder): reused when one is committed,
    else built now (the whole source read in blocks and validated once, at most `rows_in_memory` rows
    at a time). Raises `SourceError` for a source that cannot be read, as `load_source` does."""
    options = options or SourceOptions()
    fs, base_root = filesystem(root, storage_options)
    base = f"{base_root}/{STAGING_DIR}/{staging_key(source, options)}"
    manifest = _read_manifest(fs, base)
    how = "reused"
    if manifest is None:
        manifest = _build(fs, base, source, options, cache_dir, rows_in_memory)
        how = "built"
    return Staging(fs, base, manifest, how)


def staged_days(
    source: str,
    lake: str,
    days: DayRange,
    *,
    options: SourceOptions | None = None,
    storage_options: Mapping[str, Any] | None = None,
    rows_in_memory: int = ROWS_IN_MEMORY,
) -> StagedSource:
    """The lines and rejects of `days` (as `validate` returns them) from the staging of `source`
    under `lake`; stages the whole source first when no committed staging exists. Raises
    `SourceError` for a source that cannot be read, as `load_source` does."""
    staging = stage_source(
        source, lake, options=options, storage_options=storage_options, rows_in_memory=rows_in_memory
    )
    return StagedSource(
        validated=staging.read(days),
        fingerprint=staging.fingerprint,
        dialect=staging.dialect,
        shape=staging.shape,
        source_rows=staging.source_rows,
        staging=staging.how,
    )


def _read_manifest(fs: fsspec.AbstractFileSystem, base: str) -> dict[str, Any] | None:
    try:
        with fs.open(f"{base}/manifest.json", "rb") as handle:
            manifest: dict[str, Any] = json.load(handle)
    except FileNotFoundError:
        return None
    return manifest if manifest.get("format") == STAGING_FORMAT else None


def _build(
    fs: fsspec.AbstractFileSystem,
    base: str,
    source: str,
    options: SourceOptions,
    cache_dir: Path | None,
    rows_in_memory: int,
) -> dict[str, Any]:
    """Validate the whole source, write it by day, commit; the committed manifest (maybe another's)."""
    build = uuid.uuid4().hex[:16]
    folder = f"{base}/{build}"
    with tempfile.TemporaryDirectory(prefix="retail-staging-") as work:
        held, summary = read_in_blocks(
            source, lambda: _HeldSource(Path(work), rows_in_memory), cache_dir=cache_dir, options=options
        )
        line_runs: list[_Run] = []
        reject_runs: list[_Run] = []
        for index, invoices in enumerate(held.groups()):
            validated, line_rows = validate_with_rows(
                RawSource(invoices, summary.name, summary.shape, summary.dialect), DayRange()
            )
            del invoices
            release_free_heap()  # what validating a group freed, before the next group is read
            lines = validated.lines.append_column(_ORDER, line_rows.cast(pa.int64()))
            rejects = validated.rejects.append_column(_ORDER, validated.rejects.column("source_row"))
            if held.spilled:  # each group's rows wait on disk until every group is validated
                line_runs.append(_Run.on_disk(lines, Path(work) / f"lines-{index}.parquet"))
                reject_runs.append(_Run.on_disk(rejects, Path(work) / f"rejects-{index}.parquet"))
            else:
                line_runs.append(_Run.in_memory(lines))
                reject_runs.append(_Run.in_memory(rejects))
        if is_local_filesystem(fs):
            os.makedirs(folder, exist_ok=True)
        release_free_heap()
        lines_written = _write_by_day(fs, folder, "lines", line_runs, LINE_SCHEMA)
        rejects_written = _write_by_day(fs, folder, "rejects", reject_runs, REJECT_SCHEMA)
    days = sorted({*lines_written.groups, *rejects_written.groups} - {_UNDATED})
    manifest = {
        "format": STAGING_FORMAT,
        "source": source,
        "build": build,
        "built_at": dt.datetime.now(dt.UTC).isoformat(),
        "fingerprint": summary.fingerprint,
        "dialect": summary.dialect.describe(),
        "shape": summary.shape,
        "source_rows": summary.source_rows,
        "days": days,
        "lines": lines_written.rows,
        "rejects": rejects_written.rows,
        "row_groups": {"lines": lines_written.groups, "rejects": rejects_written.groups},
    }
    body = json.dumps(manifest, sort_keys=True).encode() + b"\n"
    if put_if_absent(fs, f"{base}/manifest.json", body):
        return manifest
    # Another builder committed first: its staging holds the same rows (same key, same file).
    with contextlib.suppress(FileNotFoundError):
        fs.rm(folder, recursive=True)
    winner = _read_manifest(fs, base)
    if winner is None:  # pragma: no cover - a manifest that exists cannot vanish: nothing deletes one
        raise RuntimeError(f"staging {base}: the committed manifest cannot be read")
    return winner


class _HeldSource:
    """The source's blocks until they are validated (`etl.load.BlockSink`), in memory up to
    `rows_in_memory` rows. Past that, `groups` must still hand out whole invoices, at most about half of
    `rows_in_memory` rows at a time (validating 600,000 rows at once peaked at ~750 MiB on the 10x file,
    300,000 at ~490 MiB), so the rows go to disk, in one of two ways:

    - **in file order** while every invoice's rows come together (the usual file: an invoice's lines
      are written one after another): the rows are cut into groups where the invoice changes, each group
      one file. An invoice seen again after its group was cut (a 64-bit hash of its number in a sorted
      array of the closed groups' invoices) ends this: what was written so far goes to the buckets.
    - **by bucket**: every row to one of `_BUCKETS` files, chosen by the hash of its invoice number, so
      each file holds whole invoices, whatever the order; groups are a few buckets each.
    """

    def __init__(self, folder: Path, rows_in_memory: int) -> None:
        self.folder, self.rows_in_memory = folder, rows_in_memory
        self.group_rows = max(rows_in_memory // 2, 1)
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
        self._empty()

    def _empty(self) -> None:
        self.blocks: list[pa.Table] = []
        self._hashes: list[npt.NDArray[np.uint64]] = []
        self.rows = 0
        self._held = 0
        #: "memory", then "ordered" or "buckets" once more than `rows_in_memory` rows came.
        self.mode = "memory"
        #: The invoices of the groups already cut (64-bit hashes), as a few sorted arrays.
        self._closed: list[npt.NDArray[np.uint64]] = []
        self._group_files: list[Path] = []
        self._bucket_rows = np.zeros(_BUCKETS, dtype=np.int64)

    @property
    def spilled(self) -> bool:
        """Whether the rows went to disk (more than `rows_in_memory`)."""
        return self.mode != "memory"

    def add(self, block: pa.Table) -> None:
        self.rows += block.num_rows
        self.blocks.append(block)
        self._held += block.num_rows
        if self.mode == "buckets":
            if self._held >= _SPILL_ROWS:  # a few blocks at a time: hundreds of rows per bucket write
                self._spill_held()
            return
        if self.mode == "memory":
            if self.rows <= self.rows_in_memory:
                return
            # Past memory: the invoices of every block held so far (a source that fits never needs them).
            self.mode = "ordered"
            self._hashes = [_invoice_hashes(held) for held in self.blocks]
        else:
            hashes = _invoice_hashes(block)
            self._hashes.append(hashes)
            if _any_in(hashes, self._closed):  # an invoice whose group was already cut
                self._to_buckets()
                return
        while self.mode == "ordered" and self._held >= self.group_rows:
            if not self._cut_group():
                break

    def discard(self) -> None:
        self._close_writers()
        for path in [*self.folder.glob("bucket-*.arrow"), *self.folder.glob("group-*.arrow")]:
            path.unlink()
        self._empty()

    def groups(self) -> Iterator[pa.Table]:
        """Whole invoices, every row once, a group at a time (one group when nothing was spilled)."""
        if self.mode == "memory":
            if self.blocks:
                yield pa.concat_tables(self.blocks)
            self.blocks, self._hashes = [], []
            return
        if self.mode == "ordered":
            files, self._group_files = self._group_files, []
            last = pa.concat_tables(self.blocks) if self.blocks else None
            self.blocks, self._hashes = [], []
            release_free_heap()  # what reading the source freed, before the first group is validated
            for path in files:
                yield _read_file(path)
            if last is not None:
                yield last
            return
        self._spill_held()
        self._close_writers()
        release_free_heap()
        group: list[int] = []
        rows = 0
        for bucket in map(int, np.flatnonzero(self._bucket_rows)):
            if group and rows + int(self._bucket_rows[bucket]) > self.group_rows:
                yield pa.concat_tables([_read_file(self._bucket_path(b)) for b in group])
                group, rows = [], 0
            group.append(bucket)
            rows += int(self._bucket_rows[bucket])
        if group:
            yield pa.concat_tables([_read_file(self._bucket_path(b)) for b in group])

    # --- in file order ---

    def _cut_group(self) -> bool:
        """Write the held rows up to the last change of invoice within `group_rows` (or the first after)
        as the next group. False when there is no such change yet (one invoice so far: it keeps growing);
        when an invoice of the group also comes later in the held rows, the rows go to the buckets."""
        table = pa.concat_tables(self.blocks)  # chunks kept: slicing and writing need no copy
        hashes = np.concatenate(self._hashes)
        changes = np.flatnonzero(hashes[1:] != hashes[:-1]) + 1
        if changes.size == 0:
            return False
        within = changes[changes <= self.group_rows]
        cut = int(within[-1] if within.size else changes[0])
        group = _sorted_set(hashes[:cut])
        if _any_in(hashes[cut:], [group]):  # not an invoice at a time
            self._to_buckets()
            return False
        path = self.folder / f"group-{len(self._group_files)}.arrow"
        _write_file(path, table.slice(0, cut))
        self._group_files.append(path)
        self._closed.append(group)
        if len(self._closed) > _CLOSED_ARRAYS:  # merged now and then: each check searches a few arrays
            self._closed = [_sorted_set(np.concatenate(self._closed))]
        self.blocks, self._hashes = [table.slice(cut)], [hashes[cut:]]
        self._held = table.num_rows - cut
        return True

    def _to_buckets(self) -> None:
        """From file order to buckets: the groups written so far, then the rows held."""
        self.mode = "buckets"
        held, self.blocks, self._hashes, self._held = self.blocks, [], [], 0
        for path in self._group_files:
            self._spill(_read_file(path))
            path.unlink()
        self._group_files = []
        for block in held:
            self.blocks.append(block)
            self._held += block.num_rows
        self._spill_held()

    # --- by bucket ---

    def _spill_held(self) -> None:
        if self.blocks:
            self._spill(pa.concat_tables(self.blocks).combine_chunks())
        self.blocks, self._hashes, self._held = [], [], 0

    def _spill(self, block: pa.Table) -> None:
        buckets = (_invoice_hashes(block) % np.uint64(_BUCKETS)).astype(np.int64)
        order = np.argsort(buckets, kind="stable")
        by_bucket = block.take(pa.array(order))
        sorted_buckets = buckets[order]
        starts = np.flatnonzero(np.r_[True, sorted_buckets[1:] != sorted_buckets[:-1]])
        for first, stop in zip(starts, [*starts[1:], len(order)], strict=True):
            bucket = int(sorted_buckets[first])
            writer = self._writers.get(bucket)
            if writer is None:
                writer = self._writers[bucket] = pa.ipc.new_stream(
                    str(self._bucket_path(bucket)), block.schema
                )
            writer.write_table(by_bucket.slice(first, stop - first))
            self._bucket_rows[bucket] += stop - first

    def _bucket_path(self, bucket: int) -> Path:
        return self.folder / f"bucket-{bucket}.arrow"

    def _close_writers(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def _invoice_hashes(block: pa.Table) -> npt.NDArray[np.uint64]:
    """A 64-bit hash of each row's invoice number, as `validate` reads it (trimmed, `536365.0` is
    `536365`): the same in every block and every process, unlike `hash()`."""
    invoices = invoice_numbers(pc.utf8_trim_whitespace(block.column("InvoiceNo").combine_chunks()))
    encoded = pc.dictionary_encode(invoices)
    distinct = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
            for text in encoded.dictionary.to_pylist()
        ),
        dtype=np.uint64,
        count=len(encoded.dictionary),
    )
    return distinct[encoded.indices.to_numpy(zero_copy_only=False)]


def _sorted_set(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """`values` sorted, each once. Not `np.unique` (numpy 2.4): on the 2.6 million invoice hashes of a
    100x source its hash table took 2.8 s, a sort 0.03 s."""
    ordered = np.sort(values)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if ordered.size else ordered


def _any_in(values: npt.NDArray[np.uint64], sorted_sets: Sequence[npt.NDArray[np.uint64]]) -> bool:
    """Whether any of `values` is in one of the sorted arrays `sorted_sets` (a binary search each)."""
    if values.size == 0:
        return False
    distinct = _sorted_set(values)
    for sorted_set in sorted_sets:
        if sorted_set.size == 0:
            continue
        at = np.minimum(np.searchsorted(sorted_set, distinct), sorted_set.size - 1)
        if (sorted_set[at] == distinct).any():
            return True
    return False


def _write_file(path: Path, table: pa.Table) -> None:
    with pa.ipc.new_stream(str(path), table.schema) as writer:
        writer.write_table(table)


def _read_file(path: Path) -> pa.Table:
    with pa.ipc.open_stream(str(path)) as reader:
        return reader.read_all()


class _Run:
    """A group's validated rows sorted by (day, source row), handed to `_write_by_day` a slice at a
    time. A run on disk is opened only when the merge reaches its first day, and closed when read to its
    end: runs of a file in day order are then open one or two at a time, whatever their number."""

    def __init__(self, open_slices: Callable[[], Iterator[pa.Table]], first: int | None) -> None:
        self._open = open_slices
        self._slices: Iterator[pa.Table] | None = None
        self._first = first
        self._pending: pa.Table | None = None
        self._keys = np.zeros(0, dtype=np.int64)
        self._at = 0

    @staticmethod
    def _sorted(table: pa.Table) -> pa.Table:
        keys = [("invoice_day", "ascending", "at_start"), (_ORDER, "ascending")]
        order = pc.sort_indices(table, sort_keys=keys)
        return table.take(order)

    @classmethod
    def in_memory(cls, table: pa.Table) -> _Run:
        """The rows of `table`, sorted."""
        ordered = cls._sorted(table)
        return cls(lambda: iter([ordered]), int(_day_keys(ordered.slice(0, 1))[0]) if len(ordered) else None)

    @classmethod
    def on_disk(cls, table: pa.Table, path: Path) -> _Run:
        """The rows of `table`, sorted and written to `path` now (an Arrow stream of small batches:
        reading it back holds one batch, where a Parquet reader held ~2-7 MiB per open file)."""
        ordered = cls._sorted(table)
        first = int(_day_keys(ordered.slice(0, 1))[0]) if len(ordered) else None
        options = pa.ipc.IpcWriteOptions(compression="lz4")
        with pa.ipc.new_stream(str(path), ordered.schema, options=options) as writer:
            writer.write_table(ordered, max_chunksize=_RUN_SLICE_ROWS)
        del ordered

        def slices() -> Iterator[pa.Table]:
            with pa.ipc.open_stream(str(path)) as reader:
                for batch in reader:
                    yield pa.Table.from_batches([batch])

        return cls(slices, first)

    def head(self) -> int | None:
        """The day key of the next row (`_day_keys`), None when every row was taken."""
        if self._slices is None:
            return self._first
        while self._pending is None or self._at >= self._pending.num_rows:
            nxt = next(self._slices, None)
            if nxt is None:
                self._pending = None
                return None
            self._pending, self._keys, self._at = nxt, _day_keys(nxt), 0
        return int(self._keys[self._at])

    def take(self, key: int) -> list[pa.Table]:
        """The next rows whose day key is `key` (they come first: the run is sorted)."""
        if self._slices is None:
            self._slices = self._open()
        taken: list[pa.Table] = []
        while self.head() == key and self._pending is not None:
            stop = int(np.searchsorted(self._keys, key, side="right"))
            taken.append(self._pending.slice(self._at, stop - self._at))
            self._at = stop
        return taken


@dataclass(frozen=True)
class _Written:
    rows: int
    #: The [file part, row group] of each day (`_UNDATED`: the rows without a day).
    groups: dict[str, list[int]]


#: Days (row groups) per staging file. A footer is parsed whole and held while its file is written or
#: read: one file for a 100x source's 30,000 days had a footer of 265 MiB in memory.
DAYS_PER_FILE = 512
#: Footers kept once read: a run reads its days in order, so the file of its next batch is the same or
#: the next one.
_FOOTERS_KEPT = 2


def _part_path(folder: str, table: str, part: int) -> str:
    return f"{folder}/{table}-{part:05d}.parquet"


class _PartWriter:
    """Row groups into `table-00000.parquet`, `table-00001.parquet`, ..., `DAYS_PER_FILE` per file."""

    def __init__(self, fs: fsspec.AbstractFileSystem, folder: str, table: str, schema: pa.Schema) -> None:
        self.fs, self.folder, self.table, self.schema = fs, folder, table, schema
        self.part, self.groups_in_part = -1, DAYS_PER_FILE
        self._out: Any = None
        self._writer: pq.ParquetWriter | None = None

    def write(self, rows: pa.Table) -> list[int]:
        """Write `rows` as one row group; returns where: [file part, row group]."""
        if self.groups_in_part == DAYS_PER_FILE:
            self.close()
            self.part, self.groups_in_part = self.part + 1, 0
            self._out = self.fs.open(_part_path(self.folder, self.table, self.part), "wb")
            # No statistics: days are found by row group index, and a file's statistics are held
            # until it closes (30,000 row groups of them held the writer at +160 MiB).
            self._writer = pq.ParquetWriter(self._out, self.schema, compression="lz4", write_statistics=False)
        assert self._writer is not None
        self._writer.write_table(rows, row_group_size=max(rows.num_rows, 1))
        self.groups_in_part += 1
        return [self.part, self.groups_in_part - 1]

    def close(self) -> None:
        """Finish the open file."""
        if self._writer is not None:
            self._writer.close()
            self._out.close()
            self._writer = self._out = None


def _day_keys(table: pa.Table) -> npt.NDArray[np.int64]:
    """Days since 1970 per row; the rows without a day first (`_NO_DAY`)."""
    days = table.column("invoice_day").cast(pa.int32()).cast(pa.int64())
    return np.asarray(pc.fill_null(days, _NO_DAY).to_numpy(zero_copy_only=False), dtype=np.int64)


def _write_by_day(
    fs: fsspec.AbstractFileSystem, folder: str, table: str, runs: Sequence[_Run], schema: pa.Schema
) -> _Written:
    """The runs' rows in Parquet files of `table` under `folder`, one row group per invoice day in day
    order (`DAYS_PER_FILE` per file), source order inside a day (`_ORDER`): a merge of the sorted runs,
    a day at a time, so only a slice of each run and one day's rows are in memory."""
    ordered_schema = schema.append(pa.field(_ORDER, pa.int64()))
    groups: dict[str, list[int]] = {}
    rows = 0
    # The runs by the day of their next row: each day asks only the runs that hold it (a 100x source
    # has ~30,000 days and ~180 runs, mostly of their own days).
    heads = [(key, index) for index, run in enumerate(runs) if (key := run.head()) is not None]
    heapq.heapify(heads)
    writer = _PartWriter(fs, folder, table, ordered_schema)
    try:
        while heads:
            key = heads[0][0]
            parts: list[pa.Table] = []
            while heads and heads[0][0] == key:
                _, index = heapq.heappop(heads)
                parts += runs[index].take(key)
                if (following := runs[index].head()) is not None:
                    heapq.heappush(heads, (following, index))
            day = pa.concat_tables(parts).cast(ordered_schema)
            if len(parts) > 1:
                day = day.sort_by(_ORDER)
            name = _UNDATED if key == _NO_DAY else (_EPOCH + dt.timedelta(days=key)).isoformat()
            groups[name] = writer.write(day)
            rows += day.num_rows
    finally:
        writer.close()
    return _Written(rows, groups)


def _read(
    fs: fsspec.AbstractFileSystem,
    base: str,
    manifest: Mapping[str, Any],
    days: DayRange | Sequence[dt.date],
    footers: dict[str, pq.FileMetaData],
) -> ValidatedSource:
    folder = f"{base}/{manifest['build']}"
    groups: Mapping[str, Mapping[str, list[int]]] = manifest["row_groups"]
    if isinstance(days, DayRange):
        wanted = [day for day in manifest["days"] if days.contains(dt.date.fromisoformat(day))]
    else:
        wanted = [day.isoformat() for day in sorted(days)]
    lines = _read_groups(fs, folder, "lines", groups["lines"], wanted, LINE_SCHEMA, footers)
    rejects = _read_groups(
        fs, folder, "rejects", groups["rejects"], [_UNDATED, *wanted], REJECT_SCHEMA, footers
    )
    present = pc.unique(
        pa.chunked_array(
            lines.column("invoice_day").chunks + rejects.column("invoice_day").chunks, type=pa.date32()
        )
    )
    return ValidatedSource(
        lines=lines,
        rejects=rejects,
        days=tuple(sorted(d for d in present.to_pylist() if d is not None)),
    )


def _read_groups(
    fs: fsspec.AbstractFileSystem,
    folder: str,
    table: str,
    groups: Mapping[str, list[int]],
    keys: Sequence[str],
    schema: pa.Schema,
    footers: dict[str, pq.FileMetaData],
) -> pa.Table:
    by_part: dict[int, list[int]] = {}
    for part, index in sorted(groups[key] for key in keys if key in groups):
        by_part.setdefault(part, []).append(index)
    if not by_part:
        return schema.empty_table()
    pieces = []
    for part, indices in by_part.items():
        path = _part_path(folder, table, part)
        with fs.open(path, "rb") as handle:
            pieces.append(_parquet_file(handle, path, footers).read_row_groups(indices))
    read = pa.concat_tables(pieces)
    if sum(len(indices) for indices in by_part.values()) > 1:  # several days: back to source order
        read = read.sort_by(_ORDER)
    return read.drop_columns([_ORDER]).cast(schema).combine_chunks()


def _parquet_file(handle: Any, path: str, footers: dict[str, pq.FileMetaData]) -> pq.ParquetFile:
    """The Parquet file open on `handle`, its footer parsed once while it is among the last
    `_FOOTERS_KEPT` read (a staging never changes)."""
    opened = pq.ParquetFile(handle, metadata=footers.get(path))
    if path not in footers:
        if len(footers) >= _FOOTERS_KEPT:
            del footers[next(iter(footers))]  # the oldest
        footers[path] = opened.metadata
    return opened
