"""Stage 2: turn the source's strings into typed invoice lines, or rejects with a reason.

Everything is computed column-wise with pyarrow compute and numpy; the only Python loops run over
the (normally empty) set of rejected rows or conflicting invoices, never over all lines.

Rules, per source column (surrounding whitespace is ignored everywhere except in Description):

| column      | accepted                                                      | becomes              |
| ----------- | ------------------------------------------------------------- | -------------------- |
| InvoiceNo   | non-empty, <= 20 chars; a spreadsheet's `536365.0` -> `536365` | `invoice_no`         |
| StockCode   | non-empty, <= 32 chars, inner spaces kept (`BANK CHARGES`)     | `stock_code`         |
| Description | anything <= 255 chars, byte-exact; empty -> null               | `description`        |
| Quantity    | an integer in int64 (`6`, `-12`, `6.0`)                        | `quantity`           |
| UnitPrice   | a decimal with <= 3 decimals (after trailing zeros), < 1e9     | `unit_price` decimal |
| InvoiceDate | `YYYY-MM-DD HH:MM[:SS]` (space or `T`), or the source's order  | `invoice_date`       |
| CustomerID  | empty -> null; digits, optionally `.0` (`17850.0`), <= 20      | `customer_id`        |
| Country     | non-empty, <= 64 chars                                         | `country`            |

The source's dialect (`RawSource.dialect`, decided by the loader) says how to read two of them: the
date order of non-ISO dates (`D/M/YYYY H:MM[:SS]` or `M/D/YYYY ...`, with `/`, `.` or `-`), and the
decimal mark of the number columns (with a decimal comma, `2,55` is 2.55 and `2.55` is a reject).

Then, per invoice, the lines that passed must agree on customer, country and invoice day (the
service stores those once per invoice); otherwise every line of the invoice is rejected.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from etl.dialect import DateFormat
from etl.schema import (
    LINE_SCHEMA,
    REJECT_SCHEMA,
    SOURCE_COLUMNS,
    TIMESTAMP_TYPE,
    DayRange,
    RawSource,
    ValidatedSource,
)
from retail_contract.limits import (
    COUNTRY_LENGTH,
    CUSTOMER_ID_LENGTH,
    DESCRIPTION_LENGTH,
    INVOICE_NO_LENGTH,
    STOCK_CODE_LENGTH,
)
from retail_contract.wire import PRICE_TYPE

__all__ = ["invoice_numbers", "validate", "validate_with_rows"]

# decimal128(12, 3) holds 9 integer digits: |price| < 1e9.
_PRICE_INTEGER_DIGITS = PRICE_TYPE.precision - PRICE_TYPE.scale
_PRICE_DECIMALS = PRICE_TYPE.scale
# Up to 18 digits always fits int64; 19 digits may or may not (max 9,223,372,036,854,775,807).
_SAFE_INT64_DIGITS = 18
_SHOWN_CHARS = 40

_ISO_DATE = (
    r"^(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})[ T]"
    r"(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2}))?$"
)
_DATE_FIELDS = {"d": r"(?P<day>\d{1,2})", "m": r"(?P<month>\d{1,2})", "y": r"(?P<year>\d{4})"}
_TIME = r"(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2}))?$"
_DATE_PARTS = ("year", "month", "day", "hour", "minute", "second")


def validate(raw: RawSource, days: DayRange) -> ValidatedSource:
    """Normalise every source row to `LINE_SCHEMA` or reject it with a reason (`REJECT_SCHEMA`).

    `line_no` is the row's 1-based position among all rows of its invoice in source order, counted
    before anything is rejected or filtered, so it is the same in every run. Only rows whose invoice
    day is in `days` are returned; rejects without a parseable day are always returned. Both tables
    keep source order.

    The rules that look across rows see only an invoice's own rows, so any set of whole invoices can
    be validated apart from the rest (`etl.staging` validates a large source that way).
    """
    return validate_with_rows(raw, days)[0]


def validate_with_rows(raw: RawSource, days: DayRange) -> tuple[ValidatedSource, pa.Array]:
    """`validate`, and the `source_row` of each line (the rejects carry theirs): where each line
    stands in the whole source, when `raw` is a part of it."""
    source = _source_table(raw.table)
    date_format, decimal = raw.dialect.date_format, raw.dialect.decimal
    if days.start is not None or days.end is not None:
        source = _rows_of_invoices_in(source, days, date_format)
    n = source.num_rows
    # Plain arrays, not chunked: struct results (extract_regex) then expose `.field()`.
    text: dict[str, pa.Array] = {c: source.column(c).combine_chunks() for c in SOURCE_COLUMNS}
    stripped = {c: pc.utf8_trim_whitespace(text[c]) for c in SOURCE_COLUMNS if c != "Description"}

    invoice_no = invoice_numbers(stripped["InvoiceNo"])
    stock_code = stripped["StockCode"]
    description = text["Description"]
    country = stripped["Country"]
    quantity, quantity_problems = _per_distinct(_quantity, stripped["Quantity"], decimal)
    unit_price, price_problems = _per_distinct(_unit_price, stripped["UnitPrice"], decimal)
    invoice_date, invoice_day, date_ok = _invoice_date(stripped["InvoiceDate"], date_format)
    # An id's only fraction is `.0` (a spreadsheet's float), which no decimal mark can misread.
    customer_id, customer_problems = _per_distinct(_customer_id, stripped["CustomerID"], "either")

    # Each rule: (violated mask, reason for the rows it flags); reasons are built for those rows only.
    rules: list[tuple[pa.Array, _Reason]] = [
        (_is_empty(invoice_no), _fixed("empty InvoiceNo")),
        (_longer(invoice_no, INVOICE_NO_LENGTH), _too_long("InvoiceNo", INVOICE_NO_LENGTH)),
        (_is_empty(stock_code), _fixed("empty StockCode")),
        (_longer(stock_code, STOCK_CODE_LENGTH), _too_long("StockCode", STOCK_CODE_LENGTH)),
        (_longer(description, DESCRIPTION_LENGTH), _too_long("Description", DESCRIPTION_LENGTH)),
        *quantity_problems,
        *price_problems,
        (pc.invert(date_ok), _quoted("unparseable InvoiceDate")),
        *customer_problems,
        (_is_empty(country), _fixed("empty Country")),
        (_longer(country, COUNTRY_LENGTH), _too_long("Country", COUNTRY_LENGTH)),
    ]
    rejected = _any(n, [mask for mask, _ in rules])
    reasons = _reasons(rejected, rules, text)

    invoice_codes = _codes(invoice_no)
    line_no = _positions_in_group(invoice_codes)

    inconsistent = _inconsistent_invoices(
        invoice_codes,
        accepted=~rejected,
        fields={"CustomerID": customer_id, "Country": country, "invoice day": invoice_day},
        invoice_no=invoice_no,
    )
    if inconsistent:
        conflict = pc.is_in(invoice_no, value_set=pa.array(list(inconsistent), pa.string()))
        conflict_np = _to_numpy_bool(conflict) & ~rejected
        for row in np.flatnonzero(conflict_np):
            reasons[int(row)] = inconsistent[invoice_no[int(row)].as_py()]
        rejected |= conflict_np

    in_days = _in_range(invoice_day, days)
    keep_line = ~rejected & in_days
    # A reject stays when its day is in the range, or when it has no day to filter on.
    keep_reject = rejected & (in_days | ~_to_numpy_bool(date_ok))

    line_rows = pa.array(np.flatnonzero(keep_line))
    lines = pa.Table.from_arrays(
        [
            invoice_no.take(line_rows),
            pa.array(line_no, pa.int32()).take(line_rows),
            stock_code.take(line_rows),
            _null_if_empty(description).take(line_rows),
            quantity.take(line_rows),
            unit_price.take(line_rows),
            invoice_date.take(line_rows),
            customer_id.take(line_rows),
            country.take(line_rows),
            invoice_day.take(line_rows),
        ],
        schema=LINE_SCHEMA,
    )

    reject_rows = np.flatnonzero(keep_reject)
    reject_idx = pa.array(reject_rows)
    rejects = pa.Table.from_arrays(
        [
            source.column("source_row").take(reject_idx),
            *[text[c].take(reject_idx) for c in SOURCE_COLUMNS],
            pa.array([reasons[int(i)] for i in reject_rows], pa.string()),
            invoice_day.take(reject_idx),
        ],
        schema=REJECT_SCHEMA,
    )

    all_days = lines.column("invoice_day").chunks + rejects.column("invoice_day").chunks
    present = pc.unique(pa.chunked_array(all_days, type=pa.date32()))
    day_list: list[dt.date] = sorted(d for d in present.to_pylist() if d is not None)
    line_source_rows = source.column("source_row").combine_chunks().take(line_rows)
    return ValidatedSource(lines=lines, rejects=rejects, days=tuple(day_list)), line_source_rows


# --- input -------------------------------------------------------------------------------------


def _source_table(raw: pa.Table) -> pa.Table:
    """The source as one-chunk strings (missing -> ""), in source order, with `source_row` as int64."""
    missing = [c for c in (*SOURCE_COLUMNS, "source_row") if c not in raw.column_names]
    if missing:
        raise ValueError(f"RawSource table lacks column(s) {', '.join(missing)}")
    columns = {name: _text(raw.column(name)) for name in SOURCE_COLUMNS}
    source_row = raw.column("source_row").combine_chunks().cast(pa.int64())
    table = pa.table({**columns, "source_row": source_row})
    if not np.all(np.diff(source_row.to_numpy()) > 0):
        table = table.sort_by("source_row")
    return table


def _text(column: pa.ChunkedArray) -> pa.Array:
    """One chunk of strings, missing values as "" (the loader's columns usually are that already:
    then nothing is copied)."""
    values = column.combine_chunks().cast(pa.string())
    return pc.fill_null(values, "") if values.null_count else values


def _rows_of_invoices_in(source: pa.Table, days: DayRange, date_format: DateFormat) -> pa.Table:
    """The rows of every invoice with a row whose day is in `days`, and the rows without a parseable
    date (their rejects are kept whatever the range).

    Everything else cannot reach the output, so a one-day run validates ~2,000 rows, not the whole
    file. An invoice's rows all stay: its line numbers and its consistency checks need all of them.
    """
    invoice_no = invoice_numbers(pc.utf8_trim_whitespace(source.column("InvoiceNo").combine_chunks()))
    _, invoice_day, date_ok = _invoice_date(
        pc.utf8_trim_whitespace(source.column("InvoiceDate").combine_chunks()), date_format
    )
    touching = pc.unique(invoice_no.filter(pa.array(_in_range(invoice_day, days))))
    keep = _to_numpy_bool(pc.is_in(invoice_no, value_set=touching)) | ~_to_numpy_bool(date_ok)
    return source.filter(pa.array(keep))


def invoice_numbers(stripped: pa.Array) -> pa.Array:
    """Invoice numbers as text, with a spreadsheet's float spelling ("536365.0") undone."""
    if not pc.any(pc.match_substring(stripped, ".")).as_py():
        return stripped  # the usual case: no number has a dot, and the regex would copy every one
    return pc.replace_substring_regex(stripped, r"^(\d+)\.0*$", r"\1")


