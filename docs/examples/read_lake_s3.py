"""Read the lake's committed invoice lines from S3 (or any S3-compatible server) with pyarrow, pandas,
Polars and DuckDB. Needs only those libraries and s3fs, not retail-etl.

    AWS_ENDPOINT_URL=http://127.0.0.1:9000 AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \
        python docs/examples/read_lake_s3.py s3://bucket/lake [TABLE]

Settings come from the usual AWS variables: AWS_ENDPOINT_URL (leave unset for AWS itself),
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile, or an instance role), AWS_DEFAULT_REGION.
docs/lake.md explains each reader's spelling of them, and why the files come from the manifests.
"""

from __future__ import annotations

import json
import os
import sys

import duckdb
import fsspec
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds


def committed_files(fs: fsspec.AbstractFileSystem, lake: str, table: str) -> list[str]:
    """The objects the day manifests commit for `table` (`<lake>/_lake/manifests/*.json`), as s3:// URLs.

    Reading exactly these gives every committed day whole, all tables of a day from the same commit,
    also while the job is writing. Listing `<lake>/<table>/` instead (a plain Parquet read) gives
    committed days too, one whole file per day, but a day being published may show its new lines next
    to its old invoices for a moment.
    """
    root = lake.removeprefix("s3://").rstrip("/")
    manifests = fs.glob(f"{root}/_lake/manifests/*.json")
    files = []
    for body in fs.cat(manifests).values() if manifests else ():
        entry = json.loads(body)["tables"].get(table)
        if entry is not None:
            files.append(f"s3://{root}/{entry['object']}")
    return sorted(files)


def main(lake: str, table: str = "invoice_lines") -> None:
    endpoint = os.environ.get("AWS_ENDPOINT_URL")  # unset: AWS itself
    # s3fs (and so pyarrow through fsspec, pandas, DuckDB): botocore reads AWS_* itself.
    storage_options: dict[str, object] = {"endpoint_url": endpoint} if endpoint else {}
    fs = fsspec.filesystem("s3", **storage_options)
    files = committed_files(fs, lake, table)
    partitioning = ds.partitioning(pa.schema([("invoice_day", pa.date32())]), flavor="hive")

    # pyarrow: a dataset over exactly the committed files; `invoice_day` comes from each path.
    arrow = ds.dataset(
        [f.removeprefix("s3://") for f in files], filesystem=fs, format="parquet", partitioning=partitioning
    ).to_table()
    print(f"rows pyarrow: {arrow.num_rows}")

    # pandas: the same dataset (money stays exact: unit_price is Decimal, not float).
    frame: pd.DataFrame = arrow.to_pandas()
    print(f"rows pandas: {len(frame)}")

    # Polars: its own object-store client, with its own names for the same settings.
    polars_options = {
        "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID", ""),
        "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
        "aws_region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    }
    if endpoint:
        polars_options |= {"aws_endpoint_url": endpoint, "aws_allow_http": str(endpoint.startswith("http:"))}
    polars = pl.read_parquet(files, hive_partitioning=True, storage_options=polars_options)
    print(f"rows polars: {polars.height}")

    # DuckDB: httpfs may not be installable; an fsspec filesystem registered with DuckDB serves s3://.
    con = duckdb.connect()
    con.register_filesystem(fs)
    count = con.execute("select count(*) from read_parquet(?, hive_partitioning = true)", [files]).fetchone()
    print(f"rows duckdb: {count[0] if count else 0}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: read_lake_s3.py s3://bucket/lake [TABLE]")
    main(*sys.argv[1:])
