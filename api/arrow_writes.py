"""Bulk invoice bodies as Apache Arrow IPC streams: read, validated and hashed with Arrow kernels.

`POST /bulk/invoices` with `Content-Type: application/vnd.apache.arrow.stream` carries one row per
invoice, shaped like the read-back page (`api.arrow_pages.INVOICE_PAGE_SCHEMA`) without `invoice_day`.
A JSON body of 50,000 lines becomes ~300,000 Python objects that pydantic checks one by one; here every
check runs over whole columns (lengths, RE2 patterns, nulls, ranges, duplicate line numbers), and Python
sees a row only to describe one that failed. The content hash is built as Arrow strings as well, so that
the lines reach `invoice_store.store_invoices` (and, on PostgreSQL, COPY) without a Python object per value.

Errors are FastAPI-shaped and use the JSON body's locations: `["body", "invoices", i, "lines", j,
"unit_price"]`; a schema problem names the column (`["body", "invoices", "lines", "unit_price"]`); a body
that is not an Arrow stream is `["body"]`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from api import models, schemas
from api.crud import invoice_store
from retail_contract import content_hash
from retail_contract.wire import (
    ARROW_STREAM,
    INVOICE_FIELDS,
    LINE_FIELDS,
    LINE_STRUCT,
    PAGE_TIMESTAMP_TYPE,
    PRICE_TYPE,
)

#: Fields that may be null; all others are required.
NULLABLE = {"customer_id", "description", "lines.invoice_date"}

#: Lines as `invoice_store.store_invoices` gets them: `invoice` is the position of the line's invoice in
#: the body, then the read-back page's line fields and types (timestamps in microseconds).
STORED_LINE_SCHEMA = pa.schema([pa.field("invoice", pa.int64(), nullable=False), *LINE_STRUCT])

#: The first and last instants a Python datetime (and the JSON path) can carry, in microseconds.
_MIN_US = (dt.datetime.min - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
_MAX_US = (dt.datetime.max - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
_UNIT_US = {"s": 1_000_000, "ms": 1_000, "us": 1}
#: The largest amount NUMERIC(12, 3) holds.
_MAX_PRICE = Decimal(10 ** (models.PRICE_PRECISION - models.PRICE_SCALE)) - Decimal("0.001")
#: More errors than this are not listed: a body of 50,000 bad lines would otherwise answer megabytes.
MAX_ERRORS = 100


class ArrowBodyError(ValueError):
    """The body is not a valid Arrow invoice stream; `errors` are FastAPI-style error dicts."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} error(s) in the Arrow body")
        self.errors = errors


def is_arrow(content_type: str | None) -> bool:
    """Whether a `Content-Type` header names the Arrow IPC stream (parameters and case ignored)."""
    return content_type is not None and content_type.split(";")[0].strip().lower() == ARROW_STREAM


# --- reading and the schema ----------------------------------------------------------------------


def _error(loc: Sequence[str | int], error_type: str, msg: str, **extra: Any) -> dict[str, Any]:
    return {"loc": ["body", *loc], "type": error_type, "msg": msg, **extra}


def _read_table(body: bytes) -> pa.Table:
    """The stream's record batches as one table; ["body"] errors for anything Arrow cannot read."""
    try:
        # Message by message rather than `pa.ipc.open_stream`, to look at each batch's metadata before
        # Arrow reads its body: a compressed body would be inflated before its size could be judged.
        messages = pa.ipc.MessageReader.open_stream(pa.py_buffer(body))
        schema = pa.ipc.read_schema(messages.read_next_message())
        # The schema is judged before any batch is read: a wrong column is named, not just refused.
        if errors := _schema_errors(schema):
            raise ArrowBodyError(errors)
        batches = []
        rows = 0
        for message in messages:
            if message.type != "record batch":
                raise ValueError(f"a {message.type} message: only record batches are accepted")
            if _is_compressed(message.metadata.to_pybytes()):
                raise ValueError("compressed record batches are not accepted")
            batch = pa.ipc.read_record_batch(message, schema)
            # Full validation (offsets within buffers, UTF-8, decimal precision): the kernels below trust
            # their input, and a crafted buffer must be a 422, not a crash.
            batch.validate(full=True)
            rows += batch.num_rows
            if rows > schemas.MAX_BULK_INVOICES:
                raise ArrowBodyError([_too_many_invoices(rows)])
            batches.append(batch)
        return pa.Table.from_batches(batches, schema=schema)
    except ArrowBodyError:
        raise
    except Exception as error:  # any failure to read a client's bytes is the client's 422, not a 500
        raise ArrowBodyError(
            [_error((), "arrow_invalid", f"the body is not a readable Arrow IPC stream: {error}"[:300])]
        ) from error


