"""What every reader of `etl.sources` hands back, and the message helpers they share."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from etl.schema import SOURCE_COLUMNS


@dataclass(frozen=True)
class Read:
    """A source as one reader read it: `table` holds the eight `SOURCE_COLUMNS` as strings, in that
    order, plus `source_row`; `kind` is the format (`csv`, `uci-xlsx`); `wrappers` the containers it
    came out of, innermost first (`+gzip`, `+zip`)."""

    table: pa.Table
    kind: str
    delimiter: str | None = None
    encoding: str | None = None
    wrappers: tuple[str, ...] = ()

    def wrapped(self, suffix: str) -> Read:
        """The same read, found inside one more container."""
        return replace(self, wrappers=(*self.wrappers, suffix))


def source_table(table: pa.Table) -> pa.Table:
    """The eight source columns in order, one chunk each, plus `source_row` (1-based data row)."""
    columns = {c: table.column(c).combine_chunks() for c in SOURCE_COLUMNS}
    return pa.table({**columns, "source_row": pa.array(np.arange(1, table.num_rows + 1, dtype=np.int64))})


def holds_any(column: pa.ChunkedArray | pa.Array, characters: bytes) -> bool:
    """Whether any string of `column` may hold one of the ASCII `characters`: a scan of the raw text
    buffers (a memchr per character, ~1 ms for the full data set's dates), which lets the usual source
    skip a decision it does not need. It may say yes for bytes just outside a sliced array, never no
    for a character that is there."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        data = chunk.buffers()[2] if len(chunk) else None
        if data is None:
            continue
        text = memoryview(data).tobytes()
        if any(text.find(bytes([ch])) >= 0 for ch in characters):
            return True
    return False


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exc).split())


def shorten(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
