"""The one runner: a run's days cut into bounded batches, and its configuration built in one place."""

from __future__ import annotations

import datetime as dt

import pytest

from etl.config import JobSettings
from etl.pipeline import plan_batches, run_config

D = [dt.date(2011, 1, day) for day in range(1, 8)]


def test_batches_hold_at_most_the_bound_and_keep_day_order() -> None:
    per_day = dict(zip(D, [100, 200, 300, 50, 50, 400, 10], strict=True))
    batches = plan_batches(D, per_day, 400)
    assert batches == [(D[0], D[1]), (D[2], D[3], D[4]), (D[5],), (D[6],)]
    assert [day for batch in batches for day in batch] == D
    assert all(sum(per_day[d] for d in batch) <= 400 for batch in batches)


def test_a_day_larger_than_the_bound_is_a_batch_of_its_own() -> None:
    per_day = {D[0]: 10, D[1]: 5000, D[2]: 10}
    assert plan_batches(D[:3], per_day, 1000) == [(D[0],), (D[1],), (D[2],)]


def test_days_without_lines_ride_along_and_no_days_make_no_batches() -> None:
    assert plan_batches(D[:3], {}, 1000) == [tuple(D[:3])]
    assert plan_batches([], {}, 1000) == []


def test_the_config_takes_every_setting_then_the_overrides_given(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "RETAIL_CONCURRENCY": "3",
        "RETAIL_LINES_PER_REQUEST": "500",
        "RETAIL_PAGE_SIZE": "77",
        "RETAIL_LINES_PER_BATCH": "5000",
        "RETAIL_RETRY_BUDGET_SECONDS": "12.5",
        "RETAIL_REQUEST_TIMEOUT_SECONDS": "9",
        "RETAIL_API_URL": "http://service:8000",
        "RETAIL_LAKE": "/from/env",
    }.items():
        monkeypatch.setenv(name, value)
    config = run_config(JobSettings(_env_file=None), lake="/given", concurrency=None)
    assert config.lake == "/given"  # an override given wins
    assert config.api_url == "http://service:8000"
    assert config.tuning() == {
        "concurrency": 3,  # an override of None leaves the setting
        "lines_per_request": 500,
        "page_size": 77,
        "lines_per_batch": 5000,
        "retry_budget_seconds": 12.5,
        "request_timeout_seconds": 9.0,
    }


def test_an_override_that_is_no_setting_is_refused() -> None:
    with pytest.raises(TypeError, match="page_sise"):
        run_config(JobSettings(_env_file=None), page_sise=10)
