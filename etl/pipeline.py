"""One run of the job: load → validate → post → read back → reconcile → write the lake → load the
warehouse → notify (the last two only when asked for; see `etl.destinations`).

`run` chains the stages in memory, for the command line. The `task_*` functions are the same stages cut
where the DAG's tasks are cut: each reads its input from, and leaves its output in, the run's work folder
under the lake (`<lake>/_work/<run key>/`, ignored by readers), and returns only paths and counts, so that
Airflow passes small JSON through XCom and a retried task starts from its predecessor's saved output.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl.client import RetailClient, RetryPolicy
from etl.config import JobSettings
from etl.destinations import fanout
from etl.destinations.lake_destination import LakeDestination
from etl.dialect import SourceOptions
from etl.lake import (
    LakeReport,
    filesystem,
    is_local_filesystem,
    read_lake_table,
    write_lake,
    write_run_report,
)
from etl.memory import release_free_heap
from etl.metrics import push_run_metrics, run_metrics
from etl.post import OnConflict, PostReport, parse_on_conflict, post_lines
from etl.readback import read_back
from etl.reconcile import (
    DistinctValues,
    ReconcileReport,
    RunReconciliation,
    lines_of_source_invoices,
    reconcile,
)
from etl.schema import (
    CUSTOMER_SCHEMA,
    LINE_SCHEMA,
    REJECT_SCHEMA,
    DayRange,
    ServiceSnapshot,
    ValidatedSource,
    in_line_order,
)
from etl.staging import Staging, stage_source
from etl.validate import rejects_by_reason
from retail_contract.lake_layout import PARTITION_COLUMN, WORK_DIR

log = logging.getLogger("etl.run")

# The job's Arrow buffers come from the C library's allocator unless the user chose a pool
# (ARROW_DEFAULT_MEMORY_POOL): with pyarrow's default, mimalloc, validating the full data set took anywhere
# from 0.53 to 1.12 s from one process to the next (11 runs); with the system allocator 0.60-0.61 s (4 runs),
# and the whole job was no slower.
if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
    pa.set_memory_pool(pa.system_memory_pool())

STAGES = ("load", "validate", "post", "read back", "reconcile", "write lake", "load warehouse", "notify")


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; the CLI and the DAG build it from their own inputs."""

    source: str
    api_url: str
    api_key: str
    lake: str
    days: DayRange = field(default_factory=DayRange)
    dry_run: bool = False
    concurrency: int = 4
    lines_per_request: int = 20_000
    page_size: int = 1000
    lines_per_batch: int = 250_000
    cache_dir: Path | None = None
    retry_budget_seconds: float = 300.0
    request_timeout_seconds: float = 60.0
    storage_options: Mapping[str, Any] | None = None
    #: Push the run's metrics here (`http://host:9091`) when it ends, reconciled or failed; None: no push.
    pushgateway_url: str | None = None
    #: Load each day into this warehouse after the lake (`etl.destinations.warehouse`); None: no warehouse.
    warehouse_url: str | None = None
    #: Announce each day on this AMQP broker after the lake and the warehouse; None: no message.
    notify_url: str | None = None
    notify_exchange: str = "retail.lake"
    #: The source's dialect as the user set it (`--date-format`, `--delimiter`, ...); the rest is detected.
    source_options: SourceOptions = field(default_factory=SourceOptions)
    #: An invoice stored with other content: `fail` the run (nothing stored), or `replace` it by PUT.
    on_conflict: OnConflict = "fail"

    def tuning(self) -> dict[str, int | float]:
        """How hard the run pushes the service and how much it holds at once: what the run report
        records as the settings it ran with."""
        return {
            "concurrency": self.concurrency,
            "lines_per_request": self.lines_per_request,
            "page_size": self.page_size,
            "lines_per_batch": self.lines_per_batch,
            "retry_budget_seconds": self.retry_budget_seconds,
            "request_timeout_seconds": self.request_timeout_seconds,
        }


def run_config(settings: JobSettings | None = None, **overrides: Any) -> RunConfig:
    """The run's configuration, built in one place for the command line and the DAG's tasks: every
    setting from `settings` (default: `JobSettings()`, i.e. RETAIL_* and .env), then each override that
    is not None (an option given, a DAG param, the Airflow connection)."""
    settings = settings or JobSettings()
    values: dict[str, Any] = {
        "source": settings.source or "",
        "api_url": settings.api_url,
        "api_key": settings.api_key.get_secret_value() if settings.api_key else "",
        "lake": settings.lake,
        "concurrency": settings.concurrency,
        "lines_per_request": settings.lines_per_request,
        "page_size": settings.page_size,
        "lines_per_batch": settings.lines_per_batch,
        "cache_dir": settings.cache_dir,
        "retry_budget_seconds": settings.retry_budget_seconds,
        "request_timeout_seconds": settings.request_timeout_seconds,
        "pushgateway_url": settings.pushgateway_url,
        "warehouse_url": settings.warehouse_url,
        "notify_url": settings.notify_url,
        "notify_exchange": settings.notify_exchange,
    }
    unknown = set(overrides) - {f.name for f in fields(RunConfig)}
    if unknown:
        raise TypeError(f"not a setting of a run: {', '.join(sorted(unknown))}")
    values.update({name: value for name, value in overrides.items() if value is not None})
    return RunConfig(**values)


