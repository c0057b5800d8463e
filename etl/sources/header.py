"""The header: which delimiter splits it into the Online Retail columns, and which column is which.

Names are matched leniently — case, spaces, `_`, `-` and `.` do not count, so `InvoiceNo`, `invoiceno`,
`Invoice No` and `INVOICE_NO` are one column — and the names of UCI's later "Online Retail II" export
(`Invoice`, `Price`, `Customer ID`) are taken too. Columns may come in any order; others are ignored.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass

from etl.dialect import DELIMITERS
from etl.errors import SourceError
from etl.schema import SOURCE_COLUMNS
from etl.sources.common import shorten


def _key(name: str) -> str:
    return re.sub(r"[\s_.\-]+", "", name).lower()


_CANONICAL: dict[str, str] = {
    **{_key(column): column for column in SOURCE_COLUMNS},
    "invoice": "InvoiceNo",
    "price": "UnitPrice",
}


def canonical_name(name: str) -> str | None:
    """The `SOURCE_COLUMNS` name a header cell stands for, or None."""
    return _CANONICAL.get(_key(name))


@dataclass(frozen=True)
class Header:
    """The delimiter, and a name per column for the parser: the canonical name for the eight source
    columns, a placeholder for any other (so that two unrelated columns never clash)."""

    delimiter: str
    column_names: list[str]


def canonical_columns(names: list[str], source: str) -> list[str]:
    """Each name mapped to its canonical name, others to `_other_<i>`; raises `SourceError` when a
    source column is missing or appears twice, or when none is there at all."""
    mapped = [canonical_name(n) or f"_other_{i}" for i, n in enumerate(names)]
    present = [m for m in mapped if m in SOURCE_COLUMNS]
    if not present:
        shown = shorten(",".join(names), 80)
        raise SourceError(
            f"{source}: not a recognised format: first line {shown!r} is not the Online Retail header "
            f"({','.join(SOURCE_COLUMNS)})"
        )
    duplicated = sorted({m for m in present if present.count(m) > 1})
    if duplicated:
        spelled = [repr(n.strip()) for n, m in zip(names, mapped, strict=True) if m in duplicated]
        raise SourceError(f"{source}: duplicate column(s) {', '.join(duplicated)} ({', '.join(spelled)})")
    missing = [c for c in SOURCE_COLUMNS if c not in present]
    if missing:
        raise SourceError(f"{source}: missing column(s) {', '.join(missing)}")
    return mapped


def split_header(line: str, source: str, delimiter: str | None = None) -> Header:
    """The header line split by `delimiter`, or by whichever of `,` `;` tab `|` yields the most source
    columns (a header cannot hold all eight with two delimiters: its names hold none of them). Raises
    `SourceError` when it is not the Online Retail header."""
    candidates = [delimiter] if delimiter else list(DELIMITERS)
    splits = {d: _cells(line, d, source) for d in candidates}
    found = {d: sum(1 for n in names if canonical_name(n)) for d, names in splits.items()}
    best = max(candidates, key=lambda d: found[d])  # the first candidate wins a tie: `,`, as before
    if delimiter and found[best] == 0:
        others = [d for d in DELIMITERS if d != delimiter]
        fits = [d for d in others if sum(1 for n in _cells(line, d, source) if canonical_name(n))]
        if fits:
            raise SourceError(
                f"{source}: the header is not split by the --delimiter given ({DELIMITERS[delimiter]}); "
                f"it looks {DELIMITERS[fits[0]]}-separated"
            )
    return Header(best, canonical_columns(splits[best], source))


def _cells(line: str, delimiter: str, source: str) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=delimiter))
    except (csv.Error, StopIteration) as exc:
        raise SourceError(f"{source}: not a recognised format (unreadable first line)") from exc
