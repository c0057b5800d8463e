"""The lake's layout: the names a reader of the lake, the job that writes it and the DAG that announces
its tables agree on. docs/design.md ("The lake") draws it. Standard library only: the DAG's parse
imports it.
"""

from __future__ import annotations

#: The lake's tables, each a folder of hive partitions by `PARTITION_COLUMN`.
TABLES = ("invoice_lines", "invoices", "customers", "rejects")
#: The partition column: it lives in the path (`invoice_day=2010-12-01`), not in the files.
PARTITION_COLUMN = "invoice_day"
#: The partition of rows without a day (rejects whose date could not be read), as hive names it.
DEFAULT_PARTITION = "__HIVE_DEFAULT_PARTITION__"
#: A published day's one file per table.
DAY_FILE = "part-0.parquet"
#: Footer metadata key of a file's content digest (sha256 of its Arrow content).
DIGEST_KEY = b"retail_etl.content_sha256"

# Folders starting with `_` are skipped by pyarrow, pandas and Spark when they read a table's folder.
#: Committed objects and manifests.
LAKE_DIR = "_lake"
OBJECT_DIR = f"{LAKE_DIR}/objects"
MANIFEST_DIR = f"{LAKE_DIR}/manifests"
#: The version of a manifest's JSON.
MANIFEST_FORMAT = 1
#: Run reports, `<run_id>.json`.
RUNS_DIR = "_runs"
#: A run's intermediate files between DAG tasks, `<run key>/`.
WORK_DIR = "_work"
#: The DAG's staged sources, `<key>/manifest.json`.
STAGING_DIR = "_staging"
#: The service's changes as `retail-etl sync` read them: append-only, one file per feed page,
#: `changes/part-<first position, 20 digits>.parquet` (not partitioned by day).
CHANGES_DIR = "changes"
#: The customers with their versions (`etl.history`), `customer_history/part-0.parquet`.
CUSTOMER_HISTORY_DIR = "customer_history"
#: `retail-etl sync`'s state (`state.json`: the feed's cursor the lake holds) and its lock.
SYNC_DIR = "_sync"
