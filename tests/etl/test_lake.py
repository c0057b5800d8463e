"""`write_lake` / `read_lake_table` / `write_run_report`: exact round trips, what pandas and DuckDB see,
replacing days exactly, crash safety, and the same on S3 (moto's server) and `memory://`."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import etl.lake
import etl.lake.commit
import etl.lake.publish
import etl.lake.storage
from etl.errors import LakeError
from etl.json_texts import JsonTexts, compact
from etl.lake import TABLE_SCHEMAS, TABLES, read_lake_table, write_lake, write_run_report
from etl.schema import (
    INVOICE_SCHEMA,
    LINE_SCHEMA,
    REJECT_SCHEMA,
    SOURCE_COLUMNS,
    ServiceSnapshot,
    ValidatedSource,
)
from tests.etl.conftest import SAMPLE_DAYS, lines_of_day, snapshot_of

DAY1, DAY2, DAY3, DAY4 = SAMPLE_DAYS
FINGERPRINT = "sha256-0123abcd"


def rejects_table(rows: list[tuple[int, str, dt.date | None]]) -> pa.Table:
    """Rejects with the given (source_row, reason, invoice_day)."""
    return pa.table(
        {
            "source_row": [r[0] for r in rows],
            **{c: [f"{c}-{r[0]}" for r in rows] for c in SOURCE_COLUMNS},
            "reason": [r[1] for r in rows],
            "invoice_day": [r[2] for r in rows],
        },
        schema=REJECT_SCHEMA,
    )


SOME_REJECTS = rejects_table(
    [
        (7, "unparseable Quantity 'x'", DAY2),
        (3, "unparseable Quantity 'y'", DAY2),
        (9, "unparseable InvoiceDate 'z'", None),
    ]
)


def sorted_lines(lines: pa.Table) -> pa.Table:
    return lines.sort_by(
        [("invoice_day", "ascending"), ("invoice_no", "ascending"), ("line_no", "ascending")]
    )


def visible_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
    }


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def published_files(root: Path) -> list[str]:
    """What a reader listing the tables sees: no `_lake/` (objects, manifests), no `_runs/`."""
    return [f for f in all_files(root) if not f.startswith("_")]


def lake_state(root: Path) -> dict[str, bytes]:
    """Every file of the lake but the commit lock: published files, objects and manifests."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".commit.lock"
    }


def plain_read(root: Path) -> pa.Table:
    """A plain Parquet reader of the lines: lists the folder, knows nothing of manifests."""
    partitioning = ds.partitioning(pa.schema([("invoice_day", pa.date32())]), flavor="hive")
    table = ds.dataset(root / "invoice_lines", format="parquet", partitioning=partitioning).to_table()
    return sorted_lines(table.select(LINE_SCHEMA.names).cast(LINE_SCHEMA))


def doubled_lines(snapshot: ServiceSnapshot) -> pa.Table:
    """The same lines with every quantity doubled: another content for every day."""
    return snapshot.lines.set_column(4, "quantity", pc.multiply(snapshot.lines["quantity"], 2)).cast(
        LINE_SCHEMA
    )


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    return tmp_path / "lake"


def write_sample(
    root: str, snapshot: ServiceSnapshot, rejects: pa.Table = SOME_REJECTS, **kwargs: Any
) -> Any:
    return write_lake(root, SAMPLE_DAYS, snapshot, rejects, source_fingerprint=FINGERPRINT, **kwargs)


# --- round trip ---------------------------------------------------------------------------------