class RunObserver(Protocol):
    """What a run tells its watcher: a progress bar on a terminal, log lines elsewhere."""

    def stage_started(self, stage: str, total: int | None) -> None:
        """A stage begins; `total` is its unit count when known (lines)."""

    def advanced(self, stage: str, amount: int) -> None:
        """`amount` more units of the stage are done."""

    def stage_finished(self, stage: str, seconds: float, counts: Mapping[str, int]) -> None:
        """A stage ended after `seconds`, with what it counted."""


class LogObserver:
    """Structured log lines, one per stage: the default off a terminal (Airflow, CI, cron)."""

    def stage_started(self, stage: str, total: int | None) -> None:
        log.info("stage started", extra={"stage": stage, "total": total})

    def advanced(self, stage: str, amount: int) -> None:
        pass

    def stage_finished(self, stage: str, seconds: float, counts: Mapping[str, int]) -> None:
        log.info("stage finished", extra={"stage": stage, "seconds": round(seconds, 3), **counts})


@dataclass
class RunReport:
    """The trace of one run, saved next to the data as `<lake>/_runs/<run_id>.json`."""

    run_id: str
    source: str
    shape: str
    lake: str
    start: str | None
    end: str | None
    dry_run: bool
    days: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    customer_conflicts: list[str] = field(default_factory=list)
    #: `fail` or `replace`: what the run did with invoices stored with other content.
    on_conflict: str = "fail"
    #: The invoices replaced by PUT (`on_conflict="replace"`), and the customers whose country was.
    replaced_invoices: list[str] = field(default_factory=list)
    replaced_customers: list[str] = field(default_factory=list)
    #: The invoice days of the replaced invoices: the days the destinations are told were replaced.
    replaced_days: list[str] = field(default_factory=list)
    #: How the source was read: date format, decimal mark, delimiter, encoding, and why (`SourceDialect`).
    dialect: dict[str, str] = field(default_factory=dict)
    #: Rejects per kind of reason (`etl.validate.reason_kind`: the reason without the values it quotes).
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    reconciliation: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    started_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat())
    #: Rows per stage, seconds per stage, retries by cause, duration, outcome: see `etl.metrics`.
    metrics: dict[str, Any] = field(default_factory=dict)
    #: What each destination besides the lake received: {"warehouse": {...}, "notify": {...}}.
    destinations: dict[str, Any] = field(default_factory=dict)
    #: The settings the run's stages used (`RunConfig.tuning`): from RETAIL_*, the options or the DAG.
    settings: dict[str, Any] = field(default_factory=dict)
    #: A sync's cursors, snapshot and changes read (`etl.sync`); empty for a run of a source.
    sync: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (its own lists and dicts, not copies: read, don't change)."""
        # Every field already holds plain values; `asdict` would deep-copy the per-day reconciliation
        # of a whole year (~0.07 s per call, twice per run).
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def update_metrics(self) -> dict[str, Any]:
        """Fill `metrics` from the run so far (what is saved and pushed at the end of a run)."""
        now = dt.datetime.now(dt.UTC)
        self.metrics = run_metrics(
            self.counts,
            self.seconds,
            self.retries,
            status=self.status,
            duration_seconds=(now - dt.datetime.fromisoformat(self.started_at)).total_seconds(),
            finished_timestamp_seconds=now.timestamp(),
        )
        return self.metrics


class StageTimer:
    """Times each stage and tells the observer. A stage runs once per batch: its seconds and counts add
    up, and the observer sees it start once and finish once (one progress bar per stage, for the run)."""

    def __init__(self, report: RunReport, observer: RunObserver) -> None:
        self.report = report
        self.observer = observer
        self.lines: int | None = None
        self.days: int | None = None
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, dict[str, int]] = {}

    def expect(self, lines: int, days: int) -> None:
        """The run's size: what the progress of each later stage is measured against."""
        self.lines, self.days = lines, days

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, int]]:
        """Time one batch's pass through stage `name`; what the block puts in the yielded dict is added
        to the run's counts."""
        counts: dict[str, int] = {}
        if name not in self.seconds:
            self.seconds[name] = 0.0
            self.counts[name] = {}
            total = self.days if name in ("load warehouse", "notify") else self.lines
            self.observer.stage_started(name, None if name == "load" else total)
        started = time.perf_counter()
        yield counts
        self.seconds[name] += time.perf_counter() - started
        self.report.seconds[name] = round(self.seconds[name], 3)
        for key, value in counts.items():
            self.counts[name][key] = self.counts[name].get(key, 0) + value
            self.report.counts[key] = self.report.counts.get(key, 0) + value
        if name == "load":  # runs once, before the batches
            self.observer.stage_finished(name, self.seconds[name], self.counts[name])

    def finish(self) -> None:
        """Tell the observer that every stage after `load` has ended."""
        for name, seconds in self.seconds.items():
            if name != "load":
                self.observer.stage_finished(name, seconds, self.counts[name])