# pyarrow does not say whether a message's buffers are compressed, so the one flag is read from the
# message's flatbuffer (format/Message.fbs): Message.header (field 2), then RecordBatch.compression (3).


def _table_field(metadata: bytes, table: int, index: int) -> int | None:
    """Where field `index` of the flatbuffer table at `table` is stored, or None when it is absent."""
    vtable = table - int.from_bytes(metadata[table : table + 4], "little", signed=True)
    vtable_length = int.from_bytes(metadata[vtable : vtable + 2], "little")
    if 4 + 2 * index + 2 > vtable_length:
        return None
    offset = int.from_bytes(metadata[vtable + 4 + 2 * index : vtable + 6 + 2 * index], "little")
    return table + offset if offset else None


def _is_compressed(metadata: bytes) -> bool:
    """Whether a record batch message declares compressed buffers (RecordBatch.compression is set)."""
    root = int.from_bytes(metadata[0:4], "little")
    header = _table_field(metadata, root, 2)
    if header is None:
        return False
    batch = header + int.from_bytes(metadata[header : header + 4], "little")
    return _table_field(metadata, batch, 3) is not None


def _too_many_invoices(count: int) -> dict[str, Any]:
    return _error(
        ("invoices",),
        "too_long",
        f"List should have at most {schemas.MAX_BULK_INVOICES} items after validation, not {count}",
        ctx={"field_type": "List", "max_length": schemas.MAX_BULK_INVOICES, "actual_length": count},
    )


def _is_string(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind))


def _is_integer(kind: pa.DataType) -> bool:
    # Signed integers, and unsigned ones that int64 holds whole.
    return bool(pa.types.is_signed_integer(kind) or kind in (pa.uint8(), pa.uint16(), pa.uint32()))


def _is_timestamp(kind: pa.DataType) -> bool:
    return bool(pa.types.is_timestamp(kind) and kind.tz is None and kind.unit in _UNIT_US)


def _is_price(kind: pa.DataType) -> bool:
    # Any decimal that decimal128(38, 3) holds exactly: more than 3 decimals is a wrong type.
    return bool(pa.types.is_decimal(kind) and kind.scale <= 3 and kind.precision - kind.scale <= 35)


#: Per field: whether an Arrow type is accepted, the type it is cast to, and what the message calls it.
_TYPES: dict[str, tuple[Callable[[pa.DataType], bool], pa.DataType, str]] = {
    "string": (_is_string, pa.string(), "string"),
    "timestamp": (_is_timestamp, PAGE_TIMESTAMP_TYPE, "timestamp[s] or timestamp[us] without a time zone"),
    "int32": (_is_integer, pa.int64(), "int32"),
    "int64": (_is_integer, pa.int64(), "int64"),
    "price": (_is_price, pa.decimal128(38, 3), "decimal128(12, 3)"),
}
_FIELD_TYPES = {
    "invoice_no": "string",
    "invoice_date": "timestamp",
    "customer_id": "string",
    "country": "string",
    "lines.line_no": "int32",
    "lines.stock_code": "string",
    "lines.description": "string",
    "lines.quantity": "int64",
    "lines.unit_price": "price",
    "lines.invoice_date": "timestamp",
}


def _check_names(names: list[str], expected: Sequence[str], loc: tuple[str, ...]) -> list[dict[str, Any]]:
    errors = []
    for name in sorted({name for name in names if names.count(name) > 1}):
        errors.append(_error((*loc, name), "duplicate_field", f"column {name!r} appears more than once"))
    for name in expected:
        if name not in names:
            errors.append(_error((*loc, name), "missing", "Field required"))
    for name in names:
        if name not in expected:
            errors.append(_error((*loc, name), "extra_forbidden", "Extra inputs are not permitted"))
    return errors


