"""Any size, one pipeline: the job at 1x and 10x (and, once, 100x) the data set, against the floor on the
same files, with the peak memory of the job and of the service.

    .venv/bin/python benchmarks/scaled_data.py [--scales 1 10] [--workers 2] [--keep-files DIR]

For each scale N this makes the data itself: the data set's 541,909 lines N times, copy k a later
shop-year (every date k years on) with its own invoice numbers (k * 1,000,000 added: `C536379` becomes
`C1536379`) and customer ids (k * 100,000 added), as one plain CSV in the export's shape. Then, each on
a fresh PostgreSQL database:

- the floor: the file read in blocks, COPY'd into PostgreSQL, COPY'd out and written as Parquet, with no
  HTTP and no service, in bounded memory (blocks of the file, streamed COPY both ways);
- the job: `retail-etl run` as a child process, from the file to a reconciled, empty-at-start lake,
  through the real service (uvicorn on PostgreSQL), its peak RSS from the kernel (wait4) and the
  service's as the peak sum over its process tree, of PSS (shared pages divided among the processes
  that map them) and of RSS (which counts the libraries the workers share once per worker).

Prints each scale's figures, then the ratios the issue asks for: job / floor per scale, time at N x
against time at 1 x, and the peaks against 1 GiB (job) and 600 MiB (service).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from full_dataset import (  # noqa: E402
    API_KEY,
    DEFAULT_SOURCE,
    FLOOR_DDL,
    FLOOR_TYPES,
    PeakRss,
    _pg_conninfo,
    compile_project,
    run_job,
)

from tests.support.postgres import temporary_database  # noqa: E402
from tests.support.service import live_service  # noqa: E402

SOURCE_COLUMNS = [
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
]
BLOCK_BYTES = 4 << 20  # as the job reads: larger blocks made Arrow hold far more read-ahead
MiB = 2**20


def read_as_text(source: Path) -> pa.Table:
    """The data set's cells as text, exactly as the file holds them."""
    return pacsv.read_csv(
        source,
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in SOURCE_COLUMNS},
            include_columns=SOURCE_COLUMNS,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            null_values=[],
        ),
    )


def copy_k(table: pa.Table, k: int) -> pa.Table:
    """Copy `k` of the data set: dates k years on, invoice numbers + k * 1,000,000, ids + k * 100,000."""
    if k == 0:
        return table
    invoice = table["InvoiceNo"]
    prefix = pc.utf8_slice_codeunits(invoice, 0, 1)
    is_letter = pc.invert(pc.match_substring_regex(prefix, r"^\d$"))
    digits = pc.if_else(is_letter, pc.utf8_slice_codeunits(invoice, 1), invoice)
    number = pc.add(pc.cast(digits, pa.int64()), k * 1_000_000)
    invoice = pc.binary_join_element_wise(pc.if_else(is_letter, prefix, ""), pc.cast(number, pa.string()), "")
    dates = table["InvoiceDate"]
    year = pc.add(pc.cast(pc.utf8_slice_codeunits(dates, 0, 4), pa.int64()), k)
    dates = pc.binary_join_element_wise(pc.cast(year, pa.string()), pc.utf8_slice_codeunits(dates, 4), "")
    customer = table["CustomerID"]
    has_customer = pc.not_equal(customer, "")
    whole = pc.cast(
        pc.if_else(has_customer, pc.replace_substring_regex(customer, r"\.0*$", ""), "0"), pa.int64()
    )
    shifted = pc.binary_join_element_wise(pc.cast(pc.add(whole, k * 100_000), pa.string()), ".0", "")
    customer = pc.if_else(has_customer, shifted, "")
    return (
        table.set_column(0, "InvoiceNo", invoice)
        .set_column(4, "InvoiceDate", dates)
        .set_column(6, "CustomerID", customer)
    )


def make_scaled(source: Path, scale: int, target: Path) -> tuple[float, int, int]:
    """Writes `scale` copies of the data set to `target`; seconds, bytes and lines."""
    started = time.perf_counter()
    base = read_as_text(source)
    with target.open("wb") as out:
        for k in range(scale):
            buffer = io.BytesIO()
            options = pacsv.WriteOptions(include_header=k == 0, quoting_style="needed")
            pacsv.write_csv(copy_k(base, k), buffer, options)
            out.write(buffer.getbuffer())
    return time.perf_counter() - started, target.stat().st_size, base.num_rows * scale


