"""The job through a fault-injecting proxy: every fault alone and all together end in the exact lake.

The real service (uvicorn on SQLite) sits behind `FaultProxy`; the real `retail-etl` command talks to
the proxy. Requests are small (200 lines, pages of 50) so that one day makes dozens of requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from tests.faults.proxy import FaultProxy
from tests.faults.report import FaultReport, Scenario
from tests.faults.support import DAY, assert_each_row_once, lake_tables, last_run_report, run_job
from tests.support.service import live_service

TIMEOUT_SECONDS = 2
#: How each fault shows up in the run report's retries (the client counts by status or exception).
CAUSES = {
    "503": {"503"},
    "429": {"429"},
    "reset_before": {"ReadError", "RemoteProtocolError", "WriteError"},
    "reset_after": {"ReadError", "RemoteProtocolError", "WriteError"},
    "delay": {"ReadTimeout"},
}
SCENARIOS = {
    "503": {"503": 0.25},
    "429": {"429": 0.25},
    "reset_before": {"reset_before": 0.25},
    "reset_after": {"reset_after": 0.25},
    "delay": {"delay": 0.15},
    "all": {"503": 0.07, "429": 0.07, "reset_before": 0.07, "reset_after": 0.07, "delay": 0.04},
}
ENV = {"RETAIL_REQUEST_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS), "RETAIL_RETRY_BUDGET_SECONDS": "120"}


@pytest.fixture(scope="module")
def fault_free_lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, pa.Table]]:
    """The lake of the day as a run without faults writes it."""
    base = tmp_path_factory.mktemp("fault-free")
    with live_service(f"sqlite:///{base / 'retail.db'}") as service:
        result = run_job(service.url, service.api_key, base / "lake", "--start", DAY, "--end", DAY, env=ENV)
        assert result.returncode == 0, result.stderr[-3000:]
        assert last_run_report(base / "lake")["retries"] == {}
    yield lake_tables(base / "lake")


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_job_survives_injected_faults(
    scenario: str, fault_free_lake: dict[str, pa.Table], tmp_path: Path, fault_report: FaultReport
) -> None:
    rates = SCENARIOS[scenario]
    lake = tmp_path / "lake"
    with (
        live_service(f"sqlite:///{tmp_path / 'retail.db'}") as service,
        FaultProxy(service.url, rates, seed=20101202, delay_seconds=TIMEOUT_SECONDS + 1.5) as proxy,
    ):
        result = run_job(proxy.url, service.api_key, lake, "--start", DAY, "--end", DAY, env=ENV)
        injected = proxy.injected
        assert result.returncode == 0, result.stderr[-3000:]
        # Read back past the proxy: what the service itself holds.
        lost, duplicated = assert_each_row_once(service.url, service.api_key)

    for kind in rates:
        assert injected[kind] > 0, (kind, injected)
    report = last_run_report(lake)
    retries = report["retries"]
    assert isinstance(retries, dict)
    assert sum(retries.values()) > 0
    for kind in rates:
        assert CAUSES[kind] & set(retries), (kind, retries)
    assert report["status"] == "reconciled"
    assert lake_tables(lake) == fault_free_lake
    fault_report.add(
        Scenario(
            f"proxy: {scenario}",
            injected={k: v for k, v in injected.items() if v},
            retries=retries,
            outcome="exit 0, lake identical to a fault-free run",
            rows_lost=lost,
            duplicates=duplicated,
        )
    )
