"""`retail-etl sync`: the lake follows the service, every client's changes, incrementally.

The job as the API's consumer: what any client created, replaced, patched or deleted reaches the lake
(and the warehouse and the queue when configured) through the service's change feed (`GET /changes`,
docs/feed.md), with no source file. It runs on the runner's own stages (`etl.pipeline`): days in bounded
batches, read back from the service, written whole by the lake's commit protocol, delivered.

- **State**: `<lake>/_sync/state.json` holds the feed position the lake holds everything up to. It is
  written after the lake's days are committed (and delivered): a sync killed anywhere before that
  rewrites the same days again on its rerun, from the service's state of then, and a day whose content
  is what the lake has writes nothing. Nothing is lost (the cursor never passes an unwritten day) and
  nothing is applied twice (a day is replaced, never added to).
- **A first sync** (no state: an empty lake, or one written by `retail-etl run` only) reads the feed's
  head first, then every day the service or the lake has, then continues from that head: a change that
  commits while the snapshot is read is read again after it, which rewrites its day once more. A cursor
  the feed no longer holds (410: retention) is the same case and is read the same way.
- **Which days**: each change names its invoice day (and the day before, when it moved an invoice); a
  customer change names the days of the customer's invoices in the lake's `customers` table, where the
  country is kept per day. The cost follows the changes, not the lake.
- **The check**: after each batch, the lake's lines, invoices and amount per day against the service's
  own (`GET /invoice-days`, computed by its database). A day that differs fails the sync (exit 4),
  unless a change to it committed after the ones read: then it is rewritten in the next round.
- **One at a time**: `<lake>/_sync/lock`, taken with a conditional create and held for a lease; a
  second sync exits at once with exit 0 and says who holds it. The lock names its holder's host, PID
  namespace and pid: a sync killed without releasing it (SIGKILL, OOM, a lost Celery worker) is taken
  over at once by the next sync on the same host that finds that process gone; from elsewhere (another
  machine or container, which cannot see the process) it is taken over when its lease is over.
- **Rejects** come from source files, not from the service: a sync keeps each day's rejects as the lake
  has them.
- **History** (`etl.history`): every change read is kept in `<lake>/changes/`, and the customers with
  their versions in `<lake>/customer_history/`; both are written again the same way by a rerun from the
  same cursor. An analyst can ask what an invoice held, or where a customer was, at any time since the
  lake's first sync (docs/lake.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from etl.client import RetailClient
from etl.errors import CursorExpiredError, LakeError, ReconciliationError, SyncBusyError
from etl.history import CustomerHistory, keep_changes
from etl.lake import committed_files, filesystem, put_if_absent, read_lake_table, write_lake
from etl.lake.storage import put_whole
from etl.memory import release_free_heap
from etl.metrics import grouping_key, push_run_metrics
from etl.pipeline import (
    LogObserver,
    RunConfig,
    RunObserver,
    RunReport,
    StageTimer,
    deliver_days,
    new_run_id,
    plan_batches,
    run_config,
    save_report,
    service_client,
)
from etl.readback import read_back
from retail_contract.lake_layout import PARTITION_COLUMN, SYNC_DIR

log = logging.getLogger("etl.sync")

STATE_FORMAT = 1
#: How long a sync's lock holds without its owner renewing it: longer than any sync's pause.
LOCK_LEASE_SECONDS = 3600
#: Changes read per feed request.
CHANGES_PER_PAGE = 1000
#: Rounds of "read the new changes, rewrite their days" in one sync; what commits meanwhile beyond
#: them waits for the next sync, so a busy service cannot keep a sync running for ever.
MAX_ROUNDS = 10
#: Changes read in one round at most: their days are then rewritten and the cursor saved.
MAX_CHANGES_PER_ROUND = 100_000


@dataclass(frozen=True)
class DayFigures:
    """One invoice day as either side counts it."""

    lines: int
    invoices: int
    amount: Decimal


@dataclass
class _Round:
    """What one read of the feed found."""

    cursor: str
    changes: int
    days: set[dt.date]
    customers: set[str]


def sync(config: RunConfig, observer: RunObserver | None = None) -> RunReport:
    """Bring the lake (and the warehouse and queue when configured) up to date with the service.
    Returns the report when every rewritten day equals the service's; raises `SyncBusyError` when
    another sync holds the lake, `ReconciliationError` when a day differs, another `EtlError` when the
    service or the lake fails (the report saved either way)."""
    report = RunReport(
        run_id=new_run_id(),
        source=config.api_url,
        shape="sync",
        lake=config.lake,
        start=None,
        end=None,
        dry_run=False,
        settings=config.tuning(),
    )
    fs, base = filesystem(config.lake, config.storage_options)
    with _lock(fs, f"{base}/{SYNC_DIR}/lock"):
        stages = StageTimer(report, observer or LogObserver())
        try:
            asyncio.run(_Sync(config, report, stages, fs, base).run())
            report.status = "reconciled"
        except BaseException:
            report.status = "failed"
            raise
        finally:
            stages.finish()
            save_report(config, report)
            if config.pushgateway_url:
                # Its own group: a sync's outcome must not overwrite the last run's, nor hide it.
                push_run_metrics(
                    config.pushgateway_url, report.metrics, group={**grouping_key(), "pipeline": "sync"}
                )
    return report


class _Sync:
    def __init__(
        self,
        config: RunConfig,
        report: RunReport,
        stages: StageTimer,
        fs: fsspec.AbstractFileSystem,
        base: str,
    ) -> None:
        self.config = config
        self.report = report
        self.stages = stages
        self.fs = fs
        self.base = base
        self.history = CustomerHistory(fs, base)
        self.snapshot_at: dt.datetime | None = None
        self.state_path = f"{base}/{SYNC_DIR}/state.json"
        self.days_written: set[dt.date] = set()
        #: Each checked day's figures for the report, the day's latest check replacing an earlier one.
        self.day_checks: list[dict[str, Any]] = []
        self._day_check_at: dict[str, int] = {}
        report.sync = {
            "cursor_before": None,
            "cursor_after": None,
            "snapshot": None,
            "changes": 0,
            "rounds": 0,
        }

    async def run(self) -> None:
        async with service_client(self.config) as client:
            try:
                cursor = self._read_cursor()
                self.report.sync["cursor_before"] = cursor
                if cursor is None:
                    cursor = await self._snapshot(client, "no sync state in the lake")
                for _ in range(MAX_ROUNDS):
                    try:
                        found = await self._read_changes(client, cursor)
                    except CursorExpiredError:
                        cursor = await self._snapshot(client, "the lake's cursor expired in the feed")
                        continue
                    if not found.changes:
                        break
                    days = found.days | await self._customer_days(found.customers)
                    await self._rewrite(client, sorted(days), after=found.cursor)
                    self.history.save()
                    cursor = found.cursor
                    self._save_cursor(cursor)
                    self.report.sync["changes"] += found.changes
                    self.report.sync["rounds"] += 1
                self.report.sync["cursor_after"] = cursor
                self.report.days = sorted(day.isoformat() for day in self.days_written)
            finally:
                self.report.retries = dict(client.retry_stats.by_cause)

    async def _snapshot(self, client: RetailClient, why: str) -> str:
        """The whole service into the lake: every day either holds; the cursor to continue from."""
        log.info("sync reads a snapshot of the service", extra={"why": why})
        head = await client.get_change_head()
        cursor = str(head["cursor"])
        in_service = {dt.date.fromisoformat(day["invoice_day"]) for day in await client.get_invoice_days()}
        self.snapshot_at = dt.datetime.now(dt.UTC)
        await self._rewrite(client, sorted(in_service | self._lake_days()), after=cursor)
        self.snapshot_at = None
        self.history.save()
        self._save_cursor(cursor)
        self.report.sync["snapshot"] = {"why": why, "cursor": cursor}
        return cursor

    async def _read_changes(self, client: RetailClient, cursor: str) -> _Round:
        """The changes after `cursor`, up to MAX_CHANGES_PER_ROUND: their days and customers."""
        found = _Round(cursor=cursor, changes=0, days=set(), customers=set())
        with self.stages.stage("read changes") as counts:
            while found.changes < MAX_CHANGES_PER_ROUND:
                page = await client.get_changes(found.cursor, CHANGES_PER_PAGE)
                keep_changes(self.fs, self.base, page["changes"])
                self.history.apply(page["changes"])
                for change in page["changes"]:
                    for key in ("invoice_day", "previous_invoice_day"):
                        if change.get(key):
                            found.days.add(dt.date.fromisoformat(change[key]))
                    if change["resource"] == "customer":
                        found.customers.add(str(change["id"]))
                found.changes += len(page["changes"])
                found.cursor = str(page["next_cursor"])
                if not page["more"]:
                    break
            counts["changes_read"] = found.changes
        return found

    async def _customer_days(self, customers: set[str]) -> set[dt.date]:
        """The days on which the lake keeps a changed customer (its country is kept per day)."""
        if not customers:
            return set()
        kept = read_lake_table(self.config.lake, "customers", storage_options=self.config.storage_options)
        mask = pc.is_in(kept.column("customer_id"), value_set=pa.array(sorted(customers), pa.string()))
        days: list[dt.date] = kept.filter(mask).column(PARTITION_COLUMN).unique().to_pylist()
        return set(days)

    async def _rewrite(self, client: RetailClient, days: Sequence[dt.date], *, after: str) -> None:
        """Rewrite `days` of the lake from the service, batch by batch, each checked against the
        service's own figures; `after`: the feed position the days were read at."""
        if not days:
            return
        config = self.config
        service = await _service_figures(client, days)
        lines_per_day = {day: figures.lines for day, figures in service.items()}
        self.stages.expect(sum(lines_per_day.values()), len(days))
        for batch in plan_batches(days, lines_per_day, config.lines_per_batch):
            with self.stages.stage("read back") as counts:
                snapshot = await read_back(
                    client, batch, concurrency=config.concurrency, page_size=config.page_size
                )
                counts["lines_read_back"] = snapshot.lines.num_rows
                self.stages.observer.advanced("read back", snapshot.lines.num_rows)
                if self.snapshot_at is not None:
                    self.history.seed(snapshot.customers, self.snapshot_at)
            with self.stages.stage("write lake") as counts:
                # Rejects come from source files, which a sync does not read: each day keeps its own.
                rejects = read_lake_table(
                    config.lake, "rejects", batch, storage_options=config.storage_options
                )
                written = write_lake(
                    config.lake,
                    batch,
                    snapshot,
                    rejects,
                    source_fingerprint=None,
                    storage_options=config.storage_options,
                    sweep_whole_lake=not self.days_written,  # the first batch's write sweeps for all
                )
                counts["partitions_written"] = written.partitions_written
                counts["lines_written"] = written.rows.get("invoice_lines", 0)
                self.stages.observer.advanced("write lake", snapshot.lines.num_rows)
            with self.stages.stage("reconcile"):
                await self._check(client, batch, after)
            self.days_written.update(batch)
            # A sync's days are corrections of what the destinations had: replaced, not added.
            self.report.replaced_days = sorted({*self.report.replaced_days, *(d.isoformat() for d in batch)})
            deliver_days(config, self.report, self.stages, batch)
            release_free_heap()

    async def _check(self, client: RetailClient, days: Sequence[dt.date], after: str) -> None:
        """The lake's figures of `days` against the service's; a day that differs fails the sync unless
        a change to it committed after position `after` (the next round rewrites it)."""
        in_lake = _lake_figures(
            read_lake_table(
                self.config.lake, "invoice_lines", days, storage_options=self.config.storage_options
            )
        )
        in_service = await _service_figures(client, days)
        differing = {
            day: (in_lake.get(day), in_service.get(day))
            for day in days
            if in_lake.get(day) != in_service.get(day)
        }
        checked = self.report.reconciliation.setdefault("service", {"ok": True, "days_checked": 0})
        checked["days_checked"] += len(days)
        checked["days"] = self.day_checks
        for day in days:
            self._record_check(day, in_service.get(day), in_lake.get(day))
        if not differing:
            return
        moved = await self._days_changed_after(client, after)
        unexplained = {day: sides for day, sides in differing.items() if day not in moved}
        if unexplained:
            checked["ok"] = False
            shown = "; ".join(
                f"{day} lake {_describe(lake)} vs service {_describe(service)}"
                for day, (lake, service) in sorted(unexplained.items())[:5]
            )
            raise ReconciliationError(
                f"the lake differs from the service on {len(unexplained)} day(s): {shown}"
            )
        log.info("days changed again while they were written", extra={"days": [str(d) for d in differing]})

    def _record_check(self, day: dt.date, service: DayFigures | None, lake: DayFigures | None) -> None:
        """The day's figures as the run report shows a run's (`source` the service's, `other` the lake's)."""
        iso = day.isoformat()
        entry: dict[str, Any] = {
            "day": iso,
            "ok": service == lake,
            "source": _as_dict(service),
            "other": _as_dict(lake),
        }
        at = self._day_check_at.setdefault(iso, len(self.day_checks))
        if at == len(self.day_checks):
            self.day_checks.append(entry)
        else:
            self.day_checks[at] = entry

    async def _days_changed_after(self, client: RetailClient, after: str) -> set[dt.date]:
        days: set[dt.date] = set()
        customers: set[str] = set()
        cursor = after
        while True:
            page = await client.get_changes(cursor, CHANGES_PER_PAGE)
            for change in page["changes"]:
                for key in ("invoice_day", "previous_invoice_day"):
                    if change.get(key):
                        days.add(dt.date.fromisoformat(change[key]))
                if change["resource"] == "customer":
                    customers.add(str(change["id"]))
            cursor = str(page["next_cursor"])
            if not page["more"]:
                break
        return days | await self._customer_days(customers)

    def _lake_days(self) -> set[dt.date]:
        """The days the lake holds lines of."""
        files = committed_files(
            self.config.lake, "invoice_lines", storage_options=self.config.storage_options
        )
        days = set()
        for path in files:
            for part in path.split("/"):
                if part.startswith(f"{PARTITION_COLUMN}="):
                    with contextlib.suppress(ValueError):
                        days.add(dt.date.fromisoformat(part.split("=", 1)[1]))
        return days

    def _read_cursor(self) -> str | None:
        try:
            with self.fs.open(self.state_path, "rb") as handle:
                state = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LakeError(f"cannot read the sync state {self.state_path}: {exc}") from exc
        if state.get("format") != STATE_FORMAT:
            raise LakeError(
                f"the sync state {self.state_path} has format {state.get('format')!r}, this job reads "
                f"{STATE_FORMAT}: remove it and run `retail-etl sync` to read the lake anew"
            )
        return str(state["cursor"])

    def _save_cursor(self, cursor: str) -> None:
        state = {
            "format": STATE_FORMAT,
            "cursor": cursor,
            "service": self.config.api_url,
            "synced_at": dt.datetime.now(dt.UTC).isoformat(),
            "run_id": self.report.run_id,
        }
        put_whole(self.fs, self.state_path, json.dumps(state, indent=1).encode() + b"\n")


