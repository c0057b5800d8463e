"""Sources the job must not guess about, and dialect options it cannot use, through the real command.

Each is one `error:` line naming the problem, exit 2, and no lake partition. The sources are read before
the service is called, so the service's URL is one nothing listens on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.report import FaultReport, Scenario
from tests.faults.support import assert_one_line_error, run_job
from tests.support.shapes import Row, day_first, decimal_comma, delimited, sample_rows

NOWHERE = "http://127.0.0.1:9"


def _december(rows: list[Row]) -> list[Row]:
    """The sample's two December days: written day-first, every date has both fields <= 12."""
    return [row for row in rows if row["InvoiceDate"].startswith("2010-12")]


def _month_first(rows: list[Row]) -> list[Row]:
    return [
        {**row, "InvoiceDate": f"{int(d[5:7])}/{int(d[8:10])}/{d[:4]} {int(d[11:13])}:{d[14:16]}"}
        for row in rows
        for d in [row["InvoiceDate"]]
    ]


def _contradicting(rows: list[Row]) -> bytes:
    # The sample's only day > 12 is 2011-09-25: written 25/09/2011 on some lines and 9/25/2011 on others,
    # no order reads them all.
    written = [
        (day_first if i % 2 else _month_first)([row])[0]
        if row["InvoiceDate"].startswith("2011-09-25")
        else row
        for i, row in enumerate(rows)
    ]
    return delimited(written)


def _mixed_decimals(rows: list[Row]) -> bytes:
    half = len(rows) // 2
    return delimited(rows[:half] + decimal_comma(rows[half:]), delimiter=";")


def _thousands_or_decimals(rows: list[Row]) -> bytes:
    # Every price with a comma reads as 1.25 with a decimal comma and as 1250 with a thousands separator.
    priced = [{**row, "UnitPrice": "1,250" if i % 2 else "3"} for i, row in enumerate(rows)]
    return delimited(priced, delimiter=";")


#: (the source's bytes, extra options, what the error line must say)
PROBLEMS: dict[str, tuple[Callable[[list[Row]], bytes], tuple[str, ...], tuple[str, ...]]] = {
    "day-first dates that never exceed 12": (
        lambda rows: delimited(day_first(_december(rows))),
        (),
        ("dates are ambiguous", "both fields <= 12", "--date-format"),
    ),
    "day-first and month-first dates in one file": (
        _contradicting,
        (),
        ("contradicts itself", "day-first", "month-first", "--date-format"),
    ),
    "decimal points and decimal commas in one file": (
        _mixed_decimals,
        (),
        ("mixes decimal points", "--decimal"),
    ),
    "prices whose comma may be a thousands separator": (
        _thousands_or_decimals,
        (),
        ("UnitPrice is ambiguous", "'1,250'", "--decimal"),
    ),
    "a delimiter that does not split the header": (
        lambda rows: delimited(rows, delimiter=";"),
        ("--delimiter", "tab"),
        ("--delimiter given (tab)", "semicolon-separated"),
    ),
    "an unsupported --date-format": (
        lambda rows: delimited(rows),
        ("--date-format", "%d/%m/%y"),
        ("--date-format", "not supported", "%d/%m/%Y %H:%M"),
    ),
    "an unknown --decimal": (lambda rows: delimited(rows), ("--decimal", ";"), ("--decimal", "use . or ,")),
    "an unknown --delimiter": (
        lambda rows: delimited(rows),
        ("--delimiter", "::"),
        ("--delimiter", "use , ;"),
    ),
    "an unknown --encoding": (
        lambda rows: delimited(rows),
        ("--encoding", "klingon"),
        ("--encoding", "not known"),
    ),
}


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_what_cannot_be_told_is_one_line_exit_2_and_no_partition(
    problem: str, tmp_path: Path, fault_report: FaultReport
) -> None:
    build, options, needles = PROBLEMS[problem]
    source = tmp_path / "source.csv"
    source.write_bytes(build(sample_rows()))
    lake = tmp_path / "lake"

    result = run_job(NOWHERE, "k", lake, *options, source=source, env={"RETAIL_RETRY_BUDGET_SECONDS": "1"})

    assert result.returncode == 2, result.stderr[-3000:]
    line = assert_one_line_error(result.stderr)
    for needle in needles:
        assert needle in line, line
    assert not list(lake.rglob("*.parquet"))
    fault_report.add(Scenario(f"ambiguous input: {problem}", {"bad_files": 1}, {}, "exit 2, one line"))


def test_a_given_decimal_mark_rejects_the_other_marks_rows_with_their_text(tmp_path: Path) -> None:
    # With `--decimal ,` a price written `2.55` is a reject quoting the cell; the rest are read.
    source = tmp_path / "source.csv"
    source.write_bytes(_mixed_decimals(sample_rows()))

    result = run_job(NOWHERE, "k", tmp_path / "lake", "--decimal", ",", "--dry-run", source=source)

    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "decimal ','" in result.stdout
    half = sample_rows()[: len(sample_rows()) // 2]
    with_point = sum(1 for row in half if "." in row["UnitPrice"])
    assert with_point > 1000
    assert re.search(rf"rejects\W+{with_point:,}\b", result.stdout), result.stdout
    assert re.search(rf"\blines\W+{8326 - with_point:,}\b", result.stdout), result.stdout
