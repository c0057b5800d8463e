"""Request and response bodies (pydantic v2): a Create / Public family per entity.

Field limits match the database columns (`api.models`), so anything that validates can be stored.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal
from typing import Annotated, Any, Literal, NotRequired

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NaiveDatetime,
    PlainSerializer,
    PrivateAttr,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from api import models
from retail_contract.content_hash import money_text
from retail_contract.wire import MAX_BULK_CUSTOMERS, MAX_BULK_INVOICES, MAX_BULK_LINES

MAX_INVOICE_LINES = MAX_BULK_LINES

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Patterns shared with the path parameters (api.deps). Identifiers that travel in URL paths exclude "/"
# and control characters; PostgreSQL cannot store NUL in text at all. A customer id is any such string
# (the course's model is `customer_id: str`: "22ff32f22f"); the data set's are digits ("17850").
CUSTOMER_ID_PATTERN = r"^[^\x00-\x1f\x7f/]+$"
INVOICE_NO_PATTERN = r"^[A-Za-z0-9]+$"
STOCK_CODE_PATTERN = r"^[^\x00-\x1f\x7f/]+$"
COUNTRY_PATTERN = r"^[^\x00-\x1f\x7f]+$"
DESCRIPTION_PATTERN = r"^[^\x00]*$"

#: A read-back cursor: `<invoice_day>_<invoice_no>` of the last invoice of the previous page.
INVOICE_CURSOR_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])_[A-Za-z0-9]{1,20}$"

_THOUSANDTH = Decimal("0.001")

# The data's timestamps are naive local (UK) time. OpenAPI's `date-time` format requires an offset, so
# declaring it would make every answer invalid for a strict client: describe what is really exchanged.
LOCAL_DATE_TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?$"
# What a request may send, exactly: a real calendar date (leap years included, year 0001 on), then
# optionally a time of day ("2021-01-05" alone is its midnight). Checked before parsing, so what the
# schema says is what is accepted (a parser would also take "2021-1-5" or a Unix timestamp).
_YEAR = r"(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = (
    r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    r"|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
DATE_PATTERN_BODY = rf"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_TIME = r"[T ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?"
#: A calendar date, `YYYY-MM-DD`.
DATE_PATTERN = rf"^{DATE_PATTERN_BODY}$"
#: A request's timestamp: a date, optionally with a time of day.
LOCAL_DATE_OR_TIME_PATTERN = rf"^{DATE_PATTERN_BODY}(?:{_TIME})?$"
_DATE_OR_TIME = re.compile(LOCAL_DATE_OR_TIME_PATTERN)
_DATE = re.compile(DATE_PATTERN)


def _date_only_is_midnight(value: Any) -> Any:
    """A request's timestamp: text matching `LOCAL_DATE_OR_TIME_PATTERN` exactly (a date alone is that
    day's midnight); a datetime passes (a stored invoice being patched); anything else is refused."""
    if isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str) or not _DATE_OR_TIME.fullmatch(value):
        raise PydanticCustomError(
            "datetime_format",
            'a timestamp is a date ("2021-01-05") or a local date and time ("2010-12-01T08:26:00")',
        )
    return value + "T00:00:00" if _DATE.fullmatch(value) else value


def _iso_date(value: Any) -> Any:
    """A date exactly as `YYYY-MM-DD` text (a parser would also take a Unix timestamp, "0")."""
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise PydanticCustomError("date_format", "a date is YYYY-MM-DD, a real calendar day")
    return value


#: A date in a query: `YYYY-MM-DD` only.
IsoDate = Annotated[
    dt.date,
    BeforeValidator(_iso_date),
    WithJsonSchema({"type": "string", "format": "date", "pattern": DATE_PATTERN}),
]


LocalDatetime = Annotated[
    NaiveDatetime,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": LOCAL_DATE_TIME_PATTERN,
            "description": "Local (UK) time without an offset, as in the source data",
            "examples": ["2010-12-01T08:26:00"],
        }
    ),
]
#: A request's timestamp: a `LocalDatetime`, or a date alone for its midnight.
LocalDatetimeIn = Annotated[
    NaiveDatetime,
    BeforeValidator(_date_only_is_midnight),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": LOCAL_DATE_OR_TIME_PATTERN,
            "description": "Local (UK) time without an offset, or a date alone (its midnight)",
            "examples": ["2010-12-01T08:26:00", "2021-01-05"],
        }
    ),
]


