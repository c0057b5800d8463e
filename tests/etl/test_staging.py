"""The source staged once by day (`etl.staging`): each day read from it is exactly what validating the
source for that day gives, it is reused until the file changes, and concurrent or killed builders never
leave a staging that a reader would use wrongly. Real files, a real moto S3 server."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import etl.staging
from etl.dialect import SourceOptions
from etl.load import load_source
from etl.schema import DayRange, ValidatedSource
from etl.staging import ROWS_IN_MEMORY, STAGING_DIR, _HeldSource, stage_source, staged_days, staging_key
from etl.validate import validate
from tests.etl.conftest import SAMPLE_CSV as SAMPLE

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
# Rejects with a day, rejects without one, and an invoice whose lines name two days (rejected whole).
MIXED = HEADER + (
    "A1,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n"
    "A2,71053,LANTERN,x,2010-12-01 09:00:00,3.39,17850.0,United Kingdom\n"
    "A3,22752,SET,2,not a date,7.65,13047.0,United Kingdom\n"
    "A4,21730,GLASS,6,2010-12-02 10:00:00,4.25,13047.0,France\n"
    "A4,21731,GLASS 2,6,2010-12-03 10:00:00,4.25,13047.0,France\n"
    "A5,84406B,CREAM,8,2010-12-02 11:00:00,2.75,,United Kingdom\n"
    "A1,84029G,UNION,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom\n"
    "A6,22633,HAND,6,2010-12-03 12:00:00,1.85,12583.0,France\n"
    "A7,22632,HAND 2,6,2010-12-05 12:00:00,-1,12583.0,France\n"
)


def _assert_same(staged: ValidatedSource, direct: ValidatedSource) -> None:
    assert staged.lines.equals(direct.lines)
    assert staged.rejects.equals(direct.rejects)
    assert staged.days == direct.days


def _ranges(days: tuple[dt.date, ...]) -> list[DayRange]:
    one = [DayRange(day, day) for day in days]
    return [*one, DayRange(), DayRange(days[0], days[-1]), DayRange(days[1], None), DayRange(None, days[1])]


@pytest.mark.parametrize("content", ["sample", "mixed"])
@pytest.mark.parametrize("rows_in_memory", [ROWS_IN_MEMORY, 1_000, 3])
def test_every_day_and_range_is_what_validating_the_source_gives(
    content: str, rows_in_memory: int, tmp_path: Path
) -> None:
    # A source larger than `rows_in_memory` is validated a group of whole invoices at a time and merged
    # by day: exactly the rows of validating it whole.
    source = SAMPLE if content == "sample" else tmp_path / "mixed.csv"
    if content == "mixed":
        source.write_text(MIXED)
    raw = load_source(str(source))
    everything = validate(raw, DayRange())
    if content == "mixed":  # the cases are there
        assert everything.rejects.num_rows >= 4
        assert None in everything.rejects.column("invoice_day").to_pylist()
    lake = str(tmp_path / "lake")
    for days in _ranges(everything.days):
        staged = staged_days(str(source), lake, days, rows_in_memory=rows_in_memory)
        _assert_same(staged.validated, validate(raw, days))
    assert staged.dialect == raw.dialect.describe()
    assert staged.source_rows == raw.num_rows


def test_days_spread_over_files_of_a_few_days_read_as_from_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A staging's footers stay small whatever the days: `DAYS_PER_FILE` row groups per file, and a
    # reader keeps the footers of the last two files only.
    source = tmp_path / "mixed.csv"
    source.write_text(MIXED)
    raw = load_source(str(source))
    everything = validate(raw, DayRange())
    monkeypatch.setattr(etl.staging, "DAYS_PER_FILE", 2)
    staging = stage_source(str(source), str(tmp_path / "lake"))
    folder = Path(staging.base) / staging.manifest["build"]
    days_and_undated = len(everything.days) + 1
    assert len(list(folder.glob("lines-*.parquet"))) == -(-len(everything.days) // 2) >= 2
    assert len(list(folder.glob("rejects-*.parquet"))) <= -(-days_and_undated // 2)
    expected = {day: n for day, n in Counter(everything.lines.column("invoice_day").to_pylist()).items()}
    assert staging.lines_per_day() == expected
    for days in _ranges(everything.days):
        _assert_same(staging.read(days), validate(raw, days))
        assert len(staging._footers) <= 2


def _files(folder: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}


def test_a_second_run_reuses_the_staging_without_rewriting_it(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    first = staged_days(str(SAMPLE), str(lake), DayRange(dt.date(2010, 12, 1), dt.date(2010, 12, 1)))
    files = _files(lake / STAGING_DIR)
    second = staged_days(str(SAMPLE), str(lake), DayRange(dt.date(2010, 12, 2), dt.date(2010, 12, 2)))
    assert (first.staging, second.staging) == ("built", "reused")
    assert _files(lake / STAGING_DIR) == files
    assert second.validated.days == (dt.date(2010, 12, 2),)


def test_a_changed_source_is_staged_again(tmp_path: Path) -> None:
    source, lake = tmp_path / "source.csv", str(tmp_path / "lake")
    source.write_text(MIXED)
    day = DayRange(dt.date(2010, 12, 1), dt.date(2010, 12, 1))
    before = staged_days(str(source), lake, day)
    # Same size, same path, rewritten at once: only the bytes tell.
    source.write_text(MIXED.replace("HEART,6,", "HEART,7,"))
    after = staged_days(str(source), lake, day)
    assert after.staging == "built"
    assert before.validated.lines.column("quantity").to_pylist()[0] == 6
    assert after.validated.lines.column("quantity").to_pylist()[0] == 7
    _assert_same(after.validated, validate(load_source(str(source)), day))


def test_dialect_options_get_a_staging_of_their_own(tmp_path: Path) -> None:
    source = tmp_path / "source.csv"
    source.write_text(MIXED.replace(",", ";"))
    given = SourceOptions.from_text(delimiter=";")
    assert staging_key(str(source), given) != staging_key(str(source), SourceOptions())
    staged = staged_days(str(source), str(tmp_path / "lake"), DayRange(), options=given)
    assert staged.dialect["delimiter"] == "semicolon"
    _assert_same(staged.validated, validate(load_source(str(source), options=given), DayRange()))


def _stage_in_a_process(args: tuple[str, str]) -> dict[str, Any]:
    source, lake = args
    staged = staged_days(source, lake, DayRange())
    return {"staging": staged.staging, "lines": staged.validated.lines.to_pylist()}


def test_four_builders_at_once_commit_one_staging(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_stage_in_a_process, [(str(SAMPLE), str(lake))] * 4)
    assert all(result["lines"] == results[0]["lines"] for result in results)
    assert len(results[0]["lines"]) == 8326
    key_dirs = list((lake / STAGING_DIR).iterdir())
    assert len(key_dirs) == 1
    manifest = json.loads((key_dirs[0] / "manifest.json").read_text())
    # The losers removed their files: only the committed build is left.
    assert sorted(p.name for p in key_dirs[0].iterdir()) == sorted([manifest["build"], "manifest.json"])
    assert sum(result["staging"] == "built" for result in results) >= 1


def test_a_builder_killed_before_its_commit_leaves_nothing_used(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    staged_days(str(SAMPLE), str(lake), DayRange())
    (key_dir,) = (lake / STAGING_DIR).iterdir()
    # What a builder killed before its commit leaves: files, no manifest.
    (key_dir / "manifest.json").unlink()
    again = staged_days(str(SAMPLE), str(lake), DayRange(dt.date(2010, 12, 1), dt.date(2010, 12, 1)))
    assert again.staging == "built"
    _assert_same(
        again.validated,
        validate(load_source(str(SAMPLE)), DayRange(dt.date(2010, 12, 1), dt.date(2010, 12, 1))),
    )


def test_the_staging_on_s3(s3_server: Any, tmp_path: Path) -> None:
    lake = f"s3://{s3_server.new_bucket()}/lake"
    source = tmp_path / "mixed.csv"
    source.write_text(MIXED)
    raw = load_source(str(source))
    options = s3_server.storage_options
    first = staged_days(str(source), lake, DayRange(), storage_options=options)
    for days in _ranges(validate(raw, DayRange()).days):
        staged = staged_days(str(source), lake, days, storage_options=options)
        assert staged.staging == "reused"
        _assert_same(staged.validated, validate(raw, days))
    assert first.staging == "built"
    assert isinstance(first.validated.lines, pa.Table)


def test_a_source_larger_than_memory_is_spilled_and_grouped_by_whole_invoices(tmp_path: Path) -> None:
    everything = validate(load_source(str(SAMPLE)), DayRange())
    staging = stage_source(str(SAMPLE), str(tmp_path / "lake"), rows_in_memory=500)
    # 8,326 rows in groups of at most ~500: many groups, one staging equal to validating it whole.
    assert staging.manifest["lines"] == everything.lines.num_rows
    assert staging.manifest["rejects"] == everything.rejects.num_rows
    _assert_same(staging.read(DayRange()), everything)
    assert staging.lines_per_day() == Counter(everything.lines.column("invoice_day").to_pylist())


def _held_after(rows: list[pa.Table], folder: Path, rows_in_memory: int) -> _HeldSource:
    held = _HeldSource(folder, rows_in_memory)
    for block in rows:
        held.add(block)
    return held


@pytest.mark.parametrize("order", ["as written", "shuffled"])
def test_spilled_groups_hold_whole_invoices_in_file_order_or_by_bucket(order: str, tmp_path: Path) -> None:
    table = load_source(str(SAMPLE)).table
    if order == "shuffled":  # an invoice's lines far apart: only buckets keep them together
        table = table.take(pa.array(np.random.default_rng(7).permutation(table.num_rows)))
    blocks = [pa.Table.from_batches([b]) for b in table.to_batches(max_chunksize=700)]
    held = _held_after(blocks, tmp_path, rows_in_memory=2_000)
    assert held.mode == ("ordered" if order == "as written" else "buckets")
    seen: set[str] = set()
    rows = 0
    for group in held.groups():
        assert group.num_rows <= 1_000 + 1_000  # about half of rows_in_memory (plus an invoice's tail)
        invoices = set(group.column("InvoiceNo").to_pylist())
        assert not invoices & seen  # every invoice in one group only
        seen |= invoices
        rows += group.num_rows
    assert rows == table.num_rows
    assert len(list(tmp_path.iterdir())) > 1  # they went to disk


def test_an_invoice_that_comes_back_after_its_group_sends_the_rows_to_buckets(tmp_path: Path) -> None:
    table = load_source(str(SAMPLE)).table
    # The first invoice's first line again at the very end: its group was cut long before.
    table = pa.concat_tables([table, table.slice(0, 1)])
    staged = stage_source(
        str(_write(table, tmp_path / "back.csv")), str(tmp_path / "lake"), rows_in_memory=2_000
    )
    whole = validate(load_source(str(tmp_path / "back.csv")), DayRange())
    _assert_same(staged.read(DayRange()), whole)
    blocks = [pa.Table.from_batches([b]) for b in table.to_batches(max_chunksize=700)]
    (tmp_path / "held").mkdir()
    assert _held_after(blocks, tmp_path / "held", rows_in_memory=2_000).mode == "buckets"


def _write(table: pa.Table, path: Path) -> Path:
    import pyarrow.csv as pacsv

    pacsv.write_csv(table.drop_columns(["source_row"]), path, pacsv.WriteOptions(quoting_style="needed"))
    return path