async def _service_figures(client: RetailClient, days: Sequence[dt.date]) -> dict[dt.date, DayFigures]:
    """The service's own figures of `days` (computed by its database)."""
    wanted = set(days)
    figures = {}
    for day in await client.get_invoice_days(min(days), max(days)):
        when = dt.date.fromisoformat(day["invoice_day"])
        if when in wanted:
            figures[when] = DayFigures(int(day["lines"]), int(day["invoices"]), Decimal(day["amount"]))
    return figures


def _lake_figures(lines: pa.Table) -> dict[dt.date, DayFigures]:
    """Lines, invoices and exact amount per day of the lake's `invoice_lines`."""
    if lines.num_rows == 0:
        return {}
    amount = pc.multiply(lines.column("quantity").cast(pa.decimal128(19, 0)), lines.column("unit_price"))
    grouped = (
        lines.select([PARTITION_COLUMN, "invoice_no"])
        .append_column("amount", amount)
        .group_by(PARTITION_COLUMN)
        .aggregate([("invoice_no", "count"), ("invoice_no", "count_distinct"), ("amount", "sum")])
    )
    return {
        day: DayFigures(int(count), int(invoices), Decimal(total).quantize(Decimal("0.001")))
        for day, count, invoices, total in zip(
            grouped.column(PARTITION_COLUMN).to_pylist(),
            grouped.column("invoice_no_count").to_pylist(),
            grouped.column("invoice_no_count_distinct").to_pylist(),
            grouped.column("amount_sum").to_pylist(),
            strict=True,
        )
    }