def run_days(days: DayRange, present: Sequence[dt.date]) -> list[dt.date]:
    """The invoice days a run covers: every calendar day of a closed range (so that a day which lost
    its rows is emptied in the lake too), else the days present in the source."""
    if days.start is not None and days.end is not None:
        count = (days.end - days.start).days + 1
        return [days.start + dt.timedelta(days=i) for i in range(count)]
    return sorted(present)


def service_client(config: RunConfig) -> RetailClient:
    return RetailClient(
        config.api_url,
        config.api_key,
        policy=RetryPolicy(total_budget_seconds=config.retry_budget_seconds),
        timeout_seconds=config.request_timeout_seconds,
    )


def run(config: RunConfig, observer: RunObserver | None = None) -> RunReport:
    """Run the whole job once. Returns the report when everything reconciled; raises an `EtlError`
    (after saving the failed report when the lake is reachable) otherwise. With `pushgateway_url`, the
    run's metrics are pushed at the end whatever the outcome (not for a dry run)."""
    report = RunReport(
        run_id=new_run_id(),
        source=config.source,
        shape="",
        lake=config.lake,
        start=_iso(config.days.start),
        end=_iso(config.days.end),
        dry_run=config.dry_run,
        on_conflict=config.on_conflict,
        settings=config.tuning(),
    )
    try:
        return _run(config, report, StageTimer(report, observer or LogObserver()))
    except BaseException:
        report.status = "failed"
        raise
    finally:
        if config.pushgateway_url and not config.dry_run:
            if report.metrics.get("status") != report.status:  # failed before the report was saved
                report.update_metrics()
            push_run_metrics(config.pushgateway_url, report.metrics)


def _run(config: RunConfig, report: RunReport, stages: StageTimer) -> RunReport:
    """The stages of `run`, filling `report`: the source staged once (or reused), then the run's days in
    batches of at most `lines_per_batch` lines, each through the stages the DAG's tasks call."""
    # A misnamed or unreachable destination fails the run here, before anything is posted or written.
    fanout.check_destinations(
        config.warehouse_url, config.notify_url, exchange=config.notify_exchange, connect=not config.dry_run
    )
    with _staging_root(config) as (root, storage_options):
        with stages.stage("load") as counts:
            staging = stage_source(
                config.source,
                root,
                options=config.source_options,
                cache_dir=config.cache_dir,
                storage_options=storage_options,
            )
            report.shape = staging.shape
            report.dialect = staging.dialect
            counts["source_rows"] = staging.source_rows
        lines_per_day = staging.lines_per_day()
        days = run_days(config.days, [day for day in staging.days if config.days.contains(day)])
        report.days = [d.isoformat() for d in days]
        batches = plan_batches(days, lines_per_day, config.lines_per_batch)
        stages.expect(sum(lines_per_day.get(day, 0) for day in days), len(days))
        run = _BatchRun(config, report, stages, staging)
        try:
            try:
                if config.dry_run:
                    for batch in batches:
                        run.validate(batch)
                else:
                    asyncio.run(run.all(batches))
            finally:
                run.finish()  # the report's counts and checks, also for a failed run's report
            if config.dry_run:
                report.status = "dry run"
                return report
        except Exception:
            report.status = "failed"
            save_report(config, report)
            raise
        finally:
            stages.finish()
    report.status = "reconciled"
    save_report(config, report)
    return report


@contextmanager
def _staging_root(config: RunConfig) -> Iterator[tuple[str, Mapping[str, Any] | None]]:
    """Where the source is staged: under the lake, or for a dry run (which writes nothing there) a
    temporary folder removed afterwards."""
    if not config.dry_run:
        yield config.lake, config.storage_options
        return
    with tempfile.TemporaryDirectory(prefix="retail-etl-dry-run-") as folder:
        yield folder, None


def plan_batches(
    days: Sequence[dt.date], lines_per_day: Mapping[dt.date, int], max_lines: int
) -> list[tuple[dt.date, ...]]:
    """`days` cut into batches of consecutive days holding at most `max_lines` lines together (a day
    with more is a batch of its own): what one batch holds is what the run holds in memory at once."""
    batches: list[tuple[dt.date, ...]] = []
    current: list[dt.date] = []
    held = 0
    for day in days:
        lines = lines_per_day.get(day, 0)
        if current and held + lines > max_lines:
            batches.append(tuple(current))
            current, held = [], 0
        current.append(day)
        held += lines
    if current:
        batches.append(tuple(current))
    return batches


