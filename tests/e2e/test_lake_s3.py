"""End to end on an object store: the real `retail-etl run` of sample_data/ through a real uvicorn
service into `s3://` on moto's server (its own process), then read by pyarrow, pandas, Polars and
DuckDB as docs/lake.md tells analysts to, each giving exactly the rows of the same run into a local lake.

Every reader is tried both ways: listing the published files (a plain Parquet reader), and reading
the files the manifests commit (`etl.lake.committed_files`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import fsspec
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from etl.lake import TABLES, committed_files, read_lake_table
from tests.e2e.test_job import run_job_at
from tests.support.job import ROOT, job_command
from tests.support.s3 import S3Server, moto_server
from tests.support.service import LiveService, live_service

LINE_KEY = ["invoice_day", "invoice_no", "line_no"]
COLUMNS = [
    "invoice_no",
    "line_no",
    "stock_code",
    "description",
    "quantity",
    "unit_price",
    "invoice_date",
    "customer_id",
    "country",
    "invoice_day",
]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_server() as server:
        yield server


@pytest.fixture(scope="module")
def lakes(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The sample run once into a local lake and once into s3://, through one real service."""
    base = tmp_path_factory.mktemp("lakes")
    bucket = s3.new_bucket()
    s3_lake = f"s3://{bucket}/lake"
    with live_service(f"sqlite:///{base / 'retail.db'}") as service:
        local = run_job_at(service.url, service.api_key, base / "lake")
        assert local.returncode == 0, local.stderr[-3000:]
        remote = _run_to(service, s3, s3_lake, base)
        assert remote.returncode == 0, remote.stderr[-3000:]
        again = _run_to(service, s3, s3_lake, base)
        assert again.returncode == 0, again.stderr[-3000:]
    yield base / "lake", s3_lake


def _run_to(service: LiveService, s3: S3Server, lake: str, base: Path) -> subprocess.CompletedProcess[str]:
    """The job into an object-store lake, configured as an operator would: the AWS_* environment."""
    env = {"RETAIL_API_KEY": service.api_key, "RETAIL_CACHE_DIR": str(base / "cache"), **s3.env}
    return subprocess.run(
        job_command(service.url, lake),
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
        timeout=600,
        check=False,
    )


def canonical(table: pa.Table) -> list[tuple[Any, ...]]:
    """The lines as Python values, in the lake's order: equal lists, equal rows (types included:
    `Decimal` prices, `datetime` timestamps, `date` days)."""
    rows = list(zip(*(table[column].to_pylist() for column in COLUMNS), strict=True))
    return sorted(rows, key=lambda row: (row[-1], row[0], row[1]))


def test_the_s3_lake_holds_the_local_lakes_rows_and_a_rerun_commits_nothing(
    lakes: tuple[Path, str], s3: S3Server
) -> None:
    local, remote = lakes
    options = s3.storage_options
    for table in TABLES:
        assert read_lake_table(remote, table, storage_options=options).equals(
            read_lake_table(str(local), table)
        ), table
    lines = read_lake_table(remote, "invoice_lines", storage_options=options)
    assert lines.num_rows == 8326
    fs = fsspec.filesystem("s3", **options)
    bucket_path = remote.removeprefix("s3://")
    assert len(fs.find(f"{bucket_path}/_runs")) == 2 * 2  # two runs, each a report and its page

    def names(paths: list[str], prefix: str) -> list[str]:
        return sorted(p.removeprefix(prefix).split(".")[0] for p in paths)

    # The same manifests and published files as the local lake; the rerun added no object (it
    # committed nothing), and no temporary object is left.
    assert names(fs.find(f"{bucket_path}/_lake/manifests"), f"{bucket_path}/") == names(
        [str(p) for p in (local / "_lake" / "manifests").glob("*.json")], f"{local}/"
    )
    assert len(fs.find(f"{bucket_path}/_lake/objects")) == len(
        list((local / "_lake" / "objects").rglob("*.parquet"))
    )
    published = [p for t in TABLES for p in fs.find(f"{bucket_path}/{t}")]
    assert len(published) == len([p for t in TABLES for p in (local / t).rglob("*.parquet")])
    assert not [p for p in fs.find(bucket_path) if p.endswith(".tmp")]


