"""The day mapping of `etl.schedule`, without Airflow: which invoice days a DAG run processes."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from etl.errors import EtlError
from etl.schedule import FIRST_INVOICE_DAY, LAST_INVOICE_DAY, RunDaysError, days_for_run

UTC = dt.UTC
REPO = Path(__file__).resolve().parents[2]


def midnight(day: str) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(tzinfo=UTC)


def test_the_data_set_bounds() -> None:
    assert (dt.date(2010, 12, 1), dt.date(2011, 12, 9)) == (FIRST_INVOICE_DAY, LAST_INVOICE_DAY)


@pytest.mark.parametrize("day", ["2010-12-01", "2010-12-02", "2011-03-27", "2011-10-30", "2011-12-09"])
def test_a_run_with_logical_date_d_processes_day_d(day: str) -> None:
    # The UK's clock changes (2011-03-27, 2011-10-30) do not move a UTC midnight to another day.
    expected = dt.date.fromisoformat(day)
    assert days_for_run(logical_date=midnight(day)) == (expected, expected)


def test_the_day_is_the_utc_day_of_the_logical_date() -> None:
    # 2010-12-02 00:30 in New York is 05:30 UTC the same day; 23:30 in New York is the next UTC day.
    new_york = ZoneInfo("America/New_York")
    assert days_for_run(logical_date=dt.datetime(2010, 12, 2, 0, 30, tzinfo=new_york))[0] == dt.date(
        2010, 12, 2
    )
    assert days_for_run(logical_date=dt.datetime(2010, 12, 2, 23, 30, tzinfo=new_york))[0] == dt.date(
        2010, 12, 3
    )
    assert days_for_run(logical_date=dt.datetime(2010, 12, 2, 23, 59))[0] == dt.date(2010, 12, 2)


def test_params_give_the_range_of_a_manual_run() -> None:
    assert days_for_run(logical_date=None, start="2010-12-01", end="2010-12-31") == (
        dt.date(2010, 12, 1),
        dt.date(2010, 12, 31),
    )


def test_params_win_over_the_logical_date() -> None:
    assert days_for_run(logical_date=midnight("2011-01-05"), start="2010-12-01", end="2010-12-02") == (
        dt.date(2010, 12, 1),
        dt.date(2010, 12, 2),
    )


def test_start_alone_is_that_one_day() -> None:
    assert days_for_run(logical_date=None, start="2011-09-25") == (dt.date(2011, 9, 25), dt.date(2011, 9, 25))
    assert days_for_run(logical_date=None, start=dt.date(2011, 9, 25), end="") == (
        dt.date(2011, 9, 25),
        dt.date(2011, 9, 25),
    )


def test_empty_params_fall_back_to_the_logical_date() -> None:
    # The trigger form sends empty strings or nulls for untouched fields.
    assert days_for_run(logical_date=midnight("2010-12-02"), start="", end=None) == (
        dt.date(2010, 12, 2),
        dt.date(2010, 12, 2),
    )


def test_a_run_without_logical_date_or_params_fails_saying_what_to_give() -> None:
    with pytest.raises(RunDaysError, match="no logical date and no params") as raised:
        days_for_run(logical_date=None)
    assert "start" in str(raised.value) and "end" in str(raised.value)
    assert isinstance(raised.value, EtlError)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (None, "2010-12-02", "start is missing"),
        ("2010-12-03", "2010-12-02", "after param end"),
        ("2010-13-01", None, "not a date"),
        ("yesterday", None, "not a date"),
        (dt.datetime(2010, 12, 1, 8, 0), None, "not a timestamp"),
    ],
)
def test_bad_params_fail_with_a_message_naming_the_param(start: object, end: object, message: str) -> None:
    with pytest.raises(RunDaysError, match=message):
        days_for_run(logical_date=midnight("2010-12-02"), start=start, end=end)  # type: ignore[arg-type]


def test_the_mapping_needs_neither_airflow_nor_the_data_stack() -> None:
    # A fresh interpreter: in this one other tests may have imported them already.
    probe = (
        "import sys, etl.schedule; "
        "print(sorted(m for m in ('airflow', 'pandas', 'pyarrow') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.strip() == "[]"