class _BatchRun:
    """The run's batches, one after the other, through the same stage functions as the DAG's tasks; the
    report adds up what each batch counted."""

    def __init__(self, config: RunConfig, report: RunReport, stages: StageTimer, staging: Staging) -> None:
        self.config = config
        self.report = report
        self.stages = stages
        self.staging = staging
        self.checks = {label: RunReconciliation(label) for label in ("service", "lake")}
        #: The distinct customers of the run, per check: (the side checked against, the side checked).
        self.customers = {label: (DistinctValues(), DistinctValues()) for label in self.checks}
        self.source_customers = DistinctValues()
        self.undated_rejects_counted = False
        #: Whether a write swept the whole lake for interrupted writes' files (once a run is enough).
        self.lake_swept = False

    def validate(self, days: Sequence[dt.date]) -> ValidatedSource:
        """The batch's lines and rejects from the staging; counts them."""
        with self.stages.stage("validate") as counts:
            validated = self.staging.read(days)
            rejects = validated.rejects
            if self.undated_rejects_counted:
                # The rejects without a day come with every batch (each batch's lake write keeps them): once.
                rejects = rejects.filter(pc.is_valid(rejects.column(PARTITION_COLUMN)))
            self.undated_rejects_counted = True
            counts["rejects"] = rejects.num_rows
            for kind, count in rejects_by_reason(rejects).items():
                self.report.rejects_by_reason[kind] = self.report.rejects_by_reason.get(kind, 0) + count
            counts["lines"] = validated.lines.num_rows
            counts["invoices"] = _distinct(validated.lines, "invoice_no")  # an invoice has one day
            self.source_customers.add(validated.lines.column("customer_id"))
            self.stages.observer.advanced("validate", validated.lines.num_rows)
        return validated

    async def all(self, batches: Sequence[tuple[dt.date, ...]]) -> None:
        """Every batch, with one client for the whole run."""
        async with service_client(self.config) as client:
            try:
                for days in batches:
                    await self.one(client, days)
            finally:
                # Also when a stage failed: the retries are what explain a failure.
                self.report.retries = dict(client.retry_stats.by_cause)

    async def one(self, client: RetailClient, days: tuple[dt.date, ...]) -> None:
        """One batch: validate → post → read back → reconcile → write lake → warehouse → notify."""
        config, report, stages = self.config, self.report, self.stages
        validated = self.validate(days)
        with stages.stage("post") as counts:
            posted = await post_lines(
                validated.lines,
                client,
                concurrency=config.concurrency,
                max_lines_per_request=config.lines_per_request,
                on_progress=lambda n: stages.observer.advanced("post", n),
                on_conflict=config.on_conflict,
            )
            counts.update(_post_counts(posted))
            report.customer_conflicts += list(posted.customer_conflicts)
            report.replaced_invoices += list(posted.replaced_invoices)
            report.replaced_customers += list(posted.customers_replaced)
            report.replaced_days += [day.isoformat() for day in posted.replaced_days]
        with stages.stage("read back") as counts:
            snapshot = await read_back(
                client, days, concurrency=config.concurrency, page_size=config.page_size
            )
            counts["lines_read_back"] = snapshot.lines.num_rows
            stages.observer.advanced("read back", snapshot.lines.num_rows)
        with stages.stage("reconcile") as counts:
            # Both sides in the lake's order: the usual equal case is then one comparison, not two sorts.
            source_lines = in_line_order(validated.lines)
            ours = lines_of_source_invoices(source_lines, snapshot.lines)
            self._checked("service", reconcile(source_lines, ours, label="service"), source_lines, ours)
            counts["other_clients_lines"] = snapshot.lines.num_rows - ours.num_rows
            stages.observer.advanced("reconcile", source_lines.num_rows)
        with stages.stage("write lake") as counts:
            written, lake_check, in_lake = write_and_check_lake(
                config,
                days,
                snapshot,
                validated.rejects,
                self.staging.fingerprint,
                sweep_whole_lake=not self.lake_swept,
            )
            self.lake_swept = True
            self._checked("lake", lake_check, snapshot.lines, in_lake)
            counts["partitions_written"] = written.partitions_written
            counts["lines_written"] = written.rows.get("invoice_lines", 0)
            stages.observer.advanced("write lake", source_lines.num_rows)
        deliver_days(config, report, stages, days)
        release_free_heap()  # what the batch freed: the next batch starts from the same footprint

    def _checked(self, label: str, check: ReconcileReport, expected: pa.Table, found: pa.Table) -> None:
        """Add a batch's check to the run's, and fail on a difference."""
        self.checks[label].add(check)
        sides = self.customers[label]
        sides[0].add(expected.column("customer_id"))
        sides[1].add(found.column("customer_id"))
        check.raise_for_differences()

    def finish(self) -> None:
        """Put the run's customer count and checks, added up over the batches so far, in the report
        (once, at the end or on a failure: adding them up after every batch grew with the run)."""
        self.report.counts["customers"] = len(self.source_customers)
        for label, check in self.checks.items():
            if check.batches:
                sides = self.customers[label]
                self.report.reconciliation[label] = check.to_dict(customers=(len(sides[0]), len(sides[1])))


