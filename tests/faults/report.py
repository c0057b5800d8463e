"""The fault report: what the fault tests injected and what came of it, gathered over a test session.

Tests add records through the session fixture `fault_report`; at the end of the session it is written
to `.retail-etl/fault-report.json` and `.retail-etl/fault-report.md`. Print the last one with
`python -m tests.faults.report`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPORT_DIR = Path(__file__).resolve().parents[2] / ".retail-etl"
JSON_PATH = REPORT_DIR / "fault-report.json"
MARKDOWN_PATH = REPORT_DIR / "fault-report.md"


@dataclass
class Scenario:
    """One scenario of a test: what was done to the run and how it ended."""

    name: str
    injected: dict[str, int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    outcome: str = ""
    #: Measured by reading the rows back; None where the scenario checks otherwise (a count, a fingerprint).
    rows_lost: int | None = None
    duplicates: int | None = None


@dataclass
class FaultReport:
    scenarios: list[Scenario] = field(default_factory=list)

    def add(self, scenario: Scenario) -> None:
        self.scenarios.append(scenario)

    def to_dict(self) -> dict[str, object]:
        injected: Counter[str] = Counter()
        retries: Counter[str] = Counter()
        for s in self.scenarios:
            injected.update(s.injected)
            retries.update(s.retries)
        return {
            "scenarios": [asdict(s) for s in self.scenarios],
            "totals": {
                "injected": dict(sorted((k, v) for k, v in injected.items() if v)),
                "retries": dict(sorted(retries.items())),
                "rows_lost": sum(s.rows_lost or 0 for s in self.scenarios),
                "duplicates": sum(s.duplicates or 0 for s in self.scenarios),
                "scenarios_read_back": sum(s.rows_lost is not None for s in self.scenarios),
            },
        }

    def write(self) -> None:
        if not self.scenarios:
            return
        REPORT_DIR.mkdir(exist_ok=True)
        data = self.to_dict()
        JSON_PATH.write_text(json.dumps(data, indent=2) + "\n")
        MARKDOWN_PATH.write_text(to_markdown(data))


def _pairs(values: object) -> str:
    assert isinstance(values, dict)
    return ", ".join(f"{k}: {v}" for k, v in values.items() if v) or "-"


def _measured(value: object) -> str:
    return "not read back" if value is None else str(value)


def to_markdown(data: dict[str, object]) -> str:
    totals = data["totals"]
    assert isinstance(totals, dict)
    lines = [
        "| scenario | injected | retries | outcome | rows lost | duplicates |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    scenarios = data["scenarios"]
    assert isinstance(scenarios, list)
    for s in scenarios:
        lines.append(
            f"| {s['name']} | {_pairs(s['injected'])} | {_pairs(s['retries'])} | {s['outcome']} "
            f"| {_measured(s['rows_lost'])} | {_measured(s['duplicates'])} |"
        )
    lines += [
        "",
        f"Faults injected: {_pairs(totals['injected'])}.",
        f"Retries made by the job: {_pairs(totals['retries'])}.",
        f"Rows lost: {totals['rows_lost']}. Duplicates: {totals['duplicates']} "
        f"(service read back after {totals['scenarios_read_back']} scenarios).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    if not MARKDOWN_PATH.exists():
        print(f"no fault report yet: run `pytest tests/faults` first ({MARKDOWN_PATH})", file=sys.stderr)
        return 1
    print(MARKDOWN_PATH.read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
