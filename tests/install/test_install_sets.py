"""Each install set alone, as the images build it: a fresh virtual environment, the Dockerfile's own COPY
and `pip install` lines, then what that image runs.

A green suite in the development venv proves nothing about these sets: the test tools bring in packages
the service needs too (python-multipart came with them, so the service image could not start while every
other test passed). Here nothing is shared with `.venv`; pip takes the same packages from its cache or the
index. `--no-compile` is the only difference from the images' install: it skips writing .pyc files, which
is most of the time an install takes, and changes nothing that is installed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
import venv
from pathlib import Path

import httpx
import pytest

from tests.support.service import REPO_ROOT, free_port

INSTALL_TIMEOUT_SECONDS = 600


def dockerfile_install(dockerfile: Path, context: Path, target: Path) -> list[str]:
    """Copy what `dockerfile` COPYs from the project into `target` and return its `pip install` arguments,
    with the image's paths and build arguments resolved to `target` and their values."""
    text = dockerfile.read_text()
    build_args = _build_args(text)
    workdir = "/"
    install: list[str] | None = None
    for instruction, value in _instructions(text):
        if instruction == "WORKDIR":
            workdir = value
        elif instruction == "COPY":
            *sources, destination = [word for word in shlex.split(value) if not word.startswith("--")]
            image_path = destination if destination.startswith("/") else f"{workdir}/{destination}"
            local = target / image_path.lstrip("/")
            into_folder = len(sources) > 1 or destination.endswith("/")
            for source in sources:
                _copy(context / source, local / Path(source).name if into_folder else local)
        elif instruction == "RUN" and re.match(r"pip install\b", value):
            words = shlex.split(_substitute(value, build_args))[2:]
            install = [_local_path(word, workdir, target) for word in words]
    if install is None:
        raise AssertionError(f"{dockerfile.name} has no `RUN pip install` line")
    return install


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, value = line.partition(" ")
            found.append((instruction.upper(), value.strip()))
    return found


def _build_args(text: str) -> dict[str, str]:
    """`AIRFLOW_VERSION` from `FROM apache/airflow:3.3.2-python3.11`, as the official image sets it, and
    every `ARG NAME=value`. `FROM ${BASE_IMAGE}` is read with the ARG's default: the public image."""
    values = {}
    for instruction, value in _instructions(text):
        if instruction == "ARG" and "=" in value:
            name, _, default = value.partition("=")
            values[name] = default.strip('"')
        image = _substitute(value, values) if instruction == "FROM" else ""
        if image.startswith("apache/airflow:"):
            values["AIRFLOW_VERSION"] = image.split(":", 1)[1].split("-", 1)[0]
    return values


def _substitute(value: str, build_args: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in build_args:
            raise AssertionError(f"the Dockerfile uses ${name}, which this test cannot resolve")
        return build_args[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, value)


def _local_path(word: str, workdir: str, target: Path) -> str:
    """`.` or `/opt/retail-etl[stack]` as the path in `target` that holds what the image has there."""
    path, extras = re.match(r"([^\[]*)(\[.*\])?$", word).groups()  # type: ignore[union-attr]
    if path == "." or path.startswith(("/", "./")):
        image_path = path if path.startswith("/") else f"{workdir.rstrip('/')}/{path}"
        return f"{target / os.path.normpath(image_path).lstrip('/')}{extras or ''}"
    return word


def _copy(source: Path, destination: Path) -> None:
    """COPY of one source: a folder's contents into `destination`, a file as `destination`."""
    if source.is_dir():
        shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    else:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)


def fresh_venv(path: Path, install: list[str]) -> Path:
    """A new virtual environment at `path` with `pip install *install` done; returns its bin folder."""
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    bin_dir = path / "bin"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--no-compile", *install],
        capture_output=True,
        text=True,
        env=env,
        timeout=INSTALL_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, f"pip install {' '.join(install)} failed:\n{result.stderr[-3000:]}"
    return bin_dir