@pytest.fixture(scope="module")
def expected(lakes: tuple[Path, str]) -> list[tuple[Any, ...]]:
    local, _remote = lakes
    return canonical(read_lake_table(str(local), "invoice_lines"))


def test_pyarrow_reads_the_s3_lake(
    lakes: tuple[Path, str], s3: S3Server, expected: list[tuple[Any, ...]]
) -> None:
    _local, remote = lakes
    fs = fsspec.filesystem("s3", **s3.storage_options)
    partitioning = ds.partitioning(pa.schema([("invoice_day", pa.date32())]), flavor="hive")
    plain = ds.dataset(
        f"{remote.removeprefix('s3://')}/invoice_lines",
        filesystem=fs,
        format="parquet",
        partitioning=partitioning,
    ).to_table()
    assert canonical(plain) == expected
    files = [
        f.removeprefix("s3://")
        for f in committed_files(remote, "invoice_lines", storage_options=s3.storage_options)
    ]
    committed = ds.dataset(files, filesystem=fs, format="parquet", partitioning=partitioning).to_table()
    assert canonical(committed) == expected


def test_pandas_reads_the_s3_lake(
    lakes: tuple[Path, str], s3: S3Server, expected: list[tuple[Any, ...]]
) -> None:
    _local, remote = lakes
    options = s3.storage_options
    plain = pd.read_parquet(f"{remote}/invoice_lines", storage_options=options)
    assert plain["unit_price"].map(type).eq(Decimal).all()
    plain["invoice_day"] = pd.to_datetime(plain["invoice_day"].astype(str)).dt.date
    assert canonical(pa.Table.from_pandas(plain, preserve_index=False)) == expected
    files = committed_files(remote, "invoice_lines", storage_options=options)
    committed = pd.concat(
        [
            pd.read_parquet(f, storage_options=options).assign(
                invoice_day=pd.Timestamp(f.split("invoice_day=")[1].split("/")[0]).date()
            )
            for f in files
        ],
        ignore_index=True,
    )
    assert canonical(pa.Table.from_pandas(committed, preserve_index=False)) == expected


def test_polars_reads_the_s3_lake(
    lakes: tuple[Path, str], s3: S3Server, expected: list[tuple[Any, ...]]
) -> None:
    _local, remote = lakes
    options = s3.storage_options
    # Polars' own object-store client, with its spelling of the same settings.
    polars_options = {
        "aws_endpoint_url": s3.endpoint,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "aws_region": "us-east-1",
        "aws_allow_http": "true",
    }
    plain = pl.read_parquet(
        f"{remote}/invoice_lines/**/*.parquet", hive_partitioning=True, storage_options=polars_options
    )
    assert canonical(plain.to_arrow()) == expected
    files = committed_files(remote, "invoice_lines", storage_options=options)
    committed = pl.read_parquet(files, hive_partitioning=True, storage_options=polars_options)
    assert canonical(committed.to_arrow()) == expected


def test_duckdb_reads_the_s3_lake(
    lakes: tuple[Path, str], s3: S3Server, expected: list[tuple[Any, ...]]
) -> None:
    _local, remote = lakes
    options = s3.storage_options
    con = duckdb.connect()
    # httpfs cannot be downloaded here: DuckDB reads s3:// through the fsspec filesystem instead.
    con.register_filesystem(fsspec.filesystem("s3", **options))
    plain = con.sql(
        f"select * from read_parquet('{remote}/invoice_lines/*/*.parquet', hive_partitioning = true)"
    ).to_arrow_table()
    assert canonical(plain) == expected
    files = committed_files(remote, "invoice_lines", storage_options=options)
    committed = con.sql(
        "select * from read_parquet($files, hive_partitioning = true)", params={"files": files}
    )
    committed = committed.to_arrow_table()
    assert canonical(committed) == expected


def test_the_analysts_example_runs_against_the_s3_lake(lakes: tuple[Path, str], s3: S3Server) -> None:
    _local, remote = lakes
    example = ROOT / "docs" / "examples" / "read_lake_s3.py"
    result = subprocess.run(
        [sys.executable, str(example), remote],
        capture_output=True,
        text=True,
        env={**os.environ, **s3.env},
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = [line for line in result.stdout.splitlines() if line.startswith("rows ")]
    assert counts == [f"rows {reader}: 8326" for reader in ("pyarrow", "pandas", "polars", "duckdb")]
