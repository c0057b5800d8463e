"""The sync's own check: the lake's figures per day against the service's, and when a difference fails.

The lake is real (written by `write_lake` under tmp_path); the service's answers come from a stand-in
with the two calls the check makes, so that a difference can be made on purpose."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import fsspec
import pytest

from etl.errors import ReconciliationError
from etl.lake import read_lake_table, write_lake
from etl.pipeline import LogObserver, RunReport, StageTimer, run_config
from etl.schema import REJECT_SCHEMA, ServiceSnapshot
from etl.sync import DayFigures, _lake_figures, _Sync
from tests.etl.conftest import lines_of_day

DAY = dt.date(2010, 12, 1)


class Service:
    """The service's figures and feed as the check reads them."""

    def __init__(self, figures: dict[str, dict[str, Any]], later_changes: list[dict[str, Any]]) -> None:
        self.figures = figures
        self.later_changes = later_changes

    async def get_invoice_days(self, start: dt.date, end: dt.date) -> list[dict[str, Any]]:
        return list(self.figures.values())

    async def get_changes(self, after: str, limit: int) -> dict[str, Any]:
        return {"changes": self.later_changes, "next_cursor": after, "more": False}


@pytest.fixture
def lake(tmp_path: Path, sample_snapshot: ServiceSnapshot) -> Path:
    day = ServiceSnapshot(lines_of_day(sample_snapshot.lines, DAY), sample_snapshot.customers)
    write_lake(str(tmp_path / "lake"), [DAY], day, REJECT_SCHEMA.empty_table(), source_fingerprint=None)
    return tmp_path / "lake"


def checker(lake: Path) -> _Sync:
    config = run_config(lake=str(lake), api_url="http://127.0.0.1:9", api_key="k")
    report = RunReport(
        run_id="t", source="", shape="sync", lake=str(lake), start=None, end=None, dry_run=False
    )
    return _Sync(config, report, StageTimer(report, LogObserver()), fsspec.filesystem("file"), str(lake))


def true_figures(lake: Path) -> DayFigures:
    return _lake_figures(read_lake_table(str(lake), "invoice_lines", [DAY]))[DAY]


def as_answer(figures: DayFigures) -> dict[str, dict[str, Any]]:
    return {
        DAY.isoformat(): {
            "invoice_day": DAY.isoformat(),
            "lines": figures.lines,
            "invoices": figures.invoices,
            "amount": f"{figures.amount:.3f}",
        }
    }


def test_the_lakes_figures_are_exact(lake: Path) -> None:
    figures = true_figures(lake)
    lines = read_lake_table(str(lake), "invoice_lines", [DAY]).to_pylist()
    assert figures.lines == len(lines)
    assert figures.invoices == len({row["invoice_no"] for row in lines})
    assert figures.amount == sum((row["quantity"] * row["unit_price"] for row in lines), Decimal(0))


def test_a_day_equal_on_both_sides_passes(lake: Path) -> None:
    sync = checker(lake)
    asyncio.run(sync._check(Service(as_answer(true_figures(lake)), []), [DAY], after="7"))  # type: ignore[arg-type]
    true = true_figures(lake)
    figures = {"lines": true.lines, "invoices": true.invoices, "amount": str(true.amount)}
    assert sync.report.reconciliation["service"] == {
        "ok": True,
        "days_checked": 1,
        # The day as the run's page shows it: the service's figures and the lake's.
        "days": [{"day": DAY.isoformat(), "ok": True, "source": figures, "other": figures}],
    }


def test_a_day_that_differs_fails_naming_both_sides(lake: Path) -> None:
    true = true_figures(lake)
    off_by_a_penny = DayFigures(true.lines, true.invoices, true.amount + Decimal("0.01"))
    sync = checker(lake)
    with pytest.raises(ReconciliationError, match=f"1 day.*{DAY}.*{off_by_a_penny.amount}"):
        asyncio.run(sync._check(Service(as_answer(off_by_a_penny), []), [DAY], after="7"))  # type: ignore[arg-type]
    assert sync.report.reconciliation["service"]["ok"] is False


def test_a_day_changed_again_meanwhile_waits_for_the_next_round(lake: Path) -> None:
    true = true_figures(lake)
    one_more_line = DayFigures(true.lines + 1, true.invoices, true.amount)
    later = [{"resource": "invoice", "id": "999001", "invoice_day": DAY.isoformat(), "position": 8}]
    sync = checker(lake)
    asyncio.run(sync._check(Service(as_answer(one_more_line), later), [DAY], after="7"))  # type: ignore[arg-type]
    assert sync.report.reconciliation["service"]["ok"] is True
