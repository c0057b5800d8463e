"""Run reports: one JSON document per run under `<lake>/_runs/`, written whole."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
from collections.abc import Mapping
from typing import Any

from etl.errors import LakeError
from etl.lake import storage
from retail_contract.lake_layout import RUNS_DIR

# Airflow run ids look like "scheduled__2024-01-01T00:00:00+00:00".
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+=-]{0,199}$")


def write_run_report(
    root: str,
    run_id: str,
    report: Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write `report` as `<root>/_runs/<run_id>.json` (atomically) and return its location.

    Dates, datetimes and decimals are written as ISO / decimal strings.
    """
    if not _RUN_ID.match(run_id):
        raise ValueError(f"run_id {run_id!r} is not a safe file name")
    body = json.dumps(report, indent=2, sort_keys=True, default=_json_value, ensure_ascii=False)
    fs, base = storage.filesystem(root, storage_options)
    final = f"{base}/{RUNS_DIR}/{run_id}.json"
    try:
        storage.put_whole(fs, final, body.encode("utf-8") + b"\n")
    except OSError as exc:
        raise LakeError(f"cannot write the run report at {root}: {storage.one_line(exc)}") from exc
    return storage.display(fs, final)


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return str(value)
