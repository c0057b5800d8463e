"""The contract package carries no web stack, and the job (what the CLI and the DAG's tasks import) no
longer needs the service: each checked in a fresh interpreter, whose `sys.modules` says what an import
really pulled in (a module imported by an earlier test would hide it in this process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: The service's web and database stack: none of it may come with the contract or the job.
WEB_STACK = ("fastapi", "starlette", "sqlalchemy", "uvicorn")
CONTRACT_MODULES = (
    "retail_contract",
    "retail_contract.content_hash",
    "retail_contract.lake_layout",
    "retail_contract.limits",
    "retail_contract.wire",
)
#: What the CLI, the DAG's tasks (dags/retail_etl.py imports these inside its tasks) and the Celery
#: workers' start-up (deploy/airflow/retail_celery_config.py) import.
JOB_MODULES = (
    "etl.cli",
    "etl.pipeline",
    "etl.errors",
    "etl.schedule",
    "etl.destinations.fanout",
    "etl.lake",
)


def imported_after(modules: tuple[str, ...]) -> set[str]:
    """The top-level names of every module in `sys.modules` after a fresh interpreter imports `modules`."""
    script = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


def test_the_contract_imports_no_web_stack() -> None:
    loaded = imported_after(CONTRACT_MODULES)
    assert "retail_contract" in loaded
    assert not loaded & {*WEB_STACK, "api", "etl", "pydantic"}


def test_the_lake_layout_imports_only_the_standard_library() -> None:
    # The DAG imports it when Airflow parses the file, which must stay cheap.
    loaded = imported_after(("retail_contract.lake_layout",))
    assert not loaded & {"pyarrow", "numpy", "orjson"}


def test_the_job_imports_neither_the_service_nor_its_web_stack() -> None:
    loaded = imported_after(JOB_MODULES)
    assert {"etl", "retail_contract"} <= loaded
    assert not loaded & {*WEB_STACK, "api"}


def test_the_invoice_body_is_the_page_without_its_day() -> None:
    from retail_contract import wire

    page = wire.INVOICE_PAGE_SCHEMA
    body = wire.invoice_body_schema()
    assert body.names == list(wire.INVOICE_FIELDS)
    assert [body.field(name) for name in body.names] == [page.field(name) for name in body.names]
    assert set(page.names) - set(body.names) == {"invoice_day"}
    assert wire.LINE_STRUCT.names == list(wire.LINE_FIELDS)
