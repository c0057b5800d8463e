"""Run reports: per run under `<lake>/_runs/`, a JSON document and the page people look at
(`etl.report_page`), each written whole."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
from collections.abc import Mapping
from typing import Any

from etl.errors import LakeError
from etl.json_texts import JsonTexts
from etl.lake import storage
from etl.report_page import render_report_page
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
    """Write `report` as `<root>/_runs/<run_id>.json` and its page as `<run_id>.html` (each atomically);
    returns the JSON's location.

    Dates, datetimes and decimals are written as ISO / decimal strings (`report_json`); the page shows
    the same values.
    """
    if not _RUN_ID.match(run_id):
        raise ValueError(f"run_id {run_id!r} is not a safe file name")
    body = report_json(report)
    page = render_report_page(report)
    fs, base = storage.filesystem(root, storage_options)
    final = f"{base}/{RUNS_DIR}/{run_id}.json"
    try:
        storage.put_whole(fs, final, body.encode("utf-8") + b"\n")
        storage.put_whole(fs, report_page_path(final), page.encode("utf-8"))
    except OSError as exc:
        raise LakeError(f"cannot write the run report at {root}: {storage.one_line(exc)}") from exc
    return storage.display(fs, final)


def report_json(report: Mapping[str, Any]) -> str:
    """`report` as JSON indented by two, keys sorted; a `JsonTexts` array's items written as they are,
    one per line (a 100x run's 60,000 day checks, never turned back into objects)."""
    parts: list[str] = []
    _encode(report, parts, 0)
    return "".join(parts)


def _encode(value: Any, parts: list[str], level: int) -> None:
    pad, inner = "\n" + "  " * level, "\n" + "  " * (level + 1)
    if isinstance(value, JsonTexts):
        parts.append(f"[{inner}{f',{inner}'.join(value)}{pad}]" if value else "[]")
    elif isinstance(value, Mapping):
        if not value:
            parts.append("{}")
            return
        for index, key in enumerate(sorted(value, key=str)):
            parts.append(("," if index else "{") + inner + json.dumps(str(key), ensure_ascii=False) + ": ")
            _encode(value[key], parts, level + 1)
        parts.append(pad + "}")
    elif isinstance(value, list | tuple):
        if not value:
            parts.append("[]")
            return
        for index, item in enumerate(value):
            parts.append(("," if index else "[") + inner)
            _encode(item, parts, level + 1)
        parts.append(pad + "]")
    else:
        parts.append(json.dumps(value, default=_json_value, ensure_ascii=False))


def report_page_path(report_path: str) -> str:
    """Where the page of the report at `report_path` (`....json`) is."""
    return report_path.removesuffix(".json") + ".html"


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


def find_run_report(
    root: str, run_id: str | None = None, *, storage_options: Mapping[str, Any] | None = None
) -> tuple[str, str, dict[str, Any]]:
    """The run report `run_id` of the lake at `root`, or its newest (last written): its location, its
    page's, and its content. `LakeError` when there is none, or no such run."""
    if run_id is not None and not _RUN_ID.match(run_id):
        raise LakeError(f"{run_id!r} is not a run id")
    fs, base = storage.filesystem(root, storage_options)
    folder = f"{base}/{RUNS_DIR}"
    try:
        if run_id is None:
            found = [
                (path, info)
                for path, info in storage.files_with_details(fs, folder)
                if path.endswith(".json") and "/" not in path[len(folder) + 1 :]
            ]
            if not found:
                raise LakeError(f"no run report in {root}: run retail-etl run or sync with --lake {root}")
            path = max(found, key=lambda item: _written_at(fs, *item))[0]
        else:
            path = f"{folder}/{run_id}.json"
            if not fs.exists(path):
                raise LakeError(f"no run {run_id} in {root}")
        with fs.open(path, "rb") as handle:
            report: dict[str, Any] = json.load(handle)
    except (OSError, ValueError) as exc:
        raise LakeError(f"cannot read the run reports at {root}: {storage.one_line(exc)}") from exc
    return storage.display(fs, path), storage.display(fs, report_page_path(path)), report


def _written_at(fs: Any, path: str, info: Mapping[str, Any] | None) -> float:
    if info is None:  # local: no details from the listing
        return float(fs.info(path)["mtime"])
    value = info.get("LastModified", info.get("mtime", 0))
    return value.timestamp() if isinstance(value, dt.datetime) else float(value)
