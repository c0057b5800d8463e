"""The images built and run with podman (issue 30; docs/scale.md, docs/k8s.md): the base made from Debian's
packages and the service image on it (deploy/podman/podman_images.py, as `./dev images api` builds them),
then the image run publishing a loopback port, and the service's Deployment under `podman kube play`
(deploy/podman/podman_kube.py): each answers /health and a job run of the sample through it reconciles.

The first build takes a few minutes (mmdebstrap, then pip in the image); podman keeps the base and the
layers, so later runs rebuild nothing unless the sources copied into the image changed. podman, runc,
mmdebstrap and catatonit come from Debian (`./dev test` installs them): missing, the tests fail in CI
(CI=true) and skip elsewhere, saying what to install.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from tests.support.job import ROOT, SAMPLE, job_command
from tests.support.service import free_port

sys.path.insert(0, str(ROOT / "deploy" / "podman"))
import podman_images
import podman_kube

pytestmark = [pytest.mark.podman, pytest.mark.timeout(1800)]

TOOLS = ("podman", "runc", "mmdebstrap", "catatonit")
HEALTHY_WITHIN_SECONDS = 60.0


def missing(reason: str) -> NoReturn:
    """Fail in CI, skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def service_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The base and the service image, built (or found) once for the module; podman's log in a file."""
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        missing(f"{', '.join(absent)} not installed: {podman_images.INSTALL_HINT} (./dev test does)")
    log_path = tmp_path_factory.mktemp("images") / "build.log"
    with log_path.open("w") as log:
        try:
            podman_images.build_images(["api"], log=log)
        except podman_images.ImageError as error:
            pytest.fail(f"{error}\n{log_path.read_text()[-3000:]}")
    return podman_images.API_IMAGE


def sample_totals() -> dict[str, Any]:
    """The sample's figures, read here from the CSV independently of the job: lines, invoices, customers,
    quantity and amount (the sum of quantity x unit price)."""
    lines = quantity = 0
    amount = Decimal(0)
    invoices, customers = set(), set()
    with SAMPLE.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            lines += 1
            quantity += int(row["Quantity"])
            amount += int(row["Quantity"]) * Decimal(row["UnitPrice"])
            invoices.add(row["InvoiceNo"])
            if row["CustomerID"]:
                customers.add(row["CustomerID"])
    return {
        "lines": lines,
        "invoices": len(invoices),
        "customers": len(customers),
        "quantity": quantity,
        "amount": amount,
    }


def run_sample_through(url: str, api_key: str, work: Path) -> dict[str, Any]:
    """`retail-etl run` of the sample through the service at `url`; its run report."""
    lake = work / "lake"
    env = {**os.environ, "RETAIL_API_KEY": api_key, "RETAIL_CACHE_DIR": str(work / "cache")}
    result = subprocess.run(
        job_command(url, lake), capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = sorted((lake / "_runs").glob("*.json"))
    assert len(reports) == 1
    report: dict[str, Any] = json.loads(reports[0].read_text())
    return report


def assert_reconciled(report: dict[str, Any]) -> None:
    """The run reconciled, and the service's and the lake's figures are the sample's."""
    expected = sample_totals()
    assert report["status"] == "reconciled"
    assert report["counts"]["lines"] == report["counts"]["lines_created"] == expected["lines"] == 8326
    assert report["counts"]["rejects"] == 0
    for side in ("service", "lake"):
        reconciliation = report["reconciliation"][side]
        assert reconciliation["ok"], reconciliation["message"]
        totals = reconciliation["totals"]["other"]
        assert {**totals, "amount": Decimal(totals["amount"])} == expected, side


def wait_for_health(url: str, logs: list[str]) -> float:
    """Seconds until GET /health answers 200; fails with `logs`' output (a podman command) at the deadline."""
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < HEALTHY_WITHIN_SECONDS:
        try:
            response = httpx.get(f"{url}/health", timeout=3)
            if response.status_code == 200:
                return time.monotonic() - started
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.TransportError as error:
            last = repr(error)
        time.sleep(0.3)
    output = podman_images.podman(*logs, check=False)
    pytest.fail(f"{url}/health: {last}\n{(output.stdout + output.stderr)[-3000:]}")


@pytest.fixture
def running_image(service_image: str) -> Iterator[str]:
    """The service image run on its defaults (SQLite inside), published on a free loopback port."""
    name = f"retail-api-test-{os.getpid()}"
    port = free_port()
    podman_images.podman(
        "run", "--detach", "--name", name, "--publish", f"127.0.0.1:{port}:8000", service_image
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_health(url, ["logs", "--tail", "40", name])
        yield url
    finally:
        podman_images.podman("rm", "--force", "--time", "5", name, check=False)


def test_the_service_image_answers_health_and_reconciles_the_sample(
    running_image: str, tmp_path: Path
) -> None:
    health = httpx.get(f"{running_image}/health", timeout=5)
    assert health.json() == {"status": "ok", "database": "ok"}
    # The image's defaults: the development key, the embedded database in /var/lib/retail.
    assert_reconciled(run_sample_through(running_image, "dev-api-key", tmp_path))


def test_the_service_deployment_runs_under_kube_play_and_reconciles_the_sample(
    service_image: str, tmp_path: Path
) -> None:
    try:
        played = podman_kube.up(free_port())
    except podman_images.ImageError as error:
        podman_kube.down()
        pytest.fail(str(error))
    try:
        inspect = podman_images.podman("pod", "inspect", played.pod).stdout
        pod = json.loads(inspect)
        containers = pod[0]["Containers"] if isinstance(pod, list) else pod["Containers"]
        # The pause container and the service's, running as the manifest says (non-root, read-only root).
        assert len(containers) == 2, containers
        api = next(c for c in containers if c["Name"].endswith("-api"))
        config = json.loads(podman_images.podman("container", "inspect", api["Id"]).stdout)[0]
        assert config["Config"]["User"] == "10001:10001"
        assert config["HostConfig"]["ReadonlyRootfs"] is True
        assert config["ImageName"] == podman_images.API_IMAGE
        assert_reconciled(run_sample_through(played.url, played.api_key, tmp_path))
    finally:
        podman_kube.down()
    assert podman_images.podman("pod", "exists", played.pod, check=False).returncode != 0


def test_a_failed_build_says_why_in_one_line_and_leaves_no_tag(
    service_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dockerfile = tmp_path / "Broken.Dockerfile"
    dockerfile.write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN exit 3\n")
    image = "localhost/retail-etl-broken-build:test"
    base = podman_images.base_image()
    with (tmp_path / "build.log").open("w") as log:
        with pytest.raises(podman_images.ImageError) as failed:
            podman_images.build(image, str(dockerfile), {"BASE_IMAGE": base}, log)
        assert "\n" not in str(failed.value)
        assert "building localhost/retail-etl-broken-build:test failed" in str(failed.value)
        # Without network, the same failure says so.
        monkeypatch.setattr(podman_images, "NETWORK_PROBES", ("http://127.0.0.1:9/",))
        with pytest.raises(
            podman_images.ImageError, match=r"^no network: cannot reach http://127\.0\.0\.1:9/"
        ):
            podman_images.build(image, str(dockerfile), {"BASE_IMAGE": base}, log)
    names = podman_images.podman("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert not [name for name in names if "retail-etl-broken-build" in name or "-building-" in name], names


def test_without_podman_the_build_says_what_to_install_in_one_line(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "podman" / "podman_images.py"), "api"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": str(bin_dir)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "error: podman is not installed: apt-get install podman runc mmdebstrap catatonit\n"
    )
