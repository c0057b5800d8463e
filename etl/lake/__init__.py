"""Stage 6: the Parquet lake, partitioned by invoice day, on a local path or an object store.

Layout (hive partitions; `invoice_day` lives in the path, not in the files):

    <root>/invoice_lines/invoice_day=2010-12-01/part-0.parquet   LINE_SCHEMA        } the published
    <root>/invoices/invoice_day=2010-12-01/part-0.parquet        INVOICE_SCHEMA     } view: what plain
    <root>/customers/invoice_day=2010-12-01/part-0.parquet       CUSTOMER_SCHEMA    } Parquet readers
    <root>/rejects/invoice_day=2010-12-01/part-0.parquet         REJECT_SCHEMA      } list and read
    <root>/rejects/invoice_day=__HIVE_DEFAULT_PARTITION__/part-<source fingerprint>.parquet
    <root>/_lake/objects/invoice_day=2010-12-01/<table>.<write id>.parquet   immutable committed files
    <root>/_lake/manifests/invoice_day=2010-12-01.json                       a day's commit point
    <root>/_lake/manifests/invoice_day=__HIVE_DEFAULT_PARTITION__.<source fingerprint>.json
    <root>/_runs/<run_id>.json

A day is published in three steps that hold on S3, where one PUT is atomic and nothing can be renamed:

1. Every table of the day is written as a new object under a name no one else uses
   (`_lake/objects/...<write id>.parquet`); no reader looks there before step 2.
2. The day's manifest (tables, objects, rows, sizes, sha256) is written last, in one PUT that is
   conditional on the manifest the writer read (S3 `If-Match`/`If-None-Match`; locally a lock and a
   compare, then a rename): that PUT is the commit. Readers that follow the manifest
   (`read_lake_table`, `committed_files`) see the old day or the new day, all tables together.
3. Each table's object is copied to its published name (a server-side copy on S3, a hard link then a
   rename locally): one whole file per table and day, so a reader that just lists the table sees no
   duplicate and no half-written file, only committed days.

A write that dies before step 2 changed nothing any reader sees; after step 2 the next write of the day
finishes step 3. The objects a commit replaced stay one more commit (for readers that read the old
manifest a moment ago); objects of writes that never committed are removed by a later write of the day
once they are `ORPHAN_GRACE` old. docs/design.md ("The lake") has the failure cases.

One module per job: `tables` derives what a write commits, `commit` runs the commit protocol,
`publish` keeps the plain view, `read` reads what is committed, `storage` is the filesystem and S3
layer, `encoding` a file's bytes and digest, `reports` the run reports, and `write` (`write_lake`)
runs a write through them. The names callers use are imported here.
"""

from __future__ import annotations

from etl.lake.commit import ORPHAN_GRACE
from etl.lake.encoding import content_digest
from etl.lake.read import committed_files, read_lake_table
from etl.lake.reports import write_run_report
from etl.lake.storage import filesystem, is_local_filesystem, prepare_s3_client, put_if_absent
from etl.lake.tables import FILE_SCHEMAS, TABLE_SCHEMAS
from etl.lake.write import DEFAULT_WRITERS, LakeReport, write_lake
from retail_contract.lake_layout import DEFAULT_PARTITION, PARTITION_COLUMN, TABLES

__all__ = [
    "DEFAULT_PARTITION",
    "DEFAULT_WRITERS",
    "FILE_SCHEMAS",
    "ORPHAN_GRACE",
    "PARTITION_COLUMN",
    "TABLES",
    "TABLE_SCHEMAS",
    "LakeReport",
    "committed_files",
    "content_digest",
    "filesystem",
    "is_local_filesystem",
    "prepare_s3_client",
    "put_if_absent",
    "read_lake_table",
    "write_lake",
    "write_run_report",
]