# --- per-column parsing ------------------------------------------------------------------------


class _Reason:
    """Builds the reason text for the flagged rows from their original cell values."""

    def __init__(self, prefix: str, column: str | None = None, suffix: str = "") -> None:
        self.prefix, self.column, self.suffix = prefix, column, suffix

    def render(self, value: str | None) -> str:
        if self.column is None:
            return self.prefix
        shown = "" if value is None else value
        if len(shown) > _SHOWN_CHARS:
            shown = shown[: _SHOWN_CHARS - 1] + "…"
        return f"{self.prefix} {shown!r}{self.suffix}".strip()


def _fixed(reason: str) -> _Reason:
    return _Reason(reason)


def _quoted(prefix: str, column: str | None = None, suffix: str = "") -> _Reason:
    # The column defaults to the last word of the prefix: "unparseable InvoiceDate" -> InvoiceDate.
    return _Reason(prefix, column or prefix.split()[-1], suffix)


def _too_long(column: str, limit: int) -> _Reason:
    return _Reason(f"{column} longer than {limit} characters")


#: A parsed column and its problems: (rows flagged, reason) per rule.
_Checked = tuple[pa.Array, list[tuple[pa.Array, _Reason]]]


def _per_distinct(check: Callable[[pa.Array], _Checked], value: pa.Array, decimal: str) -> _Checked:
    """`check` run once per distinct text of `value`, its values and masks spread back to every row;
    with a decimal comma, each text is first respelled with a point (see `_with_decimal_point`).

    The full data set's 541,909 rows hold ~700 distinct quantities, ~1,600 prices and ~4,400 customer
    ids, so the regexes run over a few thousand texts instead of every row.
    """
    encoded = pc.dictionary_encode(value)
    parsed, problems = check(_with_decimal_point(encoded.dictionary, decimal))
    rows = encoded.indices
    return parsed.take(rows), [(mask.take(rows), reason) for mask, reason in problems]