def write_and_check_lake(
    config: RunConfig,
    days: Sequence[dt.date],
    snapshot: ServiceSnapshot,
    rejects: pa.Table,
    fingerprint: str,
    *,
    sweep_whole_lake: bool = True,
) -> tuple[LakeReport, ReconcileReport, pa.Table]:
    """Write `days` of the lake from the reconciled `snapshot` and `rejects`, then read the days' lines
    back from the lake and reconcile them with the service's (the lake shows the service's whole days,
    other clients' invoices too). Returns the write's report, the check (not raised: the caller records
    it first) and the lake's lines. `sweep_whole_lake`: see `write_lake`."""
    written = write_lake(
        config.lake,
        days,
        snapshot,
        rejects,
        source_fingerprint=fingerprint,
        storage_options=config.storage_options,
        sweep_whole_lake=sweep_whole_lake,
    )
    in_lake = read_lake_table(config.lake, "invoice_lines", days, storage_options=config.storage_options)
    in_lake = in_lake.select(LINE_SCHEMA.names).cast(LINE_SCHEMA)
    return written, reconcile(in_line_order(snapshot.lines), in_lake, label="lake"), in_lake


def deliver_days(config: RunConfig, report: RunReport, stages: StageTimer, days: Sequence[dt.date]) -> None:
    """The batch's days, as the lake now holds them, into the warehouse and then announced: in that
    order, so that a message names only days already in the lake and the warehouse."""
    if not (config.warehouse_url or config.notify_url):
        return
    lake = LakeDestination(config.lake, storage_options=config.storage_options)
    in_lake = lake.read_days(days)
    # Corrections replace the days already delivered before (docs/design.md "Corrections").
    replaced = {dt.date.fromisoformat(day) for day in report.replaced_days}
    if config.warehouse_url:
        with stages.stage("load warehouse") as counts:
            loaded = fanout.load_warehouse(config.warehouse_url, in_lake, replaced=replaced)
            report.destinations["warehouse"] = _added(report.destinations.get("warehouse"), loaded)
            counts["warehouse_days"] = loaded["days"]
            counts["warehouse_lines"] = loaded["rows"].get("invoice_lines", 0)
            stages.observer.advanced("load warehouse", len(days))
    if config.notify_url:
        with stages.stage("notify") as counts:
            sent = fanout.notify_days(
                config.notify_url,
                in_lake,
                exchange=config.notify_exchange,
                lake=config.lake,
                run_id=report.run_id,
                warehouse=report.destinations.get("warehouse", {}).get("url"),
                replaced=replaced,
            )
            report.destinations["notify"] = _added(report.destinations.get("notify"), sent)
            counts["messages_published"] = sent["messages"]
            stages.observer.advanced("notify", len(days))


def _added(before: Mapping[str, Any] | None, batch: Mapping[str, Any]) -> dict[str, Any]:
    """What a destination received so far: numbers added up (nested ones too), the rest as the batch's."""
    if before is None:
        return dict(batch)
    total: dict[str, Any] = dict(batch)
    for key, value in batch.items():
        earlier = before.get(key)
        if isinstance(value, int) and isinstance(earlier, int):
            total[key] = earlier + value
        elif isinstance(value, Mapping) and isinstance(earlier, Mapping):
            total[key] = _added(earlier, value)
    return total


def _post_counts(posted: PostReport) -> dict[str, int]:
    return {
        "customers_created": posted.customers_created,
        "customers_existing": posted.customers_existing,
        "invoices_created": posted.invoices_created,
        "invoices_unchanged": posted.invoices_unchanged,
        "invoices_skipped": posted.invoices_skipped,
        "invoices_replaced": posted.invoices_replaced,
        "customers_replaced": len(posted.customers_replaced),
        "lines_created": posted.lines_created,
        "requests": posted.requests,
    }


def save_report(config: RunConfig, report: RunReport) -> None:
    report.update_metrics()
    try:
        write_run_report(config.lake, report.run_id, report.to_dict(), storage_options=config.storage_options)
    except Exception as exc:  # the run's own outcome matters more than its trace
        log.warning("could not save the run report: %s", exc)


def new_run_id() -> str:
    return f"{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"


def _iso(day: dt.date | None) -> str | None:
    return day.isoformat() if day else None


def _distinct(table: pa.Table, column: str) -> int:
    return len(table.column(column).drop_null().unique())


# ---------------------------------------------------------------------------------------------------------
# The stages as the DAG cuts them. Each returns JSON-ready paths and counts for XCom.


@dataclass(frozen=True)
class WorkFolder:
    """The run's intermediate files under `<lake>/_work/<key>/`, keyed by source and days so that a
    retried task, or a rerun of the same day, finds its predecessor's output."""

    lake: str
    key: str

    @classmethod
    def for_run(cls, lake: str, source: str, days: DayRange) -> WorkFolder:
        """The folder of the run of `source` over `days`."""
        digest = hashlib.sha256(source.encode()).hexdigest()[:12]
        return cls(lake, f"{_iso(days.start) or 'first'}_{_iso(days.end) or 'last'}_{digest}")

    def path(self, name: str) -> str:
        """Where the intermediate file `name` lives."""
        return f"{self.lake.rstrip('/')}/{WORK_DIR}/{self.key}/{name}"


