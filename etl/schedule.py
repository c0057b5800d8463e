"""Which invoice days one run of the `retail_etl` DAG covers.

The DAG's timetable is `CronDataIntervalTimetable("@daily", timezone="UTC")`: the run with logical date D
has the data interval [D, D+1) and starts once day D is over. Such a run processes exactly invoice day D.
A manual run names its days with the params `start`/`end`, or, lacking them, by its logical date; a
manual run with neither cannot know its day and fails with a message saying what to give.

Standard library only, so that it is cheap to import in a task and tested without Airflow.
"""

from __future__ import annotations

import datetime as dt

from etl.errors import EtlError

#: The first and the last invoice day of the UCI Online Retail data set: the DAG's scheduled range.
FIRST_INVOICE_DAY = dt.date(2010, 12, 1)
LAST_INVOICE_DAY = dt.date(2011, 12, 9)


class RunDaysError(EtlError):
    """The run's days cannot be determined from its params and dates."""


def days_for_run(
    *,
    logical_date: dt.datetime | None,
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
) -> tuple[dt.date, dt.date]:
    """The first and last invoice day (inclusive) a DAG run processes.

    - `start`/`end` (the DAG params, ISO dates) win when given: a manual run or a backfill with
      `--dag-run-conf` processes that range; `start` alone is that one day; `end` alone is an error.
    - Otherwise the run processes the calendar day of its logical date in UTC. For scheduled and backfill
      runs the logical date is the start of the data interval [D, D+1), so that day is D.
    - A run without a logical date (Airflow 3's manual runs may have none) and without params fails.
    """
    first, last = _param_day(start, "start"), _param_day(end, "end")
    if first is None and last is not None:
        raise RunDaysError(f"param end is {last.isoformat()} but start is missing: give start too")
    if first is not None:
        last = last or first
        if first > last:
            raise RunDaysError(f"param start {first.isoformat()} is after param end {last.isoformat()}")
        return first, last
    if logical_date is None:
        raise RunDaysError(
            "this run has no logical date and no params: trigger it with a logical date, or with the "
            'params start and end (e.g. {"start": "2010-12-01", "end": "2010-12-31"})'
        )
    # Airflow's dates are timezone-aware UTC; a naive one (a test's) is taken as UTC too, never as
    # the machine's local time, so that the day does not depend on where the scheduler runs.
    if logical_date.tzinfo is not None:
        logical_date = logical_date.astimezone(dt.UTC)
    day = logical_date.date()
    return day, day


def _param_day(value: str | dt.date | None, name: str) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        raise RunDaysError(f"param {name} must be a date like 2010-12-01, not a timestamp ({value})")
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise RunDaysError(f"param {name} is {value!r}, not a date like 2010-12-01") from None