def _as_dict(figures: DayFigures | None) -> dict[str, Any]:
    found = figures or DayFigures(0, 0, Decimal("0.000"))
    return {"lines": found.lines, "invoices": found.invoices, "amount": str(found.amount)}


def _describe(figures: DayFigures | None) -> str:
    if figures is None:
        return "nothing"
    return f"{figures.lines} lines, {figures.invoices} invoices, {figures.amount}"


@contextlib.contextmanager
def _lock(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[None]:
    """Hold the lake's sync lock for the block; `SyncBusyError` when another sync holds it."""
    me = _this_process()
    owner = f"{me['host']}:{me['pid']}:{uuid.uuid4().hex[:8]}"
    body = json.dumps(
        {"owner": owner, **me, "since": time.time(), "lease_seconds": LOCK_LEASE_SECONDS}
    ).encode()
    with contextlib.suppress(OSError):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    if not put_if_absent(fs, path, body):
        holder = _holder(fs, path)
        expired = holder is None or time.time() - float(holder.get("since", 0)) >= float(
            holder.get("lease_seconds", LOCK_LEASE_SECONDS)
        )
        if holder is not None and not expired and not _holder_is_gone(holder, me):
            since = dt.datetime.fromtimestamp(float(holder["since"]), dt.UTC).isoformat(timespec="seconds")
            raise SyncBusyError(
                f"another sync ({holder.get('owner')}) holds the lake since {since}: nothing done"
            )
        # A sync killed without releasing the lock: its lease is over, or (on this host) its process
        # is gone. Take it over.
        why = "its lease is over" if expired else "its process is gone"
        holder_name = holder.get("owner") if holder is not None else "an unreadable lock"
        log.warning("taking over the sync lock of %s: %s", holder_name, why, extra={"holder": holder})
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path)
        if not put_if_absent(fs, path, body):
            raise SyncBusyError("another sync took over the lake's stale lock first: nothing done")
    try:
        yield
    finally:
        holder = _holder(fs, path)
        if holder is not None and holder.get("owner") == owner:
            with contextlib.suppress(OSError):
                fs.rm(path)