def isolated_env(**extra: str) -> dict[str, str]:
    """The environment of a program run from a fresh venv: nothing of the development venv's paths."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return {**env, **extra}


def test_the_service_image_install_starts_the_service_and_answers_health_and_token(tmp_path: Path) -> None:
    """Dockerfile: COPY + `pip install .`, then `uvicorn api.main:app`: /health is 200 and POST /token,
    form-encoded (RFC 6749 §4.4), issues a token to a client made with the image's `retail-api`."""
    install = dockerfile_install(REPO_ROOT / "Dockerfile", REPO_ROOT, tmp_path / "image")
    bin_dir = fresh_venv(tmp_path / "venv", install)
    # Run from an empty folder, so that only the installed package can be imported (the image's /app
    # holds the sources, which would hide a package missing from the install).
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = isolated_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'service.db'}",
        API_KEY="install-test-key",
        TOKEN_SECRET="install-test-token-secret-of-32-bytes-or-more",
        ENVIRONMENT="local",
    )

    created = subprocess.run(
        [str(bin_dir / "retail-api"), "clients", "create", "--name", "reports", "--scopes", "read"],
        cwd=run_dir, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    credentials = dict(line.split("=", 1) for line in created.stdout.splitlines() if "=" in line)

    port = free_port()
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        service = subprocess.Popen(
            [str(bin_dir / "uvicorn"), "api.main:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        health = _wait_for_health(url, service, log_path)
        assert health.status_code == 200, health.text
        token = httpx.post(
            f"{url}/token",
            data={"grant_type": "client_credentials", **credentials},
            timeout=10,
        )
        assert token.status_code == 200, token.text
        assert token.json()["token_type"].lower() == "bearer"
        wrong = httpx.post(
            f"{url}/token",
            data={**credentials, "grant_type": "client_credentials", "client_secret": "wrong"},
            timeout=10,
        )
        assert wrong.status_code == 401, wrong.text
        assert wrong.json()["error"] == "invalid_client"
    finally:
        service.terminate()
        service.wait(timeout=30)

    helped = subprocess.run(
        [str(bin_dir / "retail-etl"), "--help"], cwd=run_dir, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert helped.returncode == 0, helped.stderr
    assert "run" in helped.stdout


def _wait_for_health(url: str, service: subprocess.Popen[bytes], log_path: Path) -> httpx.Response:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if service.poll() is not None:
            pytest.fail(f"the service died at start:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            return httpx.get(f"{url}/health", timeout=2)
        except httpx.TransportError:
            time.sleep(0.2)
    pytest.fail(f"the service did not answer within 60 s:\n{log_path.read_text(errors='replace')[-3000:]}")


def test_the_airflow_image_install_imports_the_dag_and_the_job(tmp_path: Path) -> None:
    """Dockerfile.airflow: `pip install apache-airflow==<image's version> /opt/retail-etl[stack]` into a
    fresh venv, then what a worker does: import the DAG file (as the image bakes it) and `etl.pipeline`."""
    install = dockerfile_install(REPO_ROOT / "Dockerfile.airflow", REPO_ROOT, tmp_path / "image")
    assert any(word.startswith("apache-airflow==3.") for word in install), install
    bin_dir = fresh_venv(tmp_path / "venv", install)
    image = tmp_path / "image" / "opt" / "airflow"
    airflow_home = tmp_path / "airflow-home"
    airflow_home.mkdir()
    # As the dag-processor parses the image's DAG folder, and as a Celery worker loads its settings module.
    probe = (
        "import sys\n"
        "import etl.pipeline\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "import retail_celery_config\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag(dag_folder=sys.argv[1])\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "print(' '.join(sorted(bag.dags)))\n"
    )
    result = subprocess.run(
        [str(bin_dir / "python"), "-c", probe, str(image / "dags"), str(image / "config")],
        cwd=tmp_path, env=isolated_env(AIRFLOW_HOME=str(airflow_home)), capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # Airflow logs to stdout too; the probe's own answer is its last line.
    assert result.stdout.strip().splitlines()[-1] == "retail_etl retail_sync", result.stdout[-3000:]


def test_the_jobs_own_install_has_no_web_stack_and_runs_the_job(tmp_path: Path) -> None:
    """`pip install <project>` with no extra: the job's set (the command line, the DAG's tasks). The
    service's web stack is not installed, and the job validates the sample without it."""
    package = tmp_path / "project"
    for name in ("pyproject.toml", "README.md", "retail_contract", "api", "etl"):
        _copy(REPO_ROOT / name, package / name)
    bin_dir = fresh_venv(tmp_path / "venv", [str(package)])
    env = isolated_env(RETAIL_CACHE_DIR=str(tmp_path / "cache"))
    missing = subprocess.run(
        [str(bin_dir / "python"), "-c", "import importlib.util as u; print([m for m in "
         "('fastapi', 'starlette', 'uvicorn', 'alembic', 'jwt') if u.find_spec(m)])"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 0, missing.stderr
    assert missing.stdout.strip() == "[]", missing.stdout
    dry = subprocess.run(
        [str(bin_dir / "retail-etl"), "run", "--dry-run", "--source", str(REPO_ROOT / "sample_data" /
         "online_retail_sample.csv"), "--lake", str(tmp_path / "lake")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "dry run" in dry.stdout


def test_the_install_lines_are_read_from_the_dockerfiles(tmp_path: Path) -> None:
    """The helper resolves the images' paths and build arguments: what the two tests above install."""
    service = dockerfile_install(REPO_ROOT / "Dockerfile", REPO_ROOT, tmp_path / "service")
    assert service == [f"{tmp_path / 'service' / 'app'}[service]"]
    assert (tmp_path / "service" / "app" / "pyproject.toml").is_file()
    assert (tmp_path / "service" / "app" / "api" / "main.py").is_file()
    airflow = dockerfile_install(REPO_ROOT / "Dockerfile.airflow", REPO_ROOT, tmp_path / "airflow")
    assert airflow[:2] == ["--no-cache-dir", "apache-airflow==3.3.2"]
    assert airflow[-1] == f"{tmp_path / 'airflow' / 'opt' / 'retail-etl'}[stack]"
    assert (tmp_path / "airflow" / "opt" / "retail-etl" / "etl" / "pipeline.py").is_file()
    assert (tmp_path / "airflow" / "opt" / "airflow" / "dags" / "retail_etl.py").is_file()
    assert (tmp_path / "airflow" / "opt" / "airflow" / "config" / "retail_celery_config.py").is_file()
