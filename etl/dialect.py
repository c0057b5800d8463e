"""How a source writes its values — date order, decimal mark, delimiter, encoding — and the options that
set them.

The loader (`etl.load`, readers in `etl.sources`) decides the dialect, from the options or from the
content; validation (`etl.validate`) only applies it. Nothing here reads a file.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field, replace
from typing import Literal

from etl.errors import SourceError

__all__ = [
    "DECIMAL_MARKS",
    "DELIMITERS",
    "ISO_DATES",
    "DateFormat",
    "SourceDialect",
    "SourceOptions",
]

DateOrder = Literal["ymd", "dmy", "mdy"]

#: The delimiters a delimited text may use, with the word the summary shows for each.
DELIMITERS: dict[str, str] = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_DELIMITER_WORDS = {
    **{d: d for d in DELIMITERS},
    **{word: d for d, word in DELIMITERS.items()},
    "\\t": "\t",
    "tsv": "\t",
}
DECIMAL_MARKS = (".", ",")
_DECIMAL_WORDS = {".": ".", ",": ",", "point": ".", "dot": ".", "comma": ","}

_STRFTIME_FIELD = {"d": "%d", "m": "%m", "y": "%Y"}
_FORMAT_GRAMMAR = re.compile(
    r"^(?P<a>%[dmY])(?P<sep>[/.-])(?P<b>%[dmY])(?P=sep)(?P<c>%[dmY])(?:[ T]%H:%M(?::%S)?)$"
)


@dataclass(frozen=True)
class DateFormat:
    """The order of day, month and year in the source's `InvoiceDate`, and the date separator.

    Values are read leniently within that order: 1- or 2-digit day, month and hour, seconds optional.
    ISO values (`2010-12-01 08:26[:00]`, space or `T`) are read under every format: they cannot be
    misread. `basis` says how the format was decided, for the run summary.
    """

    order: DateOrder
    separator: str
    basis: str = field(default="", compare=False)

    @property
    def pattern(self) -> str:
        """The format in strptime spelling, as `--date-format` takes it: `%d/%m/%Y %H:%M`."""
        fields = self.separator.join(_STRFTIME_FIELD[part] for part in self.order)
        return f"{fields} %H:%M:%S" if self.is_iso else f"{fields} %H:%M"

    @property
    def is_iso(self) -> bool:
        """Whether this is the ISO `YYYY-MM-DD` form (no other pattern needed)."""
        return self.order == "ymd" and self.separator == "-"

    def because(self, basis: str) -> DateFormat:
        """The same format with another `basis`."""
        return replace(self, basis=basis)

    @classmethod
    def from_pattern(cls, text: str, *, basis: str = "given") -> DateFormat:
        """Parse a `--date-format` such as `%d/%m/%Y %H:%M`: day (`%d`), month (`%m`) and four-digit year
        (`%Y`) in the order day-month-year, month-day-year or year-month-day, separated by `/`, `.` or
        `-`, then `%H:%M` or `%H:%M:%S`. Raises `SourceError` naming what is wrong otherwise."""
        spelled = text.strip()
        match = _FORMAT_GRAMMAR.match(spelled)
        if match is None:
            raise SourceError(
                f"date format {text!r} is not supported: give day %d, month %m and year %Y separated "
                "by / . or -, then %H:%M or %H:%M:%S, e.g. '%d/%m/%Y %H:%M'"
            )
        order = "".join(match[part][1].lower() for part in "abc")
        if order not in ("ymd", "dmy", "mdy"):
            raise SourceError(
                f"date format {text!r} is not supported: the date must be day-month-year, "
                "month-day-year or year-month-day, each of %d %m %Y once"
            )
        return cls(order=order, separator=match["sep"], basis=basis)  # type: ignore[arg-type]


#: The CSV export's and the workbook's form, `2010-12-01 08:26:00`.
ISO_DATES = DateFormat("ymd", "-", "ISO dates")


@dataclass(frozen=True)
class SourceOptions:
    """What the user set about the source's dialect; `None` leaves it to detection."""

    date_format: DateFormat | None = None
    delimiter: str | None = None
    decimal: str | None = None
    encoding: str | None = None

    @classmethod
    def from_text(
        cls,
        *,
        date_format: str | None = None,
        delimiter: str | None = None,
        decimal: str | None = None,
        encoding: str | None = None,
    ) -> SourceOptions:
        """The options from their command-line (or DAG param) spelling; empty means unset. Raises
        `SourceError` with a one-line message for a value that is not understood."""
        return cls(
            date_format=DateFormat.from_pattern(date_format) if date_format else None,
            delimiter=_delimiter(delimiter) if delimiter else None,
            decimal=_decimal(decimal) if decimal else None,
            encoding=_encoding(encoding) if encoding else None,
        )


def _delimiter(text: str) -> str:
    found = _DELIMITER_WORDS.get(text) or _DELIMITER_WORDS.get(text.strip().lower())
    if found is None:
        raise SourceError(f"delimiter {text!r} is not supported: use , ; tab or |")
    return found


def _decimal(text: str) -> str:
    found = _DECIMAL_WORDS.get(text.strip().lower())
    if found is None:
        raise SourceError(f"decimal mark {text!r} is not supported: use . or ,")
    return found


def _encoding(text: str) -> str:
    try:
        return codecs.lookup(text.strip()).name
    except LookupError:
        raise SourceError(f"encoding {text!r} is not known (e.g. utf-8, cp1252, latin-1, utf-16)") from None


@dataclass(frozen=True)
class SourceDialect:
    """How the source was read and how its values are written, as the loader decided it."""

    date_format: DateFormat = ISO_DATES
    decimal: str = "."
    #: None for a workbook (cells, not delimited text).
    delimiter: str | None = None
    #: The text encoding the bytes were decoded from; None for a workbook.
    encoding: str | None = None
    decimal_basis: str = field(default="", compare=False)

    def describe(self) -> dict[str, str]:
        """The dialect for the run report and summary: every value as text."""
        described = {
            "date_format": self.date_format.pattern,
            "date_format_basis": self.date_format.basis,
            "decimal": self.decimal,
            "decimal_basis": self.decimal_basis,
        }
        if self.delimiter is not None:
            described["delimiter"] = DELIMITERS.get(self.delimiter, self.delimiter)
        if self.encoding is not None:
            described["encoding"] = self.encoding
        return described
