"""The invoice's canonical content hash: the one definition the service and the job share.

An invoice's content hash is the lowercase hex sha256 of the compact JSON of

    [invoice_no, customer_id, invoice_date, country,
     [[line_no, stock_code, description, quantity, unit_price, invoice_date], ...]]

with the lines in `line_no` order, prices as text with three decimals ("2.550"), timestamps as
`datetime.isoformat()` writes them (naive, "2010-12-01T08:26:00"), null as `null`, strings as orjson
writes them (UTF-8 as is; the quote, the backslash and U+0000..U+001F escaped), which is what
`json.dumps(..., ensure_ascii=False, separators=(",", ":"))` writes too (docs/design.md, "Content hash").

`content_hash` computes it for one invoice from Python values (the JSON path, single writes);
`content_hashes` for many invoices from Arrow columns (the Arrow bulk path and the job), building the same
JSON text with Arrow string kernels. Tests hold the two to each other.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
from collections.abc import Iterable
from decimal import Decimal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

# The price type the canonical text is made from: its text always has three decimals.
from retail_contract.wire import PRICE_TYPE

_THOUSANDTH = Decimal("0.001")

#: (line_no, stock_code, description, quantity, unit_price, invoice_date)
LineTuple = tuple[int, str, str | None, int, Decimal, dt.datetime]


def money_text(value: Decimal) -> str:
    """The one spelling of an amount: three decimals, no exponent ("2.550")."""
    return format(value.quantize(_THOUSANDTH), "f")


def content_hash(
    *,
    invoice_no: str,
    customer_id: str | None,
    invoice_date: dt.datetime,
    country: str,
    lines: Iterable[LineTuple],
) -> str:
    """The content hash of one invoice and its lines (sorted here by `line_no`)."""
    canonical = [
        invoice_no,
        customer_id,
        invoice_date.isoformat(),
        country,
        [
            [no, code, description, quantity, money_text(price), date.isoformat()]
            for no, code, description, quantity, price, date in sorted(lines, key=lambda line: line[0])
        ],
    ]
    try:
        # orjson writes exactly what `json.dumps(..., ensure_ascii=False, separators=(",", ":"))` writes
        # for strings, ints and None (tests/api/test_content_hash.py), about three times faster.
        encoded = orjson.dumps(canonical)
    except TypeError:  # a string orjson refuses (a lone surrogate): the reference encoder decides
        encoded = json.dumps(canonical, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def content_hashes(
    invoice_no: pa.Array,
    customer_id: pa.Array,
    invoice_date: pa.Array,
    country: pa.Array,
    lines: pa.ListArray | pa.ChunkedArray,
) -> list[str]:
    """The content hash of every invoice given as columns; `lines` holds each invoice's lines as a list
    of structs with the fields `retail_contract.wire.LINE_FIELDS`, in `line_no` order (the caller orders
    them).

    The JSON text is assembled column by column with Arrow string functions; only strings holding a
    character JSON escapes are encoded one by one, by orjson; Python runs sha256 once per invoice.
    """
    if len(invoice_no) == 0:
        return []
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    flat = lines.flatten()  # the lines of every invoice in turn (honours a sliced list)
    line_texts = _json_arrays(
        [
            (pc.cast(flat.field("line_no"), pa.string()), _NUMBER),
            (_json_string_contents(flat.field("stock_code")), _STRING),
            (_json_string_contents(flat.field("description")), _STRING),
            (pc.cast(flat.field("quantity"), pa.string()), _NUMBER),
            # decimal128(12, 3) as text always has its three decimals ("2.550", "-0.500"), as money_text.
            (pc.cast(pc.cast(flat.field("unit_price"), PRICE_TYPE), pa.string()), _STRING),
            (_iso_texts(flat.field("invoice_date")), _STRING),
        ]
    )
    counts = pc.list_value_length(lines).to_numpy(zero_copy_only=False)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int32())
    canonical = _json_arrays(
        [
            (_json_string_contents(invoice_no), _STRING),
            (_json_string_contents(customer_id), _STRING),
            (_iso_texts(invoice_date), _STRING),
            (_json_string_contents(country), _STRING),
            (pc.binary_join(pa.ListArray.from_arrays(offsets, line_texts), ","), _ARRAY),
        ]
    )
    return _sha256_each(canonical)


#: How `_json_arrays` encloses a value of each kind: a number as it is, a string's contents in quotes,
#: the elements of an array (already joined with commas) in brackets.
_NUMBER, _STRING, _ARRAY = ("", ""), ('"', '"'), ("[", "]")


def _json_arrays(columns: list[tuple[pa.Array, tuple[str, str]]]) -> pa.Array:
    """Per row, the compact JSON array of the columns' values; each column is JSON text to enclose as
    its kind says (`_NUMBER`, `_STRING`, `_ARRAY`), and a null is written `null`.

    One `binary_join_element_wise` over all the columns: a column without nulls is not made into
    literals of its own, its enclosing characters are folded into the separators around it. Only a
    column with nulls (descriptions, customers) is enclosed first, as `null` takes no quotes.
    """
    pieces: list[pa.Array | str] = []
    before = "["  # the text due before the next value: the array's opening or a comma, and a closing
    for texts, (opening, closing) in columns:
        if texts.null_count:
            literals = pc.binary_join_element_wise(opening, texts, closing, "") if opening else texts
            pieces += [before, pc.fill_null(literals, "null")]
            before = ","
        else:
            pieces += [before + opening, texts]
            before = closing + ","
    pieces.append(before[:-1] + "]")  # the last value's closing, and the array's own
    return pc.binary_join_element_wise(*pieces, "")


def _json_string_contents(values: pa.Array) -> pa.Array:
    """Each string as it stands between the quotes of its JSON literal, as orjson writes it: UTF-8 as is,
    with the quote, the backslash and U+0000..U+001F escaped. Nulls stay null.

    Few strings hold such a character (1,239 descriptions with a quote in the UCI data, nothing else),
    so those alone are encoded by orjson, the reference encoder, rather than reimplementing JSON's
    several escapes (`\\n`, `\\u001f`, ...) with Arrow functions.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.type != pa.string():
        values = pc.cast(values, pa.string())
    rows = _rows_to_escape(values)
    if rows.size == 0:
        return values
    mask = np.zeros(len(values), dtype=bool)
    mask[rows] = True
    texts = [orjson.dumps(text).decode()[1:-1] for text in values.take(pa.array(rows)).to_pylist()]
    return pc.replace_with_mask(values, pa.array(mask), pa.array(texts, pa.string()))


