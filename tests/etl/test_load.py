"""`load_source`: every input shape, the URL path with its cache and retries, and the file-level errors."""

from __future__ import annotations

import gzip
import io
import os
import random
import zipfile
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pyarrow as pa
import pytest

from etl.errors import SourceError
from etl.load import SourceFingerprint, load_source, read_in_blocks, source_fingerprint
from etl.schema import SOURCE_COLUMNS, DayRange
from etl.sources import containers, download
from etl.validate import validate
from tests.etl.conftest import (
    NON_ASCII_DESCRIPTION,
    NON_ASCII_ROW,
    SAMPLE_CSV,
    FileServer,
    Shapes,
    csv_bytes,
    typed_cells,
    xlsx_bytes,
    zip_bytes,
)

EXPORT_SHAPES = [
    "online_retail.csv",
    "online_retail.csv.gz",
    "online_retail_csv.zip",
    "Online Retail.xlsx",
    "online+retail.zip",
    "misnamed.txt",
]
ALL_SHAPES = [*EXPORT_SHAPES, "data.csv"]


def expected_frame(rows: list[dict[str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype="str") for c in SOURCE_COLUMNS})
    frame["source_row"] = np.arange(1, len(rows) + 1, dtype=np.int64)
    return frame


@pytest.mark.parametrize("name", ALL_SHAPES)
def test_each_shape_is_detected_from_its_content(shapes: Shapes, name: str) -> None:
    raw = load_source(str(shapes.path(name)))

    assert raw.shape == shapes.expected[name]
    assert raw.name == str(shapes.path(name))
    assert list(raw.to_pandas().columns) == [*SOURCE_COLUMNS, "source_row"]
    assert len(raw.to_pandas()) == 8326
    assert all(raw.to_pandas()[c].dtype == "str" for c in SOURCE_COLUMNS)
    assert raw.to_pandas()["source_row"].dtype == np.int64
    assert raw.to_pandas()["Description"].iloc[NON_ASCII_ROW - 1] == NON_ASCII_DESCRIPTION


@pytest.mark.parametrize("name", EXPORT_SHAPES)
def test_export_shapes_give_the_exports_exact_strings(shapes: Shapes, name: str) -> None:
    # The workbook's typed cells (int invoice numbers, float prices and customer ids, datetimes) must
    # come out as the very text the CSV export writes: "2.55", "1.0", "17850.0", "2010-12-01 08:26:00".
    raw = load_source(str(shapes.path(name)))

    pd.testing.assert_frame_equal(raw.to_pandas(), expected_frame(shapes.rows))


def test_kaggle_csv_keeps_its_own_strings(shapes: Shapes) -> None:
    raw = load_source(str(shapes.path("data.csv")))

    first = raw.to_pandas().iloc[0]
    assert first["InvoiceDate"] == "12/1/2010 8:26"
    assert first["CustomerID"] == "17850"
    assert first["Description"] == "WHITE HANGING HEART T-LIGHT HOLDER"


def test_every_shape_validates_to_the_same_lines(shapes: Shapes) -> None:
    reference = validate(load_source(str(shapes.path("online_retail.csv"))), DayRange())
    assert reference.lines.num_rows == 8326
    assert reference.rejects.num_rows == 0

    for name in ALL_SHAPES:
        validated = validate(load_source(str(shapes.path(name))), DayRange())
        assert validated.rejects.num_rows == 0, name
        assert validated.lines.equals(reference.lines), name
        assert validated.days == reference.days


