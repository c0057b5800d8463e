"""The decimal mark — `2.55` or `2,55` (European Excel) — decided from every `UnitPrice` of the source.

Prices with a decimal point and prices with a decimal comma in one source contradict each other; prices
whose only commas could as well be thousands separators (every one like `1,250`) leave the source
ambiguous. Either way the run stops and asks for `--decimal`. Thousands separators are never read: such a
price is a reject. The mark applies to every number column (Quantity, UnitPrice, CustomerID).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from etl.errors import SourceError
from etl.sources.common import holds_any

_POINT_DECIMAL = r"^[+-]?\d*\.\d+$"
_COMMA_DECIMAL = r"^[+-]?\d*,\d+$"
_COMMA_THOUSANDS = r"^[+-]?[1-9]\d{0,2}(,\d{3})+$"


def detect_decimal(prices: pa.ChunkedArray | pa.Array, source: str) -> tuple[str, str]:
    """The decimal mark of the column `prices` (the source's `UnitPrice` text) and why. Raises
    `SourceError` (one line) when points and commas contradict each other or every comma is ambiguous."""
    if not holds_any(prices, b","):
        # The usual case, settled by one scan: no comma at all, so nothing to decide.
        return ".", "detected: no price has a decimal comma"
    counted = pc.value_counts(prices)
    return decide_decimal(counted.field("values"), counted.field("counts"), source)


def decide_decimal(values: pa.Array, counts: pa.Array, source: str) -> tuple[str, str]:
    """`detect_decimal` over distinct texts and how many rows hold each (a source read in blocks merges
    its blocks' counts and decides once)."""
    if not holds_any(values, b","):
        return ".", "detected: no price has a decimal comma"
    values = pc.utf8_trim_whitespace(values)
    rows = counts.to_numpy(zero_copy_only=False).astype(np.int64)
    point = _mask(pc.match_substring_regex(values, _POINT_DECIMAL))
    comma = _mask(pc.match_substring_regex(values, _COMMA_DECIMAL))
    if point.any() and comma.any():
        raise SourceError(
            f"{source}: UnitPrice mixes decimal points ({rows[point].sum():,} prices, e.g. "
            f"{_example(values, point)}) and decimal commas ({rows[comma].sum():,}, e.g. "
            f"{_example(values, comma)}): pass --decimal . or --decimal ,"
        )
    if not comma.any():
        return ".", "detected: no price has a decimal comma"
    thousands = _mask(pc.match_substring_regex(values, _COMMA_THOUSANDS)) & comma
    if (thousands == comma).all():
        raise SourceError(
            f"{source}: UnitPrice is ambiguous: every price with a comma ({rows[comma].sum():,}, e.g. "
            f"{_example(values, comma)}) reads as a decimal comma and as a thousands separator: "
            "pass --decimal , or --decimal ."
        )
    return ",", f"detected: {rows[comma].sum():,} prices have a decimal comma"


def _mask(values: pa.Array) -> npt.NDArray[np.bool_]:
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def _example(values: pa.Array, mask: npt.NDArray[np.bool_]) -> str:
    return repr(values[int(np.flatnonzero(mask)[0])].as_py())
