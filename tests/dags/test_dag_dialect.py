"""`dag.test()` runs of `retail_etl` over a source that cannot tell day-first from month-first: without the
param `date_format` the run fails at once saying so (not retried); with it, the day lands in the lake
exactly as the canonical CSV's day does. Real service process, real lake, as in test_dag_run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

# The fixtures of the DAG runs, shared rather than copied (pytest finds fixtures imported into a module).
from tests.dags.test_dag_run import (  # noqa: F401
    DAY,
    fresh_dag,
    read_partition,
    retail_api_connection,
    service,
)
from tests.support.job import SAMPLE
from tests.support.shapes import day_first, delimited, sample_rows


def _uk_december_source(directory: Path) -> Path:
    """The sample's December days written day-first: every date has both fields <= 12."""
    path = directory / "uk-december.csv"
    rows = [row for row in sample_rows() if row["InvoiceDate"].startswith("2010-12")]
    path.write_bytes(delimited(day_first(rows)))
    return path


#: The connection `retail_api` to a live service, as in test_dag_run.
pytestmark = pytest.mark.usefixtures("retail_api_connection")


def _run(dag: Any, conf: dict[str, Any]) -> Any:
    return dag.test(logical_date=dt.datetime.fromisoformat(DAY).replace(tzinfo=dt.UTC), run_conf=conf)


def test_the_param_date_format_reads_a_source_that_cannot_tell(
    request: pytest.FixtureRequest, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    source = _uk_december_source(tmp_path)
    lake = tmp_path / "lake"

    refused = _run(request.getfixturevalue("fresh_dag"), {"source": str(source), "lake": str(lake)})
    output = capfd.readouterr()
    tis = {ti.task_id: ti for ti in refused.get_task_instances()}
    assert refused.state == "failed"
    assert tis["load_and_validate"].try_number == 1, "an ambiguous source is not retried"
    assert "SourceError" in output.out + output.err and "pass --date-format" in output.out + output.err
    assert not list(lake.rglob("*.parquet"))


def test_with_the_param_the_day_is_the_canonical_csvs_day(
    request: pytest.FixtureRequest, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    dag = request.getfixturevalue("fresh_dag")
    source = _uk_december_source(tmp_path)
    lake, canonical_lake = tmp_path / "lake", tmp_path / "canonical-lake"
    conf = {"source": str(source), "lake": str(lake), "date_format": "%d/%m/%Y %H:%M"}

    # The canonical run first: a run's params stay in the DAG object as the next run's defaults.
    canonical = _run(dag, {"source": str(SAMPLE), "lake": str(canonical_lake)})
    assert canonical.state == "success"
    run = _run(dag, conf)
    output = capfd.readouterr()
    assert run.state == "success", (output.out[-4000:], output.err[-4000:])

    for table in ("invoice_lines", "invoices", "customers"):
        got, expected = read_partition(lake, table), read_partition(canonical_lake, table)
        assert got.num_rows > 0 and got.equals(expected), table
    assert [p.name for p in (lake / "invoice_lines").iterdir()] == [f"invoice_day={DAY}"]