def test_cells_stay_text_byte_exact(tmp_path: Path) -> None:
    source = tmp_path / "odd.csv"
    source.write_bytes(
        b"InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        b'536365,NA,"  SPACED , QUOTED  ",6,2010-12-01 08:26:00,2.550,,NA\n'
        b"536366,22633,,00,2010-12-01 08:28:00,1.85,,United Kingdom\n"
    )

    frame = load_source(str(source)).to_pandas()

    assert frame.loc[0, "StockCode"] == "NA"
    assert frame.loc[0, "Country"] == "NA"
    assert frame.loc[0, "Description"] == "  SPACED , QUOTED  "
    assert frame.loc[0, "UnitPrice"] == "2.550"
    assert frame.loc[0, "CustomerID"] == ""
    assert frame.loc[1, "Description"] == ""
    assert frame.loc[1, "Quantity"] == "00"
    assert frame["source_row"].tolist() == [1, 2]


def test_utf8_bom_and_extra_columns_are_tolerated(tmp_path: Path) -> None:
    source = tmp_path / "bom.csv"
    text = SAMPLE_CSV.read_text(encoding="utf-8").splitlines()[:3]
    source.write_bytes(b"\xef\xbb\xbf" + "\n".join(f"{line},extra" for line in text).encode("utf-8") + b"\n")

    frame = load_source(str(source)).to_pandas()

    assert list(frame.columns) == [*SOURCE_COLUMNS, "source_row"]
    assert frame.loc[0, "InvoiceNo"] == "536365"


# --- over HTTP ---------------------------------------------------------------------------------


def test_url_is_downloaded_once_then_read_from_the_cache(
    shapes: Shapes, file_server: FileServer, tmp_path: Path
) -> None:
    url = f"{file_server.base_url}/online_retail.csv.gz"
    cache = tmp_path / "cache"

    first = load_source(url, cache_dir=cache)
    second = load_source(url, cache_dir=cache)

    assert file_server.hits["/online_retail.csv.gz"] == 1
    assert first.name == url
    assert first.shape == "export-csv+gzip"
    pd.testing.assert_frame_equal(first.to_pandas(), expected_frame(shapes.rows))
    pd.testing.assert_frame_equal(second.to_pandas(), first.to_pandas())
    cached = list(cache.iterdir())
    assert len(cached) == 1 and not cached[0].name.startswith(".")  # no temporary file left behind
    assert cached[0].read_bytes() == shapes.path("online_retail.csv.gz").read_bytes()


def test_url_of_a_zipped_workbook(shapes: Shapes, file_server: FileServer, tmp_path: Path) -> None:
    raw = load_source(f"{file_server.base_url}/online+retail.zip", cache_dir=tmp_path)

    assert raw.shape == "uci-xlsx+zip"
    assert len(raw.to_pandas()) == 8326


def test_url_404_is_a_source_error(file_server: FileServer, tmp_path: Path) -> None:
    url = f"{file_server.base_url}/no-such-file.csv"

    with pytest.raises(SourceError) as error:
        load_source(url, cache_dir=tmp_path)

    message = str(error.value)
    assert "404" in message and url in message and "\n" not in message
    assert file_server.hits["/no-such-file.csv"] == 1  # a 4xx is not retried
    assert list(tmp_path.iterdir()) == []


def test_url_503_is_retried(shapes: Shapes, file_server: FileServer, tmp_path: Path) -> None:
    raw = load_source(f"{file_server.base_url}/flaky/online_retail.csv", cache_dir=tmp_path)

    assert file_server.hits["/flaky/online_retail.csv"] == 2
    assert len(raw.to_pandas()) == 8326


def test_url_failing_every_attempt_is_a_source_error(
    file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download, "_DOWNLOAD_ATTEMPTS", 2)
    url = f"{file_server.base_url}/broken/online_retail.csv"

    with pytest.raises(SourceError, match="HTTP 500"):
        load_source(url, cache_dir=tmp_path)

    assert file_server.hits["/broken/online_retail.csv"] == 2
    assert list(tmp_path.iterdir()) == []


def test_unreachable_url_is_a_source_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "_DOWNLOAD_ATTEMPTS", 1)
    with pytest.raises(SourceError, match="download failed"):
        load_source("http://127.0.0.1:9/online_retail.csv", cache_dir=tmp_path)


# --- file-level errors -------------------------------------------------------------------------


