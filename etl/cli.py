"""`retail-etl`: the job's command line, for manual runs and backfills.

This is an edge: every `EtlError` becomes one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from etl import logs
from etl.config import JobSettings
from etl.dialect import SourceOptions
from etl.errors import EtlError, SourceError, SyncBusyError
from etl.schema import DayRange

if TYPE_CHECKING:  # the pipeline's imports are heavy: after argument parsing only
    from etl.pipeline import RunObserver, RunReport

app = typer.Typer(add_completion=False, no_args_is_help=True)
err = Console(stderr=True)
out = Console()

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_INTERNAL = 70


class OnConflictChoice(StrEnum):
    """`--on-conflict`'s choices (`etl.post.OnConflict`), as typer lists and checks them."""

    FAIL = "fail"
    REPLACE = "replace"


class Terminated(Exception):
    """SIGTERM arrived: stop where we are; a lake day is only ever committed whole (its manifest last),
    so nothing half-written becomes visible."""


class RichObserver:
    """A progress bar per stage, for a person at a terminal."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def stage_started(self, stage: str, total: int | None) -> None:
        self.tasks[stage] = self.progress.add_task(stage, total=total)

    def advanced(self, stage: str, amount: int) -> None:
        self.progress.advance(self.tasks[stage], amount)

    def stage_finished(self, stage: str, seconds: float, counts: Mapping[str, int]) -> None:
        task = self.tasks[stage]
        total = self.progress.tasks[task].total
        self.progress.update(task, completed=total if total is not None else 1, total=total or 1)


def _parse_day(value: str | None, option: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date like 2011-01-31", param_hint=option) from None


@contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.callback()
def cli() -> None:
    """retail-etl: the Online Retail data set through the service into a reconciled Parquet lake."""


@app.command("run")
def run_command(
    source: Annotated[
        str | None,
        typer.Option(
            help="Path or http(s) URL: UCI .zip/.xlsx, Kaggle CSV, CSV / ; / tab / | text, .gz or .zip of"
            " them. Env RETAIL_SOURCE."
        ),
    ] = None,
    api_url: Annotated[str | None, typer.Option(help="The service's base URL. Env RETAIL_API_URL.")] = None,
    lake: Annotated[
        str | None, typer.Option(help="Lake root: a path or an object-store URL. Env RETAIL_LAKE.")
    ] = None,
    start: Annotated[str | None, typer.Option(help="First invoice day, YYYY-MM-DD (inclusive).")] = None,
    end: Annotated[str | None, typer.Option(help="Last invoice day, YYYY-MM-DD (inclusive).")] = None,
    api_key: Annotated[
        str | None, typer.Option(help="API key. Env RETAIL_API_KEY.", show_default=False)
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Load and validate only; post nothing.")] = False,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight at once.")] = None,
    pushgateway: Annotated[
        str | None,
        typer.Option(
            help="Prometheus Pushgateway URL that receives the run's metrics. Env RETAIL_PUSHGATEWAY_URL."
        ),
    ] = None,
    warehouse: Annotated[
        str | None,
        typer.Option(
            help="Also load each day into this warehouse: a DuckDB file (path or duckdb:///path) or"
            " postgresql://user@host/db. Env RETAIL_WAREHOUSE_URL.",
            show_default=False,
        ),
    ] = None,
    notify: Annotated[
        str | None,
        typer.Option(
            help="Then announce each day written on this RabbitMQ broker (amqp://user:pass@host:5672/%2F)."
            " Env RETAIL_NOTIFY_URL.",
            show_default=False,
        ),
    ] = None,
    notify_exchange: Annotated[
        str | None,
        typer.Option(help="Exchange of those messages (default retail.lake). Env RETAIL_NOTIFY_EXCHANGE."),
    ] = None,
    date_format: Annotated[
        str | None,
        typer.Option(
            help='InvoiceDate format, e.g. "%d/%m/%Y %H:%M" (day-first). Default: detected from every date;'
            " a source whose dates cannot tell day-first from month-first stops and asks for this."
        ),
    ] = None,
    delimiter: Annotated[
        str | None, typer.Option(help="Field delimiter: , ; tab or |. Default: detected from the header.")
    ] = None,
    decimal: Annotated[
        str | None,
        typer.Option(help="Decimal mark of the numbers: . or , (default: detected from UnitPrice)."),
    ] = None,
    encoding: Annotated[
        str | None,
        typer.Option(help="Text encoding, e.g. cp1252 or utf-16. Default: UTF-8, else Windows-1252."),
    ] = None,
    on_conflict: Annotated[
        OnConflictChoice,
        typer.Option(
            help="An invoice the service holds with other content (a correction in the source): fail"
            " (stop, nothing stored) or replace (PUT the source's invoice; its day is rewritten).",
            case_sensitive=False,
        ),
    ] = OnConflictChoice.FAIL,
) -> None:
    """Load SOURCE, post its invoices for the selected days, read them back, reconcile, write the lake."""
    from etl.pipeline import run, run_config  # heavy imports after argument parsing
    from etl.post import parse_on_conflict

    source_options = _source_options(date_format, delimiter, decimal, encoding)
    first, last = _parse_day(start, "--start"), _parse_day(end, "--end")
    if first and last and first > last:
        raise typer.BadParameter(f"{start} is after --end {end}", param_hint="--start")
    days = DayRange(first, last)
    settings = JobSettings()
    source = source or settings.source
    if not source:
        raise typer.BadParameter("give --source or set RETAIL_SOURCE", param_hint="--source")
    key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    if not key and not dry_run:
        raise typer.BadParameter("give --api-key or set RETAIL_API_KEY", param_hint="--api-key")
    config = run_config(
        settings,
        source=source,
        api_url=api_url,
        api_key=key or "",
        lake=lake,
        days=days,
        dry_run=dry_run,
        concurrency=concurrency,
        pushgateway_url=pushgateway,
        warehouse_url=warehouse,
        notify_url=notify,
        notify_exchange=notify_exchange,
        source_options=source_options,
        on_conflict=parse_on_conflict(on_conflict.value),
    )
    report = _at_the_edge(lambda observer: run(config, observer), "rerun the same days to complete them")
    out.print(summary_table(report.to_dict()))


@app.command("sync")
def sync_command(
    api_url: Annotated[str | None, typer.Option(help="The service's base URL. Env RETAIL_API_URL.")] = None,
    lake: Annotated[
        str | None, typer.Option(help="Lake root: a path or an object-store URL. Env RETAIL_LAKE.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="API key (read scope). Env RETAIL_API_KEY.", show_default=False)
    ] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight at once.")] = None,
    pushgateway: Annotated[
        str | None, typer.Option(help="Prometheus Pushgateway URL. Env RETAIL_PUSHGATEWAY_URL.")
    ] = None,
    warehouse: Annotated[
        str | None,
        typer.Option(help="Also rewrite the changed days in this warehouse. Env RETAIL_WAREHOUSE_URL."),
    ] = None,
    notify: Annotated[
        str | None,
        typer.Option(help="Then announce each changed day on this broker. Env RETAIL_NOTIFY_URL."),
    ] = None,
    notify_exchange: Annotated[
        str | None, typer.Option(help="Exchange of those messages. Env RETAIL_NOTIFY_EXCHANGE.")
    ] = None,
) -> None:
    """Bring the lake up to date with the service: every client's changes since the last sync (the first
    sync reads the service whole), checked day by day against the service's own figures. Safe to start
    twice: the second says who holds the lake and exits 0."""
    from etl.pipeline import run_config  # heavy imports after argument parsing
    from etl.sync import sync

    settings = JobSettings()
    key = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    if not key:
        raise typer.BadParameter("give --api-key or set RETAIL_API_KEY", param_hint="--api-key")
    config = run_config(
        settings,
        api_url=api_url,
        api_key=key,
        lake=lake,
        concurrency=concurrency,
        pushgateway_url=pushgateway,
        warehouse_url=warehouse,
        notify_url=notify,
        notify_exchange=notify_exchange,
    )
    report = _at_the_edge(lambda observer: sync(config, observer), "run the sync again to complete it")
    out.print(summary_table(report.to_dict()))


@app.command("report")
def report_command(
    run_id: Annotated[str | None, typer.Argument(help="The run's id (default: the newest run).")] = None,
    lake: Annotated[
        str | None, typer.Option(help="Lake root: a path or an object-store URL. Env RETAIL_LAKE.")
    ] = None,
) -> None:
    """Print where a run's page is (`<lake>/_runs/<run_id>.html`: per-day figures, rejects, stage times and
    the reconciliation, viewable offline) and its summary."""
    from etl.lake.reports import find_run_report

    settings = JobSettings()
    root = lake or settings.lake
    try:
        _location, page, report = find_run_report(root, run_id)
    except EtlError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    out.print(page, highlight=False, soft_wrap=True)
    out.print(summary_table(report))


def _at_the_edge(job: Callable[[RunObserver | None], RunReport], to_complete: str) -> RunReport:
    """Run `job` with a progress bar on a terminal (log lines elsewhere); every failure becomes one line
    on stderr and the exit status that says what kind it was."""
    interactive = sys.stderr.isatty()
    logs.configure(json_lines=not interactive)
    try:
        with _terminate_on_sigterm():
            if not interactive:
                return job(None)
            columns = (
                TextColumn("{task.description:>10}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=err, transient=False) as progress:
                return job(RichObserver(progress))
    except SyncBusyError as exc:
        err.print(str(exc), highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(exc.exit_code) from None
    except EtlError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except Terminated:
        err.print(f"[bold red]error:[/] stopped by SIGTERM; {to_complete}", highlight=False)
        raise typer.Exit(EXIT_TERMINATED) from None
    except KeyboardInterrupt:
        err.print(f"[bold red]error:[/] interrupted; {to_complete}", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        if os.environ.get("RETAIL_DEBUG"):
            raise
        err.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {exc}"
            " (set RETAIL_DEBUG=1 for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERNAL) from None


def _source_options(
    date_format: str | None, delimiter: str | None, decimal: str | None, encoding: str | None
) -> SourceOptions:
    """The dialect options, or one line naming the option that is not understood and exit 2."""
    given = {"date_format": date_format, "delimiter": delimiter, "decimal": decimal, "encoding": encoding}
    parsed = {}
    for name, value in given.items():
        try:
            parsed[name] = getattr(SourceOptions.from_text(**{name: value}), name)
        except SourceError as exc:
            option = "--" + name.replace("_", "-")
            err.print(f"[bold red]error:[/] {option}: {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(SourceError.exit_code) from None
    return SourceOptions(**parsed)


def summary_table(report: Mapping[str, object]) -> Table:
    """The end-of-run table: rows per table, rejects, retries, seconds per stage."""
    command = "sync" if report.get("shape") == "sync" else "run"
    table = Table(title=f"retail-etl {command} {report['run_id']}: {report['status']}", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right", overflow="fold")  # URLs fold, never lose their end
    days = report.get("days") or []
    assert isinstance(days, list)
    table.add_row("source", f"{report['source']} ({report['shape']})")
    dialect = report.get("dialect") or {}
    assert isinstance(dialect, dict)
    if dialect:
        table.add_row("date format", f"{dialect['date_format']} ({dialect['date_format_basis']})")
        read_as = [f"decimal {dialect['decimal']!r}"]
        read_as += [f"{key} {dialect[key]}" for key in ("delimiter", "encoding") if key in dialect]
        table.add_row("read as", ", ".join(read_as))
    table.add_row("invoice days", f"{len(days)}" + (f" ({days[0]} .. {days[-1]})" if days else ""))
    sync = report.get("sync") or {}
    assert isinstance(sync, dict)
    if sync:
        table.add_row("changes read", f"{sync['changes']:,}")
        table.add_row("feed cursor", f"{sync['cursor_before'] or '(none)'} -> {sync['cursor_after']}")
        if sync.get("snapshot"):
            table.add_row("snapshot", f"the service read whole: {sync['snapshot']['why']}")
    counts = report.get("counts") or {}
    assert isinstance(counts, dict)
    for name, value in counts.items():
        table.add_row(name.replace("_", " "), f"{value:,}")
    replaced = report.get("replaced_invoices") or []
    assert isinstance(replaced, list)
    if replaced:
        shown = ", ".join(replaced[:10]) + (f" and {len(replaced) - 10} more" if len(replaced) > 10 else "")
        table.add_row("replaced invoices", shown)
    retries = report.get("retries") or {}
    assert isinstance(retries, dict)
    table.add_row("retries", ", ".join(f"{k}: {v}" for k, v in retries.items()) or "0")
    destinations = report.get("destinations") or {}
    assert isinstance(destinations, dict)
    for name, received in destinations.items():
        for what, value in _destination_rows(name, received):
            table.add_row(what, value)
    seconds = report.get("seconds") or {}
    assert isinstance(seconds, dict)
    for stage, value in seconds.items():
        table.add_row(f"seconds: {stage}", f"{value:.2f}")
    return table


def _destination_rows(name: str, received: Mapping[str, object]) -> list[tuple[str, str]]:
    """Summary rows of one destination: where it is, and what it received (days, rows per table)."""
    rows = received.get("rows") or {}
    assert isinstance(rows, dict)
    place = str(received.get("url", ""))
    if received.get("exchange"):
        place += f" exchange {received['exchange']}"
    taken = f"{received.get('days', 0):,} days: " + ", ".join(
        f"{count:,} {table.replace('_', ' ')}" for table, count in rows.items()
    )
    if "messages" in received:
        taken = f"{received['messages']:,} messages for {taken}"
    return [(name, place), (f"{name} received", taken)]


def main() -> None:
    """Entry point for `python -m etl.cli`."""
    logging.captureWarnings(True)
    app()


if __name__ == "__main__":
    main()
