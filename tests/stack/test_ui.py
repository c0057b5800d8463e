"""The stack as a person sees it: the Airflow UI's grid of the DAG's runs, Prometheus' alerts page and the
service's interactive docs through nginx, each rendered in headless Chromium (offline but for loopback)
and checked against what the stack's own APIs say.

Each page is also saved as a screenshot. With `RETAIL_SCREENSHOTS=<folder>` they are kept there: the
README's come from `RETAIL_SCREENSHOTS=docs/screenshots ./dev test tests/stack/test_ui.py`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import struct
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
import yaml

from tests.stack.support import DAYS, REPO, Stack, backfill, wait_for, wait_until_finished
from tests.support.browser import RenderedPage, render

pytestmark = pytest.mark.stack

WINDOW = (1400, 900)
#: The grid draws a task instance's state as an icon (Airflow 3.3's `StateIcon`, lucide's icons), its
#: colour aside: the SVG paths of each state's icon, as the pinned UI draws them. A state missing here
#: fails the test with the paths it found, so a new UI version is seen, not misread.
STATE_ICONS = {
    ('path d="M20 6 9 17l-5-5"',): "success",
    ('line x1="18" y1="6" x2="6" y2="18"', 'line x1="6" y1="6" x2="18" y2="18"'): "failed",
    (
        'path d="M12 2a10 10 0 0 1 7.38 16.75"',
        'path d="m16 12-4-4-4 4"',
        'path d="M12 16V8"',
        'path d="M2.5 8.875a10 10 0 0 0-.5 3"',
        'path d="M2.83 16a10 10 0 0 0 2.43 3.4"',
        'path d="M4.636 5.235a10 10 0 0 1 .891-.857"',
        'path d="M8.644 21.42a10 10 0 0 0 7.631-.38"',
    ): "upstream_failed",
}
_CELL = re.compile(
    r'<div data-run-id="([^"]+)" data-selected="[^"]*" data-task-id="([^"]+)"[^>]*>'
    r"(.*?)</a>",
    re.S,
)
#: An icon's shapes, with their geometry: what tells one state's icon from another's.
_SHAPE = re.compile(r"<(path|line|polyline|polygon|circle|rect|ellipse)\b([^>]*?)/?>")


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where the screenshots go: RETAIL_SCREENSHOTS (kept) or the test's own folder."""
    folder = Path(os.environ["RETAIL_SCREENSHOTS"]) if os.environ.get("RETAIL_SCREENSHOTS") else tmp_path
    folder = folder if folder.is_absolute() else REPO / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails for anything but a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def _assert_screenshot(path: Path, page: RenderedPage) -> None:
    assert _png_size(path) == WINDOW
    # A blank page compresses to a few KiB; a page with text and charts does not.
    assert path.stat().st_size > 20_000, f"{path.name}: {path.stat().st_size} bytes, a blank page?"
    assert page.dom.count("<") > 100


def _grid_states(dom: str) -> dict[str, dict[str, str]]:
    """run id → task id → state, as the grid's cells show them."""
    shown: dict[str, dict[str, str]] = defaultdict(dict)
    unknown: dict[tuple[str, ...], str] = {}
    for run_id, task_id, cell in _CELL.findall(dom):
        icon = tuple(f"{tag}{attributes}".strip() for tag, attributes in _SHAPE.findall(cell))
        if icon in STATE_ICONS:
            shown[run_id][task_id] = STATE_ICONS[icon]
        else:
            unknown.setdefault(icon, f"{run_id} {task_id}")
    assert not unknown, f"icons this test does not know (an example cell of each): {unknown}"
    return dict(shown)