def _header_only() -> bytes:
    return (",".join(SOURCE_COLUMNS) + "\n").encode()


def _sample_bytes(lines: int = 20) -> bytes:
    return b"".join(SAMPLE_CSV.read_bytes().splitlines(keepends=True)[:lines])


def _without_country() -> bytes:
    lines = _sample_bytes().decode().splitlines()
    return "\n".join(line.rsplit(",", 1)[0] for line in lines).encode() + b"\n"


def _truncated_gzip() -> bytes:
    data = gzip.compress(SAMPLE_CSV.read_bytes())
    return data[: len(data) // 2]


def _truncated_zip() -> bytes:
    data = zip_bytes("online_retail.csv", SAMPLE_CSV.read_bytes())
    return data[: len(data) // 2]


def _xlsx_without_sheet() -> bytes:
    rows = [
        dict(zip(SOURCE_COLUMNS, line.split(","), strict=True))
        for line in _sample_bytes(4).decode().splitlines()[1:]
    ]
    return xlsx_bytes(rows, sheet="Sheet1")


def _garbage() -> bytes:
    return random.Random(352).randbytes(4096)


def _two_files_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("a.csv", _sample_bytes())
        archive.writestr("b.csv", _sample_bytes())
    return out.getvalue()


ERROR_CORPUS = {
    "missing-column.csv": (_without_country, "missing column(s) Country"),
    "empty.csv": (lambda: b"", "file is empty"),
    "blank.csv": (lambda: b"\n\n  \n", "file is empty"),
    "header-only.csv": (_header_only, "has a header but no data rows"),
    "truncated.csv.gz": (_truncated_gzip, "truncated or corrupt gzip"),
    "truncated.zip": (_truncated_zip, "truncated or corrupt zip"),
    "utf16.csv": (lambda: _sample_bytes().decode().encode("utf-16"), "UTF-16"),
    "utf16-no-bom.csv": (lambda: _sample_bytes().decode().encode("utf-16-le"), "UTF-16"),
    "no-sheet.xlsx": (_xlsx_without_sheet, "no sheet 'Online Retail' (sheets: Sheet1)"),
    "garbage.bin": (_garbage, "not a recognised format"),
    "other.csv": (lambda: b"name,age\nann,3\n", "not a recognised format"),
    "legacy.xls": (lambda: b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512), "legacy Excel .xls"),
    "ragged.csv": (lambda: _sample_bytes(5) + b"1,2,3,4,5,6,7,8,9,10\n", "malformed CSV"),
    "two-files.zip": (_two_files_zip, "holds 2 files"),
    "empty.zip": (lambda: zip_bytes("empty.csv", b""), "file is empty"),
}


@pytest.mark.parametrize("name", sorted(ERROR_CORPUS))
@pytest.mark.parametrize("reader", ["whole", "in blocks"])
def test_file_level_problems_are_one_line_source_errors(tmp_path: Path, name: str, reader: str) -> None:
    build, expected = ERROR_CORPUS[name]
    path = tmp_path / name
    path.write_bytes(build())

    with pytest.raises(SourceError) as error:
        if reader == "whole":
            load_source(str(path))
        else:
            read_in_blocks(str(path), _Blocks)

    message = str(error.value)
    assert expected in message
    assert str(path) in message  # names the file
    assert "\n" not in message


class _Blocks:
    """A `BlockSink` that keeps what it is given."""

    def __init__(self) -> None:
        self.blocks: list[pa.Table] = []

    def add(self, block: pa.Table) -> None:
        self.blocks.append(block)

    def discard(self) -> None:
        self.blocks = []


@pytest.mark.parametrize("name", [*ALL_SHAPES, "misnamed.txt"])
def test_read_in_blocks_gives_what_the_whole_file_reader_gives(shapes: Shapes, name: str) -> None:
    whole = load_source(str(shapes.path(name)))
    kept, summary = read_in_blocks(str(shapes.path(name)), _Blocks)
    assert pa.concat_tables(kept.blocks).equals(whole.table)
    assert (summary.shape, summary.dialect) == (whole.shape, whole.dialect)
    assert summary.source_rows == whole.num_rows
    assert summary.fingerprint == source_fingerprint(whole.table)
    # Kaggle's file is ISO-8859-1: read as UTF-8 first, then again from its start, as 8-bit text.
    if name == "data.csv":
        assert summary.dialect.encoding == "cp1252"


def test_a_large_text_streams_in_blocks_and_decides_its_dialect_from_every_block(tmp_path: Path) -> None:
    # Day-first dates: only a row far past the first block says so (13/...), and the decimal comma too.
    header = "InvoiceNo;StockCode;Description;Quantity;InvoiceDate;UnitPrice;CustomerID;Country\n"
    row = "{n};85123A;HEART {n};6;01/02/2011 08:26;2,55;17850;France\n"
    body = "".join(row.format(n=n) for n in range(400_000))
    text = header + body + "999;85123A;LAST;6;13/02/2011 08:26;2,55;17850;France\n"
    path = tmp_path / "large.csv.gz"
    path.write_bytes(gzip.compress(text.encode(), compresslevel=1))
    kept, summary = read_in_blocks(str(path), _Blocks)
    whole = load_source(str(path))
    assert len(kept.blocks) > 1
    assert pa.concat_tables(kept.blocks).equals(whole.table)
    assert summary.dialect == whole.dialect
    assert (summary.dialect.date_format.order, summary.dialect.decimal) == ("dmy", ",")
    assert summary.fingerprint == source_fingerprint(whole.table)


def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.csv"
    with pytest.raises(SourceError, match=r"nowhere\.csv: file not found"):
        load_source(str(path))


def test_directory_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="is a directory"):
        load_source(str(tmp_path))