#: The integers an id may be sent as (kept as their decimal string): exact in a binary float too, so
#: every JSON parser reads the bounds alike.
ID_INTEGER_MAX = 10**15 - 1


def _int_to_str(value: Any) -> Any:
    """Accept integer ids (`17850`, or `17850.0`, which JSON Schema counts as an integer) as their decimal
    string; leave everything else to validation."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= ID_INTEGER_MAX:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > ID_INTEGER_MAX:
            raise PydanticCustomError(
                "id_integer_range", "an id sent as an integer has at most 15 digits; send longer ones as text"
            )
        return str(value)
    return value


def _integer(value: Any) -> Any:
    """An integer from JSON: an int, or a float without a fractional part (`256.0`, which JSON Schema
    counts as an integer); text ("6"), booleans and fractions are refused, as the schema says."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= QUANTITY_MAX:
        return int(value)
    return value


def _three_places(value: Decimal) -> Decimal:
    """One spelling per amount ("2.550"), so stored and posted content compare equal; no "-0"."""
    value = value.quantize(_THOUSANDTH)
    return value if value else Decimal("0.000")


CustomerId = Annotated[
    str,
    BeforeValidator(_int_to_str),
    StringConstraints(min_length=1, max_length=models.CUSTOMER_ID_LENGTH, pattern=CUSTOMER_ID_PATTERN),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": models.CUSTOMER_ID_LENGTH,
                    "pattern": CUSTOMER_ID_PATTERN,
                },
                # An integer is kept as its decimal string, which must fit the column.
                {"type": "integer", "minimum": -ID_INTEGER_MAX, "maximum": ID_INTEGER_MAX},
            ],
            "examples": ["17850", "22ff32f22f"],
        }
    ),
]
InvoiceNo = Annotated[
    str,
    BeforeValidator(_int_to_str),
    StringConstraints(min_length=1, max_length=models.INVOICE_NO_LENGTH, pattern=INVOICE_NO_PATTERN),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": models.INVOICE_NO_LENGTH,
                    "pattern": INVOICE_NO_PATTERN,
                },
                {"type": "integer", "minimum": 0, "maximum": ID_INTEGER_MAX},
            ],
            "examples": ["536365", 123456],
        }
    ),
]
StockCode = Annotated[
    str, StringConstraints(min_length=1, max_length=models.STOCK_CODE_LENGTH, pattern=STOCK_CODE_PATTERN)
]
Country = Annotated[
    str, StringConstraints(min_length=1, max_length=models.COUNTRY_LENGTH, pattern=COUNTRY_PATTERN)
]
Description = Annotated[
    str, StringConstraints(max_length=models.DESCRIPTION_LENGTH, pattern=DESCRIPTION_PATTERN)
]
#: Quantities are integers of at most 15 digits: exact in a binary float too, so a JSON parser that
#: reads numbers as doubles agrees on the bounds (the data's largest is 80,995).
QUANTITY_MAX = 10**15 - 1
# Strict: "6" or 6.5 are not quantities (lax mode would turn "6" into 6, which the schema does not say).
Quantity = Annotated[
    int,
    BeforeValidator(_integer),
    Field(strict=True, ge=-QUANTITY_MAX, le=QUANTITY_MAX),
    WithJsonSchema({"type": "integer", "minimum": -QUANTITY_MAX, "maximum": QUANTITY_MAX}),
]
LineNo = Annotated[
    int,
    BeforeValidator(_integer),
    Field(strict=True, ge=1, le=INT32_MAX),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": INT32_MAX}),
]

#: A price as text: up to 9 digits before the point and 3 after, no exponent, no spaces.
PRICE_TEXT_PATTERN = r"^[+-]?[0-9]{1,9}(\.[0-9]{1,3})?$"
_PRICE_TEXT = re.compile(PRICE_TEXT_PATTERN)
_MAX_PRICE = Decimal(10 ** (models.PRICE_PRECISION - models.PRICE_SCALE)) - _THOUSANDTH


