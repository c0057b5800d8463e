"""A lake file's bytes: a table as Parquet with the content digest of its rows in the footer, and that
digest, which tells without reading a file whether it holds given rows.
"""

from __future__ import annotations

import hashlib

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from etl.lake import storage
from retail_contract.lake_layout import DIGEST_KEY


def content_digest(table: pa.Table) -> str:
    """sha256 of `table`'s rows and schema (its Arrow IPC stream): equal digests, equal files.

    Stored in each file's key-value metadata (`DIGEST_KEY`) and in the manifest, so that a rerun
    compares a day with what is committed without reading any file.

    Each column is first copied into buffers of its own: the IPC stream of a slice (a day cut from a run
    of several days) carries bytes of its parent's buffers, so the same rows cut from different runs
    hashed differently, and a day rewritten by a run cut otherwise was written again.
    """
    combined = table.combine_chunks()
    columns = [pa.concat_arrays(c.chunks) if c.num_chunks else c for c in combined.columns]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(pa.table(columns, schema=combined.schema))
    return hashlib.sha256(sink.getvalue()).hexdigest()


def parquet_bytes(table: pa.Table, digest: str) -> bytes:
    """`table` as a Parquet file in memory, its digest in the footer: the same bytes for the same rows."""
    tagged = table.replace_schema_metadata({**(table.schema.metadata or {}), DIGEST_KEY: digest.encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(tagged, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def stored_digest(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """The content digest in the footer of the file at `path`; None when there is no such file (or
    it has none, or cannot be read: it is then rewritten)."""
    try:
        if storage.is_local_filesystem(fs):
            # pyarrow's own file reads just the footer, without fsspec's per-open Python overhead.
            metadata = pq.read_metadata(path, filesystem=storage.LOCAL_FS).metadata or {}
        else:
            with fs.open(path, "rb") as handle:
                metadata = pq.read_metadata(handle).metadata or {}
    except (FileNotFoundError, OSError, pa.ArrowInvalid):
        return None
    value = metadata.get(DIGEST_KEY)
    return value.decode() if value is not None else None
