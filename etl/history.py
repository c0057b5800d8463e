"""The lake's history of the service, kept by `retail-etl sync`: every change as the feed delivered it, and
the customers as a dimension with its versions (a type-2 slowly changing dimension, like dlt's `scd2`).

    <lake>/changes/part-<first position, 20 digits>.parquet     CHANGE_SCHEMA, one file per feed page
    <lake>/customer_history/part-0.parquet                     CUSTOMER_VERSION_SCHEMA, rewritten whole

- **changes** is append-only. A page's file is named after the page's first position, so a sync that
  reads the same pages again (a rerun from the same cursor, after a sync killed before saving it) writes
  the same files again: no change is kept twice.
- **customer_history** holds one current version per customer (`valid_to` null) and the earlier ones
  with their validity `[valid_from, valid_to)`, and the feed positions of the changes that began and
  ended each (times are when the service's feed first saw a commit, so two commits between two reads
  share one: order by position). The first sync's snapshot seeds it (`valid_from` null:
  since before the lake's history began); each customer change after that closes the current version
  at its commit time and opens the next (a deletion only closes). A change is applied once: one at or
  below the customer's last applied position is skipped, so reading it again changes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from etl.lake.storage import put_whole
from retail_contract.lake_layout import CHANGES_DIR, CUSTOMER_HISTORY_DIR

#: The lake's `changes` table: one row per change the service's feed delivered, as it delivered it.
CHANGE_SCHEMA = pa.schema(
    [
        pa.field("position", pa.int64(), nullable=False),
        pa.field("committed_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # created, replaced, patched, deleted
        pa.field("resource", pa.string(), nullable=False),  # customer, invoice, line
        pa.field("id", pa.string(), nullable=False),
        pa.field("invoice_day", pa.date32()),
        pa.field("previous_invoice_day", pa.date32()),
        pa.field("content", pa.string()),  # the resource after the change, as JSON; null: deleted
    ]
)

#: The lake's `customer_history` table: a customer's versions and when each held.
CUSTOMER_VERSION_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("valid_from", pa.timestamp("us", tz="UTC")),  # null: since before the lake's history
        pa.field("valid_to", pa.timestamp("us", tz="UTC")),  # null: the current version
        pa.field("position", pa.int64()),  # the change that made it; null: a snapshot's
        pa.field("valid_to_position", pa.int64()),  # the change that ended it; null: current, or a snapshot
    ]
)


def keep_changes(fs: fsspec.AbstractFileSystem, base: str, changes: Sequence[Mapping[str, Any]]) -> None:
    """One feed page into the lake's `changes` table, as one file named after its first position."""
    if not changes:
        return
    rows: dict[str, list[Any]] = {
        "position": [int(c["position"]) for c in changes],
        "committed_at": [_instant(c["committed_at"]) for c in changes],
        "kind": [c["kind"] for c in changes],
        "resource": [c["resource"] for c in changes],
        "id": [str(c["id"]) for c in changes],
        "invoice_day": [_day(c.get("invoice_day")) for c in changes],
        "previous_invoice_day": [_day(c.get("previous_invoice_day")) for c in changes],
        "content": [None if c.get("content") is None else json.dumps(c["content"]) for c in changes],
    }
    name = f"part-{rows['position'][0]:020d}.parquet"
    put_whole(fs, f"{base}/{CHANGES_DIR}/{name}", _parquet(pa.table(rows, schema=CHANGE_SCHEMA)))


class CustomerHistory:
    """The `customer_history` table, read once, changed in memory, saved whole when it changed."""

    def __init__(self, fs: fsspec.AbstractFileSystem, base: str) -> None:
        self.fs = fs
        self.path = f"{base}/{CUSTOMER_HISTORY_DIR}/part-0.parquet"
        try:
            with fs.open(self.path, "rb") as handle:
                self.versions: list[dict[str, Any]] = pq.read_table(handle).to_pylist()
        except FileNotFoundError:
            self.versions = []
        #: Each customer's current version, and the last change applied to it.
        self.current = {v["customer_id"]: v for v in self.versions if v["valid_to"] is None}
        self.applied: dict[str, int] = {}
        for version in self.versions:
            if version["position"] is not None:
                customer_id = version["customer_id"]
                self.applied[customer_id] = max(self.applied.get(customer_id, 0), version["position"])
        self.known = {v["customer_id"] for v in self.versions}
        self.changed = False

    def seed(self, customers: pa.Table, at: dt.datetime) -> None:
        """The countries a snapshot read (`customer_id`, `country`): a customer never seen gets a version
        since before the lake's history; one whose current country differs (changes the feed no longer
        had) gets a new version from `at`."""
        for customer_id, country in zip(
            customers.column("customer_id").to_pylist(), customers.column("country").to_pylist(), strict=True
        ):
            if customer_id is None or country is None:
                continue
            held = self.current.get(customer_id)
            if held is None:
                self._open(customer_id, country, at if customer_id in self.known else None, None)
            elif held["country"] != country:
                held["valid_to"] = at
                self._open(customer_id, country, at, None)

    def apply(self, changes: Sequence[Mapping[str, Any]]) -> None:
        """The customer changes among `changes`, in position order, each once."""
        for change in sorted(changes, key=lambda c: int(c["position"])):
            if change["resource"] != "customer":
                continue
            customer_id, position = str(change["id"]), int(change["position"])
            if position <= self.applied.get(customer_id, 0):
                continue  # applied already, by a sync that read this page before
            self.applied[customer_id] = position
            at = _instant(change["committed_at"])
            held = self.current.pop(customer_id, None)
            if held is not None:
                held["valid_to"] = at
                held["valid_to_position"] = position
                self.changed = True
            if change["kind"] != "deleted" and change.get("content"):
                self._open(customer_id, str(change["content"]["country"]), at, position)

    def save(self) -> None:
        """Write the table whole, if it changed."""
        if self.changed:
            table = pa.Table.from_pylist(self.versions, schema=CUSTOMER_VERSION_SCHEMA)
            put_whole(self.fs, self.path, _parquet(table.sort_by([("customer_id", "ascending")])))
            self.changed = False

    def _open(self, customer_id: str, country: str, since: dt.datetime | None, position: int | None) -> None:
        version = {
            "customer_id": customer_id,
            "country": country,
            "valid_from": since,
            "valid_to": None,
            "position": position,
            "valid_to_position": None,
        }
        self.versions.append(version)
        self.current[customer_id] = version
        self.known.add(customer_id)
        self.changed = True


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())


def _instant(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _day(value: str | None) -> dt.date | None:
    return dt.date.fromisoformat(value) if value else None