def _price_in(value: Any) -> Any:
    """A price from JSON: text matching `PRICE_TEXT_PATTERN` exactly, or a number.

    A JSON number reaches us as a binary float: one within a few ulps of a three-decimal amount is that
    amount (`2.55`, or `2549 * 0.001` computed by a client), any other is refused, never rounded.
    """
    if isinstance(value, str):
        if not _PRICE_TEXT.fullmatch(value):
            raise PydanticCustomError(
                "price_format",
                'a price is text of up to 9 digits and 3 decimals ("2.55", "-0.5") or a JSON number',
            )
        return Decimal(value)
    if isinstance(value, float) and not isinstance(value, bool):
        if not math.isfinite(value) or abs(value) > float(_MAX_PRICE):
            raise PydanticCustomError("price_range", "a price is between -999999999.999 and 999999999.999")
        amount = Decimal(repr(value)).quantize(_THOUSANDTH)
        if abs(float(amount) - value) > 4 * math.ulp(value):
            raise PydanticCustomError(
                "decimal_max_places", "Decimal input should have no more than 3 decimal places"
            )
        return amount
    return value


#: Exact money in: a JSON string ("2.55") or number, at most 3 decimals and 12 digits.
UnitPrice = Annotated[
    Decimal,
    BeforeValidator(_price_in),
    Field(max_digits=models.PRICE_PRECISION, decimal_places=models.PRICE_SCALE),
    AfterValidator(_three_places),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": PRICE_TEXT_PATTERN},
                {
                    "type": "number",
                    "minimum": -float(_MAX_PRICE),
                    "maximum": float(_MAX_PRICE),
                    "multipleOf": 0.001,
                },
            ],
            "description": 'Exact: text ("2.55") or a number, at most 9 digits and 3 decimals',
            "examples": ["2.55"],
        }
    ),
]
#: Exact money out: always a JSON string with three decimals ("2.550").
Money = Annotated[Decimal, PlainSerializer(money_text, return_type=str, when_used="json")]


# --- customers ------------------------------------------------------------------------------------


class CustomerCreate(BaseModel):
    """A customer to create; an integer id is accepted and kept as its decimal string."""

    customer_id: CustomerId
    country: Country


class CustomerReplace(BaseModel):
    """The body of PUT /customer/{customer_id}: the customer's country. The path names the customer; a
    body that names it too (what GET returned, sent back) must name the same one, else 422."""

    #: Out of the schema, which cannot say "equal to the path's"; checked by the route.
    customer_id: SkipJsonSchema[CustomerId | None] = None
    country: Country


class CustomerPublic(BaseModel):
    """A stored customer."""

    customer_id: str
    country: str


class CustomerLink(BaseModel):
    """Where an invoice's customer lives."""

    url: str


# --- lines ----------------------------------------------------------------------------------------


class LineFields(BaseModel):
    """What a line carries besides its stock code; the body of POST /invoice/{no}/{stockcode}/."""

    line_no: LineNo | None = None
    description: Description | None = None
    quantity: Quantity
    unit_price: UnitPrice
    invoice_date: LocalDatetimeIn | None = None


# Lines inside invoices are TypedDicts, not models: a bulk request carries up to 50,000 of them and
# pydantic validates and serialises plain dicts several times faster than model instances.


class LineCreate(TypedDict):
    """A line inside an invoice body.

    Missing `line_no`: the next one; missing `invoice_date`: the invoice's; missing `description`: null.
    """

    line_no: NotRequired[LineNo | None]
    stock_code: StockCode
    description: NotRequired[Description | None]
    quantity: Quantity
    unit_price: UnitPrice
    invoice_date: NotRequired[LocalDatetimeIn | None]


class LinePublic(TypedDict):
    """A stored line."""

    line_no: int
    stock_code: str
    description: str | None
    quantity: int
    unit_price: Money
    invoice_date: LocalDatetime


# --- invoices -------------------------------------------------------------------------------------


def _number_lines(lines: list[LineCreate], info: ValidationInfo) -> list[LineCreate]:
    """Fill in missing line numbers and timestamps. A line number used twice is not a schema error (no
    JSON Schema can say it) but a conflict the write refuses (`invoice_store.duplicate_line_no`)."""
    invoice_date = info.data.get("invoice_date")
    next_no = 1
    for line in lines:
        line_no = line.get("line_no")
        if line_no is None:
            line_no = line["line_no"] = next_no
        next_no = max(next_no, line_no + 1)
        if line.get("invoice_date") is None:
            line["invoice_date"] = invoice_date
        line.setdefault("description", None)
    return lines