def test_layout_and_exact_round_trip(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    report = write_sample(str(lake), sample_snapshot)

    day = "invoice_day=2010-12-01"
    assert f"invoice_lines/{day}/part-0.parquet" in all_files(lake)
    assert f"invoices/{day}/part-0.parquet" in all_files(lake)
    assert f"customers/{day}/part-0.parquet" in all_files(lake)
    assert all_files(lake_dir := lake / "rejects") == [
        "invoice_day=2010-12-02/part-0.parquet",
        f"invoice_day=__HIVE_DEFAULT_PARTITION__/part-{FINGERPRINT}.parquet",
    ]
    assert len(published_files(lake)) == 4 * 3 + 2 and lake_dir.exists()  # nothing else, no temp files
    assert report.rows == {"invoice_lines": 8326, "invoices": 449, "customers": 331, "rejects": 3}
    assert report.partitions_written == 14 and report.days == SAMPLE_DAYS
    assert len(report.manifests_committed) == 5  # four days and the source's undated rejects

    # Each published file is its committed object (a hard link: no second copy of the bytes), and the
    # day's manifest names it with its rows, size and hash.
    manifest = json.loads((lake / "_lake" / "manifests" / f"{day}.json").read_text())
    assert sorted(manifest["tables"]) == ["customers", "invoice_lines", "invoices"]
    entry = manifest["tables"]["invoice_lines"]
    obj = lake / entry["object"]
    assert entry["object"].startswith(f"_lake/objects/{day}/invoice_lines.")
    assert entry["published"] == f"invoice_lines/{day}/part-0.parquet"
    assert obj.samefile(lake / entry["published"])
    assert entry["rows"] == lines_of_day(sample_snapshot.lines, DAY1).num_rows
    assert entry["bytes"] == obj.stat().st_size
    assert entry["sha256"] == hashlib.sha256(obj.read_bytes()).hexdigest()
    assert manifest["retired"] == [] and manifest["invoice_day"] == "2010-12-01"
    assert len([f for f in all_files(lake) if f.startswith("_lake/objects/")]) == 14

    lines = read_lake_table(str(lake), "invoice_lines")
    assert lines.schema == LINE_SCHEMA
    assert lines.equals(sorted_lines(sample_snapshot.lines))


def test_files_hold_explicit_schemas_sorted_and_zstd(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    write_sample(str(lake), sample_snapshot)

    path = lake / "invoice_lines" / "invoice_day=2010-12-01" / "part-0.parquet"
    in_file = pq.read_table(path)
    # Parquet has no second unit: timestamp[s] is stored as milliseconds (same instants);
    # read_lake_table's explicit schema gives timestamp[s] back.
    file_schema = etl.lake.FILE_SCHEMAS["invoice_lines"]
    stored = file_schema.set(
        file_schema.get_field_index("invoice_date"),
        pa.field("invoice_date", pa.timestamp("ms"), nullable=False),
    )
    assert in_file.schema.equals(stored)
    assert "invoice_day" not in in_file.column_names  # the path carries it
    keys = list(zip(in_file["invoice_no"].to_pylist(), in_file["line_no"].to_pylist(), strict=True))
    assert keys == sorted(keys)
    metadata = pq.ParquetFile(path).metadata
    assert metadata.row_group(0).column(0).compression == "ZSTD"


def test_invoices_are_derived_exactly(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    write_sample(str(lake), sample_snapshot)

    invoices = read_lake_table(str(lake), "invoices")
    assert invoices.schema == INVOICE_SCHEMA
    by_no = {row["invoice_no"]: row for row in invoices.to_pylist()}
    assert by_no["536365"] == {
        "invoice_no": "536365",
        "invoice_date": dt.datetime(2010, 12, 1, 8, 26),
        "customer_id": "17850",
        "country": "United Kingdom",
        "line_count": 7,
        "total_quantity": 40,
        "total_amount": Decimal("139.120"),
        "invoice_day": DAY1,
    }
    assert by_no["A563186"]["total_amount"] == Decimal("-11062.060")
    assert by_no["A563186"]["customer_id"] is None
    # Totals agree with the lines to the thousandth.
    lines = sample_snapshot.lines
    amount = pc.sum(pc.multiply(lines["unit_price"], pc.cast(lines["quantity"], pa.decimal128(19, 0))))
    assert pc.sum(invoices["total_amount"]).as_py() == amount.as_py()
    assert pc.sum(invoices["line_count"]).as_py() == 8326


def test_invoice_date_is_the_first_line_timestamp(lake: Path) -> None:
    rows = {
        "invoice_no": ["9", "9"],
        "line_no": [1, 2],
        "stock_code": ["A", "B"],
        "description": [None, "b"],
        "quantity": [1, 2],
        "unit_price": [Decimal("1.5"), Decimal("0.25")],
        "invoice_date": [dt.datetime(2010, 12, 1, 9, 1), dt.datetime(2010, 12, 1, 9, 0)],
        "customer_id": [None, None],
        "country": ["UK", "UK"],
        "invoice_day": [DAY1, DAY1],
    }
    snapshot = snapshot_of(pa.table(rows, schema=LINE_SCHEMA))

    write_lake(str(lake), [DAY1], snapshot, REJECT_SCHEMA.empty_table(), source_fingerprint=FINGERPRINT)

    invoice = read_lake_table(str(lake), "invoices").to_pylist()[0]
    assert invoice["invoice_date"] == dt.datetime(2010, 12, 1, 9, 0)
    assert invoice["total_amount"] == Decimal("2.000")
    assert not (lake / "customers").exists()  # no customer that day: no partition


def test_customers_per_day_use_the_stored_country(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    # The service keeps a customer's first country; the lake's customers show that one.
    customers = sample_snapshot.customers
    first = customers["customer_id"][0].as_py()
    moved = customers.set_column(
        1, "country", pc.if_else(pc.equal(customers["customer_id"], first), "Atlantis", customers["country"])
    )
    write_sample(str(lake), ServiceSnapshot(sample_snapshot.lines, moved))

    table = read_lake_table(str(lake), "customers")
    assert table.schema == TABLE_SCHEMAS["customers"]
    day1 = table.filter(pc.equal(table["invoice_day"], pa.scalar(DAY1, pa.date32())))
    expected = sorted(set(lines_of_day(sample_snapshot.lines, DAY1)["customer_id"].drop_null().to_pylist()))
    assert day1["customer_id"].to_pylist() == expected
    assert (
        dict(zip(day1["customer_id"].to_pylist(), day1["country"].to_pylist(), strict=True))[first]
        == "Atlantis"
    )


def test_rejects_round_trip_with_the_default_partition(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    write_sample(str(lake), sample_snapshot)

    rejects = read_lake_table(str(lake), "rejects")
    assert rejects.schema == REJECT_SCHEMA
    assert rejects["source_row"].to_pylist() == [3, 7, 9]  # by day (undated last), then source row
    assert rejects["invoice_day"].to_pylist() == [DAY2, DAY2, None]
    assert read_lake_table(str(lake), "rejects", [DAY2])["source_row"].to_pylist() == [3, 7]


def test_reading_selected_days_and_missing_tables(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    assert read_lake_table(str(lake), "invoice_lines").num_rows == 0  # nothing written yet
    write_sample(str(lake), sample_snapshot)

    some = read_lake_table(str(lake), "invoice_lines", [DAY3, dt.date(2000, 1, 1)])
    assert some.equals(sorted_lines(lines_of_day(sample_snapshot.lines, DAY3)))
    with pytest.raises(ValueError, match="unknown lake table"):
        read_lake_table(str(lake), "orders")


# --- what other readers see ---------------------------------------------------------------------


def test_pandas_reads_correct_types(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    write_sample(str(lake), sample_snapshot)

    frame = pd.read_parquet(f"{lake}/invoice_lines")
    assert len(frame) == 8326
    first = frame[(frame["invoice_no"] == "536365") & (frame["line_no"] == 1)].iloc[0]
    assert first["unit_price"] == Decimal("2.550") and isinstance(first["unit_price"], Decimal)
    assert pd.api.types.is_datetime64_dtype(frame["invoice_date"])
    assert first["invoice_date"] == pd.Timestamp("2010-12-01 08:26:00")
    assert first["customer_id"] == "17850"
    assert frame["quantity"].dtype == "int64"
    assert sorted(frame["invoice_day"].astype(str).unique()) == [d.isoformat() for d in SAMPLE_DAYS]

    # Rejects with a default partition: pandas needs the partition type spelled out (pyarrow cannot
    # infer a dictionary with a null key); this is the documented way for analysts.
    partitioning = ds.partitioning(pa.schema([("invoice_day", pa.date32())]), flavor="hive")
    rejects = pd.read_parquet(f"{lake}/rejects", partitioning=partitioning)
    assert sorted(rejects["source_row"]) == [3, 7, 9]
    assert rejects["invoice_day"].isna().sum() == 1


def test_duckdb_reads_correct_types(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    write_sample(str(lake), sample_snapshot)
    # A temp file a crashed write left behind must not be picked up by the glob.
    (lake / "invoice_lines" / "invoice_day=2010-12-01" / ".part-0.parquet.dead.tmp").write_bytes(b"junk")

    con = duckdb.connect()
    source = f"read_parquet('{lake}/invoice_lines/*/*.parquet', hive_partitioning=true)"
    types = dict(
        con.execute(f"select column_name, column_type from (describe select * from {source})").fetchall()
    )
    assert types["unit_price"] == "DECIMAL(12,3)"
    assert types["invoice_date"] == "TIMESTAMP"
    assert types["customer_id"] == "VARCHAR"
    assert types["invoice_day"] == "DATE"
    row = con.execute(
        f"select count(*), sum(quantity * unit_price), "
        f"max(customer_id) filter (where invoice_no = '536365') from {source}"
    ).fetchone()
    assert row is not None
    count, total, customer = row
    assert count == 8326
    lines = sample_snapshot.lines
    assert (
        total
        == pc.sum(pc.multiply(lines["unit_price"], pc.cast(lines["quantity"], pa.decimal128(19, 0)))).as_py()
    )
    assert customer == "17850"
    undated = con.execute(
        f"select count(*) from read_parquet('{lake}/rejects/*/*.parquet', hive_partitioning=true) "
        "where invoice_day is null"
    ).fetchone()
    assert undated == (1,)


# --- reruns ---------------------------------------------------------------------------------------


def test_same_input_twice_gives_byte_identical_files(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    write_sample(str(lake), sample_snapshot)
    before = visible_files(lake)

    write_sample(str(lake), sample_snapshot)

    assert visible_files(lake) == before


def test_an_unchanged_rerun_writes_no_file(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    first = write_sample(str(lake), sample_snapshot)
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in lake.rglob("*.parquet")}

    again = write_sample(str(lake), sample_snapshot)

    assert again.files_written == () and again.files_removed == ()
    assert sorted(again.files_unchanged) == sorted(first.files_written)
    # Not rewritten at all: the same inode (no rename) and the same modification time.
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in lake.rglob("*.parquet")} == stamps


def test_rerun_of_a_day_replaces_exactly_that_day(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    write_sample(str(lake), sample_snapshot)
    before = visible_files(lake)
    lines = sample_snapshot.lines
    # Day 1 changed upstream: customer 17850's invoices are gone. The run covers day 1 only.
    not_17850 = pc.fill_null(pc.not_equal(lines["customer_id"], "17850"), True)
    changed = lines.filter(pc.and_(pc.equal(lines["invoice_day"], pa.scalar(DAY1, pa.date32())), not_17850))

    report = write_lake(
        str(lake), [DAY1], snapshot_of(changed), REJECT_SCHEMA.empty_table(), source_fingerprint=FINGERPRINT
    )

    after = visible_files(lake)
    changed_files = {name for name in after if after[name] != before.get(name)}
    assert changed_files == {
        "invoice_lines/invoice_day=2010-12-01/part-0.parquet",
        "invoices/invoice_day=2010-12-01/part-0.parquet",
        "customers/invoice_day=2010-12-01/part-0.parquet",
    }
    # The undated rejects of this source were re-stated as "none": their file goes; day 2's stay.
    assert set(before) - set(after) == {
        f"rejects/invoice_day=__HIVE_DEFAULT_PARTITION__/part-{FINGERPRINT}.parquet"
    }
    assert report.files_removed == (
        str(lake / "rejects" / "invoice_day=__HIVE_DEFAULT_PARTITION__" / f"part-{FINGERPRINT}.parquet"),
    )
    day1 = read_lake_table(str(lake), "invoice_lines", [DAY1])
    assert day1.equals(sorted_lines(changed))
    assert read_lake_table(str(lake), "invoice_lines", [DAY2]).equals(sorted_lines(lines_of_day(lines, DAY2)))
    invoices = read_lake_table(str(lake), "invoices", [DAY1])["invoice_no"].to_pylist()
    assert "536365" not in invoices and "536367" in invoices
    assert "17850" not in read_lake_table(str(lake), "customers", [DAY1])["customer_id"].to_pylist()
    assert "17850" in read_lake_table(str(lake), "customers", [DAY2])["customer_id"].to_pylist()


def test_a_day_without_rows_loses_its_partitions(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    write_sample(str(lake), sample_snapshot)
    lines = sample_snapshot.lines
    others = lines.filter(pc.not_equal(lines["invoice_day"], pa.scalar(DAY2, pa.date32())))

    write_lake(
        str(lake),
        [DAY2],
        snapshot_of(others.slice(0, 0)),
        REJECT_SCHEMA.empty_table(),
        source_fingerprint="other",
    )

    for table in TABLES:
        assert not (lake / table / "invoice_day=2010-12-02").exists(), table
    assert read_lake_table(str(lake), "invoice_lines").equals(sorted_lines(others))
    # Another source's fingerprint: this source's undated rejects are not touched.
    assert read_lake_table(str(lake), "rejects")["source_row"].to_pylist() == [9]


def test_undated_rejects_of_several_sources_coexist(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    empty = snapshot_of(sample_snapshot.lines.slice(0, 0))
    write_lake(str(lake), [], empty, rejects_table([(1, "a", None)]), source_fingerprint="one")
    write_lake(str(lake), [], empty, rejects_table([(2, "b", None)]), source_fingerprint="two")
    write_lake(str(lake), [], empty, rejects_table([(3, "c", None)]), source_fingerprint="one")

    assert read_lake_table(str(lake), "rejects")["source_row"].to_pylist() == [2, 3]


# --- crashes --------------------------------------------------------------------------------------


def day_states(lake: Path, old: pa.Table, new: pa.Table) -> tuple[list[str], list[str]]:
    """Per sample day, "old" or "new" as a manifest reader and as a plain reader see it; fails if a
    day is neither (a half day, or duplicates)."""
    committed, plain = [], []
    everything = plain_read(lake)
    for day in SAMPLE_DAYS:
        states = {"old": sorted_lines(lines_of_day(old, day)), "new": sorted_lines(lines_of_day(new, day))}
        got = read_lake_table(str(lake), "invoice_lines", [day])
        seen = sorted_lines(lines_of_day(everything, day))
        committed.append(next(name for name, rows in states.items() if got.equals(rows)))
        plain.append(next(name for name, rows in states.items() if seen.equals(rows)))
    return committed, plain


def test_a_crash_between_commits_leaves_each_day_old_or_new(
    lake: Path, sample_snapshot: ServiceSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_sample(str(lake), sample_snapshot)
    doubled = doubled_lines(sample_snapshot)
    real_commit = etl.lake.commit.commit_manifest
    commits = 0

    def failing_commit(*args: Any, **kwargs: Any) -> None:
        nonlocal commits
        commits += 1
        if commits == 3:
            raise OSError("No space left on device")
        real_commit(*args, **kwargs)

    monkeypatch.setattr(etl.lake.commit, "commit_manifest", failing_commit)
    with pytest.raises(LakeError, match=r"cannot write the lake at .*No space left on device"):
        write_sample(str(lake), snapshot_of(doubled))

    # Days 1 and 2 were committed and published, days 3 and 4 not: both kinds of reader agree.
    assert day_states(lake, sample_snapshot.lines, doubled) == (["new", "new", "old", "old"],) * 2
    objects = [f for f in all_files(lake) if f.startswith("_lake/objects/")]
    # Lines and invoices changed (customers and rejects are the same rows): days 1 and 2 have new
    # objects for them and keep the ones they replaced for one more commit; this write's objects of
    # days 3 and 4 were deleted with the failure.
    assert len(objects) == 14 + 4
    assert not [f for f in all_files(lake) if f.endswith(".tmp")]

    monkeypatch.setattr(etl.lake.commit, "commit_manifest", real_commit)
    write_sample(str(lake), snapshot_of(doubled))
    assert read_lake_table(str(lake), "invoice_lines").equals(sorted_lines(doubled))
    assert plain_read(lake).equals(sorted_lines(doubled))


def test_a_crash_after_a_commit_before_publishing_is_finished_by_the_rerun(
    lake: Path, sample_snapshot: ServiceSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_sample(str(lake), sample_snapshot)
    doubled = doubled_lines(sample_snapshot)
    real_publish = etl.lake.publish.publish_file

    def failing_publish(*args: Any, **kwargs: Any) -> None:
        raise OSError("connection reset")

    monkeypatch.setattr(etl.lake.publish, "publish_file", failing_publish)
    with pytest.raises(LakeError, match="connection reset"):
        write_sample(str(lake), snapshot_of(doubled))

    # Day 1 is committed (manifest readers see it new); its published files are still the old
    # committed ones, each whole; the later days were not committed at all.
    assert day_states(lake, sample_snapshot.lines, doubled) == (
        ["new", "old", "old", "old"],
        ["old", "old", "old", "old"],
    )
    committed = lake_state(lake)

    monkeypatch.setattr(etl.lake.publish, "publish_file", real_publish)
    report = write_sample(str(lake), snapshot_of(doubled))
    # Day 1 is committed as it is: the rerun commits nothing there, it finishes publishing it; the
    # other days are committed and published now.
    assert report.manifests_committed == (
        "invoice_day=2010-12-02",
        "invoice_day=2011-08-12",
        "invoice_day=2011-09-25",
    )
    assert (
        lake_state(lake)["_lake/manifests/invoice_day=2010-12-01.json"]
        == (committed["_lake/manifests/invoice_day=2010-12-01.json"])
    )
    assert day_states(lake, sample_snapshot.lines, doubled) == (["new"] * 4,) * 2


def test_temp_files_of_a_killed_write_are_ignored_then_cleaned(
    lake: Path, sample_snapshot: ServiceSnapshot
) -> None:
    write_sample(str(lake), sample_snapshot)
    # What a process killed between writing and moving leaves: a complete-looking hidden file.
    partition = lake / "invoice_lines" / "invoice_day=2010-12-01"
    leftover = partition / f".part-0.parquet.{uuid.uuid4().hex}.tmp"
    leftover.write_bytes((partition / "part-0.parquet").read_bytes())
    new_day = lake / "invoices" / "invoice_day=2011-01-01"
    new_day.mkdir()
    (new_day / f".part-0.parquet.{uuid.uuid4().hex}.tmp").write_bytes(b"half a file")

    assert read_lake_table(str(lake), "invoice_lines").num_rows == 8326  # not doubled
    assert len(pd.read_parquet(f"{lake}/invoice_lines")) == 8326
    assert read_lake_table(str(lake), "invoices").num_rows == 449

    write_lake(
        str(lake),
        [DAY4],
        sample_snapshot_for(sample_snapshot, DAY4),
        SOME_REJECTS.slice(0, 0),
        source_fingerprint="x",
    )

    assert not [f for f in all_files(lake) if f.endswith(".tmp")]


def test_a_later_batch_sweeps_only_its_own_partitions(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    write_sample(str(lake), sample_snapshot)
    own = lake / "invoice_lines" / f"invoice_day={DAY4.isoformat()}"
    (own / f".part-0.parquet.{uuid.uuid4().hex}.tmp").write_bytes(b"half a file")
    elsewhere = lake / "invoice_lines" / "invoice_day=2010-12-01" / f".part-0.parquet.{uuid.uuid4().hex}.tmp"
    elsewhere.write_bytes(b"half a file")

    write_lake(
        str(lake),
        [DAY4],
        sample_snapshot_for(sample_snapshot, DAY4),
        SOME_REJECTS.slice(0, 0),
        source_fingerprint="x",
        sweep_whole_lake=False,
    )

    # Its own day's leftover is gone; another day's waits for a write that sweeps the whole lake
    # (a run's first), hidden from readers meanwhile.
    assert [f for f in all_files(lake) if f.endswith(".tmp")] == [str(elsewhere.relative_to(lake))]
    assert read_lake_table(str(lake), "invoice_lines", [DAY4]).num_rows == (
        sample_snapshot_for(sample_snapshot, DAY4).lines.num_rows
    )


def test_a_writer_failing_leaves_the_lake_as_it_was(
    lake: Path, sample_snapshot: ServiceSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_sample(str(lake), sample_snapshot)
    before = visible_files(lake)
    doubled = sample_snapshot.lines.set_column(
        4, "quantity", pc.multiply(sample_snapshot.lines["quantity"], 2)
    ).cast(LINE_SCHEMA)
    real_write = etl.lake.storage.write_bytes
    calls = 0

    def failing_write(fs: fsspec.AbstractFileSystem, path: str, data: bytes, directories: set[str]) -> None:
        nonlocal calls
        calls += 1  # several writer threads: which file fails does not matter, that one does
        if calls == 5:
            raise OSError("No space left on device")
        real_write(fs, path, data, directories)

    monkeypatch.setattr(etl.lake.storage, "write_bytes", failing_write)
    with pytest.raises(LakeError, match=r"cannot write the lake at .*No space left on device"):
        write_sample(str(lake), snapshot_of(doubled), max_writers=3)

    # Nothing moves before every file is complete: the lake is exactly the old one, without clutter.
    assert visible_files(lake) == before
    assert not [f for f in all_files(lake) if f.endswith(".tmp")]


def test_writers_run_concurrently_up_to_the_limit(
    lake: Path, sample_snapshot: ServiceSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = etl.lake.storage.write_bytes
    lock = threading.Lock()
    in_flight = peak = 0

    def counting_write(fs: fsspec.AbstractFileSystem, path: str, data: bytes, directories: set[str]) -> None:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.02)  # long enough for the other writers to start meanwhile
        real_write(fs, path, data, directories)
        with lock:
            in_flight -= 1

    monkeypatch.setattr(etl.lake.storage, "write_bytes", counting_write)
    write_sample(str(lake / "three"), sample_snapshot, max_writers=3)
    assert peak == 3
    peak = 0
    write_sample(str(lake / "one"), sample_snapshot, max_writers=1)
    assert peak == 1
    # How many threads wrote them changes nothing in the files.
    assert visible_files(lake / "three") == visible_files(lake / "one")


def test_max_writers_below_one_is_refused(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    with pytest.raises(ValueError, match="max_writers must be at least 1, got 0"):
        write_sample(str(lake), sample_snapshot, max_writers=0)
    assert not lake.exists()


def test_a_rewritten_day_drops_files_of_an_older_layout(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    write_sample(str(lake), sample_snapshot)
    partition = lake / "invoice_lines" / "invoice_day=2010-12-01"
    (partition / "part-1.parquet").write_bytes((partition / "part-0.parquet").read_bytes())
    (partition / "_SUCCESS").write_bytes(b"")  # hidden: not a data file, not ours to judge
    lines = sample_snapshot.lines
    day1 = lines.filter(pc.equal(lines["invoice_day"], pa.scalar(DAY1, pa.date32())))

    report = write_lake(
        str(lake), [DAY1], snapshot_of(day1.slice(1)), REJECT_SCHEMA.empty_table(), source_fingerprint="x"
    )

    assert report.files_removed == (str(partition / "part-1.parquet"),)
    assert sorted(p.name for p in partition.iterdir()) == ["_SUCCESS", "part-0.parquet"]
    assert read_lake_table(str(lake), "invoice_lines", [DAY1]).equals(sorted_lines(day1.slice(1)))


def sample_snapshot_for(snapshot: ServiceSnapshot, day: dt.date) -> ServiceSnapshot:
    return ServiceSnapshot(lines_of_day(snapshot.lines, day), snapshot.customers)


# --- contract and errors -------------------------------------------------------------------------


def test_rows_outside_the_days_are_refused(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    with pytest.raises(ValueError, match="outside the days written"):
        write_lake(str(lake), [DAY1], sample_snapshot, REJECT_SCHEMA.empty_table(), source_fingerprint="x")
    with pytest.raises(ValueError, match="rejects has rows on day"):
        write_lake(
            str(lake),
            SAMPLE_DAYS,
            sample_snapshot,
            rejects_table([(1, "r", dt.date(2000, 1, 1))]),
            source_fingerprint="x",
        )
    assert not lake.exists()  # refused before anything was written


def test_customers_missing_from_the_snapshot_are_refused(
    lake: Path, sample_validated: ValidatedSource
) -> None:
    snapshot = snapshot_of(sample_validated.lines)
    partial = ServiceSnapshot(snapshot.lines, snapshot.customers.slice(1))
    with pytest.raises(ValueError, match="lacks customer"):
        write_sample(str(lake), partial)


def test_unwritable_root_is_a_lake_error(tmp_path: Path, sample_snapshot: ServiceSnapshot) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")

    with pytest.raises(LakeError, match=re.escape(f"cannot write the lake at {blocker}/lake")) as error:
        write_sample(f"{blocker}/lake", sample_snapshot)
    assert "\n" not in str(error.value)
    with pytest.raises(LakeError, match="cannot open the lake"):
        write_sample("nosuchprotocol://bucket/lake", sample_snapshot)


def test_bad_fingerprint_is_refused(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    with pytest.raises(ValueError, match="source_fingerprint"):
        write_lake(str(lake), SAMPLE_DAYS, sample_snapshot, SOME_REJECTS, source_fingerprint="../x")


def test_run_report_is_written_atomically(lake: Path) -> None:
    report = {"run_id": "r1", "day": dt.date(2010, 12, 1), "total": Decimal("1.500"), "counts": {"lines": 3}}

    location = write_run_report(str(lake), "20240101T000000Z-abc", report)
    location2 = write_run_report(str(lake), "scheduled__2024-01-01T00:00:00+00:00", {"ok": True})

    assert location == str(lake / "_runs" / "20240101T000000Z-abc.json")
    assert json.loads(Path(location).read_text()) == {
        "run_id": "r1",
        "day": "2010-12-01",
        "total": "1.500",
        "counts": {"lines": 3},
    }
    assert json.loads(Path(location2).read_text()) == {"ok": True}
    # Records kept as encoded texts are written as they are, one per line, inside the indented document.
    texts = JsonTexts([compact({"day": "2010-12-01", "n": 1}), compact({"day": "2010-12-02", "n": 2})])
    location3 = write_run_report(
        str(lake), "r3", {"checks": {"days": texts, "ok": True}, "when": dt.date(2010, 12, 1)}
    )
    written = Path(location3).read_text()
    assert json.loads(written) == {
        "checks": {"days": [{"day": "2010-12-01", "n": 1}, {"day": "2010-12-02", "n": 2}], "ok": True},
        "when": "2010-12-01",
    }
    assert '\n      {"day":"2010-12-01","n":1},\n' in written
    (lake / "_runs" / "r3.json").unlink()
    (lake / "_runs" / "r3.html").unlink()
    assert all_files(lake / "_runs") == [  # each report with its page
        "20240101T000000Z-abc.html",
        "20240101T000000Z-abc.json",
        "scheduled__2024-01-01T00:00:00+00:00.html",
        "scheduled__2024-01-01T00:00:00+00:00.json",
    ]
    assert "<title>retail-etl run r1: </title>" in (lake / "_runs" / "20240101T000000Z-abc.html").read_text()
    with pytest.raises(ValueError, match="run_id"):
        write_run_report(str(lake), "../escape", {})


# --- object stores ---------------------------------------------------------------------------------


@pytest.fixture
def bucket(s3_options: dict[str, Any]) -> Iterator[str]:
    fs = fsspec.filesystem("s3", **s3_options)
    name = f"lake-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    yield name
    fs.rm(name, recursive=True)


@pytest.mark.parametrize("per_unit_up_to", [8, 0], ids=["per-unit-lookups", "whole-lake-listings"])
def test_s3_round_trip_rerun_and_report(
    bucket: str,
    s3_options: dict[str, Any],
    sample_snapshot: ServiceSnapshot,
    per_unit_up_to: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The sample's 5 units are looked up one by one, or (a larger write) found in whole-lake listings.
    monkeypatch.setattr(etl.lake.commit, "PER_UNIT_LOOKUPS_UP_TO", per_unit_up_to)
    root = f"s3://{bucket}/lake"

    report = write_sample(root, sample_snapshot, storage_options=s3_options)
    before = {p: b for p, b in _s3_files(bucket, s3_options).items()}
    again = write_sample(root, sample_snapshot, storage_options=s3_options)
    # The listings told which files exist: each was compared, none rewritten.
    assert again.files_written == () and len(again.files_unchanged) == 14
    location = write_run_report(root, "run-1", report.as_dict(), storage_options=s3_options)

    assert report.files_written[0].startswith(f"s3://{bucket}/lake/")
    files = _s3_files(bucket, s3_options)
    assert {k: v for k, v in files.items() if "/_runs/" not in k} == before  # byte-identical rerun
    published = [k for k in before if "/_lake/" not in k]
    assert len(published) == 14 and not [k for k in files if k.endswith(".tmp")]
    assert len([k for k in before if "/_lake/objects/" in k]) == 14
    assert len([k for k in before if "/_lake/manifests/" in k]) == 5
    # Each published object is a server-side copy of the committed one: the same bytes.
    manifest = json.loads(files[f"{bucket}/lake/_lake/manifests/invoice_day=2010-12-01.json"])
    entry = manifest["tables"]["invoice_lines"]
    assert files[f"{bucket}/lake/{entry['object']}"] == files[f"{bucket}/lake/{entry['published']}"]
    assert entry["md5"] == hashlib.md5(files[f"{bucket}/lake/{entry['object']}"]).hexdigest()
    lines = read_lake_table(root, "invoice_lines", storage_options=s3_options)
    assert lines.equals(sorted_lines(sample_snapshot.lines))
    assert read_lake_table(root, "rejects", storage_options=s3_options)["invoice_day"].to_pylist() == [
        DAY2,
        DAY2,
        None,
    ]
    assert location == f"s3://{bucket}/lake/_runs/run-1.json"
    assert json.loads(files[f"{bucket}/lake/_runs/run-1.json"])["rows"]["invoice_lines"] == 8326

    lines_all = sample_snapshot.lines
    write_lake(
        root,
        [DAY2],
        snapshot_of(lines_all.slice(0, 0)),
        REJECT_SCHEMA.empty_table(),
        source_fingerprint=FINGERPRINT,
        storage_options=s3_options,
    )
    after = read_lake_table(root, "invoice_lines", storage_options=s3_options)
    assert DAY2 not in set(after["invoice_day"].to_pylist())
    assert after.num_rows == 8326 - lines_of_day(lines_all, DAY2).num_rows


def test_s3_a_daily_write_looks_only_at_its_own_day(
    bucket: str, s3_options: dict[str, Any], sample_snapshot: ServiceSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A catch-up writes one day per run into a growing lake: what one run lists must not grow with it.
    root = f"s3://{bucket}/lake"
    write_sample(root, sample_snapshot, storage_options=s3_options)
    listed: list[str] = []
    looked_up: list[str] = []
    real_listing, real_info = etl.lake.storage.listing, etl.lake.storage.object_info

    def listing(fs: Any, path: str) -> Any:
        listed.append(path.removeprefix(f"{bucket}/lake/"))
        return real_listing(fs, path)

    def object_info(fs: Any, path: str) -> Any:
        looked_up.append(path.removeprefix(f"{bucket}/lake/"))
        return real_info(fs, path)

    monkeypatch.setattr(etl.lake.storage, "listing", listing)
    monkeypatch.setattr(etl.lake.storage, "object_info", object_info)
    day = sample_snapshot_for(sample_snapshot, DAY3)
    doubled = ServiceSnapshot(doubled_lines(day), day.customers)
    report = write_lake(
        root, [DAY3], doubled, REJECT_SCHEMA.empty_table(), source_fingerprint="x", storage_options=s3_options
    )

    # Its units: the day, and source "x"'s undated rejects (none now: an old file would go).
    partition, undated = f"invoice_day={DAY3.isoformat()}", "invoice_day=__HIVE_DEFAULT_PARTITION__"
    assert report.manifests_committed == (partition,)
    # Each manifest read, and read again after publishing; nothing else looked up.
    assert set(looked_up) == {f"_lake/manifests/{partition}.json", f"_lake/manifests/{undated}.x.json"}
    assert sorted(set(listed)) == sorted(
        [f"{table}/{partition}" for table in TABLES]
        + [f"rejects/{undated}", f"_lake/objects/{partition}", f"_lake/objects/{undated}"]
    )
    monkeypatch.undo()
    lines = read_lake_table(root, "invoice_lines", storage_options=s3_options)
    others = sorted_lines(
        sample_snapshot.lines.filter(pc.not_equal(sample_snapshot.lines["invoice_day"], DAY3))
    )
    assert lines.filter(pc.not_equal(lines["invoice_day"], DAY3)).equals(others)
    assert lines.filter(pc.equal(lines["invoice_day"], DAY3)).equals(sorted_lines(doubled.lines))


def test_s3_filesystems_share_one_session_per_aws_environment(
    bucket: str, s3_endpoint: str, sample_snapshot: ServiceSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What S3 clients are made from is loaded once per process (and inherited by forked task
    # processes), but a changed AWS environment must still be obeyed: a new endpoint, new credentials.
    monkeypatch.setattr(etl.lake.storage, "_S3_SESSIONS", {})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    etl.lake.prepare_s3_client()
    first = etl.lake.storage._s3_session()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    fs, _ = etl.lake.filesystem(f"s3://{bucket}/lake", {"skip_instance_cache": True})
    second = etl.lake.storage._s3_session()

    assert second is not first and fs.session is second
    assert etl.lake.filesystem(f"s3://{bucket}/other", {"skip_instance_cache": True})[0].session is second
    # An explicit profile or session is the caller's choice: none is put in its place.
    own = object()
    assert etl.lake.filesystem(f"s3://{bucket}/lake", {"session": own})[0].session is own
    day = sample_snapshot_for(sample_snapshot, DAY4)
    root = f"s3://{bucket}/lake"
    write_lake(root, [DAY4], day, REJECT_SCHEMA.empty_table(), source_fingerprint="x")
    assert read_lake_table(root, "invoice_lines").equals(sorted_lines(day.lines))


def test_s3_missing_bucket_is_a_lake_error(
    s3_options: dict[str, Any], sample_snapshot: ServiceSnapshot
) -> None:
    with pytest.raises(LakeError, match="cannot write the lake at s3://no-such-bucket-"):
        write_sample(
            f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/lake", sample_snapshot, storage_options=s3_options
        )


def test_s3_endpoint_from_the_environment(
    bucket: str, s3_endpoint: str, sample_snapshot: ServiceSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # botocore reads AWS_ENDPOINT_URL itself: no storage options needed.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    day = sample_snapshot_for(sample_snapshot, DAY3)
    options = {"skip_instance_cache": True}

    write_lake(
        f"s3://{bucket}/lake",
        [DAY3],
        day,
        SOME_REJECTS.slice(0, 0),
        source_fingerprint="x",
        storage_options=options,
    )

    assert read_lake_table(f"s3://{bucket}/lake", "invoice_lines", storage_options=options).equals(
        sorted_lines(day.lines)
    )


def _s3_files(bucket: str, options: dict[str, Any]) -> dict[str, bytes]:
    fs = fsspec.filesystem("s3", **options)
    fs.invalidate_cache()
    return {path: fs.cat_file(path) for path in fs.find(bucket)}


def test_memory_filesystem(sample_snapshot: ServiceSnapshot) -> None:
    root = f"memory://lake-{uuid.uuid4().hex[:8]}"
    fs, path = fsspec.core.url_to_fs(root)
    try:
        write_sample(root, sample_snapshot)
        again = write_sample(root, sample_snapshot)
        write_run_report(root, "run-1", {"ok": True})

        assert again.files_written == () and len(again.files_unchanged) == 14

        assert read_lake_table(root, "invoice_lines").equals(sorted_lines(sample_snapshot.lines))
        assert read_lake_table(root, "invoices").num_rows == 449
        names = [p.removeprefix(path + "/") for p in fs.find(path)]
        assert len(names) == 14 + 14 + 5 + 2 and not [n for n in names if n.endswith(".tmp")]
        assert "_runs/run-1.json" in names and "_runs/run-1.html" in names
    finally:
        fs.rm(path, recursive=True)


# --- commits: reruns, retired objects, orphans, two writers ------------------------------------------


def test_a_rerun_leaves_the_whole_lake_byte_identical(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    first = write_sample(str(lake), sample_snapshot)
    before = lake_state(lake)

    again = write_sample(str(lake), sample_snapshot)

    # Published files, objects and manifests: the same names, the same bytes; nothing committed.
    assert lake_state(lake) == before
    assert again.manifests_committed == () and len(first.manifests_committed) == 5


def test_replaced_objects_stay_one_commit_then_go(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    manifest_path = lake / "_lake" / "manifests" / "invoice_day=2010-12-01.json"
    day = sample_snapshot_for(sample_snapshot, DAY1)
    write_lake(str(lake), [DAY1], day, REJECT_SCHEMA.empty_table(), source_fingerprint="x")
    first = json.loads(manifest_path.read_text())
    doubled = ServiceSnapshot(doubled_lines(day), day.customers)
    write_lake(str(lake), [DAY1], doubled, REJECT_SCHEMA.empty_table(), source_fingerprint="x")
    second = json.loads(manifest_path.read_text())

    replaced = [first["tables"][t]["object"] for t in ("invoice_lines", "invoices")]
    assert second["retired"] == sorted(replaced)
    # A reader that read the first manifest a moment ago can still read its objects.
    assert all((lake / path).exists() for path in replaced)
    assert second["tables"]["customers"] == first["tables"]["customers"]  # same rows: same object

    write_lake(str(lake), [DAY1], day, REJECT_SCHEMA.empty_table(), source_fingerprint="x")

    assert not any((lake / path).exists() for path in replaced)
    third = json.loads(manifest_path.read_text())
    assert all((lake / entry["object"]).exists() for entry in third["tables"].values())
    assert all((lake / path).exists() for path in third["retired"])
    assert read_lake_table(str(lake), "invoice_lines").equals(sorted_lines(day.lines))
    assert plain_read(lake).equals(sorted_lines(day.lines))


def test_objects_no_manifest_names_go_once_old(
    lake: Path, sample_snapshot: ServiceSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_sample(str(lake), sample_snapshot)
    folder = lake / "_lake" / "objects" / "invoice_day=2010-12-01"
    # What writes killed before their commit left: one long ago, one just now (perhaps still running).
    old = folder / f"invoice_lines.{uuid.uuid4().hex[:16]}.parquet"
    young = folder / f"invoices.{uuid.uuid4().hex[:16]}.parquet"
    unknown = folder / "notes.txt"  # not the lake's: never touched
    for path in (old, young, unknown):
        path.write_bytes(b"half an object")
    hours_ago = time.time() - 2 * etl.lake.ORPHAN_GRACE.total_seconds()
    os.utime(old, (hours_ago, hours_ago))
    os.utime(unknown, (hours_ago, hours_ago))

    assert read_lake_table(str(lake), "invoice_lines").equals(sorted_lines(sample_snapshot.lines))
    write_sample(str(lake), ServiceSnapshot(doubled_lines(sample_snapshot), sample_snapshot.customers))

    assert not old.exists() and young.exists() and unknown.exists()


def test_a_second_writer_of_a_day_fails_its_commit_and_the_first_stays(
    lake: Path, sample_snapshot: ServiceSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_sample(str(lake), sample_snapshot)
    doubled = doubled_lines(sample_snapshot)
    tripled = sample_snapshot.lines.set_column(
        4, "quantity", pc.multiply(sample_snapshot.lines["quantity"], 3)
    ).cast(LINE_SCHEMA)
    real_stage = etl.lake.commit.stage_all

    def stage_while_another_writer_commits(*args: Any, **kwargs: Any) -> Any:
        staged = real_stage(*args, **kwargs)
        # The other writer read the same manifests, and commits first.
        monkeypatch.setattr(etl.lake.commit, "stage_all", real_stage)
        write_sample(str(lake), snapshot_of(tripled))
        return staged

    monkeypatch.setattr(etl.lake.commit, "stage_all", stage_while_another_writer_commits)
    with pytest.raises(LakeError, match=r"invoice_day=2010-12-01 was committed by another writer"):
        write_sample(str(lake), snapshot_of(doubled))

    # The first commit stands, in both views; the loser left no object behind.
    assert read_lake_table(str(lake), "invoice_lines").equals(sorted_lines(tripled))
    assert plain_read(lake).equals(sorted_lines(tripled))
    committed = set()
    for manifest in (lake / "_lake" / "manifests").glob("*.json"):
        body = json.loads(manifest.read_text())
        committed |= {e["object"] for e in body["tables"].values()} | set(body["retired"])
    assert {f for f in all_files(lake) if f.startswith("_lake/objects/")} == committed


def test_committed_files_list_exactly_the_committed_objects(
    lake: Path, sample_snapshot: ServiceSnapshot
) -> None:
    write_sample(str(lake), sample_snapshot)
    write_sample(str(lake), ServiceSnapshot(doubled_lines(sample_snapshot), sample_snapshot.customers))

    files = etl.lake.committed_files(str(lake), "invoice_lines")

    assert len(files) == 4 and all("/_lake/objects/invoice_day=" in f for f in files)
    con = duckdb.connect()
    rows = con.execute(
        "select count(*), sum(quantity) from read_parquet(?, hive_partitioning = true)", [files]
    ).fetchone()
    assert rows == (8326, 2 * pc.sum(sample_snapshot.lines["quantity"]).as_py())
    assert etl.lake.committed_files(str(lake), "invoice_lines", [DAY2]) == [
        f for f in files if "invoice_day=2010-12-02" in f
    ]
    with pytest.raises(ValueError, match="unknown lake table"):
        etl.lake.committed_files(str(lake), "orders")


def test_a_lake_written_before_manifests_reads_and_is_taken_over(
    lake: Path, sample_snapshot: ServiceSnapshot
) -> None:
    write_sample(str(lake), sample_snapshot)
    # An older version's lake: the published files only.
    for path in list((lake / "_lake").rglob("*")):
        if path.is_file():
            path.unlink()

    assert read_lake_table(str(lake), "invoice_lines").equals(sorted_lines(sample_snapshot.lines))
    assert read_lake_table(str(lake), "rejects")["source_row"].to_pylist() == [3, 7, 9]
    report = write_sample(str(lake), sample_snapshot)

    # Every day is committed now; the published files already held these rows and stay as they were.
    assert len(report.manifests_committed) == 5
    assert report.files_written == () and len(report.files_unchanged) == 14
    assert len(etl.lake.committed_files(str(lake), "invoice_lines")) == 4
    assert read_lake_table(str(lake), "invoice_lines").equals(sorted_lines(sample_snapshot.lines))
    assert read_lake_table(str(lake), "rejects")["source_row"].to_pylist() == [3, 7, 9]


# --- the same on S3, through moto's server: conditional commits, a killed writer --------------------


def test_s3_a_second_writer_fails_on_the_conditional_put(
    bucket: str, s3_options: dict[str, Any], sample_snapshot: ServiceSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = f"s3://{bucket}/lake"
    day = sample_snapshot_for(sample_snapshot, DAY1)
    write_lake(
        root, [DAY1], day, REJECT_SCHEMA.empty_table(), source_fingerprint="x", storage_options=s3_options
    )
    doubled = ServiceSnapshot(doubled_lines(day), day.customers)
    real_read = etl.lake.commit.read_manifests

    def read_then_lose_the_race(*args: Any, **kwargs: Any) -> Any:
        committed = real_read(*args, **kwargs)  # with the ETags the commit will be conditional on
        monkeypatch.setattr(etl.lake.commit, "read_manifests", real_read)
        write_lake(
            root,
            [DAY1],
            doubled,
            REJECT_SCHEMA.empty_table(),
            source_fingerprint="x",
            storage_options=s3_options,
        )
        return committed

    monkeypatch.setattr(etl.lake.commit, "read_manifests", read_then_lose_the_race)
    tripled = ServiceSnapshot(
        day.lines.set_column(4, "quantity", pc.multiply(day.lines["quantity"], 3)).cast(LINE_SCHEMA),
        day.customers,
    )
    with pytest.raises(LakeError, match="was committed by another writer"):
        write_lake(
            root,
            [DAY1],
            tripled,
            REJECT_SCHEMA.empty_table(),
            source_fingerprint="x",
            storage_options=s3_options,
        )

    got = read_lake_table(root, "invoice_lines", storage_options=s3_options)
    assert got.equals(sorted_lines(doubled.lines))
    plain = pq.read_table(f"{bucket}/lake/invoice_lines", filesystem=fsspec.filesystem("s3", **s3_options))
    assert plain.num_rows == day.lines.num_rows
    assert pc.sum(plain["quantity"]).as_py() == 2 * pc.sum(day.lines["quantity"]).as_py()


# The lake write of the sample to S3 in a child process that SIGKILLs itself at the given call of a lake
# step: nothing of Python's cleanup runs, as when a worker dies.
_KILLED_WRITER = """
import importlib, json, os, signal, sys
import pyarrow as pa, pyarrow.parquet as pq
from etl.lake import write_lake
from etl.schema import ServiceSnapshot, REJECT_SCHEMA
root, options, lines, customers, step, after = sys.argv[1:7]
where, name = step.rsplit(".", 1)
module = importlib.import_module(f"etl.lake.{where}")
original = getattr(module, name)
calls = 0
def dying(*args, **kwargs):
    global calls
    calls += 1
    if calls == int(after):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(module, name, dying)
snapshot = ServiceSnapshot(pq.read_table(lines), pq.read_table(customers))
days = sorted(set(snapshot.lines["invoice_day"].to_pylist()))
write_lake(root, days, snapshot, REJECT_SCHEMA.empty_table(), source_fingerprint="x",
                storage_options=json.loads(options), max_writers=1)
"""


@pytest.mark.parametrize(
    ("step", "after", "committed_days"),
    [("storage.write_bytes", 3, 0), ("commit.commit_manifest", 3, 2), ("publish.publish_file", 1, 1)],
)
def test_s3_writer_killed_then_rerun(
    step: str,
    after: int,
    committed_days: int,
    bucket: str,
    s3_options: dict[str, Any],
    sample_snapshot: ServiceSnapshot,
    tmp_path: Path,
) -> None:
    root = f"s3://{bucket}/lake"
    s3 = fsspec.filesystem("s3", **s3_options)
    write_lake(
        root,
        SAMPLE_DAYS,
        sample_snapshot,
        REJECT_SCHEMA.empty_table(),
        source_fingerprint="x",
        storage_options=s3_options,
    )
    doubled = ServiceSnapshot(doubled_lines(sample_snapshot), sample_snapshot.customers)
    pq.write_table(doubled.lines, tmp_path / "lines.parquet")
    pq.write_table(doubled.customers, tmp_path / "customers.parquet")

    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLED_WRITER,
            root,
            json.dumps(s3_options),
            str(tmp_path / "lines.parquet"),
            str(tmp_path / "customers.parquet"),
            step,
            str(after),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    old, new = sample_snapshot.lines, doubled.lines
    committed = read_lake_table(root, "invoice_lines", storage_options=s3_options)
    partitioning = ds.partitioning(pa.schema([("invoice_day", pa.date32())]), flavor="hive")
    plain = sorted_lines(
        ds.dataset(f"{bucket}/lake/invoice_lines", filesystem=s3, format="parquet", partitioning=partitioning)
        .to_table()
        .select(LINE_SCHEMA.names)
        .cast(LINE_SCHEMA)
    )
    for index, day in enumerate(SAMPLE_DAYS):
        expected = sorted_lines(lines_of_day(new if index < committed_days else old, day))
        assert sorted_lines(lines_of_day(committed, day)).equals(expected), day
        # Plain readers see only whole committed files: the killed day's publishing is not finished,
        # so they still see its old, committed rows.
        unfinished = step == "publish.publish_file" and index == 0
        published = new if index < committed_days and not unfinished else old
        assert sorted_lines(lines_of_day(plain, day)).equals(sorted_lines(lines_of_day(published, day))), day

    rerun = write_lake(
        root,
        SAMPLE_DAYS,
        doubled,
        REJECT_SCHEMA.empty_table(),
        source_fingerprint="x",
        storage_options=s3_options,
    )

    assert len(rerun.manifests_committed) == 4 - committed_days
    assert read_lake_table(root, "invoice_lines", storage_options=s3_options).equals(sorted_lines(new))
    s3.invalidate_cache()
    assert sorted_lines(
        ds.dataset(f"{bucket}/lake/invoice_lines", filesystem=s3, format="parquet", partitioning=partitioning)
        .to_table()
        .select(LINE_SCHEMA.names)
        .cast(LINE_SCHEMA)
    ).equals(sorted_lines(new))


def test_s3_a_commit_over_ours_while_we_publish_wins_the_published_view(
    bucket: str, s3_options: dict[str, Any], sample_snapshot: ServiceSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = f"s3://{bucket}/lake"
    day = sample_snapshot_for(sample_snapshot, DAY1)
    empty = REJECT_SCHEMA.empty_table()
    write_lake(root, [DAY1], day, empty, source_fingerprint="x", storage_options=s3_options)
    ours = ServiceSnapshot(doubled_lines(day), day.customers)
    theirs = ServiceSnapshot(
        day.lines.set_column(4, "quantity", pc.multiply(day.lines["quantity"], 3)).cast(LINE_SCHEMA),
        day.customers,
    )
    real_publish = etl.lake.publish.publish_unit
    raced = False

    def another_writer_commits_and_publishes_first(*args: Any, **kwargs: Any) -> Any:
        nonlocal raced
        if not raced:
            raced = True
            # After our commit, before our copies: they commit over ours and publish theirs.
            write_lake(root, [DAY1], theirs, empty, source_fingerprint="x", storage_options=s3_options)
        return real_publish(*args, **kwargs)

    monkeypatch.setattr(etl.lake.publish, "publish_unit", another_writer_commits_and_publishes_first)
    report = write_lake(root, [DAY1], ours, empty, source_fingerprint="x", storage_options=s3_options)

    # Our copies landed after theirs; reading the manifest again put their (later) commit back.
    assert report.manifests_committed == ("invoice_day=2010-12-01",)
    assert read_lake_table(root, "invoice_lines", storage_options=s3_options).equals(
        sorted_lines(theirs.lines)
    )
    s3 = fsspec.filesystem("s3", **s3_options)
    plain = pq.read_table(f"{bucket}/lake/invoice_lines", filesystem=s3)
    assert pc.sum(plain["quantity"]).as_py() == 3 * pc.sum(day.lines["quantity"]).as_py()


def test_without_hard_links_the_published_files_are_copies(
    lake: Path, sample_snapshot: ServiceSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: str, target: str) -> None:
        raise PermissionError(1, "Operation not permitted")  # EPERM, as some filesystems answer

    monkeypatch.setattr(etl.lake.publish.os, "link", no_links)
    write_sample(str(lake), sample_snapshot)
    again = write_sample(str(lake), sample_snapshot)

    manifest = json.loads((lake / "_lake" / "manifests" / "invoice_day=2010-12-01.json").read_text())
    entry = manifest["tables"]["invoice_lines"]
    assert not (lake / entry["object"]).samefile(lake / entry["published"])
    assert (lake / entry["object"]).read_bytes() == (lake / entry["published"]).read_bytes()
    assert again.files_written == () and len(again.files_unchanged) == 14  # told by the footer digest
    assert plain_read(lake).equals(sorted_lines(sample_snapshot.lines))
    assert not [f for f in all_files(lake) if f.endswith(".tmp")]


def test_a_damaged_manifest_is_a_one_line_lake_error(lake: Path, sample_snapshot: ServiceSnapshot) -> None:
    write_sample(str(lake), sample_snapshot)
    (lake / "_lake" / "manifests" / "invoice_day=2010-12-02.json").write_text('{"tables": ')

    with pytest.raises(LakeError, match=r"manifest .*invoice_day=2010-12-02.json is not JSON") as error:
        read_lake_table(str(lake), "invoice_lines")
    assert "\n" not in str(error.value)
    with pytest.raises(LakeError, match="is not JSON"):
        write_sample(str(lake), sample_snapshot)


@pytest.mark.parametrize("store", ["local", "s3"])
def test_two_writers_of_the_same_rows_both_succeed_with_one_commit(
    store: str,
    lake: Path,
    request: pytest.FixtureRequest,
    sample_snapshot: ServiceSnapshot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two runs of one source at once (the DAG's days in parallel share its undated rejects), or a
    # retried task racing the attempt it replaced: both write the same rows, both read "no manifest".
    if store == "s3":
        options: dict[str, Any] = request.getfixturevalue("s3_options")
        root = f"s3://{request.getfixturevalue('bucket')}/lake"
    else:
        options, root = {}, str(lake)
    real_stage = etl.lake.commit.stage_all
    other: list[Any] = []

    def the_other_writer_commits_first(*args: Any, **kwargs: Any) -> Any:
        staged = real_stage(*args, **kwargs)
        monkeypatch.setattr(etl.lake.commit, "stage_all", real_stage)
        other.append(write_sample(root, sample_snapshot, storage_options=options))
        return staged

    monkeypatch.setattr(etl.lake.commit, "stage_all", the_other_writer_commits_first)
    ours = write_sample(root, sample_snapshot, storage_options=options)

    assert len(other[0].manifests_committed) == 5 and ours.manifests_committed == ()
    assert read_lake_table(root, "invoice_lines", storage_options=options).equals(
        sorted_lines(sample_snapshot.lines)
    )
    fs, base = etl.lake.filesystem(root, options)
    fs.invalidate_cache()
    objects = [p for p in fs.find(f"{base}/_lake/objects") if p.endswith(".parquet")]
    assert len(objects) == 14  # the loser's objects are gone: only the committed ones are left


def test_the_content_digest_is_the_rows_not_how_they_were_sliced() -> None:
    """A day cut from a run of several days digests as the same day read on its own: a rerun cut into
    other units finds its days unchanged."""
    from etl.lake import content_digest

    days = pa.table(
        {
            "invoice_no": pa.array([f"5{i:05d}" for i in range(30)]),
            "description": pa.array([None if i % 7 == 0 else f"item {i}" for i in range(30)]),
            "quantity": pa.array(range(30), pa.int64()),
        }
    )
    middle = days.slice(10, 10)
    alone = pa.Table.from_pylist(middle.to_pylist(), schema=middle.schema)
    assert content_digest(middle) == content_digest(alone)
    assert content_digest(days.slice(11, 10)) != content_digest(alone)