@pytest.mark.timeout(600)
def test_the_airflow_grid_shows_every_runs_tasks_in_their_states(
    stack: Stack, unpaused_dag: str, screenshots: Path
) -> None:
    # Runs that succeed (a backfill of two days into a lake of its own) and one that fails: its source
    # does not exist, which fails the first task at once, without retries, and its downstream tasks
    # as upstream_failed.
    token = secrets.token_hex(3)
    backfill_id = backfill(stack, conf={"lake": f"s3://retail-lake/ui-{token}"})
    assert set(wait_until_finished(stack, backfill_id).values()) == {"success"}
    failed_run = f"ui-missing-source-{token}"
    conf = {"start": DAYS[0], "end": DAYS[0], "source": f"/nonexistent/{token}.csv"}
    stack.airflow("dags", "trigger", unpaused_dag, "--run-id", failed_run, "--conf", json.dumps(conf))

    def finished() -> str | None:
        with stack.airflow_db() as db:
            row = db.execute("SELECT state FROM dag_run WHERE run_id = %s", (failed_run,)).fetchone()
        return row[0] if row and row[0] in ("success", "failed") else None

    assert wait_for("the run with a missing source finished", finished, 300, 1.0) == "failed"
    with stack.airflow_db() as db:
        rows = db.execute(
            "SELECT run_id, task_id, state FROM task_instance WHERE dag_id = %s", (unpaused_dag,)
        ).fetchall()
    recorded: dict[str, dict[str, str]] = defaultdict(dict)
    for run_id, task_id, state in rows:
        recorded[run_id][task_id] = state

    shot = screenshots / "airflow-grid.png"
    page = render(f"{stack.url('airflow')}/dags/{unpaused_dag}", budget_ms=20_000, screenshot=shot)
    shown = _grid_states(page.dom)

    # The latest runs are all there: the failed one and both days of the backfill.
    with stack.airflow_db() as db:
        backfill_runs = {r for (r,) in db.execute("SELECT run_id FROM dag_run WHERE backfill_id = %s",
                                                  (backfill_id,))}  # fmt: skip
    assert {failed_run, *backfill_runs} <= set(shown), sorted(shown)
    # Every cell the grid shows is the task instance's state in Airflow's database.
    for run_id, tasks in shown.items():
        assert tasks == recorded[run_id], run_id
    assert set(shown[failed_run].values()) == {"failed", "upstream_failed"}
    assert shown[failed_run]["load_and_validate"] == "failed"
    _assert_screenshot(shot, page)


def test_prometheus_alerts_page_lists_the_projects_rules_in_their_states(
    stack: Stack, screenshots: Path
) -> None:
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "rules.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    assert len(names) >= 6
    # A pending alert turns firing within seconds (the test stack's `for:` is 3 s): wait for a settled
    # page, so that the API's counts and the page's are of the same moment.
    url = f"{stack.url('prometheus')}/api/v1/rules"

    def settled() -> list[str] | None:
        groups = httpx.get(url, timeout=5).json()["data"]["groups"]
        states = [rule["state"] for group in groups for rule in group["rules"] if rule["type"] == "alerting"]
        return states if "pending" not in states else None

    states = wait_for("no alert pending", settled, 120, 1.0)
    # Debian's Prometheus 2.42 ships its classic UI only (the React UI's `/alerts` is a 404 there).
    shot = screenshots / "prometheus-alerts.png"
    page = render(f"{stack.url('prometheus')}/classic/alerts", screenshot=shot)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.dom))
    # Each rule, with the count of its alerts active now.
    active: dict[str, int] = defaultdict(int)
    for alert in stack.alerts():
        if alert["state"] in ("pending", "firing"):
            active[alert["labels"]["alertname"]] += 1
    for name in names:
        assert f"{name} ({active[name]} active)" in text, name
    # The three tabs count the rules in each state, as Prometheus' API does.
    assert settled() == states, "an alert changed state while the page was rendered"
    for state in ("inactive", "pending", "firing"):
        assert f"{state.capitalize()} ({states.count(state)})" in text, state
    # The one console error is Debian's packaging of popper.js (an ES module loaded as a script).
    errors = [line for line in page.console if "Uncaught" in line and "popper" not in line]
    assert not errors
    _assert_screenshot(shot, page)


def test_the_services_docs_through_nginx_show_every_operation(stack: Stack, screenshots: Path) -> None:
    service = stack.url("nginx")
    document = httpx.get(f"{service}/openapi.json", timeout=10).json()
    shot = screenshots / "service-docs.png"
    page = render(f"{service}/docs", screenshot=shot)
    paths = re.findall(r'<span class="opblock-summary-path" data-path="([^"]*)"', page.dom)
    assert set(paths) == set(document["paths"]) and len(paths) > 30
    assert not [line for line in page.console if re.search(r"Failed to load|net::ERR|Uncaught", line)]
    _assert_screenshot(shot, page)