class InvoiceCreate(BaseModel):
    """An invoice for POST /customer/{customer_id}/invoice; lines are optional, and so is `country`
    (the customer's). An integer `invoice_no` is kept as its decimal string."""

    invoice_no: InvoiceNo
    invoice_date: LocalDatetimeIn
    country: Country | None = Field(default=None, description="Missing: the customer's country")
    lines: list[LineCreate] = Field(default_factory=list, max_length=MAX_INVOICE_LINES)

    _lines = field_validator("lines")(_number_lines)


#: Without a customer an invoice needs its own country: the schema says so (one of the two is there).
COUNTRY_OR_CUSTOMER: dict[str, Any] = {
    "anyOf": [
        {"required": ["country"], "properties": {"country": {"type": "string"}}},
        {"required": ["customer_id"], "properties": {"customer_id": {"not": {"type": "null"}}}},
    ]
}


class InvoiceWithCustomerCreate(InvoiceCreate):
    """An invoice for POST /invoice: the customer, if any, is in the body; without a customer the
    invoice needs its `country`."""

    model_config = ConfigDict(json_schema_extra=COUNTRY_OR_CUSTOMER)

    customer_id: CustomerId | None = None


class BulkInvoiceCreate(InvoiceWithCustomerCreate):
    """An invoice of a bulk write: `country` is required (a batch's hashes are computed before any
    customer is read)."""

    country: Country


class InvoiceReplace(BaseModel):
    """The body of PUT /invoice/{invoice_no}: the whole invoice, its lines replacing the stored ones.

    The path names the invoice; a body that names it too (what GET returned, sent back) must name the
    same one, else 422. A missing `customer_id` is an invoice without a customer; a missing `country`
    is the customer's. What GET adds besides (`invoice_day`, the `customer` link) is derived, and
    ignored.
    """

    model_config = ConfigDict(json_schema_extra=COUNTRY_OR_CUSTOMER)

    #: Out of the schema, which cannot say "equal to the path's"; checked by the route.
    invoice_no: SkipJsonSchema[InvoiceNo | None] = None
    invoice_date: LocalDatetimeIn
    country: Country | None = Field(default=None, description="Missing: the customer's country")
    customer_id: CustomerId | None = None
    lines: list[LineCreate] = Field(default_factory=list, max_length=MAX_INVOICE_LINES)

    _lines = field_validator("lines")(_number_lines)


class InvoicePublic(BaseModel):
    """A stored invoice with all its lines, in `line_no` order."""

    invoice_no: str
    invoice_date: LocalDatetime
    invoice_day: dt.date
    country: str
    customer_id: str | None
    customer: CustomerLink | None
    lines: list[LinePublic]


# --- stock codes ----------------------------------------------------------------------------------


class StockCodePublic(BaseModel):
    """What the stored lines say about one stock code."""

    stock_code: str
    descriptions: list[str]
    min_unit_price: Money
    max_unit_price: Money
    line_count: int
    invoice_count: int


# --- bulk write and read-back ---------------------------------------------------------------------


class BulkCustomersCreate(BaseModel):
    """Many customers in one request."""

    customers: list[CustomerCreate] = Field(max_length=MAX_BULK_CUSTOMERS)


class BulkCustomersResult(BaseModel):
    """`existing` ids were left as stored; `conflicts` are those stored under another country."""

    created: int
    existing: int
    conflicts: list[str]


class BulkInvoicesCreate(BaseModel):
    """Many invoices with their lines, written in one transaction."""

    invoices: list[BulkInvoiceCreate] = Field(max_length=MAX_BULK_INVOICES)

    @field_validator("invoices")
    @classmethod
    def _limit_lines(cls, invoices: list[BulkInvoiceCreate]) -> list[BulkInvoiceCreate]:
        """At most 50,000 lines per request, so one transaction stays short."""
        total = sum(len(invoice.lines) for invoice in invoices)
        if total > MAX_BULK_LINES:
            raise PydanticCustomError(
                "too_many_lines",
                "at most {limit} lines per request, got {total}",
                {"limit": MAX_BULK_LINES, "total": total},
            )
        return invoices


