"""The load stage alone (`load_source`) on the full data set in each shape people hold it.

    .venv/bin/python benchmarks/load_shapes.py [--runs 9] [--source online_retail.csv.gz]

Writes, into a temporary folder, the full data set as the inflated export CSV, as Kaggle's `data.csv`
(month-first `12/1/2010 8:26`, ids `17850`, ISO-8859-1, CRLF) and as a European Excel export (`;`,
day-first `01/12/2010 08:26`, decimal commas), each also gzip-compressed, then times `load_source` on
each and on the source itself: median and min of `--runs` loads in this process, and the share of the
load that deciding the dialect (dates, decimal mark) took. Prints the shape and dialect found, so a
wrong detection shows.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa

from etl import load
from etl.dialect import SourceOptions
from etl.load import load_source
from etl.sources.containers import read_bytes

FULL = Path("/work/shared/datasets/online_retail/online_retail.csv.gz")


def write_shapes(source: Path, directory: Path) -> list[Path]:
    """The source rewritten in each shape; returns the files, plain and gzip-compressed."""
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    stamp = pd.to_datetime(frame["InvoiceDate"], format="%Y-%m-%d %H:%M:%S")
    kaggle = frame.assign(
        InvoiceDate=stamp.dt.month.astype(str)
        + "/"
        + stamp.dt.day.astype(str)
        + "/"
        + stamp.dt.year.astype(str)
        + " "
        + stamp.dt.hour.astype(str)
        + ":"
        + stamp.dt.strftime("%M"),
        CustomerID=frame["CustomerID"].str.removesuffix(".0"),
    )
    european = frame.assign(
        InvoiceDate=stamp.dt.strftime("%d/%m/%Y %H:%M"),
        UnitPrice=frame["UnitPrice"].str.replace(".", ",", regex=False),
        CustomerID=frame["CustomerID"].str.removesuffix(".0"),
    )
    contents = {
        "export.csv": gzip.decompress(source.read_bytes()),
        "kaggle.csv": kaggle.to_csv(index=False, lineterminator="\r\n").encode(
            "iso-8859-1", errors="replace"
        ),
        "european.csv": european.to_csv(index=False, sep=";").encode("cp1252", errors="replace"),
    }
    files = []
    for name, data in contents.items():
        for path, body in ((directory / name, data), (directory / f"{name}.gz", gzip.compress(data, 6))):
            path.write_bytes(body)
            files.append(path)
    return files


def time_load(path: Path, runs: int) -> str:
    seconds, deciding = [], []
    for _ in range(runs):
        started = time.perf_counter()
        raw = load_source(str(path))
        seconds.append(time.perf_counter() - started)
    read = read_bytes(path.read_bytes(), str(path), SourceOptions())
    for _ in range(runs):
        started = time.perf_counter()
        load._dialect(read, str(path), SourceOptions())
        deciding.append(time.perf_counter() - started)
    dialect = raw.dialect
    return (
        f"{path.name:18} {raw.shape:16} {dialect.date_format.pattern:18} decimal {dialect.decimal!r}  "
        f"load median {statistics.median(seconds):.3f} s, min {min(seconds):.3f} s; "
        f"dialect decision median {statistics.median(deciding) * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--source", type=Path, default=FULL)
    args = parser.parse_args()
    pa.set_memory_pool(pa.system_memory_pool())  # as etl.pipeline does
    with tempfile.TemporaryDirectory(prefix="retail-load-shapes-") as folder:
        files = [args.source, *write_shapes(args.source, Path(folder))]
        for path in files:
            print(time_load(path, args.runs), flush=True)


if __name__ == "__main__":
    main()
