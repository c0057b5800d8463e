"""The lake adapter: reading a day back (rows and file hashes from the same bytes), publishing a day
through `etl.lake.write_lake`, verifying a day against totals."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from etl.destinations.base import DayTables
from etl.destinations.lake_destination import LakeDestination
from etl.errors import ReconciliationError
from etl.lake import read_lake_table, write_lake
from etl.schema import REJECT_SCHEMA, SOURCE_COLUMNS, ValidatedSource
from retail_contract.lake_layout import TABLES
from tests.destinations.conftest import FINGERPRINT
from tests.etl.conftest import snapshot_of

DAY = dt.date(2010, 12, 2)


def visible_files(root: Path) -> dict[str, pa.Table]:
    """Each visible data file's rows (and schema), read as a single file (the lake's own `_lake/` folder of
    committed objects and manifests is not what a plain reader lists)."""
    return {
        str(p.relative_to(root)): pq.ParquetFile(p).read().replace_schema_metadata(None)
        for p in sorted(root.rglob("*.parquet"))
        if not p.name.startswith(".") and p.relative_to(root).parts[0] != "_lake"
    }


def test_a_day_reads_back_as_the_lake_reader_sees_it_with_each_files_hash(sample_lake: Path) -> None:
    day = LakeDestination(str(sample_lake)).read_day(DAY)

    for table in ("invoice_lines", "invoices", "customers"):
        whole = read_lake_table(str(sample_lake), table, [DAY])
        assert day.tables[table].equals(whole), table
        file = day.files[table]
        assert file.path == f"{table}/invoice_day=2010-12-02/part-0.parquet"
        assert file.sha256 == hashlib.sha256((sample_lake / file.path).read_bytes()).hexdigest()
        assert file.rows == whole.num_rows > 0
    # The sample has no rejects on that day: no file, and an empty table of the right schema.
    assert day.files["rejects"].path is None and day.files["rejects"].sha256 is None
    assert day.tables["rejects"].num_rows == 0
    # The day's totals, independently: 2,109 lines worth exactly 46,207.28 (tests/dags/test_dag_run.py).
    totals = day.totals()
    assert (totals.lines, totals.amount, totals.invoice_amount) == (
        2109,
        Decimal("46207.28"),
        Decimal("46207.28"),
    )


def test_a_day_absent_from_the_lake_reads_as_empty(sample_lake: Path) -> None:
    day = LakeDestination(str(sample_lake)).read_day(dt.date(2011, 1, 1))
    assert day.rows == dict.fromkeys(TABLES, 0)
    assert all(f.path is None for f in day.files.values())
    assert day.totals().amount == Decimal(0)


def test_publishing_the_days_into_another_lake_gives_the_same_rows(
    sample_lake: Path, lake_days: list[DayTables], tmp_path: Path, validated: ValidatedSource
) -> None:
    copy = tmp_path / "copy"
    # The copy already holds a reject without a day from this source: publishing days must keep it.
    undated = pa.table(
        {
            "source_row": [7],
            **{name: [f"bad {name}"] for name in SOURCE_COLUMNS},
            "reason": ["InvoiceDate: not a date"],
            "invoice_day": pa.nulls(1, pa.date32()),
        },
        schema=REJECT_SCHEMA,
    )
    write_lake(
        str(copy), [], snapshot_of(validated.lines.slice(0, 0)), undated, source_fingerprint=FINGERPRINT
    )
    target = LakeDestination(str(copy), source_fingerprint=FINGERPRINT)
    receipts = [target.publish_day(day) for day in lake_days]

    assert [r.rows["invoice_lines"] for r in receipts] == [d.rows["invoice_lines"] for d in lake_days]
    # The same files with the same rows and types (the footer's digest, written by etl.lake, follows the
    # Arrow buffers' layout and is left out here).
    copied, original = visible_files(copy), visible_files(sample_lake)
    kept = copied.pop(f"rejects/invoice_day=__HIVE_DEFAULT_PARTITION__/part-{FINGERPRINT}.parquet")
    assert kept.to_pylist() == [
        {k: v for k, v in row.items() if k != "invoice_day"} for row in undated.to_pylist()
    ]
    assert sorted(copied) == sorted(original)
    for name, rows in original.items():
        assert copied[name].equals(rows), name
    for day in lake_days:
        target.verify_day(day.day, day.totals())


def test_replace_day_rewrites_the_day_and_says_so(sample_lake: Path, lake_days: list[DayTables]) -> None:
    lake = LakeDestination(str(sample_lake), source_fingerprint=FINGERPRINT)
    day = next(d for d in lake_days if d.day == DAY)
    lines = day.tables["invoice_lines"]
    first_invoice = lines["invoice_no"][0]
    corrected = lines.filter(pc.not_equal(lines["invoice_no"], first_invoice))
    receipt = lake.replace_day(dataclasses.replace(day, tables={**day.tables, "invoice_lines": corrected}))

    assert receipt.replaced and receipt.rows["invoice_lines"] == corrected.num_rows
    after = lake.read_day(DAY)
    assert after.tables["invoice_lines"].num_rows == corrected.num_rows
    assert after.tables["invoices"].num_rows == day.tables["invoices"].num_rows - 1  # derived again
    assert after.files["invoice_lines"].sha256 != day.files["invoice_lines"].sha256
    others = [d for d in lake_days if d.day != DAY]
    assert [lake.read_day(d.day).files for d in others] == [d.files for d in others]


def test_verify_day_fails_loudly_on_a_wrong_expectation(
    sample_lake: Path, lake_days: list[DayTables]
) -> None:
    lake = LakeDestination(str(sample_lake))
    day = lake_days[0]
    lake.verify_day(day.day, day.totals())
    wrong = dataclasses.replace(day.totals(), amount=day.totals().amount + Decimal("0.001"))
    with pytest.raises(ReconciliationError, match=r"lake differs from the lake on 2010-12-01: amount"):
        lake.verify_day(day.day, wrong)


def test_writing_without_the_source_fingerprint_is_refused(
    sample_lake: Path, lake_days: list[DayTables]
) -> None:
    with pytest.raises(ValueError, match="source fingerprint"):
        LakeDestination(str(sample_lake)).publish_day(lake_days[0])
    assert isinstance(lake_days[0].tables["invoice_lines"], pa.Table)
