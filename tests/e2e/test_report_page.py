"""Every run leaves a page a person can look at beside its JSON report; `retail-etl report` finds it, and
the page, rendered by headless Chromium offline, shows the JSON's own figures."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from tests.e2e.test_job import ROOT, SAMPLE, run_job
from tests.support.browser import render
from tests.support.service import live_service

BAD_ROWS = (
    "536999,85123A,WHITE HANGING HEART T-LIGHT HOLDER,abc,2010-12-01 09:00:00,2.55,17850.0,United Kingdom\n"
    "536999,,NO CODE,6,2010-12-01 09:00:00,2.55,17850.0,United Kingdom\n"
    "537000,71053,WHITE METAL LANTERN,7,2010-12-01 09:00:00,x,17850.0,United Kingdom\n"
)


def _cells(dom: str, attribute: str) -> dict[str, str]:
    return dict(re.findall(rf'{attribute}="([^"]*)"[^>]*>([^<]*)<', dom))


def _number(text: str) -> Decimal:
    return Decimal(text.replace(",", "").removesuffix(" s"))


def test_a_run_writes_a_page_with_the_reports_figures_and_report_prints_where(
    sqlite_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "with_rejects.csv"
    source.write_text(SAMPLE.read_text() + BAD_ROWS)
    lake = tmp_path / "lake"
    with live_service(sqlite_url) as service:
        done = run_job(service, lake, source=source)
    assert done.returncode == 0, done.stderr

    shown = subprocess.run(
        [sys.executable, "-m", "etl.cli", "report", "--lake", str(lake)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    page_path = Path(shown.stdout.splitlines()[0].strip())
    (report_path,) = (lake / "_runs").glob("*.json")
    assert page_path == report_path.with_suffix(".html")
    report = json.loads(report_path.read_text())
    assert f"retail-etl run {report['run_id']}: reconciled" in shown.stdout  # the summary's title
    # A run named, or one that is not there.
    assert subprocess.run(
        [sys.executable, "-m", "etl.cli", "report", report["run_id"], "--lake", str(lake)],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=120,
    ).stdout.splitlines()[0].strip() == str(page_path)  # fmt: skip
    missing = subprocess.run(
        [sys.executable, "-m", "etl.cli", "report", "no-such-run", "--lake", str(lake)],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=120,
    )  # fmt: skip
    assert missing.returncode != 0 and missing.stderr.strip() == f"error: no run no-such-run in {lake}"

    page = render(page_path.as_uri())
    assert page.console == []  # no script, nothing to load: nothing to complain about
    dom = page.dom
    assert re.search(r'data-field="status"[^>]*>reconciled<', dom)
    for side in ("service", "lake"):
        assert f'data-check="{side}" data-ok="true"' in dom
    assert {k: int(_number(v)) for k, v in _cells(dom, "data-count").items()} == report["counts"]
    assert report["rejects_by_reason"] == {
        "unparseable Quantity": 1,
        "empty StockCode": 1,
        "unparseable UnitPrice": 1,
    }
    assert {k: int(v) for k, v in _cells(dom, "data-reason").items()} == report["rejects_by_reason"]
    assert {k: _number(v) for k, v in _cells(dom, "data-stage").items()} == {
        k: Decimal(f"{v:.2f}") for k, v in report["seconds"].items()
    }
    # Per day: lines, invoices and revenue, as the report's check against the service counted them.
    rows = dict(re.findall(r'<tr data-day="([^"]*)">(.*?)</tr>', dom))
    totals = dict(re.findall(r'data-measure="([^"]*)">([^<]*)<', rows.pop("total")))
    days = report["reconciliation"]["service"]["days"]
    assert sorted(rows) == [day["day"] for day in days] == report["days"]
    for day in days:
        measures = dict(re.findall(r'data-measure="([^"]*)">([^<]*)<', rows[day["day"]]))
        assert int(_number(measures["lines"])) == day["source"]["lines"]
        assert int(_number(measures["invoices"])) == day["source"]["invoices"]
        assert _number(measures["revenue"]) == Decimal(day["source"]["amount"])  # exact, as text
    assert int(_number(totals["lines"])) == report["counts"]["lines"]
    assert _number(totals["revenue"]) == Decimal(
        report["reconciliation"]["service"]["totals"]["source"]["amount"]
    )
    assert dom.count("<svg") >= 4  # lines and revenue per day, rejects, stages