def _type_error(name: str, kind: pa.DataType) -> dict[str, Any] | None:
    """The error for field `name` (`lines.` for a line field) sent as Arrow type `kind`, if any."""
    accepts, _target, described = _TYPES[_FIELD_TYPES[name]]
    nullable = name in NULLABLE
    if accepts(kind) or (nullable and pa.types.is_null(kind)):
        return None
    return _error(
        ("invoices", *name.split(".")),
        "arrow_type",
        f"Arrow type {kind} is not accepted; send {described}" + (" (nullable)" if nullable else ""),
    )


def _schema_errors(schema: pa.Schema) -> list[dict[str, Any]]:
    """What is wrong with the body's schema: names (missing, extra, repeated) and types, of the invoice
    columns and of the line struct's fields."""
    errors = _check_names(schema.names, INVOICE_FIELDS, ("invoices",))
    if errors:
        return errors
    for name in INVOICE_FIELDS[:-1]:
        if (error := _type_error(name, schema.field(name).type)) is not None:
            errors.append(error)
    lists = schema.field("lines").type
    if not (pa.types.is_list(lists) or pa.types.is_large_list(lists)) or not pa.types.is_struct(
        lists.value_type
    ):
        errors.append(
            _error(
                ("invoices", "lines"), "arrow_type", f"Arrow type {lists} is not accepted; send list<struct>"
            )
        )
        return errors
    struct_type = lists.value_type
    names = [struct_type.field(i).name for i in range(struct_type.num_fields)]
    line_errors = _check_names(names, LINE_FIELDS, ("invoices", "lines"))
    if line_errors:
        return errors + line_errors
    for name in LINE_FIELDS:
        if (error := _type_error(f"lines.{name}", struct_type.field(name).type)) is not None:
            errors.append(error)
    return errors


def _conform(name: str, array: pa.Array, errors: list[dict[str, Any]]) -> pa.Array | None:
    """`array` (of a type `_schema_errors` accepts) cast to the canonical type of field `name`, or None
    with an error when a value does not survive the cast."""
    _accepts, target, described = _TYPES[_FIELD_TYPES[name]]
    try:
        return array.cast(target)
    except pa.ArrowException as error:  # a timestamp[s] beyond what microseconds hold, say
        message = f"cannot read as {described}: {error}"[:300]
        errors.append(_error(("invoices", *name.split(".")), "arrow_type", message))
        return None


# --- value checks --------------------------------------------------------------------------------


@dataclass
class _Errors:
    """Value errors found column by column, each at (invoice, line or -1, field rank)."""

    found: list[tuple[int, int, int, dict[str, Any]]] = field(default_factory=list)

    def add(self, invoice: int, line: int, rank: int, error: dict[str, Any]) -> None:
        self.found.append((invoice, line, rank, error))

    def sorted(self) -> list[dict[str, Any]]:
        return [error for *_key, error in sorted(self.found, key=lambda item: item[:3])][:MAX_ERRORS]


class _Column:
    """One validated column: of the invoices (`positions` None) or of the flat lines (`positions` maps a
    flat line to (invoice, position in its list))."""

    def __init__(
        self, name: str, values: pa.Array, rank: int, positions: Callable[[int], tuple[int, int]] | None
    ) -> None:
        self.name = name
        self.values = values
        self.rank = rank
        self.positions = positions

    def report(
        self, errors: _Errors, bad: pa.Array, error_type: str, msg: str, *, echo: bool = True, **ctx: Any
    ) -> None:
        """Add an error for each row where `bad` is true; Python only touches those rows."""
        if not pc.any(bad).as_py():
            return
        for row in np.flatnonzero(bad.fill_null(False).to_numpy(zero_copy_only=False))[:MAX_ERRORS]:
            index = int(row)
            loc: tuple[str | int, ...]
            if self.positions is None:
                invoice, line, loc = index, -1, ("invoices", index, self.name)
            else:
                invoice, line = self.positions(index)
                loc = ("invoices", invoice, "lines", line, self.name)
            error = _error(loc, error_type, msg, **({"ctx": ctx} if ctx else {}))
            if echo:
                error["input"] = self.values[index].as_py()
            errors.add(invoice, line, self.rank, error)


