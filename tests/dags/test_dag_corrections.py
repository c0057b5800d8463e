"""`dag.test()` runs of `retail_etl` over a source that corrects an invoice of the day already stored:
with the default param `on_conflict` the run fails in `post` at once (not retried) and changes nothing;
with `on_conflict=replace` the invoice is replaced and the day's partition rewritten. Real service
process, real lake, as in test_dag_run."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Any

import httpx
import pytest

# The fixtures of the DAG runs, shared rather than copied (pytest finds fixtures imported into a module).
from tests.dags.test_dag_run import (  # noqa: F401
    DAY,
    read_partition,
    retail_api_connection,
    service,
)
from tests.support.job import SAMPLE

pytestmark = pytest.mark.usefixtures("retail_api_connection")


def _fresh_dag() -> Any:
    """The DAG parsed anew: a run's params would otherwise be the next run's defaults (test_dag_run)."""
    from airflow.dag_processing.dagbag import DagBag

    from tests.dags.conftest import DAGS_FOLDER

    return DagBag(dag_folder=str(DAGS_FOLDER)).dags["retail_etl"]


def _run(conf: dict[str, Any]) -> Any:
    logical_date = dt.datetime.fromisoformat(DAY).replace(tzinfo=dt.UTC)
    return _fresh_dag().test(logical_date=logical_date, run_conf=conf)


def _corrected_source(directory: Path) -> tuple[Path, str, int]:
    """The sample with the first line of the day's first invoice one more in quantity; returns the
    file, that invoice's number and the new quantity."""
    with SAMPLE.open(newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    first = next(row for row in rows if row[4].startswith(DAY))
    first[3] = str(int(first[3]) + 1)
    path = directory / "corrected.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path, first[0], int(first[3])


def test_a_correction_fails_the_run_unless_the_param_says_replace(
    airflow_db: Path,
    service: Any,  # noqa: F811
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    lake = tmp_path / "lake"
    assert _run({"source": str(SAMPLE), "lake": str(lake)}).state == "success"
    source, invoice_no, quantity = _corrected_source(tmp_path)
    stored_before = httpx.get(f"{service.url}/invoice/{invoice_no}", headers=service.headers).json()
    partition_before = read_partition(lake, "invoice_lines")
    capfd.readouterr()

    refused = _run({"source": str(source), "lake": str(lake)})
    output = capfd.readouterr()
    tis = {ti.task_id: ti for ti in refused.get_task_instances()}
    assert refused.state == "failed"
    assert tis["post"].try_number == 1, "a correction without on_conflict=replace is not retried"
    assert "InvoiceConflictError" in output.out + output.err
    assert "on-conflict replace" in output.out + output.err
    assert httpx.get(f"{service.url}/invoice/{invoice_no}", headers=service.headers).json() == stored_before
    assert read_partition(lake, "invoice_lines").equals(partition_before)

    replaced = _run({"source": str(source), "lake": str(lake), "on_conflict": "replace"})
    output = capfd.readouterr()
    assert replaced.state == "success", (output.out[-4000:], output.err[-4000:])
    stored = httpx.get(f"{service.url}/invoice/{invoice_no}", headers=service.headers).json()
    assert stored["lines"][0]["quantity"] == quantity
    after = read_partition(lake, "invoice_lines").to_pylist()
    before = partition_before.to_pylist()
    changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert len(changed) == 1
    ((old, new),) = changed
    assert (new["invoice_no"], new["quantity"]) == (invoice_no, quantity)
    assert {**old, "quantity": quantity} == new
