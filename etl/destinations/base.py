"""The one small interface every destination implements, and the values that cross it.

A destination receives the job's results one invoice day at a time, as the lake holds that day
(`DayTables`): it publishes the day (first time or rerun: idempotent), replaces it (a correction: the same
end state, announced as a replacement), and verifies it against the day's totals (`DayTotals`), raising
`ReconciliationError` when counts or money differ.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.compute as pc
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from etl.errors import ReconciliationError
from retail_contract.lake_layout import TABLES

log = logging.getLogger("etl.destinations")

#: Connection attempts before a destination is called unreachable (waits 0.25, 0.5, 1 s between them).
CONNECT_ATTEMPTS = 4


@dataclass(frozen=True)
class DayFile:
    """One table's file of a lake day: where (relative to the lake root), its bytes' sha256, its rows.
    A day without rows in that table has no file (`path` and `sha256` None)."""

    rows: int
    path: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class DayTotals:
    """What a destination must hold for a day: counts, and money as exact decimals."""

    lines: int
    quantity: int
    amount: Decimal  # sum of quantity x unit price over the day's lines
    invoices: int
    invoice_amount: Decimal  # sum of the invoices' total_amount: equals `amount` when the day is whole
    customers: int  # customers invoiced that day

    @classmethod
    def of(cls, tables: Mapping[str, pa.Table]) -> DayTotals:
        """The totals of a day's lake tables (`invoice_lines`, `invoices`, `customers`)."""
        lines, invoices = tables["invoice_lines"], tables["invoices"]
        # decimal128(12,3) x decimal128(19,0): exact, and so is the sum (as in etl.lake's invoices).
        amount = pc.multiply(lines["unit_price"], pc.cast(lines["quantity"], pa.decimal128(19, 0)))
        return cls(
            lines=lines.num_rows,
            quantity=int(pc.sum(lines["quantity"]).as_py() or 0),
            amount=_decimal(pc.sum(amount).as_py()),
            invoices=invoices.num_rows,
            invoice_amount=_decimal(pc.sum(invoices["total_amount"]).as_py()),
            customers=tables["customers"].num_rows,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: money as decimal strings (never floats)."""
        return {f.name: _json(getattr(self, f.name)) for f in fields(self)}

    def differences(self, found: DayTotals) -> dict[str, tuple[Any, Any]]:
        """{measure: (expected, found)} for every measure where `found` differs from these totals."""
        return {
            f.name: (getattr(self, f.name), getattr(found, f.name))
            for f in fields(self)
            if getattr(self, f.name) != getattr(found, f.name)
        }


def check_day(destination: str, day: dt.date, expected: DayTotals, found: DayTotals) -> None:
    """Raise `ReconciliationError` naming the day and each measure where `found` differs."""
    differences = expected.differences(found)
    if differences:
        shown = "; ".join(f"{name} {want} expected, {got} found" for name, (want, got) in differences.items())
        raise ReconciliationError(f"{destination} differs from the lake on {day}: {shown}")


@dataclass(frozen=True)
class DayTables:
    """One invoice day as the lake holds it: each of `TABLES` (the lake's table schema, with
    `invoice_day`), and each table's file (`files`; empty when the tables were not read from files)."""

    day: dt.date
    tables: Mapping[str, pa.Table]
    files: Mapping[str, DayFile] = field(default_factory=dict)

    @property
    def rows(self) -> dict[str, int]:
        """Rows per table."""
        return {name: self.tables[name].num_rows for name in TABLES if name in self.tables}

    def totals(self) -> DayTotals:
        """The day's totals, which every destination is verified against."""
        return DayTotals.of(self.tables)


@dataclass(frozen=True)
class DayReceipt:
    """What a destination took for one day."""

    destination: str
    day: dt.date
    rows: Mapping[str, int]
    replaced: bool = False
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the run report."""
        return {
            "destination": self.destination,
            "day": self.day.isoformat(),
            "rows": dict(self.rows),
            "replaced": self.replaced,
            **{k: _json(v) for k, v in self.detail.items()},
        }


class Destination(Protocol):
    """A place the job's days go to besides (or as) the lake."""

    #: Short name in summaries and errors: "lake", "warehouse", "queue".
    name: str

    def publish_day(self, day: DayTables) -> DayReceipt:
        """Make the destination hold `day` exactly (idempotent: a rerun leaves the same state)."""
        ...

    def replace_day(self, day: DayTables) -> DayReceipt:
        """As `publish_day`, for a day whose content changed (a correction); the receipt says so."""
        ...

    def verify_day(self, day: dt.date, expected: DayTotals) -> None:
        """Raise `ReconciliationError` unless the destination holds `expected` for `day`."""
        ...

    def close(self) -> None:
        """Release connections; the destination is not used afterwards."""
        ...


def redact(url: str) -> str:
    """`url` without its password, for summaries and logs (`amqp://guest:***@host/`)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def connection_retrying(errors: tuple[type[BaseException], ...], what: str) -> Retrying:
    """tenacity's retry loop for connecting to (or talking to) a destination: `CONNECT_ATTEMPTS`
    attempts with doubling waits on `errors`, each retry logged; the last error is re-raised."""

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("%s: %s; retrying (attempt %d)", what, _one_line(error), state.attempt_number + 1)

    return Retrying(
        stop=stop_after_attempt(CONNECT_ATTEMPTS),
        wait=wait_exponential(multiplier=0.25, max=4),
        retry=retry_if_exception_type(errors),
        before_sleep=log_retry,
        reraise=True,
    )


def one_line(error: BaseException | None) -> str:
    """An error as one line (drivers put newlines and hints in their messages)."""
    return _one_line(error)


def _one_line(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    return " ".join(str(error).split()) or type(error).__name__


def _decimal(value: Any) -> Decimal:
    return Decimal(0) if value is None else Decimal(value)


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, DayTotals):
        return value.as_dict()
    return value