def _check_string(
    column: _Column, errors: _Errors, *, min_length: int, max_length: int, pattern: str, nullable: bool
) -> None:
    values = column.values
    if not nullable:
        column.report(errors, values.is_null(), "string_type", "Input should be a valid string", echo=False)
    lengths = pc.utf8_length(values)
    if min_length:
        column.report(
            errors,
            pc.less(lengths, min_length),
            "string_too_short",
            f"String should have at least {min_length} character{'s' if min_length > 1 else ''}",
            min_length=min_length,
        )
    too_long = pc.greater(lengths, max_length)
    column.report(
        errors,
        too_long,
        "string_too_long",
        f"String should have at most {max_length} characters",
        max_length=max_length,
    )
    # RE2 (Arrow) and Rust's regex (pydantic) agree on these patterns: `$` is the end of the text only.
    mismatch = pc.and_(pc.invert(pc.match_substring_regex(values, pattern)), pc.greater(lengths, 0))
    column.report(
        errors,
        mismatch,
        "string_pattern_mismatch",
        f"String should match pattern '{pattern}'",
        pattern=pattern,
    )


def _check_timestamp(column: _Column, errors: _Errors, *, nullable: bool) -> None:
    values = column.values
    if not nullable:
        column.report(
            errors, values.is_null(), "datetime_type", "Input should be a valid datetime", echo=False
        )
    micros = values.cast(pa.int64())
    out_of_range = pc.or_(pc.less(micros, _MIN_US), pc.greater(micros, _MAX_US))
    column.report(
        errors,
        out_of_range,
        "datetime_range",
        "Input should be a datetime between years 1 and 9999",
        echo=False,
    )


def _check_required(column: _Column, errors: _Errors, error_type: str, msg: str) -> None:
    column.report(errors, column.values.is_null(), error_type, msg, echo=False)


# --- the body ------------------------------------------------------------------------------------


def read_invoices(body: bytes) -> invoice_store.InvoicesToStore:
    """The invoices of an Arrow body, validated and hashed, ready for `invoice_store.store_invoices`.

    Raises ArrowBodyError, listing what is wrong with FastAPI-style locations.
    """
    table = _read_table(body)
    errors: list[dict[str, Any]] = []
    header = {
        name: _conform(name, table.column(name).combine_chunks(), errors)
        for name in INVOICE_FIELDS
        if name != "lines"
    }
    if errors:
        raise ArrowBodyError(errors)
    lists = table.column("lines").combine_chunks()
    struct_type = lists.type.value_type

    count = len(lists)
    found = _Errors()
    # Structure first: a null list or a null line has no fields to check.
    null_lists = _Column("lines", lists, 5, None)
    null_lists.report(found, lists.is_null(), "list_type", "Input should be a valid list", echo=False)
    if found.found:
        raise ArrowBodyError(found.sorted())
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    total = int(starts[-1])
    if total > schemas.MAX_BULK_LINES:
        raise ArrowBodyError(
            [
                _error(
                    ("invoices",),
                    "too_many_lines",
                    f"at most {schemas.MAX_BULK_LINES} lines per request, got {total}",
                    ctx={"limit": schemas.MAX_BULK_LINES, "total": total},
                )
            ]
        )
    parents = np.repeat(np.arange(count, dtype=np.int64), lengths)

    def position(flat: int) -> tuple[int, int]:
        invoice = int(parents[flat])
        return invoice, flat - int(starts[invoice])

    items = lists.flatten()
    for flat in np.flatnonzero(items.is_null().to_numpy(zero_copy_only=False))[:MAX_ERRORS]:
        invoice, line = position(int(flat))
        found.add(
            invoice,
            line,
            0,
            _error(("invoices", invoice, "lines", line), "dict_type", "Input should be a valid dictionary"),
        )
    if found.found:
        raise ArrowBodyError(found.sorted())
    # `flatten` gives each child sliced like the struct array (a list's values may start anywhere).
    children = dict(zip((child.name for child in struct_type), items.flatten(), strict=True))
    line_values = _present({name: _conform(f"lines.{name}", children[name], errors) for name in LINE_FIELDS})
    if errors:
        raise ArrowBodyError(errors)
    header_values = _present(header)

    columns = {
        name: _Column(name, header_values[name], rank, None) for rank, name in enumerate(INVOICE_FIELDS[:-1])
    }
    lines = {
        name: _Column(name, line_values[name], 10 + rank, position) for rank, name in enumerate(LINE_FIELDS)
    }
    _check_values(columns, lines, found)
    line_nos = lines["line_no"].values
    # Duplicate line numbers: adjacent equal (invoice, line_no) once sorted; JSON reports them on "lines",
    # and only for lines that are otherwise valid.
    if total and not found.found:
        order = pc.sort_indices(
            pa.table({"p": parents, "n": line_nos}), sort_keys=[("p", "ascending"), ("n", "ascending")]
        )
        sorted_parents = parents[order.to_numpy()]
        sorted_nos = line_nos.take(order).to_numpy(zero_copy_only=False)
        repeated = np.flatnonzero(
            (sorted_parents[1:] == sorted_parents[:-1]) & (sorted_nos[1:] == sorted_nos[:-1])
        )
        if repeated.size:
            # As the JSON path answers it: well-formed lines that collide, a 409 naming the first.
            at = int(repeated.min())
            invoice = int(sorted_parents[at + 1])
            raise invoice_store.duplicate_line_no(
                int(sorted_nos[at + 1]), ("body", "invoices", invoice, "lines")
            )
    if found.found:
        raise ArrowBodyError(found.sorted())
    return _to_store(header_values, line_values, parents, lengths)