def _this_process() -> dict[str, Any]:
    """What the lock says of its holder: its host, PID namespace (None where there is none to read) and
    pid. Two containers may share a host name (`network_mode: host`) but not a PID namespace."""
    try:
        namespace: str | None = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = None
    return {"host": socket.gethostname(), "pid_namespace": namespace, "pid": os.getpid()}


def _holder_is_gone(holder: Mapping[str, Any], me: Mapping[str, Any]) -> bool:
    """Whether the lock's holder is a process of this host and PID namespace that no longer runs (it
    was killed without releasing the lock). A holder elsewhere, or a lock of an earlier job version
    that does not say where it runs, is never judged gone: its lease decides."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0 or "host" not in holder or "pid_namespace" not in holder:
        return False
    if (holder["host"], holder["pid_namespace"]) != (me["host"], me["pid_namespace"]):
        return False
    if pid == me["pid"]:
        return False  # this very process: alive (a lock it did not release is not another's)
    return _process_gone(pid)


def _process_gone(pid: int) -> bool:
    """Whether no process `pid` runs here (an exited one its parent has not reaped yet counts as gone)."""
    if os.name != "posix":
        return False  # no safe way to ask here: the lease decides
    if os.path.isdir("/proc/self"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        state = stat.rsplit(")", 1)[1].split()[0]
        return state in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it runs, as another user
        return False
    return False


def _holder(fs: fsspec.AbstractFileSystem, path: str) -> Mapping[str, Any] | None:
    try:
        with fs.open(path, "rb") as handle:
            holder: Mapping[str, Any] = json.load(handle)
            return holder
    except (FileNotFoundError, ValueError):
        return None


def task_sync(
    api_url: str,
    api_key: str,
    lake: str,
    *,
    warehouse_url: str | None = None,
    notify_url: str | None = None,
    notify_exchange: str | None = None,
) -> dict[str, Any]:
    """`sync` for the `retail_sync` DAG: the config built like the command line's (RETAIL_* settings, then
    the task's arguments); returns the report's JSON-ready summary for XCom."""
    config = run_config(
        api_url=api_url,
        api_key=api_key,
        lake=lake,
        warehouse_url=warehouse_url,
        notify_url=notify_url,
        notify_exchange=notify_exchange,
    )
    report = sync(config)
    return {
        "run_id": report.run_id,
        "lake": report.lake,
        "days": report.days,
        "status": report.status,
        "sync": report.sync,
    }
