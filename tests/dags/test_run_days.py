"""Which invoice day each kind of `retail_etl` run processes, with the runs Airflow itself creates.

The scheduler's runs come from the DAG's timetable, the backfill's and the manual ones from the `airflow`
command line against the migrated test database; `etl.schedule.days_for_run` then maps each run the way
the `load_and_validate` task does.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from etl.schedule import FIRST_INVOICE_DAY, LAST_INVOICE_DAY, RunDaysError, days_for_run
from tests.dags.conftest import airflow_cli

ONE_DAY = dt.timedelta(days=1)


def run_days(run) -> tuple[dt.date, dt.date]:
    """The days `load_and_validate` would process for `run` (a DagRun row), params from its conf."""
    conf = run.conf or {}
    return days_for_run(logical_date=run.logical_date, start=conf.get("start"), end=conf.get("end"))


def dag_runs(**filters):
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        query = session.query(DagRun).filter(DagRun.dag_id == "retail_etl").filter_by(**filters)
        runs = query.order_by(DagRun.logical_date).all()
        session.expunge_all()
    return runs


@pytest.fixture(scope="module")
def serialized(airflow_db):
    """The DAG written to the metadata database, as the dag-processor writes it."""
    airflow_cli("dags", "reserialize")


def test_scheduled_runs_cover_every_day_of_the_data_set_once(retail_dag) -> None:
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    timetable = coerce_to_core_timetable(retail_dag.timetable)
    restriction = TimeRestriction(earliest=retail_dag.start_date, latest=retail_dag.end_date, catchup=True)
    infos, last = [], None
    while (
        info := timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
    ) is not None:
        infos.append(info)
        last = info.data_interval

    days = [days_for_run(logical_date=info.logical_date) for info in infos]
    expected = [
        FIRST_INVOICE_DAY + ONE_DAY * i for i in range((LAST_INVOICE_DAY - FIRST_INVOICE_DAY).days + 1)
    ]
    assert len(infos) == 374
    assert days == [(day, day) for day in expected]
    for info, day in zip(infos, expected, strict=True):
        # The run for day D covers [D, D+1) and may start only once D is over: a whole day of data.
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        assert (info.logical_date, info.data_interval.start, info.data_interval.end) == (
            start,
            start,
            start + ONE_DAY,
        )
        assert info.run_after == start + ONE_DAY


def test_the_scheduler_starts_with_the_first_invoice_day(serialized) -> None:
    from airflow.models.dag import DagModel

    model = DagModel.get_dagmodel("retail_etl")
    assert model is not None and model.max_active_runs == 4
    assert model.next_dagrun == dt.datetime(2010, 12, 1, tzinfo=dt.UTC)
    assert (model.next_dagrun_data_interval_start, model.next_dagrun_data_interval_end) == (
        dt.datetime(2010, 12, 1, tzinfo=dt.UTC),
        dt.datetime(2010, 12, 2, tzinfo=dt.UTC),
    )
    assert model.next_dagrun_create_after == dt.datetime(2010, 12, 2, tzinfo=dt.UTC)


def test_backfill_dry_run_lists_one_run_per_day(serialized) -> None:
    # Days no other test runs: a backfill skips days that already have a run (--reprocess-behavior none).
    command = "backfill create --dag-id retail_etl --from-date 2011-03-01 --to-date 2011-03-03 --dry-run"
    result = airflow_cli(*command.split())
    assert "Runs to be attempted:" in result.stdout
    for day in ("2011-03-01", "2011-03-02", "2011-03-03"):
        assert f"| {day} 00:00:00+00:00 |" in result.stdout
    assert "2011-02-28 00:00" not in result.stdout and "2011-03-04 00:00" not in result.stdout
    # A dry run creates nothing.
    assert [run for run in dag_runs(run_type="backfill") if run.logical_date.month == 3] == []


def test_backfill_runs_process_exactly_their_day(serialized) -> None:
    command = (
        "backfill create --dag-id retail_etl --from-date 2011-08-11 --to-date 2011-08-13 --max-active-runs 2"
    )
    airflow_cli(*command.split())
    runs = [run for run in dag_runs(run_type="backfill") if run.logical_date.month == 8]
    days = [dt.date(2011, 8, 11), dt.date(2011, 8, 12), dt.date(2011, 8, 13)]
    assert [run_days(run) for run in runs] == [(day, day) for day in days]
    for run, day in zip(runs, days, strict=True):
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        assert (run.data_interval_start, run.data_interval_end) == (start, start + ONE_DAY)


def test_a_manual_run_with_params_processes_their_range(serialized) -> None:
    conf = {"start": "2010-12-01", "end": "2010-12-31"}
    out = airflow_cli("dags", "trigger", "retail_etl", "--conf", json.dumps(conf), "--run-id", "manual_range")
    assert "manual_range" in out.stdout
    (run,) = dag_runs(run_id="manual_range")
    assert run.logical_date is None  # Airflow 3: a manual run has no logical date unless given one
    assert run_days(run) == (dt.date(2010, 12, 1), dt.date(2010, 12, 31))


def test_a_manual_run_with_a_logical_date_processes_that_day(serialized) -> None:
    command = "dags trigger retail_etl --logical-date 2011-09-25T00:00:00+00:00 --run-id manual_day"
    airflow_cli(*command.split())
    (run,) = dag_runs(run_id="manual_day")
    assert run_days(run) == (dt.date(2011, 9, 25), dt.date(2011, 9, 25))
    # Why the mapping reads the logical date and not the data interval: a manual run's interval is
    # inferred from when it was triggered, not from the logical date it was given.
    assert run.data_interval_start is not None
    assert run.data_interval_start.date() != dt.date(2011, 9, 25)


def test_a_manual_run_without_logical_date_or_params_cannot_know_its_day(serialized) -> None:
    airflow_cli("dags", "trigger", "retail_etl", "--run-id", "manual_bare")
    (run,) = dag_runs(run_id="manual_bare")
    assert run.logical_date is None and not run.conf
    with pytest.raises(RunDaysError, match="no logical date and no params"):
        run_days(run)
