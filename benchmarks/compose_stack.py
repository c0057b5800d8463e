"""docker-compose.yml run end to end under podman-compose, from images built here (issue 30, item 2).

    .venv/bin/python benchmarks/compose_stack.py [--keep] [--json PATH]

Needs podman, runc, mmdebstrap and catatonit (Debian's; `./dev images` installs them) and podman-compose
(PyPI: `python3 -m venv .tools/podman-compose && .tools/podman-compose/bin/pip install podman-compose==1.6.0`,
or PODMAN_COMPOSE=path). Four steps, each timed; a failed check ends it with one line, after `down`:

1. **build**: the base, the service image and the Airflow image (deploy/podman/podman_images.py, as
   `./dev images`), then each infrastructure image docker-compose.podman.yml names; seconds and sizes.
2. **up**: `podman-compose -f docker-compose.yml -f docker-compose.podman.yml -f PORTS up -d --no-deps`
   of each level of docker-compose.yml's dependencies in turn, each once its dependencies meet their
   `condition` (see `up_in_order`: podman 4.3 cannot do it for podman-compose). PORTS (written under
   .tools/podman/) moves every published port to a free one on 127.0.0.1, so that the stack runs next to
   this machine's own RabbitMQ and Redis; Grafana is left out (profile `grafana`, not packaged by
   Debian). Podman runs health checks from systemd timers, and there is no systemd here: this script runs
   each container's own check (`podman healthcheck run`) every 3 s until it passes once, and reports,
   per container, the seconds from `up` to that first pass: the time to healthy.
3. **a week's backfill through it**: the scheduler made to create no scheduled runs
   (AIRFLOW_USE_JOB_SCHEDULE=false, the override's one setting), `retail_etl` unpaused, `airflow backfill
   create` over 2010-12-01..07 (the sample has data on two of those days) run in the scheduler's
   container; every run must succeed, on the two Celery workers. Then `retail-etl run` over the same week
   from this machine through compose's nginx into another prefix of the same S3 bucket: it must reconcile,
   and every lake table must equal the DAG's, row for row.
4. **down**: `podman-compose down -v`; no container, pod, network or volume of the project may be left.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "podman"))
sys.path.insert(0, str(ROOT))
import podman_images  # noqa: E402

from etl.lake import TABLES, read_lake_table  # noqa: E402

PROJECT = "retail-podman"
COMPOSE_FILES = (ROOT / "docker-compose.yml", ROOT / "docker-compose.podman.yml")
PORTS_FILE = podman_images.STATE / "compose-ports.yml"
#: Every published port of docker-compose.yml, by service: (container port, ...). Grafana is left out.
PUBLISHED = {
    "nginx": (80,),
    "s3": (5000,),
    "rabbitmq": (5672, 15672),
    "redis": (6379,),
    "pushgateway": (9091,),
    "prometheus": (9090,),
    "airflow-apiserver": (8080,),
}
WEEK = [dt.date(2010, 12, 1) + dt.timedelta(days=i) for i in range(7)]
LAKE_BUCKET = "retail-lake"
HEALTHY_TIMEOUT_SECONDS = 900
BACKFILL_TIMEOUT_SECONDS = 900
API_KEY = "dev-api-key"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "local-development-only", "AWS_SECRET_ACCESS_KEY": "local-development-only"}


class BenchmarkError(Exception):
    """A check that failed, in one line."""


@dataclass
class Figures:
    """What a run measured."""

    build_seconds: dict[str, float] = field(default_factory=dict)
    image_bytes: dict[str, int] = field(default_factory=dict)
    up_seconds: float = 0.0
    healthy_seconds: dict[str, float] = field(default_factory=dict)
    backfill_seconds: float = 0.0
    backfill_runs: dict[str, str] = field(default_factory=dict)
    cli_seconds: float = 0.0
    lake_rows: dict[str, int] = field(default_factory=dict)
    down_seconds: float = 0.0
    left_after_down: dict[str, list[str]] = field(default_factory=dict)


def podman_compose() -> list[str]:
    """PODMAN_COMPOSE, podman-compose on PATH, or the one in .tools/podman-compose."""
    found = (
        os.environ.get("PODMAN_COMPOSE")
        or shutil.which("podman-compose")
        or str(ROOT / ".tools" / "podman-compose" / "bin" / "podman-compose")
    )
    if not Path(found).exists():
        raise BenchmarkError(
            "podman-compose is not installed: python3 -m venv .tools/podman-compose && "
            ".tools/podman-compose/bin/pip install podman-compose==1.6.0"
        )
    files = [arg for path in (*COMPOSE_FILES, PORTS_FILE) for arg in ("-f", str(path))]
    return [found, "--project-name", PROJECT, "--in-pod", "false", *files]


def compose(*args: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`podman-compose ARGS` with the project's files; its output is returned, not printed."""
    result = subprocess.run(
        [*podman_compose(), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise BenchmarkError(f"podman-compose {args[0]} failed: {(result.stdout + result.stderr)[-2000:]}")
    return result


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_ports_file() -> dict[tuple[str, int], int]:
    """The third compose file: each published port on a free one; (service, container port) → host port."""
    ports = {(service, port): free_port() for service, targets in PUBLISHED.items() for port in targets}
    lines = [
        "# Written by benchmarks/compose_stack.py: compose's published ports moved to free ones.",
        "services:",
    ]
    for service, targets in PUBLISHED.items():
        lines += [f"  {service}:", "    ports: !override"]
        lines += [f'      - "127.0.0.1:{ports[(service, port)]}:{port}"' for port in targets]
    PORTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    PORTS_FILE.write_text("\n".join(lines) + "\n")
    return ports


def build_all(figures: Figures, log_path: Path) -> None:
    """`./dev images`' images, then the override's infrastructure images, each timed and sized."""
    override = yaml.safe_load(COMPOSE_FILES[1].read_text())
    with log_path.open("a") as log:
        for built in podman_images.build_images(log=log):
            figures.build_seconds[built.image] = round(built.seconds, 1)
            figures.image_bytes[built.image] = built.size_bytes
        done = set(figures.build_seconds)
        for service in override["services"].values():
            image, build = service.get("image"), service.get("build")
            if not image or not build or image in done:
                continue
            built = podman_images.build(
                image, build["dockerfile"], build.get("args", {}), log, target=build.get("target")
            )
            done.add(image)
            figures.build_seconds[image] = round(built.seconds, 1)
            figures.image_bytes[image] = built.size_bytes
    for image, seconds in figures.build_seconds.items():
        print(f"  {image}: {seconds:.1f} s, {figures.image_bytes[image] / 1e6:.0f} MB", flush=True)


def containers() -> list[dict[str, Any]]:
    """The project's containers, as `podman ps -a` gives them."""
    output = podman_images.podman(
        "ps", "-a", "--filter", f"label=io.podman.compose.project={PROJECT}", "--format", "json"
    ).stdout
    found: list[dict[str, Any]] = json.loads(output or "[]")
    return found


def container_of(service: str) -> str:
    """The (first) container of a compose service."""
    for container in containers():
        if container["Labels"].get("com.docker.compose.service") == service:
            name: str = container["Names"][0]
            return name
    raise BenchmarkError(f"no container for the service {service}")


def has_healthcheck(name: str) -> bool:
    """Whether the container has a health check (its own or its image's, not disabled)."""
    result = podman_images.podman("inspect", "--format", "json", name, check=False)
    if result.returncode != 0:
        return False
    test = (json.loads(result.stdout)[0]["Config"].get("Healthcheck") or {}).get("Test") or []
    return bool(test) and test[0] != "NONE"


class HealthChecks:
    """Each running container's own health check, run every 3 s until it passes once (podman runs none here
    without systemd); the seconds from `started` to each container's first pass."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.first_pass: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthChecks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        while not self._stop.is_set():
            for container in containers():
                name = container["Names"][0]
                if name in self.first_pass or container["State"] != "running" or not has_healthcheck(name):
                    continue
                if podman_images.podman("healthcheck", "run", name, check=False).returncode == 0:
                    self.first_pass[name] = round(time.monotonic() - self.started, 1)
            self._stop.wait(3)


def dependency_levels() -> tuple[list[list[str]], dict[str, dict[str, str]]]:
    """docker-compose.yml's services (less those the override puts in a profile) in levels, each depending
    only on earlier ones; and each service's dependencies with their conditions."""
    services = yaml.safe_load(COMPOSE_FILES[0].read_text())["services"]
    override = yaml.safe_load(COMPOSE_FILES[1].read_text())["services"]
    names = [name for name in services if not (override.get(name) or {}).get("profiles")]
    depends: dict[str, dict[str, str]] = {}
    for name in names:
        declared = services[name].get("depends_on") or {}
        if isinstance(declared, list):  # the short form: started
            declared = {dep: {"condition": "service_started"} for dep in declared}
        depends[name] = {dep: spec.get("condition", "service_started") for dep, spec in declared.items()}
    levels: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(names):
        level = [name for name in names if name not in placed and set(depends[name]) <= placed]
        if not level:
            raise BenchmarkError(f"a dependency cycle among {sorted(set(names) - placed)}")
        levels.append(level)
        placed.update(level)
    return levels, depends


def wait_condition(service: str, condition: str, checks: HealthChecks, timeout: float) -> None:
    """Until every container of `service` meets compose's `condition`."""

    def met() -> bool:
        mine = [c for c in containers() if c["Labels"].get("com.docker.compose.service") == service]
        if not mine:
            return False
        if condition == "service_healthy":
            return all(c["Names"][0] in checks.first_pass for c in mine)
        if condition == "service_completed_successfully":
            for c in mine:
                if c["State"] == "exited" and c.get("ExitCode", 0) != 0:
                    logs = podman_images.podman("logs", "--tail", "20", c["Names"][0], check=False)
                    raise BenchmarkError(
                        f"{service} exited {c['ExitCode']}: {(logs.stdout + logs.stderr)[-1500:]}"
                    )
            return all(c["State"] == "exited" for c in mine)
        return all(c["State"] == "running" for c in mine)

    wait_for(f"{service}: {condition}", met, timeout, every=1.0)


def up_in_order(env: dict[str, str], checks: HealthChecks, figures: Figures) -> None:
    """`podman-compose up -d --no-deps` level by level, each service once what it depends on meets
    its condition. podman-compose leaves health conditions to `podman wait --condition=healthy`, which
    podman 4.3 does not have (it starts the dependants at once, with a warning), and the container
    dependencies it declares (`--requires`) fail podman 4.3's start of a chain of them ("depends on
    container ... not found in input list"): so this script enforces compose's order itself."""
    levels, depends = dependency_levels()
    for level in levels:
        for service in level:
            for dependency, condition in depends[service].items():
                wait_condition(dependency, condition, checks, HEALTHY_TIMEOUT_SECONDS)
        compose("up", "-d", "--no-deps", *level, env=env, timeout=900)
        print(f"  +{time.monotonic() - checks.started:.0f} s: {' '.join(level)}", flush=True)
    figures.up_seconds = round(time.monotonic() - checks.started, 1)
    running = [c["Names"][0] for c in containers() if c["State"] == "running"]
    expected = [name for name in running if has_healthcheck(name)]
    wait_for(
        "every container healthy",
        lambda: set(expected) <= set(checks.first_pass),
        HEALTHY_TIMEOUT_SECONDS,
        1.0,
    )
    figures.healthy_seconds = dict(sorted(checks.first_pass.items(), key=lambda item: item[1]))


def psql(query: str) -> str:
    """One query against Airflow's metadata database, inside the postgres container; its plain output."""
    result = podman_images.podman(
        "exec", container_of("postgres"), "psql", "-U", "postgres", "-d", "airflow", "-tAc", query
    )
    return result.stdout.strip()


def airflow(*args: str) -> str:
    """The `airflow` command in the scheduler's container."""
    return podman_images.podman("exec", container_of("airflow-scheduler"), "airflow", *args).stdout


def wait_for(what: str, check: Any, timeout: float, every: float = 2.0) -> Any:
    """`check()`'s first truthy value, polled; a BenchmarkError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise BenchmarkError(f"{what}: not within {timeout:.0f} s")


def backfill_week(figures: Figures) -> None:
    """`retail_etl` over WEEK through the scheduler and the Celery workers; every run must succeed."""
    wait_for(
        "retail_etl parsed", lambda: psql("SELECT count(*) FROM dag WHERE dag_id = 'retail_etl'") == "1", 300
    )
    airflow("dags", "unpause", "retail_etl")
    started = time.monotonic()
    airflow(
        "backfill",
        "create",
        "--dag-id",
        "retail_etl",
        "--from-date",
        str(WEEK[0]),
        "--to-date",
        str(WEEK[-1]),
    )
    backfill_id = psql("SELECT max(id) FROM backfill WHERE dag_id = 'retail_etl'")

    def finished() -> dict[str, str] | None:
        rows = psql(f"SELECT run_id, state FROM dag_run WHERE backfill_id = {int(backfill_id)}")
        states = dict(line.split("|", 1) for line in rows.splitlines() if line)
        done = len(states) == len(WEEK) and all(s in ("success", "failed") for s in states.values())
        return states if done else None

    states: dict[str, str] = wait_for(f"backfill {backfill_id}", finished, BACKFILL_TIMEOUT_SECONDS)
    figures.backfill_seconds = round(time.monotonic() - started, 1)
    figures.backfill_runs = states
    if set(states.values()) != {"success"}:
        raise BenchmarkError(f"backfill {backfill_id}: runs not all successful: {states}")
    hosts = psql(
        "SELECT DISTINCT ti.hostname FROM task_instance ti JOIN dag_run dr ON dr.dag_id = ti.dag_id "
        f"AND dr.run_id = ti.run_id WHERE dr.backfill_id = {int(backfill_id)} AND ti.state = 'success'"
    )
    print(
        f"  backfill {backfill_id}: {len(states)} runs successful in {figures.backfill_seconds} s, "
        f"tasks on {len(hosts.split())} worker(s)",
        flush=True,
    )


def cli_run_and_compare(figures: Figures, ports: dict[tuple[str, int], int], work: Path) -> None:
    """`retail-etl run` over WEEK through compose's nginx into another prefix; it reconciles and every lake
    table equals the DAG's."""
    s3_url = f"http://127.0.0.1:{ports[('s3', 5000)]}"
    env = {**os.environ, **S3_KEYS, "AWS_ENDPOINT_URL": s3_url, "AWS_DEFAULT_REGION": "us-east-1"}
    env |= {"RETAIL_API_KEY": API_KEY, "RETAIL_CACHE_DIR": str(work / "cache")}
    cli_lake = f"s3://{LAKE_BUCKET}/cli"
    command = [
        sys.executable,
        "-m",
        "etl.cli",
        "run",
        "--source",
        str(ROOT / "sample_data" / "online_retail_sample.csv"),
    ]
    command += ["--api-url", f"http://127.0.0.1:{ports[('nginx', 80)]}", "--lake", cli_lake]
    command += ["--start", str(WEEK[0]), "--end", str(WEEK[-1])]
    started = time.monotonic()
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    figures.cli_seconds = round(time.monotonic() - started, 1)
    if result.returncode != 0:
        raise BenchmarkError(f"retail-etl run exited {result.returncode}: {result.stderr.strip()[-500:]}")
    import s3fs

    fs = s3fs.S3FileSystem(
        endpoint_url=s3_url, key=S3_KEYS["AWS_ACCESS_KEY_ID"], secret=S3_KEYS["AWS_SECRET_ACCESS_KEY"]
    )
    reports = sorted(fs.glob(f"{LAKE_BUCKET}/cli/_runs/*.json"))
    status = json.loads(fs.cat(reports[-1]))["status"] if reports else "no report"
    if status != "reconciled":
        raise BenchmarkError(f"the command line's run: {status}")
    key, secret = S3_KEYS["AWS_ACCESS_KEY_ID"], S3_KEYS["AWS_SECRET_ACCESS_KEY"]
    options = {"endpoint_url": s3_url, "key": key, "secret": secret}
    for table in TABLES:
        from_dag = read_lake_table(f"s3://{LAKE_BUCKET}/lake", table, WEEK, storage_options=options)
        from_cli = read_lake_table(cli_lake, table, WEEK, storage_options=options)
        if not from_dag.equals(from_cli):
            raise BenchmarkError(
                f"table {table} differs: {from_dag.num_rows} rows in the DAG's lake, "
                f"{from_cli.num_rows} in the command line's"
            )
        figures.lake_rows[table] = from_dag.num_rows
    print(
        f"  retail-etl run: reconciled in {figures.cli_seconds} s; lakes equal: {figures.lake_rows}",
        flush=True,
    )


def leftovers() -> dict[str, list[str]]:
    """What of the project podman still has: containers, pods, networks, volumes."""
    label = f"label=io.podman.compose.project={PROJECT}"
    found = {
        "containers": podman_images.podman(
            "ps", "-a", "--filter", label, "--format", "{{.Names}}"
        ).stdout.split(),
        "pods": podman_images.podman(
            "pod", "ls", "--filter", f"name={PROJECT}", "--format", "{{.Name}}"
        ).stdout.split(),
        "networks": podman_images.podman(
            "network", "ls", "--filter", label, "--format", "{{.Name}}"
        ).stdout.split(),
        "volumes": podman_images.podman(
            "volume", "ls", "--filter", label, "--format", "{{.Name}}"
        ).stdout.split(),
    }
    return {kind: names for kind, names in found.items() if names}


@contextmanager
def compose_stack(figures: Figures, env: dict[str, str], keep: bool) -> Iterator[None]:
    """The stack up for the body; `down -v` after it (unless `keep`), checking that nothing is left."""
    try:
        yield
    finally:
        if keep:
            print(f"  kept: {' '.join(podman_compose())} down -v", flush=True)
        else:
            started = time.monotonic()
            compose("down", "-v", env=env, timeout=600)
            figures.down_seconds = round(time.monotonic() - started, 1)
            figures.left_after_down = leftovers()
            print(
                f"  down -v in {figures.down_seconds} s; left: {figures.left_after_down or 'nothing'}",
                flush=True,
            )


def main() -> int:
    """Build, up, backfill and compare, down; the figures as a table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the stack up at the end")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    options = parser.parse_args()
    # Interrupted (even when started in the background, where SIGINT is ignored) or terminated, it still
    # takes the stack down: `compose_stack`'s `finally`.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    figures = Figures()
    work = Path(tempfile.mkdtemp(prefix="retail-compose-"))
    env = {**podman_images.podman_env(), "AIRFLOW_USE_JOB_SCHEDULE": "false"}
    try:
        print("build:", flush=True)
        build_all(figures, work / "build.log")
        ports = write_ports_file()
        print("up:", flush=True)
        started = time.monotonic()
        with compose_stack(figures, env, options.keep):
            with HealthChecks(started) as checks:
                up_in_order(env, checks, figures)
            print(
                f"  every service started after {figures.up_seconds} s; each container's first passed "
                f"health check (s from up): {figures.healthy_seconds}",
                flush=True,
            )
            print("backfill:", flush=True)
            backfill_week(figures)
            cli_run_and_compare(figures, ports, work)
        if figures.left_after_down:
            raise BenchmarkError(f"down left {figures.left_after_down}")
    except (BenchmarkError, podman_images.ImageError) as error:
        print(f"error: {error} (logs: {work})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; the stack was taken down (unless --keep)", file=sys.stderr)
        return 130
    finally:
        if options.json:
            options.json.write_text(json.dumps(asdict(figures), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