def _present(arrays: dict[str, pa.Array | None]) -> dict[str, pa.Array]:
    """`arrays` without the Nones `_conform` returns for a failed cast (none once no error was found)."""
    return {name: array for name, array in arrays.items() if array is not None}


#: The string fields' constraints, as the JSON schemas (api/schemas.py) declare them:
#: (field, min length, max length, pattern); nullable when in `NULLABLE`.
_HEADER_STRINGS = (
    ("invoice_no", 1, models.INVOICE_NO_LENGTH, schemas.INVOICE_NO_PATTERN),
    ("customer_id", 1, models.CUSTOMER_ID_LENGTH, schemas.CUSTOMER_ID_PATTERN),
    ("country", 1, models.COUNTRY_LENGTH, schemas.COUNTRY_PATTERN),
)
_LINE_STRINGS = (
    ("stock_code", 1, models.STOCK_CODE_LENGTH, schemas.STOCK_CODE_PATTERN),
    ("description", 0, models.DESCRIPTION_LENGTH, schemas.DESCRIPTION_PATTERN),
)


def _check_strings(
    columns: dict[str, _Column],
    rules: tuple[tuple[str, int, int, str], ...],
    found: _Errors,
) -> None:
    for name, min_length, max_length, pattern in rules:
        _check_string(
            columns[name],
            found,
            min_length=min_length,
            max_length=max_length,
            pattern=pattern,
            nullable=name in NULLABLE,
        )


def _check_values(columns: dict[str, _Column], lines: dict[str, _Column], found: _Errors) -> None:
    # The order of the checks does not matter: `_Errors.sorted` orders errors by invoice, line and field.
    _check_strings(columns, _HEADER_STRINGS, found)
    _check_timestamp(columns["invoice_date"], found, nullable=False)
    line_no = lines["line_no"]
    _check_required(line_no, found, "int_type", "Input should be a valid integer")
    line_no.report(
        found,
        pc.less(line_no.values, 1),
        "greater_than_equal",
        "Input should be greater than or equal to 1",
        ge=1,
    )
    line_no.report(
        found,
        pc.greater(line_no.values, schemas.INT32_MAX),
        "less_than_equal",
        f"Input should be less than or equal to {schemas.INT32_MAX}",
        le=schemas.INT32_MAX,
    )
    _check_strings(lines, _LINE_STRINGS, found)
    quantity = lines["quantity"]
    _check_required(quantity, found, "int_type", "Input should be a valid integer")
    # The JSON body's bounds (schemas.QUANTITY_MAX), so both bodies accept the same quantities.
    quantity.report(
        found,
        pc.greater(quantity.values, schemas.QUANTITY_MAX),
        "less_than_equal",
        f"Input should be less than or equal to {schemas.QUANTITY_MAX}",
        le=schemas.QUANTITY_MAX,
    )
    quantity.report(
        found,
        pc.less(quantity.values, -schemas.QUANTITY_MAX),
        "greater_than_equal",
        f"Input should be greater than or equal to {-schemas.QUANTITY_MAX}",
        ge=-schemas.QUANTITY_MAX,
    )
    price = lines["unit_price"]
    _check_required(
        price, found, "decimal_type", "Decimal input should be an integer, float, string or Decimal object"
    )
    price.report(
        found,
        pc.greater(pc.abs(price.values), pa.scalar(_MAX_PRICE, price.values.type)),
        "decimal_max_digits",
        f"Decimal input should have no more than {models.PRICE_PRECISION} digits in total",
        echo=False,
        max_digits=models.PRICE_PRECISION,
    )
    _check_timestamp(lines["invoice_date"], found, nullable=True)