class BulkInvoicesResult(BaseModel):
    """What a bulk write did: invoices created, invoices already stored identically, lines created."""

    created: int
    unchanged: int
    lines_created: int
    # Not part of the answer: the invoice numbers behind the counts, for the request's log line.
    _created_nos: list[str] = PrivateAttr(default_factory=list)
    _unchanged_nos: list[str] = PrivateAttr(default_factory=list)


#: A content hash: lowercase hex sha256 of an invoice's canonical form (docs/design.md, "Content hash").
ContentHash = Annotated[str, StringConstraints(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")]


class InvoiceHashes(BaseModel):
    """Invoice numbers with the content hash the client computed for each."""

    invoices: dict[InvoiceNo, ContentHash] = Field(
        max_length=MAX_BULK_LINES,
        json_schema_extra={
            "propertyNames": {
                "minLength": 1,
                "maxLength": models.INVOICE_NO_LENGTH,
                "pattern": INVOICE_NO_PATTERN,
            },
            "maxProperties": MAX_BULK_LINES,
        },
    )


class InvoiceHashComparison(BaseModel):
    """How the stored invoices compare with the hashes sent: each number sent is in one list, sorted."""

    unchanged: list[str]
    different: list[str]
    missing: list[str]
    #: Not stored because a client deleted them (the change feed keeps the deletion): a source run
    #: names them instead of posting them again unasked. Not in `missing`.
    deleted: list[str] = Field(default_factory=list)


class InvoicePage(BaseModel):
    """One page of invoices; pass `next_cursor` back as `cursor` for the next page (null: last page)."""

    items: list[InvoicePublic]
    next_cursor: str | None


class CustomerPage(BaseModel):
    """One page of customers; pass `next_cursor` back as `cursor` for the next page (null: last page)."""

    items: list[CustomerPublic]
    next_cursor: str | None


# --- the change feed and the invoice days (issue 28) ----------------------------------------------

#: A feed cursor: a position (`next_cursor` of a page, or `position` of the head); 0 is the start.
FEED_CURSOR_PATTERN = r"^[0-9]{1,19}$"

ChangeKind = Literal["created", "replaced", "patched", "deleted"]
ChangeResource = Literal["customer", "invoice", "line"]


class ChangePublic(BaseModel):
    """One committed change, at its place in commit order."""

    position: int = Field(description="Its place in the feed: pass the last one read as `after`")
    committed_at: str = Field(
        description="UTC, ISO 8601 with `Z`: when the feed first saw it committed (at or after the commit)"
    )
    kind: ChangeKind
    resource: ChangeResource
    id: str = Field(
        description="The resource's id: a customer id, an invoice number, or `<invoice_no>/<stock_code>` "
        "for the lines of one stock code of an invoice (`/invoice/{no}/{code}/`)"
    )
    invoice_day: dt.date | None = Field(description="The invoice day it touches; null for a customer")
    previous_invoice_day: dt.date | None = Field(
        description="The day the invoice had before, when the change moved it to another day"
    )
    event_id: str = Field(description="The id of the same change's event on the queue")
    content: CustomerPublic | InvoicePublic | list[LinePublic] | None = Field(
        description="The resource after the change, as its GET answers it; null for a deletion"
    )


class ChangePage(BaseModel):
    """Changes after the cursor, in commit order; pass `next_cursor` back as `after`."""

    changes: list[ChangePublic]
    next_cursor: str = Field(pattern=FEED_CURSOR_PATTERN, description="The last position read (or `after`)")
    more: bool = Field(description="Whether more changes follow right now")


class ChangeFeedHead(BaseModel):
    """The feed's head: a snapshot read after asking continues from `cursor`."""

    position: int
    cursor: str = Field(pattern=FEED_CURSOR_PATTERN)
    purged_through: int = Field(description="Changes up to this position were deleted by retention")


class InvoiceDayTotals(BaseModel):
    """What the service holds for one invoice day, computed by the database."""

    invoice_day: dt.date
    invoices: int
    lines: int
    amount: Money = Field(description="Sum of quantity x unit_price over the day's lines, exact")


class InvoiceDays(BaseModel):
    """The invoice days of a range that have an invoice, in day order."""

    days: list[InvoiceDayTotals]


# --- service --------------------------------------------------------------------------------------


class Message(BaseModel):
    """A short human-readable message."""

    message: str


class HealthPublic(BaseModel):
    """Whether the service and its database answer."""

    status: str
    database: str