def test_kaggle_latin1_is_decoded_not_rejected(tmp_path: Path) -> None:
    rows = [
        dict(
            zip(
                SOURCE_COLUMNS,
                ["536365", "21000", "BOÎTE À THÉ £", "1", "12/13/2010 8:26", "2.55", "17850", "France"],
                strict=True,
            )
        )
    ]
    path = tmp_path / "latin1.csv"
    path.write_bytes(csv_bytes(rows, encoding="iso-8859-1"))
    assert b"\xa3" in path.read_bytes()  # really Latin-1, not UTF-8

    raw = load_source(os.fspath(path))

    assert raw.shape == "kaggle-csv"
    assert raw.to_pandas().loc[0, "Description"] == "BOÎTE À THÉ £"


def _general_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containers, "_read_gzipped_csv", lambda data, name, options: None)


def _fast_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_inflating(data: bytes, name: str) -> bytes:
        raise AssertionError("the general path inflated the file")

    monkeypatch.setattr(containers, "_gunzip", no_inflating)


def test_a_gzipped_csv_is_parsed_while_inflated_to_exactly_what_the_general_path_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "online_retail.csv.gz"
    # Two gzip members, as `cat a.gz b.gz` makes: every row of both must come out.
    text = SAMPLE_CSV.read_bytes()
    cut = text.index(b"\n", len(text) // 2) + 1
    path.write_bytes(gzip.compress(text[:cut]) + gzip.compress(text[cut:]))

    with monkeypatch.context() as patched:
        _fast_path_only(patched)
        fast = load_source(os.fspath(path))
    with monkeypatch.context() as patched:
        _general_path_only(patched)
        general = load_source(os.fspath(path))

    assert fast.num_rows == general.num_rows == 8326
    assert fast.shape == general.shape == "export-csv+gzip"
    assert fast.table.equals(general.table)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda rows: csv_bytes(rows, encoding="iso-8859-1"), id="latin-1"),
        pytest.param(lambda rows: b"\xef\xbb\xbf" + csv_bytes(rows), id="utf-8 BOM"),
    ],
)
def test_a_gzip_the_fast_path_does_not_take_is_read_by_the_general_path(
    tmp_path: Path, content: object
) -> None:
    rows = [
        dict(
            zip(
                SOURCE_COLUMNS,
                ["536365", "21000", "BOÎTE À THÉ £", "1", "12/13/2010 8:26", "2.55", "17850", "France"],
                strict=True,
            )
        )
    ]
    path = tmp_path / "odd.csv.gz"
    path.write_bytes(gzip.compress(content(rows)))  # type: ignore[operator]

    raw = load_source(os.fspath(path))

    assert raw.num_rows == 1
    assert raw.to_pandas().loc[0, "Description"] == "BOÎTE À THÉ £"
    assert raw.shape.endswith("+gzip")