# --- what is stored ------------------------------------------------------------------------------


def _to_store(
    header: dict[str, pa.Array], line_values: dict[str, pa.Array], parents: np.ndarray, lengths: np.ndarray
) -> invoice_store.InvoicesToStore:
    """Valid columns as `invoice_store.InvoicesToStore`: per invoice the header, hash, line count and
    amount; the lines as one flat table."""
    invoice_no, invoice_date = header["invoice_no"], header["invoice_date"]
    customer_id, country = header["customer_id"], header["country"]
    parent = pa.array(parents, pa.int64())
    line_date = line_values["invoice_date"]
    # A line without its own timestamp has the invoice's, as in the JSON body.
    line_date = pc.if_else(line_date.is_null(), invoice_date.take(parent), line_date)
    lines = pa.table(
        [
            parent,
            line_values["line_no"].cast(pa.int32()),
            line_values["stock_code"],
            line_values["description"],
            line_values["quantity"],
            line_values["unit_price"].cast(PRICE_TYPE),
            line_date,
        ],
        schema=STORED_LINE_SCHEMA,
    )
    hashes = content_hashes(invoice_no, customer_id, invoice_date, country, lines)
    amounts = _amounts(lines, len(invoice_no))
    invoices = [
        invoice_store.InvoiceToStore(no, customer, date, place, hashed, int(count), amount)
        for no, customer, date, place, hashed, count, amount in zip(
            invoice_no.to_pylist(),
            customer_id.to_pylist(),
            invoice_date.to_pylist(),
            country.to_pylist(),
            hashes,
            lengths,
            amounts,
            strict=True,
        )
    ]
    return invoice_store.InvoicesToStore(invoices=invoices, lines=lines)


def _amounts(lines: pa.Table, count: int) -> list[Decimal]:
    """Per invoice, the exact sum of quantity * unit_price of its lines (0 without lines)."""
    amounts = [Decimal(0)] * count
    if not lines.num_rows:
        return amounts
    # int64 * decimal(12, 3) fits decimal128(32, 3); 50,000 of them summed fit decimal128(38, 3).
    products = pc.multiply(lines.column("quantity").cast(pa.decimal128(19, 0)), lines.column("unit_price"))
    sums = (
        pa.table({"invoice": lines.column("invoice"), "amount": products})
        .group_by("invoice")
        .aggregate([("amount", "sum")])
    )
    for invoice, amount in zip(
        sums.column("invoice").to_pylist(), sums.column("amount_sum").to_pylist(), strict=True
    ):
        amounts[invoice] = amount
    return amounts


def content_hashes(
    invoice_no: pa.Array, customer_id: pa.Array, invoice_date: pa.Array, country: pa.Array, lines: pa.Table
) -> list[str]:
    """The content hash (`retail_contract`) of every invoice; `lines` is a `STORED_LINE_SCHEMA` table.

    The lines are nested per invoice in `line_no` order as the one definition wants them; they are
    sorted only when a client sent them out of order (the job never does).
    """
    count = len(invoice_no)
    ordered = lines.combine_chunks()
    invoice_of, line_nos = ordered.column("invoice").to_numpy(), ordered.column("line_no").to_numpy()
    step, line_step = np.diff(invoice_of), np.diff(line_nos)
    if not np.all((step > 0) | ((step == 0) & (line_step > 0))):
        ordered = ordered.sort_by([("invoice", "ascending"), ("line_no", "ascending")]).combine_chunks()
    lengths = np.bincount(ordered.column("invoice").to_numpy(), minlength=count)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32())
    struct = pa.StructArray.from_arrays(
        [ordered.column(name).combine_chunks() for name in LINE_FIELDS],
        names=list(LINE_FIELDS),
    )
    nested = pa.ListArray.from_arrays(offsets, struct)
    return content_hash.content_hashes(invoice_no, customer_id, invoice_date, country, nested)
