"""The `retail_etl` DAG: one run per invoice day of the Online Retail data set, through the service into
the lake; and `retail_sync`: the lake following every client's changes in the service, on an interval.
Wiring only: every task calls one `etl` function (imported inside the task, so that parsing this file
stays cheap) and passes its small JSON result (paths and counts) to the next.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from airflow.sdk import (
    Asset,
    BaseHook,
    Connection,
    CronDataIntervalTimetable,
    Param,
    Variable,
    dag,
    get_current_context,
    task,
)
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException, AirflowSkipException

# The lake's tables, under the DAG's name for them (its assets below): the contract's layout, standard
# library only, so parsing this file stays cheap.
from retail_contract.lake_layout import TABLES as LAKE_TABLES

CONN_ID = "retail_api"
#: Bounds the tasks that call the service at once, across all runs; created by the stack's init step.
POOL = "retail_api"

#: The lake's tables, for downstream DAGs to be scheduled on (`schedule=[Asset(name=..., uri=...)]`).
#: The URIs name the tables, not a place: where the lake lives is decided per run (param `lake`), and
#: each asset event carries it in its extra (`lake`, `days`).
LAKE_ASSETS = {
    table: Asset(name=f"retail_lake_{table}", uri=f"x-retail-lake://{table}") for table in LAKE_TABLES
}

# Every try of every task: a failure from the service or the lake is retried with growing waits
# (5-10 s, then 10-20, 20-40, 40-80, 80-160 s: about 5 minutes in all); errors that a retry cannot fix
# fail at once (see `_fail_without_retry`). The first wait is short because the usual cause of a failed
# try is a lost worker (the job retries the service's faults itself): with the stack's 30 s heartbeat
# timeout (docs/scale.md) a day whose worker died is rerun within about a minute.
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "retail-etl",
    "retries": 5,
    "retry_delay": dt.timedelta(seconds=5),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": dt.timedelta(minutes=15),
    "execution_timeout": dt.timedelta(minutes=30),
}


def service_url(conn: Connection) -> str:
    """The service's base URL from the connection: `schema` is the scheme (`http`/`https`), else a
    `conn_type` of `http`/`https`, else `http`; a host that already is a URL is taken as it is."""
    host = (conn.host or "").rstrip("/")
    if not host:
        raise AirflowFailException(f"connection {conn.conn_id} has no host")
    if "://" not in host:
        conn_type = (conn.conn_type or "").lower()
        scheme = (conn.schema or (conn_type if conn_type in ("http", "https") else "http")).lower()
        if scheme not in ("http", "https"):
            raise AirflowFailException(
                f"connection {conn.conn_id}: schema must be http or https, not {conn.schema!r}"
            )
        host = f"{scheme}://{host}"
    return f"{host}:{conn.port}" if conn.port else host


def _service() -> tuple[str, str]:
    """URL and API key of the service, from the connection `retail_api` (password = API key)."""
    try:
        conn = BaseHook.get_connection(CONN_ID)
    except AirflowNotFoundException:
        raise AirflowFailException(
            f"no Airflow connection {CONN_ID!r}: create it, or set AIRFLOW_CONN_RETAIL_API, e.g. "
            '{"conn_type": "http", "host": "api", "port": 8000, "schema": "http", "password": "<API key>"}'
        ) from None
    if not conn.password:
        raise AirflowFailException(f"connection {CONN_ID} has no password: it must hold the API key")
    return service_url(conn), conn.password


def _setting(value: str | None, variable: str, env: str, param: str) -> str:
    """A DAG param, else the Airflow Variable, else the environment: read when the task runs, so that
    parsing the DAG never touches the metadata database or a secrets backend."""
    resolved = value or Variable.get(variable, default=None) or os.environ.get(env)
    if not resolved:
        raise AirflowFailException(
            f"no {param}: give the param {param}, set the Variable {variable} or env {env}"
        )
    return str(resolved)


def _optional_setting(value: str | None, variable: str, env: str) -> str | None:
    """Like `_setting`, for a destination that may be left out: None when nothing names it."""
    resolved = value or Variable.get(variable, default=None) or os.environ.get(env)
    return str(resolved) if resolved else None


def _destination_params() -> dict[str, Param]:
    """The params both DAGs take for where the data go (new objects per DAG: a run writes its values into
    its DAG's Params)."""
    return {
        "lake": Param(
            None,
            type=["null", "string"],
            title="Lake root",
            description="Path or object-store URL. Empty: Variable retail_lake, else env RETAIL_LAKE.",
        ),
        "warehouse": Param(
            None,
            type=["null", "string"],
            title="Warehouse",
            description="DuckDB file (path or duckdb:///path) or postgresql:// URL that receives each day"
            " after the lake. Empty: Variable retail_warehouse, else env RETAIL_WAREHOUSE_URL, else none.",
        ),
        "notify": Param(
            None,
            type=["null", "string"],
            title="Notify",
            description="amqp:// URL of the broker that hears of each day written. Empty: Variable"
            " retail_notify, else env RETAIL_NOTIFY_URL, else no message.",
        ),
    }


@contextmanager
def _fail_without_retry() -> Iterator[None]:
    """A bad source, a reconciliation difference, a misnamed destination or unusable params stay the
    same on a retry: fail the task at once with the job's one-line message instead of retrying it for
    half an hour."""
    from etl.errors import DestinationUrlError, InvoiceConflictError, ReconciliationError, SourceError
    from etl.schedule import RunDaysError

    try:
        yield
    except (SourceError, ReconciliationError, RunDaysError, DestinationUrlError, InvoiceConflictError) as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


@dag(
    dag_id="retail_etl",
    # A data-interval timetable, not Airflow 3's default trigger timetable: the run for day D has the
    # interval [D, D+1), starts once D is over, and its logical date is D (pinned in tests/dags).
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=dt.datetime(2010, 12, 1, tzinfo=dt.UTC),
    end_date=dt.datetime(2011, 12, 9, tzinfo=dt.UTC),
    catchup=True,
    max_active_runs=4,
    dagrun_timeout=dt.timedelta(hours=6),
    default_args=DEFAULT_ARGS,
    params={
        "start": Param(
            None,
            type=["null", "string"],
            format="date",
            title="First invoice day",
            description="Manual runs: the first invoice day to process (YYYY-MM-DD). Empty: the run's day.",
        ),
        "end": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Last invoice day",
            description="Manual runs: the last invoice day to process, inclusive. Empty: same as start.",
        ),
        "source": Param(
            None,
            type=["null", "string"],
            title="Source",
            description="Path or URL of the source. Empty: Variable retail_source, else env RETAIL_SOURCE.",
        ),
        **_destination_params(),
        "notify_exchange": Param(
            None,
            type=["null", "string"],
            title="Notify exchange",
            description="Exchange of those messages. Empty: env RETAIL_NOTIFY_EXCHANGE, else retail.lake.",
        ),
        "date_format": Param(
            None,
            type=["null", "string"],
            title="Date format",
            description='InvoiceDate format, e.g. "%d/%m/%Y %H:%M" (as --date-format). Empty: detected from '
            "every date; a source whose dates cannot tell day-first from month-first fails and asks for it.",
        ),
        "delimiter": Param(
            None,
            type=["null", "string"],
            title="Delimiter",
            description="Field delimiter: , ; tab or | (as --delimiter). Empty: detected from the header.",
        ),
        "decimal": Param(
            None,
            type=["null", "string"],
            title="Decimal mark",
            description="Decimal mark: . or , (as --decimal). Empty: detected from UnitPrice.",
        ),
        "on_conflict": Param(
            "fail",
            type="string",
            enum=["fail", "replace"],
            title="On conflict",
            description="An invoice the service holds with other content (a correction): fail (nothing "
            "stored) or replace it by PUT, its day rewritten in the lake (as --on-conflict).",
        ),
    },
    tags=["retail", "etl"],
)
def retail_etl() -> None:
    """
    ### Online Retail: source → service → lake, one invoice day per run

    Each run takes **one invoice day** of the UCI Online Retail source, posts its invoices to the retail
    service, reads them back, reconciles them with the source and writes the day's partitions of the lake
    (`invoice_lines`, `invoices`, `customers`, `rejects`, each `invoice_day=YYYY-MM-DD/part-0.parquet`).

    | task | what it does | retried? |
    | --- | --- | --- |
    | `load_and_validate` | reads the source, keeps the run's days, splits lines from rejects | bad file: no |
    | `post` | posts customers and invoices in bulk, idempotent (pool `retail_api`) | yes |
    | `read_back_and_reconcile` | reads the days back, compares them with the source (pool) | on a diff: no |
    | `write_lake` | replaces the days' partitions, checks them, updates the lake's assets | yes |
    | `load_warehouse` | loads each day, as the lake holds it, into the warehouse; verifies it | yes |
    | `notify` | one confirmed message per day (`day.published`) once lake and warehouse hold it | yes |

    **Which day.** The run with logical date D covers the data interval [D, D+1) and processes invoice
    day D. Scheduled runs go from 2010-12-01 to 2011-12-09 (`catchup` fills the range); backfill with
    `airflow backfill create --dag-id retail_etl --from-date 2010-12-01 --to-date 2010-12-31`.
    A manual run may give the params `start`/`end` (YYYY-MM-DD, inclusive) to process that range instead;
    a manual run with neither params nor a logical date fails and says so.

    **Where.** The service: connection `retail_api` (host, port, schema `http`/`https`, password = API key).
    The source and the lake: params `source`/`lake`, else Variables `retail_source`/`retail_lake`, else env
    `RETAIL_SOURCE`/`RETAIL_LAKE`. Intermediate files live under `<lake>/_work/` and are removed by
    `write_lake`. The source's dialect is detected; params `date_format`, `delimiter`, `decimal` set it
    (as the command's `--date-format`, `--delimiter`, `--decimal`). Param `on_conflict` (`fail`, the
    default, or `replace`) says what `post` does with corrected invoices, as `--on-conflict`.

    **Other destinations** (each a no-op that says so when not named): the warehouse, param `warehouse`,
    else Variable `retail_warehouse`, else env `RETAIL_WAREHOUSE_URL`; the broker, param `notify`, else
    Variable `retail_notify`, else env `RETAIL_NOTIFY_URL` (exchange: param `notify_exchange`, else env
    `RETAIL_NOTIFY_EXCHANGE`, else `retail.lake`).
    """

    @task(task_id="load_and_validate", multiple_outputs=False)
    def load_and_validate() -> dict[str, Any]:
        """Load the source and validate the run's days; the lines wait in the lake's work folder."""
        from etl.schedule import days_for_run

        context = get_current_context()
        params = context["params"]
        with _fail_without_retry():
            # The days and settings first: a run that cannot know them fails before any heavy import.
            first, last = days_for_run(
                logical_date=context.get("logical_date"), start=params.get("start"), end=params.get("end")
            )
            source = _setting(params.get("source"), "retail_source", "RETAIL_SOURCE", "source")
            lake = _setting(params.get("lake"), "retail_lake", "RETAIL_LAKE", "lake")
            # A misnamed destination fails the run here, before anything is posted or written.
            from etl.destinations.fanout import check_destinations

            check_destinations(
                _optional_setting(params.get("warehouse"), "retail_warehouse", "RETAIL_WAREHOUSE_URL"),
                _optional_setting(params.get("notify"), "retail_notify", "RETAIL_NOTIFY_URL"),
                connect=False,
            )

            from etl.pipeline import task_load_and_validate

            return task_load_and_validate(
                source,
                lake,
                first.isoformat(),
                last.isoformat(),
                date_format=params.get("date_format"),
                delimiter=params.get("delimiter"),
                decimal=params.get("decimal"),
                run_id=str(context["run_id"]),
            )

    @task(task_id="post", pool=POOL, execution_timeout=dt.timedelta(hours=2), multiple_outputs=False)
    def post(meta: Mapping[str, Any]) -> dict[str, Any]:
        """Post the run's customers and invoices to the service (safe to repeat)."""
        from etl.pipeline import task_post

        api_url, api_key = _service()
        on_conflict = get_current_context()["params"].get("on_conflict")
        with _fail_without_retry():
            return task_post(meta, api_url, api_key, on_conflict)

    @task(
        task_id="read_back_and_reconcile",
        pool=POOL,
        execution_timeout=dt.timedelta(hours=1),
        multiple_outputs=False,
    )
    def read_back_and_reconcile(meta: Mapping[str, Any]) -> dict[str, Any]:
        """Read the run's days back from the service and compare them, line by line, with the source."""
        from etl.pipeline import task_read_back_and_reconcile

        api_url, api_key = _service()
        with _fail_without_retry():
            return task_read_back_and_reconcile(meta, api_url, api_key)

    @task(task_id="write_lake", outlets=list(LAKE_ASSETS.values()), multiple_outputs=False)
    def write_lake(meta: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the run's day partitions in the lake and tell downstream DAGs which days changed."""
        from etl.pipeline import task_write_lake

        with _fail_without_retry():
            written = task_write_lake(meta)
        outlet_events = get_current_context()["outlet_events"]
        for asset in LAKE_ASSETS.values():
            outlet_events[asset].extra = {"lake": str(written["lake"]), "days": list(written["days"])}
        return written

    @task(task_id="load_warehouse", multiple_outputs=False)
    def load_warehouse(meta: Mapping[str, Any]) -> dict[str, Any]:
        """Load the run's days, as the lake now holds them, into the warehouse, and verify each."""
        params = get_current_context()["params"]
        url = _optional_setting(params.get("warehouse"), "retail_warehouse", "RETAIL_WAREHOUSE_URL")
        from etl.pipeline import task_load_warehouse

        with _fail_without_retry():
            return task_load_warehouse(meta, url)

    @task(task_id="notify", multiple_outputs=False)
    def notify(meta: Mapping[str, Any]) -> dict[str, Any]:
        """Announce each of the run's days on the broker, now that the lake and the warehouse hold it."""
        context = get_current_context()
        params = context["params"]
        url = _optional_setting(params.get("notify"), "retail_notify", "RETAIL_NOTIFY_URL")
        from etl.pipeline import task_notify

        with _fail_without_retry():
            return task_notify(meta, url, str(context["run_id"]), params.get("notify_exchange"))

    # Each call returns an XComArg, which Airflow resolves to the upstream task's dict before the call;
    # typed as Any here because the functions are typed for what they receive at run time.
    meta: Any = load_and_validate()
    posted: Any = post(meta)
    reconciled: Any = read_back_and_reconcile(posted)
    written: Any = write_lake(reconciled)
    warehoused: Any = load_warehouse(written)
    notify(warehoused)


retail_etl()


@dag(
    dag_id="retail_sync",
    # The lake follows the service every 15 minutes; a run that finds no change reads one feed page.
    schedule=dt.timedelta(minutes=15),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(hours=2),
    default_args=DEFAULT_ARGS,
    params=_destination_params(),
    tags=["retail", "sync"],
)
def retail_sync() -> None:
    """
    ### Online Retail: the lake follows the service

    Every 15 minutes, `retail-etl sync`: the changes every client made through the service since the
    last sync (its change feed, `GET /changes`) reach the lake, each changed day rewritten whole and
    checked against the service's own figures (`GET /invoice-days`); the warehouse and the broker too
    when named. The first sync of a lake reads the service whole. The cursor is kept in the lake
    (`_sync/state.json`), after the days it covers are committed.

    The service: connection `retail_api`, as for `retail_etl`. The lake: param `lake`, else Variable
    `retail_lake`, else env `RETAIL_LAKE`. A sync that finds another holding the lake (a run still going,
    or one from cron) is skipped. Retries and pool as `retail_etl`; a failed sync is a failed run.
    """

    @task(task_id="sync", pool=POOL, outlets=list(LAKE_ASSETS.values()), multiple_outputs=False)
    def sync() -> dict[str, Any]:
        """Bring the lake up to date with the service's changes; tell downstream DAGs which days."""
        context = get_current_context()
        params = context["params"]
        api_url, api_key = _service()
        with _fail_without_retry():
            lake = _setting(params.get("lake"), "retail_lake", "RETAIL_LAKE", "lake")
            from etl.errors import SyncBusyError
            from etl.sync import task_sync

            try:
                synced = task_sync(
                    api_url,
                    api_key,
                    lake,
                    warehouse_url=_optional_setting(
                        params.get("warehouse"), "retail_warehouse", "RETAIL_WAREHOUSE_URL"
                    ),
                    notify_url=_optional_setting(params.get("notify"), "retail_notify", "RETAIL_NOTIFY_URL"),
                )
            except SyncBusyError as exc:
                raise AirflowSkipException(str(exc)) from exc
        for asset in LAKE_ASSETS.values():
            context["outlet_events"][asset].extra = {"lake": synced["lake"], "days": synced["days"]}
        return synced

    sync()


retail_sync()
