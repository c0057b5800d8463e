"""A run's report as a page a person can look at: `<lake>/_runs/<run_id>.html`, beside the JSON.

One self-contained HTML file (inline styles, charts as inline SVG, no script, no font or CDN): it opens
from a lake copied to a laptop or on a network without internet access. It shows the verdict of the
reconciliation, the run's counts, lines, invoices and revenue per invoice day (a chart and a table),
rejects by reason and each stage's time. Every figure comes from the JSON report as it is saved, so the
two always agree; each cell carries `data-*` attributes naming what it shows, for tests and scrapers.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from etl.json_texts import JsonTexts

#: Above this many days the charts show months (the table keeps every day).
CHART_DAYS = 400
_BAR_CHART_WIDTH = 900
_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; max-width: 1000px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 2em; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; border-bottom: 1px solid #ddd; }
th { text-align: left; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #176b2c; } .bad { color: #a4161a; font-weight: bold; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
"""


def render_report_page(report: Mapping[str, Any]) -> str:
    """The page of `report` (a saved run report's JSON-ready dict)."""
    run_id = str(report.get("run_id", ""))
    status = str(report.get("status", ""))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>retail-etl run {_e(run_id)}: {_e(status)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>retail-etl {'sync' if report.get('shape') == 'sync' else 'run'} <code>{_e(run_id)}</code>: "
        f'<span data-field="status" class="{"ok" if status in ("reconciled", "dry run") else "bad"}">'
        f"{_e(status)}</span></h1>",
        _facts(report),
        _verdict(report.get("reconciliation") or {}),
        _counts(report.get("counts") or {}),
        _days_section(_day_rows(report.get("reconciliation") or {})),
        _rejects(report.get("rejects_by_reason") or {}),
        _stages(report.get("seconds") or {}),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _facts(report: Mapping[str, Any]) -> str:
    days = report.get("days") or []
    rows = [
        ("source", f"{report.get('source', '')} ({report.get('shape', '')})"),
        ("lake", report.get("lake", "")),
        ("started", report.get("started_at", "")),
        ("invoice days", f"{len(days)}" + (f" ({days[0]} .. {days[-1]})" if days else "")),
    ]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _verdict(reconciliation: Mapping[str, Any]) -> str:
    items = []
    for side, check in reconciliation.items():
        if not isinstance(check, Mapping):  # "error": the failure's text
            items.append(f'<li class="bad" data-check="{_e(side)}">{_e(side)}: {_e(check)}</li>')
            continue
        ok = bool(check.get("ok"))
        checked = f"{check.get('days_checked', 0)} days checked"
        message = check.get("message") or (checked if ok else "differs")
        items.append(
            f'<li data-check="{_e(side)}" data-ok="{str(ok).lower()}" class="{"ok" if ok else "bad"}">'
            f"{_e(side)}: {'agrees' if ok else 'DIFFERS'}: {_e(message)}</li>"
        )
    shown = "".join(items) or "<li>not reconciled (nothing was posted)</li>"
    return f"<h2>Reconciliation</h2><ul>{shown}</ul>"


def _counts(counts: Mapping[str, Any]) -> str:
    rows = "".join(
        f'<tr><th>{_e(name.replace("_", " "))}</th><td class="n" data-count="{_e(name)}">{value:,}</td></tr>'
        for name, value in counts.items()
        if isinstance(value, int)
    )
    return f"<h2>Counts</h2><table>{rows}</table>"


def _day_rows(reconciliation: Mapping[str, Any]) -> list[tuple[str, int, int, Decimal, bool]]:
    """(day, lines, invoices, revenue, ok) per day: the source side of the check against the service
    (for a run, its own lines; for a sync, the service's days it rewrote), a day's latest check."""
    for side in ("service", "lake"):
        check = reconciliation.get(side)
        if isinstance(check, Mapping) and check.get("days"):
            days = check["days"]
            entries = days.values() if isinstance(days, JsonTexts) else iter(days)
            latest = {}
            for entry in entries:  # one at a time: a 100x run's are 30,000 texts
                source = entry["source"]
                latest[entry["day"]] = (
                    entry["day"],
                    int(source["lines"]),
                    int(source["invoices"]),
                    Decimal(source["amount"]),
                    bool(entry.get("ok", True)),
                )
            return [latest[day] for day in sorted(latest)]
    return []


def _days_section(rows: Sequence[tuple[str, int, int, Decimal, bool]]) -> str:
    if not rows:
        return "<h2>Per invoice day</h2><p>This report holds no per-day figures.</p>"
    if len(rows) > CHART_DAYS:
        by_month: dict[str, list[Any]] = {}
        for day, lines, _invoices, revenue, _ok in rows:
            month = by_month.setdefault(day[:7], [0, Decimal(0)])
            month[0] += lines
            month[1] += revenue
        labels, lines_values, revenue_values = (
            list(by_month),
            [m[0] for m in by_month.values()],
            [m[1] for m in by_month.values()],
        )
        unit = "month"
    else:
        labels = [row[0] for row in rows]
        lines_values, revenue_values = [row[1] for row in rows], [row[3] for row in rows]
        unit = "day"
    table = "".join(
        f'<tr data-day="{_e(day)}"><td>{_e(day)}</td><td class="n" data-measure="lines">{lines:,}</td>'
        f'<td class="n" data-measure="invoices">{invoices:,}</td>'
        f'<td class="n" data-measure="revenue">{revenue:,}</td>'
        f'<td class="{"ok" if ok else "bad"}">{"ok" if ok else "differs"}</td></tr>'
        for day, lines, invoices, revenue, ok in rows
    )
    total_lines, total_invoices = sum(r[1] for r in rows), sum(r[2] for r in rows)
    total_revenue = sum((r[3] for r in rows), Decimal(0))
    return (
        f"<h2>Lines per {unit}</h2>{_columns(labels, [float(v) for v in lines_values])}"
        f"<h2>Revenue per {unit}</h2>{_columns(labels, [float(v) for v in revenue_values])}"
        "<h2>Per invoice day</h2><table><tr><th>day</th><th class='n'>lines</th><th class='n'>invoices</th>"
        "<th class='n'>revenue</th><th>check</th></tr>"
        f"{table}<tr data-day='total'><th>total</th><th class='n' data-measure='lines'>{total_lines:,}</th>"
        f"<th class='n' data-measure='invoices'>{total_invoices:,}</th>"
        f"<th class='n' data-measure='revenue'>{total_revenue:,}</th><th></th></tr></table>"
    )


def _columns(labels: Sequence[str], values: Sequence[float]) -> str:
    """A column chart (SVG), a column per label; the first and last labels under the axis."""
    height, top = 160, max(values, default=0) or 1
    width = max(_BAR_CHART_WIDTH / max(len(values), 1), 1)
    bars = "".join(
        f'<rect x="{i * width:.2f}" y="{height - max(v, 0) / top * height:.2f}" '
        f'width="{max(width - 1, 0.5):.2f}" height="{max(v, 0) / top * height:.2f}" fill="#4c78a8">'
        f"<title>{_e(label)}: {v:,.2f}</title></rect>"
        for i, (label, v) in enumerate(zip(labels, values, strict=True))
    )
    ends = (
        f'<text x="0" y="{height + 14}">{_e(labels[0])}</text>'
        f'<text x="{_BAR_CHART_WIDTH}" y="{height + 14}" text-anchor="end">{_e(labels[-1])}</text>'
        if labels
        else ""
    )
    highest = f'<text x="{_BAR_CHART_WIDTH}" y="10" text-anchor="end">highest {top:,.0f}</text>'
    return (
        f'<svg role="img" width="{_BAR_CHART_WIDTH}" height="{height + 20}" '
        f'viewBox="0 0 {_BAR_CHART_WIDTH} {height + 20}">{bars}{ends}{highest}</svg>'
    )


def _bars(rows: Sequence[tuple[str, float, str]], attribute: str) -> str:
    """Horizontal bars with their label and value: (label, value, value as shown)."""
    top = max((value for _, value, _ in rows), default=0) or 1
    body = "".join(
        f"<tr><th>{_e(label)}</th><td><svg width='300' height='12'>"
        f"<rect width='{max(value / top * 300, 1):.1f}' height='12' fill='#f58518'/></svg></td>"
        f"<td class='n' {attribute}=\"{_e(label)}\">{_e(shown)}</td></tr>"
        for label, value, shown in rows
    )
    return f"<table>{body}</table>"


def _rejects(by_reason: Mapping[str, int]) -> str:
    if not by_reason:
        return "<h2>Rejects by reason</h2><p data-rejects='0'>No rejects.</p>"
    ranked = sorted(by_reason.items(), key=lambda item: -item[1])
    rows = [(reason, float(count), f"{count:,}") for reason, count in ranked]
    return f"<h2>Rejects by reason</h2>{_bars(rows, 'data-reason')}"


def _stages(seconds: Mapping[str, float]) -> str:
    if not seconds:
        return ""
    rows = [(stage, float(value), f"{value:.2f} s") for stage, value in seconds.items()]
    return f"<h2>Time per stage</h2>{_bars(rows, 'data-stage')}"