def _rows_to_escape(values: pa.Array) -> np.ndarray:
    """Rows of non-null strings holding a byte JSON escapes: a quote, a backslash or a control character.

    A scan of the UTF-8 bytes is exact (every byte of a multi-byte character is >= 0x80) and several
    times faster than a regex per string.
    """
    _, offsets_buffer, data_buffer = values.buffers()
    if data_buffer is None or len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32, count=len(values) + 1, offset=4 * values.offset)
    data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]]
    positions = np.flatnonzero((data < 0x20) | (data == 0x22) | (data == 0x5C)) + offsets[0]
    rows = np.unique(np.searchsorted(offsets, positions, side="right") - 1)
    # A null slot may still own bytes; it is written as `null`, never escaped.
    valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
    return rows[valid[rows]]


def _iso_texts(timestamps: pa.Array) -> pa.Array:
    """Timestamps as `datetime.isoformat()` writes them ("2010-12-01T08:26:00", microseconds when there
    are any), computed once per distinct value: an invoice's lines share theirs."""
    if isinstance(timestamps, pa.ChunkedArray):
        timestamps = timestamps.combine_chunks()
    encoded = pc.dictionary_encode(timestamps)
    texts = pa.array([value.isoformat() for value in encoded.dictionary.to_pylist()], pa.string())
    return texts.take(encoded.indices)


def _sha256_each(texts: pa.Array) -> list[str]:
    """The lowercase hex sha256 of each string, hashed where it lies in Arrow's buffer (no copy)."""
    if len(texts) == 0:
        return []
    buffers = texts.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int32, count=len(texts) + 1, offset=4 * texts.offset)
    data = memoryview(buffers[2]) if buffers[2] is not None else memoryview(b"")
    bounds = offsets.tolist()
    return [hashlib.sha256(data[a:b]).hexdigest() for a, b in itertools.pairwise(bounds)]