def test_a_zip_inside_a_gzip_still_gets_the_general_paths_answer(tmp_path: Path) -> None:
    path = tmp_path / "nested.csv.gz"
    path.write_bytes(gzip.compress(zip_bytes("data.csv", SAMPLE_CSV.read_bytes())))

    with pytest.raises(SourceError, match="nested too deeply"):
        load_source(os.fspath(path))


def test_workbook_rows_keep_their_sheet_numbering(tmp_path: Path) -> None:
    good = typed_cells(
        dict(zip(SOURCE_COLUMNS, _sample_bytes(2).decode().splitlines()[1].split(","), strict=True))
    )
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Online Retail"
    sheet.append(list(SOURCE_COLUMNS))
    sheet.append(good)
    sheet.append([None] * len(SOURCE_COLUMNS))  # a blank row in the middle
    sheet.append([536366, *good[1:]])
    path = tmp_path / "gap.xlsx"
    book.save(path)

    frame = load_source(str(path)).to_pandas()

    assert frame["InvoiceNo"].tolist() == ["536365", "536366"]
    assert frame["source_row"].tolist() == [1, 3]  # sheet row = source_row + 1
    assert frame.loc[0, "UnitPrice"] == "2.55" and frame.loc[0, "CustomerID"] == "17850.0"


def test_source_fingerprint_names_the_content_not_the_shape_or_the_chunking(shapes: Shapes) -> None:
    # The fingerprint names the undated-rejects file: the same rows in another shape must replace it,
    # other rows must not.
    fingerprints = {source_fingerprint(load_source(str(shapes.path(n))).table) for n in EXPORT_SHAPES}
    assert len(fingerprints) == 1

    table = load_source(str(shapes.path("online_retail.csv"))).table
    rechunked = pa.Table.from_batches(table.to_batches(max_chunksize=1000))
    assert rechunked.column("Description").num_chunks > 1
    assert source_fingerprint(rechunked) == fingerprints.pop()

    descriptions = table.column("Description").to_pylist()
    descriptions[5000] += "!"
    changed = table.set_column(2, "Description", pa.array(descriptions, pa.string()))
    assert source_fingerprint(changed) != source_fingerprint(table)
    assert source_fingerprint(table.slice(1)) != source_fingerprint(table)


def test_the_fingerprint_in_blocks_is_the_digest_lakes_already_name_their_files_by() -> None:
    # The sample's digest as every earlier version computed it: a lake's undated rejects keep their name.
    table = load_source(str(SAMPLE_CSV)).table
    with SourceFingerprint() as fingerprint:
        for block in table.to_batches(max_chunksize=1000):
            fingerprint.update(pa.Table.from_batches([block]))
        assert fingerprint.hexdigest() == "9fcdcd8001f7dcd9"
    with_nulls = table.set_column(2, "Description", pa.array([None, *table.column(2).to_pylist()[1:]]))
    with SourceFingerprint() as fingerprint:
        for block in with_nulls.to_batches(max_chunksize=999):
            fingerprint.update(pa.Table.from_batches([block]))
        assert fingerprint.hexdigest() != "9fcdcd8001f7dcd9"
        assert fingerprint.hexdigest() == source_fingerprint(with_nulls.combine_chunks())