def _with_decimal_point(value: pa.Array, decimal: str) -> pa.Array:
    """Numbers in the spelling the checks read: with a decimal comma, `2,55` becomes `2.55`, and a text
    with a point (`2.55`, `1.234,5`) becomes one no check accepts, so that it is rejected; the reason
    quotes the cell as the source wrote it. `either` takes both marks (for ids)."""
    if decimal == ".":
        return value
    if decimal == "either":
        return pc.replace_substring(value, ",", ".")
    with_point = pc.match_substring(value, ".")
    return pc.if_else(with_point, "not a number", pc.replace_substring(value, ",", "."))


def _quantity(value: pa.Array) -> _Checked:
    """int64 quantities; `6.0` is the integer 6, `6.5` is not an integer, `abc` is not a number."""
    integral = pc.match_substring_regex(value, r"^[+-]?\d+(\.0*)?$")
    numeric = pc.match_substring_regex(value, r"^[+-]?(\d+\.?\d*|\.\d+)$")
    digits = pc.replace_substring_regex(value, r"^[+-]?0*(\d*?)(\.0*)?$", r"\1")
    wide = pc.and_(integral, pc.greater(pc.utf8_length(digits), _SAFE_INT64_DIGITS))
    out_of_range = _to_numpy_bool(wide)
    for row in np.flatnonzero(out_of_range):  # only the rare >18-digit values reach Python
        number = int(pc.replace_substring_regex(value[row : row + 1], r"\.0*$", "")[0].as_py())
        out_of_range[row] = not -(2**63) <= number < 2**63
    out_of_range_arr = pa.array(out_of_range)
    parseable = pc.and_(integral, pc.invert(out_of_range_arr))
    canonical = pc.replace_substring_regex(value, r"^\+?(-?)0*(\d*?)(\.0*)?$", r"\1\2")
    canonical = pc.if_else(parseable, canonical, "0")
    canonical = pc.if_else(pc.match_substring_regex(canonical, r"^-?$"), "0", canonical)
    quantity = pc.cast(canonical, pa.int64())
    problems = [
        (pc.invert(numeric), _quoted("unparseable Quantity")),
        (pc.and_(numeric, pc.invert(integral)), _Reason("Quantity", "Quantity", " is not an integer")),
        (out_of_range_arr, _Reason("Quantity", "Quantity", " is out of the int64 range")),
    ]
    return quantity, problems