def measure_floor(source: Path, database_url: str, out_dir: Path) -> tuple[float, int]:
    """File → COPY into PostgreSQL → COPY out → Parquet, no HTTP, a block at a time both ways."""
    started = time.perf_counter()
    reader = pacsv.open_csv(
        source,
        read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
        convert_options=pacsv.ConvertOptions(
            column_types=FLOOR_TYPES, strings_can_be_null=True, quoted_strings_can_be_null=False
        ),
    )
    rows_in = 0
    with psycopg.connect(_pg_conninfo(database_url)) as conn:
        conn.execute(FLOOR_DDL)
        with conn.cursor() as cur, cur.copy("COPY floor_lines FROM STDIN (FORMAT csv)") as copy:
            for batch in reader:
                buffer = io.BytesIO()
                pacsv.write_csv(
                    pa.Table.from_batches([batch]), buffer, pacsv.WriteOptions(include_header=False)
                )
                copy.write(buffer.getbuffer())
                rows_in += batch.num_rows
        conn.commit()
        spooled = out_dir / "floor_out.csv"
        with (
            conn.cursor() as cur,
            cur.copy("COPY floor_lines TO STDOUT (FORMAT csv)") as copy,
            spooled.open("wb") as out,
        ):
            for chunk in copy:
                out.write(chunk)
    stored_rows = 0
    back = pacsv.open_csv(
        spooled,
        read_options=pacsv.ReadOptions(column_names=list(FLOOR_TYPES), block_size=BLOCK_BYTES),
        convert_options=pacsv.ConvertOptions(
            column_types=FLOOR_TYPES, strings_can_be_null=True, quoted_strings_can_be_null=False
        ),
    )
    with pq.ParquetWriter(out_dir / "floor_lines.parquet", back.schema) as writer:
        for batch in back:
            writer.write_batch(batch)
            stored_rows += batch.num_rows
    seconds = time.perf_counter() - started
    if stored_rows != rows_in:
        sys.exit(f"the floor lost rows: {rows_in} in, {stored_rows} out")
    return seconds, stored_rows


def one_scale(args: argparse.Namespace, scale: int, work: Path) -> dict[str, Any]:
    """Make the N x file, then measure the floor and the job on it."""
    source = work / f"online_retail_x{scale}.csv"
    made_s, size, lines = make_scaled(args.source, scale, source)
    print(f"{scale}x: {lines:,} lines, {size / MiB:,.0f} MiB of CSV, made in {made_s:.1f} s", flush=True)
    figures: dict[str, Any] = {"scale": scale, "lines": lines, "csv_mib": size / MiB}
    with temporary_database("retail_floor") as database_url, tempfile.TemporaryDirectory(dir=work) as tmp:
        floor_rss = PeakRss(os.getpid())
        with floor_rss:
            figures["floor_s"], figures["floor_rows"] = measure_floor(source, database_url, Path(tmp))
        figures["floor_rss"] = floor_rss.peak
    print(f"  floor: {figures['floor_s']:.1f} s, peak {figures['floor_rss'] / MiB:,.0f} MiB", flush=True)
    with (
        temporary_database("retail_bench") as database_url,
        tempfile.TemporaryDirectory(dir=work) as tmp,
        live_service(database_url, api_key=API_KEY, workers=args.workers) as service,
        PeakRss(service.process.pid) as service_rss,
    ):
        job = run_job(source, service.url, Path(tmp) / "lake")
    figures.update(
        job_s=job.seconds,
        job_rss=job.peak_rss,
        service_rss=service_rss.peak,
        service_pss=service_rss.peak_pss,
        job_lines=job.lines,
        stages=job.report["seconds"],
    )
    print(
        f"  job: {job.seconds:.1f} s ({job.lines:,} lines reconciled), "
        f"job peak {job.peak_rss / MiB:,.0f} MiB, "
        f"service peak {service_rss.peak_pss / MiB:,.0f} MiB PSS ({service_rss.peak / MiB:,.0f} MiB RSS "
        f"summed); job / floor {job.seconds / figures['floor_s']:.2f}",
        flush=True,
    )
    print("  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in job.report["seconds"].items()), flush=True)
    if not args.keep_files:
        source.unlink()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes for the service")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where the scaled files go (default: a temporary folder)"
    )
    parser.add_argument("--keep-files", action="store_true", help="keep the scaled CSV files")
    args = parser.parse_args()
    compile_project()
    results = []
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        for scale in args.scales:
            results.append(one_scale(args, scale, Path(work)))
    print()
    print(
        f"{'scale':>6} {'lines':>12} {'floor s':>8} {'job s':>8} {'job/floor':>9} {'time vs 1x':>10} "
        f"{'job MiB':>8} {'service PSS':>11} {'service RSS':>11}"
    )
    one = next((r for r in results if r["scale"] == 1), None)
    for r in results:
        versus = f"{r['job_s'] / one['job_s']:.2f}x" if one else "-"
        print(
            f"{r['scale']:>5}x {r['lines']:>12,} {r['floor_s']:>8.1f} {r['job_s']:>8.1f} "
            f"{r['job_s'] / r['floor_s']:>9.2f} "
            f"{versus:>10} {r['job_rss'] / MiB:>8,.0f} {r['service_pss'] / MiB:>11,.0f} "
            f"{r['service_rss'] / MiB:>11,.0f}"
        )
    print(
        "targets: job peak < 1,024 MiB, service peak < 600 MiB at every scale (its processes' PSS summed;\n"
        "  their RSS summed counts each shared library once per process); 10x in at most 11x the 1x time"
    )
    failed = [
        f"{r['scale']}x: {what}"
        for r in results
        for what, bad in (
            (f"job peak {r['job_rss'] / MiB:,.0f} MiB", r["job_rss"] >= 1024 * MiB),
            (f"service peak {r['service_pss'] / MiB:,.0f} MiB PSS", r["service_pss"] >= 600 * MiB),
            (
                f"time {r['job_s'] / one['job_s']:.2f}x the 1x time" if one else "",
                bool(one) and r["job_s"] > 1.1 * r["scale"] * one["job_s"],
            ),
        )
        if bad
    ]
    print("all targets met" if not failed else "missed: " + "; ".join(failed))


if __name__ == "__main__":
    main()
