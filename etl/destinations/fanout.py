"""After the lake: the days to the warehouse, then the messages, each day verified where it landed.

The CLI's run (`etl.pipeline.run`) and the DAG's tasks (`etl.pipeline.task_load_warehouse`,
`task_notify`) call the same functions here. The order is the guarantee: the lake first, then every day
into the warehouse (each verified against the lake), then one message per day, so that a message only
ever names a day that the lake, and the warehouse when there is one, already hold.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection, Sequence
from typing import Any

from etl.destinations.base import DayReceipt, DayTables, Destination
from etl.destinations.queue import DEFAULT_EXCHANGE, QueueDestination, check_notify_url
from etl.destinations.warehouse import open_warehouse, parse_warehouse_url
from retail_contract.lake_layout import TABLES

log = logging.getLogger("etl.destinations")


def check_destinations(
    warehouse: str | None, notify: str | None, *, exchange: str = DEFAULT_EXCHANGE, connect: bool = True
) -> None:
    """Fail with `DestinationError` before the run writes anything when a destination's URL is bad or,
    with `connect`, when it cannot be reached (the warehouse's tables are created then)."""
    if warehouse:
        parse_warehouse_url(warehouse)
    if notify:
        check_notify_url(notify)
    if not connect:
        return
    if warehouse:
        open_warehouse(warehouse).close()
    if notify:
        QueueDestination(notify, lake="", run_id="", exchange=exchange).close()


def deliver(
    destination: Destination, days: Sequence[DayTables], *, replaced: Collection[dt.date] = ()
) -> list[DayReceipt]:
    """Each of `days` into `destination` (`replace_day` for the days in `replaced`, corrections), each
    verified right after against the lake's totals of the day; stops at the first failure."""
    receipts = []
    for day in days:
        receipt = destination.replace_day(day) if day.day in replaced else destination.publish_day(day)
        destination.verify_day(day.day, day.totals())
        receipts.append(receipt)
    return receipts


def load_warehouse(
    url: str, days: Sequence[DayTables], *, replaced: Collection[dt.date] = ()
) -> dict[str, Any]:
    """Load and verify `days` in the warehouse at `url`; returns what it received (for the summary)."""
    warehouse = open_warehouse(url)
    try:
        # All the run's days in one transaction, then every day verified: the per-day path of `deliver`
        # costs a transaction and three queries per day (the full year: 20 s against 2.6 s on DuckDB).
        receipts = warehouse.publish_days(days, replaced=replaced)
        warehouse.verify_days({day.day: day.totals() for day in days})
    finally:
        warehouse.close()
    summary = {"url": warehouse.display, **_received(receipts)}
    # The warehouse keeps one row per customer: say how many, not the sum of the days' customers.
    summary["rows"]["customers"] = warehouse.customers_upserted
    log.info("warehouse loaded", extra={"warehouse": warehouse.display, **summary["rows"]})
    return summary


def notify_days(
    url: str,
    days: Sequence[DayTables],
    *,
    exchange: str,
    lake: str,
    run_id: str,
    warehouse: str | None = None,
    replaced: Collection[dt.date] = (),
) -> dict[str, Any]:
    """One confirmed message per day of `days` to `exchange` at `url`; returns what was sent."""
    queue = QueueDestination(url, lake=lake, run_id=run_id, exchange=exchange, warehouse=warehouse)
    try:
        receipts = deliver(queue, days, replaced=replaced)
    finally:
        queue.close()
    summary = {"url": queue.display, "exchange": exchange, "messages": len(receipts), **_received(receipts)}
    log.info("days announced", extra={"exchange": exchange, "messages": len(receipts)})
    return summary


def _received(receipts: Sequence[DayReceipt]) -> dict[str, Any]:
    rows = dict.fromkeys(TABLES, 0)
    for receipt in receipts:
        for table, count in receipt.rows.items():
            rows[table] = rows.get(table, 0) + count
    return {
        "days": len(receipts),
        "replaced_days": sum(1 for r in receipts if r.replaced),
        "rows": {table: count for table, count in rows.items() if table in receipts[0].rows}
        if receipts
        else {},
    }