P = ParamSpec("P")


def _push_dag_metrics(meta: Mapping[str, Any], status: str) -> None:
    """Push the DAG run's metrics so far when `RETAIL_PUSHGATEWAY_URL` is set (never fails the task)."""
    url = JobSettings().pushgateway_url
    if not url:
        return
    seconds: dict[str, float] = dict(meta.get("seconds") or {})
    metrics = run_metrics(
        meta,
        seconds,
        dict(meta.get("retries") or {}),
        status=status,
        # The tasks' own time: the wait between tasks is the scheduler's, not the job's.
        duration_seconds=sum(seconds.values()),
        finished_timestamp_seconds=time.time(),
    )
    push_run_metrics(url, metrics)


def _dag_task(
    stage: str | None, *, last: bool = False, final: bool = False
) -> Callable[[Callable[P, dict[str, Any]]], Callable[P, dict[str, Any]]]:
    """Time a DAG task into its result's `seconds[stage]` (with `stage` None, the task times its own
    stages into its result's `seconds`); when the task raises, push the failed run's metrics and save
    its run report; push the reconciled run's metrics after the `last` task that checks data, and save
    the reconciled run's report after the `final` one."""

    def decorate(task: Callable[P, dict[str, Any]]) -> Callable[P, dict[str, Any]]:
        @wraps(task)
        def timed(*args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
            before: Mapping[str, Any] = next((a for a in args if isinstance(a, Mapping)), {})
            started = time.perf_counter()
            try:
                result = task(*args, **kwargs)
            except BaseException as exc:
                _push_dag_metrics(before, "failed")
                if before:
                    save_dag_report(before, "failed", error=exc)
                raise
            seconds = {**(before.get("seconds") or {}), **(result.get("seconds") or {})}
            if stage is not None:
                seconds[stage] = round(time.perf_counter() - started, 3)
            result = {**result, "seconds": seconds}
            if last:
                _push_dag_metrics(result, "reconciled")
            if final:
                save_dag_report(result, "reconciled")
            return result

        return timed

    return decorate


#: The run report's counts, as the DAG's tasks carry them in their results.
_REPORT_COUNTS = (
    "source_rows", "lines", "rejects", "invoices", "customers", "customers_created", "customers_existing",
    "invoices_created", "invoices_unchanged", "invoices_skipped", "invoices_replaced", "customers_replaced",
    "lines_created", "requests", "lines_read_back", "other_clients_lines", "partitions_written",
    "lines_written",
)  # fmt: skip


def save_dag_report(meta: Mapping[str, Any], status: str, *, error: BaseException | None = None) -> RunReport:
    """Save a DAG run's report under `<lake>/_runs/`, the same `RunReport` the command line saves, from
    what its tasks passed on (`meta`)."""
    destinations = {
        name: meta[name] for name in ("warehouse", "notify") if isinstance(meta.get(name), Mapping)
    }
    counts = {name: int(meta[name]) for name in _REPORT_COUNTS if isinstance(meta.get(name), int)}
    for name, key, field_ in (
        ("warehouse", "warehouse_days", "days"),
        ("notify", "messages_published", "messages"),
    ):
        if name in destinations:
            counts[key] = int(destinations[name][field_])
    if "warehouse" in destinations:
        counts["warehouse_lines"] = int(destinations["warehouse"]["rows"].get("invoice_lines", 0))
    report = RunReport(
        run_id=str(meta.get("run_id") or new_run_id()),
        source=str(meta.get("source", "")),
        shape=str(meta.get("shape", "")),
        lake=str(meta.get("lake", "")),
        start=meta.get("start"),
        end=meta.get("end"),
        dry_run=False,
        days=list(meta.get("days") or []),
        counts=counts,
        seconds=dict(meta.get("seconds") or {}),
        retries=dict(meta.get("retries") or {}),
        on_conflict=str(meta.get("on_conflict") or "fail"),
        replaced_days=list(meta.get("replaced_days") or []),
        dialect=dict(meta.get("dialect") or {}),
        rejects_by_reason=dict(meta.get("rejects_by_reason") or {}),
        reconciliation=dict(meta.get("reconciliation") or {}),
        status=status,
        destinations=destinations,
        settings=dict(meta.get("settings") or {}),
    )
    if error is not None:
        report.reconciliation.setdefault("error", f"{type(error).__name__}: {error}")
    if report.lake:
        save_report(run_config(lake=report.lake, source=report.source), report)
    return report


def _with_retries(meta: Mapping[str, Any], retries: Mapping[str, int]) -> dict[str, int]:
    total = Counter(dict(meta.get("retries") or {}))
    total.update(retries)
    return dict(sorted(total.items()))


@_dag_task(None)
def task_load_and_validate(
    source: str,
    lake: str,
    start: str | None,
    end: str | None,
    *,
    date_format: str | None = None,
    delimiter: str | None = None,
    decimal: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Load and validate the source for days `start`..`end`; save lines and rejects to the work folder.
    The source is validated once and staged by day under the lake (`etl.staging`): the first run of a
    source builds the staging, every later one reads only its days. `date_format`, `delimiter` and
    `decimal` set the source's dialect as `--date-format` etc. do; unset, it is detected. `run_id` names
    the run's report (`<lake>/_runs/<run_id>.json`). Raises `SourceError` for a source or a value not
    understood."""
    days = DayRange(_parse_day(start), _parse_day(end))
    options = SourceOptions.from_text(date_format=date_format, delimiter=delimiter, decimal=decimal)
    config = run_config(source=source, lake=lake, days=days, source_options=options)
    work = WorkFolder.for_run(lake, source, days)
    started = time.perf_counter()
    staging = stage_source(source, lake, options=options, cache_dir=config.cache_dir)
    loaded = time.perf_counter()
    validated = staging.read(days)
    fs, _ = filesystem(lake)
    fs.makedirs(work.path(""), exist_ok=True)
    pq.write_table(validated.lines, work.path("lines.parquet"), filesystem=fs)
    pq.write_table(validated.rejects, work.path("rejects.parquet"), filesystem=fs)
    meta = {
        "run_id": run_id or new_run_id(),
        "source": source,
        "lake": lake,
        "start": start,
        "end": end,
        "work_key": work.key,
        "days": [d.isoformat() for d in run_days(days, validated.days)],
        "fingerprint": staging.fingerprint,
        "dialect": staging.dialect,
        "shape": staging.shape,
        "source_rows": staging.source_rows,
        "lines": validated.lines.num_rows,
        "rejects": validated.rejects.num_rows,
        "rejects_by_reason": rejects_by_reason(validated.rejects),
        "invoices": _distinct(validated.lines, "invoice_no"),
        "customers": _distinct(validated.lines, "customer_id"),
        "staging": staging.how,
        "seconds": {
            "load": round(loaded - started, 3),
            "validate": round(time.perf_counter() - loaded, 3),
        },
    }
    with fs.open(work.path("meta.json"), "w") as out:
        json.dump(meta, out)
    return meta


@_dag_task("post")
def task_post(
    meta: Mapping[str, Any], api_url: str, api_key: str, on_conflict: str | None = None
) -> dict[str, Any]:
    """Post the saved lines of the run to the service; idempotent, so a retried task is safe.
    `on_conflict` is `fail` (default) or `replace`, as `--on-conflict`; `ValueError` for another."""
    work = WorkFolder(str(meta["lake"]), str(meta["work_key"]))
    lines = _read_work_table(work, "lines.parquet", LINE_SCHEMA)
    config = run_config(
        source=str(meta["source"]),
        api_url=api_url,
        api_key=api_key,
        lake=work.lake,
        on_conflict=parse_on_conflict(on_conflict),
    )

    async def _post() -> PostReport:
        async with service_client(config) as client:
            return await post_lines(
                lines,
                client,
                concurrency=config.concurrency,
                max_lines_per_request=config.lines_per_request,
                on_conflict=config.on_conflict,
            )

    posted = asyncio.run(_post())
    return {
        **dict(meta),
        **_post_counts(posted),
        "on_conflict": config.on_conflict,
        # The days only (the count is in the counts): XCom stays small whatever the corrections.
        "replaced_days": [day.isoformat() for day in posted.replaced_days],
        "retries": _with_retries(meta, posted.retries.by_cause),
        "settings": {**dict(meta.get("settings") or {}), **config.tuning()},
    }


@_dag_task(None)
def task_read_back_and_reconcile(meta: Mapping[str, Any], api_url: str, api_key: str) -> dict[str, Any]:
    """Read the run's days back from the service and reconcile them with the saved source lines;
    raises `ReconciliationError` on any difference."""
    work = WorkFolder(str(meta["lake"]), str(meta["work_key"]))
    days = [dt.date.fromisoformat(d) for d in meta["days"]]
    config = run_config(source=str(meta["source"]), api_url=api_url, api_key=api_key, lake=work.lake)

    async def _read() -> ServiceSnapshot:
        async with service_client(config) as client:
            try:
                return await read_back(
                    client, days, concurrency=config.concurrency, page_size=config.page_size
                )
            finally:
                retries.update(client.retry_stats.by_cause)

    retries: dict[str, int] = {}
    started = time.perf_counter()
    snapshot = asyncio.run(_read())
    read = time.perf_counter()
    source_lines = in_line_order(_read_work_table(work, "lines.parquet", LINE_SCHEMA))
    ours = lines_of_source_invoices(source_lines, snapshot.lines)
    check = reconcile(source_lines, ours, label="service")
    seconds = {"read back": round(read - started, 3), "reconcile": round(time.perf_counter() - read, 3)}
    reconciliation = {**dict(meta.get("reconciliation") or {}), "service": check.to_dict()}
    if not check.ok:
        # The failed run's report says where the sides differ.
        save_dag_report(
            {**meta, "seconds": {**meta.get("seconds", {}), **seconds}, "reconciliation": reconciliation},
            "failed",
        )
        check.raise_for_differences()
    fs, _ = filesystem(work.lake)
    pq.write_table(snapshot.lines, work.path("service_lines.parquet"), filesystem=fs)
    pq.write_table(snapshot.customers, work.path("service_customers.parquet"), filesystem=fs)
    return {
        **dict(meta),
        "lines_read_back": snapshot.lines.num_rows,
        "other_clients_lines": snapshot.lines.num_rows - ours.num_rows,
        "retries": _with_retries(meta, retries),
        "settings": {**dict(meta.get("settings") or {}), **config.tuning()},
        "reconciliation": reconciliation,
        "seconds": seconds,
    }


@_dag_task("write lake", last=True)
def task_write_lake(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Write the reconciled read-back into the lake, check the lake against the source, and clear the
    work folder."""
    work = WorkFolder(str(meta["lake"]), str(meta["work_key"]))
    days = [dt.date.fromisoformat(d) for d in meta["days"]]
    snapshot = ServiceSnapshot(
        lines=_read_work_table(work, "service_lines.parquet", LINE_SCHEMA),
        customers=_read_work_table(work, "service_customers.parquet", CUSTOMER_SCHEMA),
    )
    rejects = _read_work_table(work, "rejects.parquet", REJECT_SCHEMA)
    written, check, _ = write_and_check_lake(
        run_config(source=str(meta["source"]), lake=work.lake),
        days,
        snapshot,
        rejects,
        str(meta["fingerprint"]),
    )
    if not check.ok:
        reconciliation = {**dict(meta.get("reconciliation") or {}), "lake": check.to_dict()}
        save_dag_report({**meta, "reconciliation": reconciliation}, "failed")
        check.raise_for_differences()
    fs, _ = filesystem(work.lake)
    fs.rm(work.path(""), recursive=True)
    return {
        **dict(meta),
        "partitions_written": written.partitions_written,
        "lines_written": written.rows.get("invoice_lines", 0),
        "reconciliation": {**dict(meta.get("reconciliation") or {}), "lake": check.to_dict()},
    }


def _read_work_table(work: WorkFolder, name: str, schema: pa.Schema) -> pa.Table:
    fs, _ = filesystem(work.lake)
    if is_local_filesystem(fs):
        return pq.read_table(work.path(name), filesystem=fs, schema=schema)
    # On an object store one GET of the whole file: a reader through fsspec makes three HEADs and
    # ranged GETs for a file that is read whole anyway.
    return pq.read_table(pa.BufferReader(fs.cat_file(work.path(name))), schema=schema)


def _parse_day(value: str | None) -> dt.date | None:
    return dt.date.fromisoformat(value) if value else None


@_dag_task(None)
def task_load_warehouse(meta: Mapping[str, Any], warehouse_url: str | None) -> dict[str, Any]:
    """Load the run's days, as the lake holds them, into the warehouse and verify each; without a
    warehouse, a no-op that says so (and times nothing, as a command-line run without one)."""
    if not warehouse_url:
        log.info("no warehouse given: nothing to load")
        return {**dict(meta), "warehouse": None}
    started = time.perf_counter()
    days = [dt.date.fromisoformat(d) for d in meta["days"]]
    in_lake = LakeDestination(str(meta["lake"])).read_days(days)
    loaded = fanout.load_warehouse(warehouse_url, in_lake, replaced=_replaced_days(meta))
    return {**dict(meta), "warehouse": loaded, "seconds": {"load warehouse": _since(started)}}


@_dag_task(None, final=True)
def task_notify(
    meta: Mapping[str, Any], notify_url: str | None, run_id: str, exchange: str | None = None
) -> dict[str, Any]:
    """Announce each of the run's days on the broker, after the lake and the warehouse tasks; without a
    broker, a no-op that says so (and times nothing)."""
    if not notify_url:
        log.info("no notify URL given: no message sent")
        return {**dict(meta), "notify": None}
    started = time.perf_counter()
    days = [dt.date.fromisoformat(d) for d in meta["days"]]
    in_lake = LakeDestination(str(meta["lake"])).read_days(days)
    warehouse = meta.get("warehouse")
    sent = fanout.notify_days(
        notify_url,
        in_lake,
        exchange=exchange or JobSettings().notify_exchange,
        lake=str(meta["lake"]),
        run_id=run_id,
        warehouse=str(warehouse["url"]) if isinstance(warehouse, Mapping) else None,
        replaced=_replaced_days(meta),
    )
    return {**dict(meta), "notify": sent, "seconds": {"notify": _since(started)}}


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)


def _replaced_days(meta: Mapping[str, Any]) -> set[dt.date]:
    """The days `task_post` replaced invoices of (none from a run that replaced nothing)."""
    return {dt.date.fromisoformat(day) for day in meta.get("replaced_days") or ()}