def _unit_price(value: pa.Array) -> _Checked:
    """decimal128(12, 3) prices parsed from their text, never through a float."""
    parts = pc.extract_regex(value, r"^(?P<sign>[+-]?)(?P<int>\d*)(?:\.(?P<frac>\d*))?$")
    has_digit = pc.match_substring_regex(value, r"\d")
    parseable = pc.fill_null(pc.and_(pc.is_valid(parts), has_digit), False)
    sign = pc.if_else(pc.equal(parts.field("sign"), "-"), "-", "")
    integer = pc.utf8_ltrim(parts.field("int"), "0")
    fraction = pc.utf8_rtrim(parts.field("frac"), "0")
    too_precise = pc.fill_null(pc.greater(pc.utf8_length(fraction), _PRICE_DECIMALS), False)
    too_large = pc.fill_null(pc.greater(pc.utf8_length(integer), _PRICE_INTEGER_DIGITS), False)
    good = pc.and_(parseable, pc.invert(pc.or_(too_precise, too_large)))
    integer = pc.if_else(pc.equal(integer, ""), "0", integer)
    text = pc.binary_join_element_wise(sign, integer, ".", pc.utf8_rpad(fraction, _PRICE_DECIMALS, "0"), "")
    price = pc.cast(pc.if_else(good, text, "0.000"), PRICE_TYPE)
    problems = [
        (pc.invert(parseable), _quoted("unparseable UnitPrice")),
        (
            pc.and_(parseable, too_precise),
            _Reason("UnitPrice", "UnitPrice", f" has more than {_PRICE_DECIMALS} decimals"),
        ),
        (
            pc.and_(parseable, too_large),
            _Reason("UnitPrice", "UnitPrice", " is out of range (|price| >= 1e9)"),
        ),
    ]
    return price, problems


