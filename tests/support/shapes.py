"""The sample written in the shapes shops really export, built with the `csv` module (independently of the
loader): UK Excel's day-first dates, European Excel's `;` with decimal commas, tab-separated text, a
lower-case or spaced header, shuffled columns — each also gzip-compressed."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.support.job import SAMPLE

COLUMNS = [
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
]
Row = dict[str, str]


def sample_rows(path: Path = SAMPLE) -> list[Row]:
    """The sample's rows as the export writes them (`2010-12-01 08:26:00`, `2.55`, `17850.0`)."""
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _stamp(row: Row) -> dt.datetime:
    return dt.datetime.strptime(row["InvoiceDate"], "%Y-%m-%d %H:%M:%S")


def day_first(rows: list[Row]) -> list[Row]:
    """UK Excel: `01/12/2010 08:26` (the sample's seconds are all zero, so nothing is lost)."""
    return [{**row, "InvoiceDate": _stamp(row).strftime("%d/%m/%Y %H:%M")} for row in rows]


def decimal_comma(rows: list[Row]) -> list[Row]:
    """European Excel: `2,55`, and ids as the whole numbers Excel shows (`17850`)."""
    return [
        {
            **row,
            "UnitPrice": row["UnitPrice"].replace(".", ","),
            "CustomerID": row["CustomerID"].removesuffix(".0"),
        }
        for row in rows
    ]


def delimited(
    rows: list[Row],
    *,
    delimiter: str = ",",
    header: Callable[[str], str] = str,
    columns: list[str] = COLUMNS,
    encoding: str = "utf-8",
) -> bytes:
    """`rows` as delimited text, the header names spelled by `header`, the columns in `columns`' order."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n" if delimiter == ";" else "\n")
    writer.writerow([header(c) for c in columns])
    writer.writerows([row[c] for c in columns] for row in rows)
    return out.getvalue().encode(encoding)


def spaced(name: str) -> str:
    """`InvoiceNo` -> `Invoice No`, `CustomerID` -> `Customer ID`."""
    words = "".join(
        f" {ch}" if ch.isupper() and i and not name[i - 1].isupper() else ch for i, ch in enumerate(name)
    )
    return words


def shuffled_columns() -> list[str]:
    columns = COLUMNS.copy()
    random.Random(352).shuffle(columns)
    assert columns != COLUMNS
    return columns


@dataclass(frozen=True)
class Shape:
    """One shape: its file name, how to build its bytes from the sample's rows, and the dialect the job
    must report for it (keys of the run report's `dialect`)."""

    file_name: str
    build: Callable[[list[Row]], bytes]
    dialect: dict[str, str]

    def gzipped(self) -> Shape:
        return Shape(
            f"{self.file_name}.gz", lambda rows: gzip.compress(self.build(rows), mtime=0), self.dialect
        )


DAY_FIRST = {"date_format": "%d/%m/%Y %H:%M", "decimal": ".", "delimiter": "comma"}
ISO = {"date_format": "%Y-%m-%d %H:%M:%S", "decimal": ".", "delimiter": "comma"}

BASE_SHAPES = {
    "day-first dates": Shape("uk-excel.csv", lambda rows: delimited(day_first(rows)), DAY_FIRST),
    "semicolons and decimal commas": Shape(
        "european-excel.csv",
        lambda rows: delimited(decimal_comma(day_first(rows)), delimiter=";", encoding="cp1252"),
        {"date_format": "%d/%m/%Y %H:%M", "decimal": ",", "delimiter": "semicolon", "encoding": "utf-8"},
    ),
    "tab-separated": Shape(
        "export.tsv", lambda rows: delimited(rows, delimiter="\t"), {**ISO, "delimiter": "tab"}
    ),
    "lower-case header": Shape("lower.csv", lambda rows: delimited(rows, header=str.lower), ISO),
    "spaced header, shuffled columns, pipes": Shape(
        "shuffled.txt",
        lambda rows: delimited(rows, delimiter="|", header=spaced, columns=shuffled_columns()),
        {**ISO, "delimiter": "pipe"},
    ),
}

#: Every shape, plain and gzip-compressed.
SHAPES: dict[str, Shape] = {
    **BASE_SHAPES,
    **{f"{name}, gzip": shape.gzipped() for name, shape in BASE_SHAPES.items()},
}