def _invoice_date(value: pa.Array, date_format: DateFormat) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(timestamp[s], date32, parsed?) from ISO text or text in the source's `date_format`, checking the
    calendar exactly.

    Each distinct text is parsed once: the 541,909 rows hold ~23,000 timestamps (an invoice's lines
    share theirs), so the regexes and the calendar arithmetic run over a twentieth of the rows.
    """
    encoded = pc.dictionary_encode(value)
    timestamp, invoice_day, valid = _parse_invoice_dates(encoded.dictionary, date_format)
    rows = encoded.indices
    return timestamp.take(rows), invoice_day.take(rows), valid.take(rows)


def _date_pattern(date_format: DateFormat) -> str:
    """The regex of a non-ISO date format: its fields in its order, 1- or 2-digit day, month and hour."""
    separator = "\\" + date_format.separator
    fields = separator.join(_DATE_FIELDS[part] for part in date_format.order)
    return f"^{fields}[ T]{_TIME}"


def _parse_invoice_dates(value: pa.Array, date_format: DateFormat) -> tuple[pa.Array, pa.Array, pa.Array]:
    """`_invoice_date` over distinct texts."""
    iso = pc.extract_regex(value, _ISO_DATE)
    # When every row is ISO (the CSV export) the source's own pattern would be picked for no row: skip
    # that second regex over every row.
    other = None if iso.null_count == 0 or date_format.is_iso else _date_pattern(date_format)
    own = None if other is None else pc.extract_regex(value, other)
    matched = pc.is_valid(iso) if own is None else pc.or_(pc.is_valid(iso), pc.is_valid(own))
    numbers: dict[str, npt.NDArray[np.int64]] = {}
    for part in _DATE_PARTS:
        # StructArray.field ignores the struct's own nulls, so pick the pattern that matched.
        field = (
            iso.field(part) if own is None else pc.if_else(pc.is_valid(iso), iso.field(part), own.field(part))
        )
        # A missing seconds group (or a row that matched neither pattern) reads as 0 here; the
        # `matched` mask decides validity.
        field = pc.if_else(pc.equal(field, ""), "0", field)
        numbers[part] = pc.cast(field, pa.int64()).to_numpy(zero_copy_only=False)
    year, month, day = numbers["year"], numbers["month"], numbers["day"]
    hour, minute, second = numbers["hour"], numbers["minute"], numbers["second"]
    ok = (
        _to_numpy_bool(matched)
        & (year >= 1)
        & (month >= 1)
        & (month <= 12)
        & (day >= 1)
        & (day <= 31)
        & (hour <= 23)
        & (minute <= 59)
        & (second <= 59)
    )
    # Rows that fail get a harmless 1970-01-01 so the calendar arithmetic below stays in range.
    year, month, day = np.where(ok, year, 1970), np.where(ok, month, 1), np.where(ok, day, 1)
    month_start = ((year - 1970) * 12 + (month - 1)).astype("datetime64[M]")
    date = month_start.astype("datetime64[D]") + (day - 1)
    next_month = (month_start + 1).astype("datetime64[D]")
    ok &= date < next_month  # 2011-02-30 rolls into March: reject it instead
    days_since_epoch = date.astype(np.int64)
    seconds = days_since_epoch * 86_400 + hour * 3_600 + minute * 60 + second
    valid = pa.array(ok)
    timestamp = pa.array(np.where(ok, seconds, 0), TIMESTAMP_TYPE)
    invoice_day = pc.if_else(valid, pa.array(days_since_epoch.astype(np.int32), pa.date32()), None)
    return timestamp, invoice_day, valid


def _customer_id(value: pa.Array) -> _Checked:
    """`17850.0` (export) and `17850` (Kaggle, workbook) are the same customer `17850`; empty is none."""
    empty = _is_empty(value)
    digits = pc.match_substring_regex(value, r"^\d+(\.0*)?$")
    customer = pc.replace_substring_regex(value, r"\.0*$", "")
    customer = pc.if_else(pc.and_(digits, pc.invert(empty)), customer, None)
    too_long = pc.fill_null(pc.greater(pc.utf8_length(customer), CUSTOMER_ID_LENGTH), False)
    problems = [
        (
            pc.and_(pc.invert(empty), pc.invert(digits)),
            _Reason("CustomerID", "CustomerID", " is not a whole number"),
        ),
        (too_long, _Reason(f"CustomerID longer than {CUSTOMER_ID_LENGTH} digits")),
    ]
    return customer, problems


# --- rejects and invoices ----------------------------------------------------------------------


def _reasons(
    rejected: npt.NDArray[np.bool_],
    rules: Sequence[tuple[pa.Array, _Reason]],
    text: dict[str, pa.Array],
) -> dict[int, str]:
    """Reason text per rejected row (all the rules it breaks, joined by "; ")."""
    rows = np.flatnonzero(rejected)
    if rows.size == 0:
        return {}
    idx = pa.array(rows)
    parts: dict[int, list[str]] = {int(r): [] for r in rows}
    for mask, reason in rules:
        hits = _to_numpy_bool(mask.take(idx))
        values = text[reason.column].take(idx).to_pylist() if reason.column else None
        for pos in np.flatnonzero(hits):
            parts[int(rows[pos])].append(reason.render(values[pos] if values is not None else None))
    return {row: "; ".join(found) for row, found in parts.items()}


def _codes(values: pa.Array) -> npt.NDArray[np.int64]:
    """Dense integer codes for the values (nulls get a code of their own)."""
    encoded = pc.dictionary_encode(values, null_encoding="encode")
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _positions_in_group(codes: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """1-based position of each row among the rows with the same code, in row order."""
    n = codes.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(codes, kind="stable")  # stable: source order inside each invoice
    sorted_codes = codes[order]
    starts = np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    positions = np.empty(n, dtype=np.int64)
    positions[order] = np.arange(n) - group_start + 1
    return positions


def _inconsistent_invoices(
    invoice_codes: npt.NDArray[np.int64],
    *,
    accepted: npt.NDArray[np.bool_],
    fields: dict[str, pa.Array],
    invoice_no: pa.Array,
) -> dict[str, str]:
    """Invoices whose accepted lines disagree on a per-invoice field -> the reason for their lines."""
    rows = np.flatnonzero(accepted)
    if rows.size == 0:
        return {}
    order = rows[np.argsort(invoice_codes[rows], kind="stable")]
    sorted_codes = invoice_codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    bad: dict[str, list[str]] = {}
    for label, values in fields.items():
        value_codes = _codes(values)[order]
        low = np.minimum.reduceat(value_codes, starts)
        high = np.maximum.reduceat(value_codes, starts)
        for group in np.flatnonzero(low != high):  # only conflicting invoices reach Python
            begin = starts[group]
            end = starts[group + 1] if group + 1 < starts.size else order.size
            members = pa.array(order[begin:end])
            distinct = pc.unique(values.take(members)).to_pylist()
            shown = ", ".join("none" if v is None else str(v) for v in sorted(distinct, key=str)[:5])
            invoice = invoice_no[int(order[begin])].as_py()
            bad.setdefault(invoice, []).append(f"{label} ({shown})")
    return {
        invoice: f"invoice {invoice}: its lines disagree on " + " and ".join(found)
        for invoice, found in bad.items()
    }


def _in_range(invoice_day: pa.Array, days: DayRange) -> npt.NDArray[np.bool_]:
    """`DayRange.contains`, vectorised; rows without a day are outside every range."""
    inside = pc.is_valid(invoice_day)
    if days.start is not None:
        inside = pc.and_(inside, pc.greater_equal(invoice_day, pa.scalar(days.start, pa.date32())))
    if days.end is not None:
        inside = pc.and_(inside, pc.less_equal(invoice_day, pa.scalar(days.end, pa.date32())))
    return _to_numpy_bool(inside)


# --- small helpers -----------------------------------------------------------------------------


def _is_empty(value: pa.Array) -> pa.Array:
    return pc.equal(value, "")


def _longer(value: pa.Array, limit: int) -> pa.Array:
    return pc.fill_null(pc.greater(pc.utf8_length(value), limit), False)


def _null_if_empty(value: pa.Array) -> pa.Array:
    return pc.if_else(_is_empty(value), None, value)


def _any(n: int, masks: Sequence[pa.Array]) -> npt.NDArray[np.bool_]:
    result = np.zeros(n, dtype=bool)
    for mask in masks:
        result |= _to_numpy_bool(mask)
    return result


def _to_numpy_bool(mask: pa.Array | pa.ChunkedArray) -> npt.NDArray[np.bool_]:
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def reason_kind(reason: str) -> str:
    """A reject's reason without the values it quotes: `unparseable Quantity 'abc'` is `unparseable
    Quantity`; an invoice whose lines disagree is `invoice lines disagree` (the run report counts
    rejects by these)."""
    if reason.startswith("invoice ") and ": its lines disagree on " in reason:
        return "invoice lines disagree"
    return _QUOTED.sub("", reason).strip()


_QUOTED = re.compile(r"\s*'(?:[^'\\]|\\.)*'|\s*\"(?:[^\"\\]|\\.)*\"")


def rejects_by_reason(rejects: pa.Table) -> dict[str, int]:
    """How many of `rejects` have each `reason_kind`."""
    counts: dict[str, int] = {}
    for entry in pc.value_counts(rejects.column("reason")).to_pylist():
        kind = reason_kind(entry["values"])
        counts[kind] = counts.get(kind, 0) + entry["counts"]
    return counts
