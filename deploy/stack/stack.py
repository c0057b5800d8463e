"""The local production-like stack, without Docker: `./dev stack up` / `./dev stack down`.

    python deploy/stack/stack.py up     [--dir .stack] [--name stack] [--replicas 2] [--workers 2]
                                        [--scrape-interval 15s] [--alert-for DURATION] [--no-schedule]
                                        [--dags-folder DIR] [--source PATH]
    python deploy/stack/stack.py status [--dir .stack]     every part's health and URL
    python deploy/stack/stack.py down   [--dir .stack] [--purge]
    python deploy/stack/stack.py kill  NAME [--dir .stack] SIGKILL one part and its children (fault drills)
    python deploy/stack/stack.py start NAME [--dir .stack] start one stopped part again, wait until healthy

What runs (every process from this virtualenv or Debian's packages, on 127.0.0.1, on ports picked free at
`up` and kept in `<dir>/state.json`):

- PostgreSQL (the machine's): databases `retail_<name>` (the service) and `airflow_<name>` (Airflow's
  metadata and Celery's results), created when missing;
- RabbitMQ (the machine's) as Celery's broker, in a vhost of its own (`retail_<name>`);
- Redis (the machine's): the service's rate-limit counters, under a key prefix of the stack's own;
- `api-1` ... `api-N`: uvicorn replicas of the service on the one PostgreSQL database;
- `nginx`: reverse proxy and load balancer in front of the replicas (the only address the job and the DAG
  are given);
- `s3`: moto's S3 server and the lake's bucket;
- `pushgateway` and `prometheus` (Debian's packages): Prometheus scrapes every replica under its own
  `replica` label, the Pushgateway the job pushes to, and evaluates deploy/prometheus/rules.yml;
- Airflow 3.3 with the CeleryExecutor: `airflow-api-server`, `airflow-scheduler`, `airflow-dag-processor`
  and `worker-1` ... `worker-M` (`airflow celery worker`). No triggerer: the DAG defers nothing.

Every process's output goes to `<dir>/logs/<name>.log`; each one leads its own process group, whose id is
kept with its start time so that `down` stops what `up` started and nothing else. Every setting the parts
share is in ONE env file, `<dir>/stack.env` (`set -a; . .stack/stack.env` gives a shell the same view:
`airflow dags list`, `retail-etl run` against nginx and the S3 lake).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"
POSTGRES_ASYNC = "postgresql+psycopg_async://postgres@127.0.0.1:5432"
RABBITMQ_HOST = "127.0.0.1:5672"
REDIS_URL = "redis://127.0.0.1:6379/0"
API_KEY = "stack-api-key"
BUCKET = "retail-lake"
#: Seconds `up` waits for every part to be healthy, and `start` for one.
UP_TIMEOUT = 420.0
STOP_TIMEOUT = 20.0

#: Fault detection (issue 17 item 4). A task whose supervisor stops heartbeating (its worker died) is
#: failed by the scheduler after TIMEOUT seconds, checked every INTERVAL, then retried by the DAG's retry
#: policy. The supervisor heartbeats every 5 s ([workers] min_heartbeat_interval), so 30 s is 6 missed
#: beats. The cost: a task whose worker is only cut off from the API server for 30 s is declared lost
#: and started again elsewhere while the first try may still be running; the scheduler looks 12x as
#: often (a cheap indexed query).
HEARTBEAT_TIMEOUT_SECONDS = 30
HEARTBEAT_DETECTION_INTERVAL_SECONDS = 5


class StackError(Exception):
    """A part of the stack is missing or does not come up; the message says which and what to do."""


@dataclass
class Part:
    """One long-running process of the stack."""

    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    url: str | None = None  # what `up` prints for people
    pid: int | None = None
    start_ticks: int | None = None  # /proc/<pid>/stat field 22: tells a reused pid from ours


@dataclass
class State:
    """What `up` decided and started; `<dir>/state.json`."""

    name: str
    dir: str
    ports: dict[str, int]
    replicas: int
    workers: int
    parts: dict[str, Part]
    hostname: str

    def save(self) -> None:
        """Write the state next to the logs (atomically: a reader never sees half a file)."""
        path = Path(self.dir) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, directory: Path) -> State | None:
        """The state of the stack in `directory`, or None when none was started there."""
        path = directory / "state.json"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["parts"] = {name: Part(**part) for name, part in raw["parts"].items()}
        return cls(**raw)

    @property
    def env_file(self) -> Path:
        """The one file of shared settings."""
        return Path(self.dir) / "stack.env"

    def url(self, what: str) -> str:
        """http://127.0.0.1:<port of `what`>."""
        return f"http://127.0.0.1:{self.ports[what]}"


# ---------------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def say(message: str) -> None:
    """A progress line on stderr (stdout carries the URLs)."""
    print(f"stack: {message}", file=sys.stderr, flush=True)


def http_ok(url: str, timeout: float = 3.0) -> bool:
    """True when GET `url` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def process_start_ticks(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), None when no such process lives."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is dead, only not reaped yet
        return None
    return int(fields[19])


def is_ours_and_alive(part: Part) -> bool:
    """True when the process `up` started for `part` still runs (same pid and start time)."""
    return part.pid is not None and process_start_ticks(part.pid) == part.start_ticks


def read_env_file(path: Path) -> dict[str, str]:
    """KEY='value' lines, as written by `write_env_file` (a shell can source the file too)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        (item,) = shlex.split(line)
        key, _, value = item.partition("=")
        values[key] = value
    return values


def write_env_file(path: Path, values: dict[str, str]) -> None:
    """The shared settings, one KEY='value' a line, in a form both `read_env_file` and sh read."""
    lines = ["# Written by deploy/stack/stack.py up; every part of the stack starts with these settings."]
    lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")


def wait_until(what: str, check: Callable[[], bool], deadline: float, part: Part | None = None) -> None:
    """Poll `check` until it holds; fail when `part` died or the deadline passed."""
    while True:
        if check():
            return
        if part is not None and not is_ours_and_alive(part):
            raise StackError(f"{what} exited while starting; see its log")
        if time.monotonic() > deadline:
            raise StackError(f"{what} was not healthy in time; see its log")
        time.sleep(0.5)


def run_quiet(command: list[str], log: Path, env: dict[str, str] | None = None, timeout: float = 600) -> None:
    """Run a one-shot command with its output appended to `log`; fail with the log's tail."""
    with log.open("ab") as out:
        result = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=timeout, check=False
        )
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise StackError(f"`{' '.join(command[:3])} ...` failed ({result.returncode}); {log}:\n{tail}")


# ---------------------------------------------------------------------------------------------- checks


def require_tools() -> dict[str, str]:
    """The machine's programs the stack needs; nginx is installed from Debian's packages when missing."""
    tools: dict[str, str] = {}
    packages = {
        "nginx": "nginx-light",
        "prometheus": "prometheus",
        "prometheus-pushgateway": "prometheus-pushgateway",
    }
    for program, package in packages.items():
        found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")
        if found is None:
            say(f"{program} is missing: installing Debian's {package}")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
            subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False, env=env)
            found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")
        if found is None:
            raise StackError(f"{program} is not installed and could not be: apt-get install -y {package}")
        tools[program] = found
    for program in ("airflow", "uvicorn", "moto_server"):
        if not (BIN / program).exists():
            raise StackError(f"{BIN / program} is missing: run ./dev setup (the `stack` extra)")
        tools[program] = str(BIN / program)
    return tools


def require_services() -> None:
    """The machine's PostgreSQL, RabbitMQ and Redis answer (./dev stack starts them when they are down)."""
    import psycopg
    import redis

    try:
        psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=3).close()
    except psycopg.Error as error:
        raise StackError(f"PostgreSQL does not answer on 127.0.0.1:5432: {error}") from None
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=3).close()
    except OSError as error:
        raise StackError(f"RabbitMQ does not answer on {RABBITMQ_HOST}: {error}") from None
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as error:
        raise StackError(f"Redis does not answer at {REDIS_URL}: {error}") from None


def create_databases(names: Iterable[str]) -> None:
    """CREATE DATABASE for each name that does not exist yet (kept by `down`, dropped by `down --purge`)."""
    import psycopg

    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
        for name in names:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')


def drop_databases(names: Iterable[str]) -> None:
    """DROP DATABASE ... WITH (FORCE): `down --purge`."""
    import psycopg

    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    """The machine's rabbitmqctl (as root, which runs the broker here)."""
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )


def create_vhost(vhost: str) -> None:
    """A RabbitMQ vhost of the stack's own: its queues never meet another stack's or test's."""
    listed = rabbitmqctl("list_vhosts")
    if vhost not in listed.stdout.split():
        result = rabbitmqctl("add_vhost", vhost)
        if result.returncode != 0:
            raise StackError(f"rabbitmqctl add_vhost {vhost} failed: {result.stderr.strip()}")
    result = rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    if result.returncode != 0:
        raise StackError(f"rabbitmqctl set_permissions -p {vhost} failed: {result.stderr.strip()}")


# ---------------------------------------------------------------------------------------------- config


def shared_settings(state: State) -> dict[str, str]:
    """The env file: every setting that more than one part reads, in one place."""
    name, home = state.name, Path(state.dir)
    nginx = state.url("nginx")
    settings = {
        # Airflow, every component alike.
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{POSTGRES}/airflow_{name}",
        # Airflow would derive asyncpg for its async engine; psycopg 3 does async too, and is installed.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"{POSTGRES_ASYNC}/airflow_{name}",
        "AIRFLOW__CELERY__BROKER_URL": f"amqp://guest:guest@{RABBITMQ_HOST}/retail_{name}",
        # psycopg 3 (`+psycopg`): the project's PostgreSQL driver; psycopg2 is not installed.
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{POSTGRES}/airflow_{name}",
        # Two cores here: 4 task processes per worker, 8 in all, against max_active_runs=4 x 1 task each.
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
        # The broker keeps a task's message until the task has finished: when its worker dies, RabbitMQ
        # hands the message back at once (the connection closed) instead of losing it.
        "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
        # Airflow's Celery settings plus the job imported once per worker process, not once per task
        # (deploy/airflow/retail_celery_config.py says why).
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "retail_celery_config.CELERY_CONFIG",
        "PYTHONPATH": str(REPO / "deploy" / "airflow"),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_SECONDS),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": str(
            HEARTBEAT_DETECTION_INTERVAL_SECONDS
        ),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{state.url('airflow')}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(state.ports["airflow"]),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": f"{state.url('airflow')}/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(24),
        # Loopback only, for one developer: the UI opens without a login.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(state.ports["scheduler-health"]),
        # What the DAG reads at run time: the service is nginx, never a replica.
        "AIRFLOW_CONN_RETAIL_API": json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "port": state.ports["nginx"],
                "schema": "http",
                "password": API_KEY,
            }
        ),
        "AIRFLOW_VAR_RETAIL_SOURCE": str(REPO / "sample_data" / "online_retail_sample.csv"),
        "AIRFLOW_VAR_RETAIL_LAKE": f"s3://{BUCKET}/lake",
        # The job's own settings (etl/config.py): `retail-etl run` from a shell that sourced this file.
        "RETAIL_API_URL": nginx,
        "RETAIL_API_KEY": API_KEY,
        "RETAIL_LAKE": f"s3://{BUCKET}/lake",
        "RETAIL_PUSHGATEWAY_URL": state.url("pushgateway"),
        # The lake's object store: botocore (under s3fs) reads these itself.
        "AWS_ENDPOINT_URL": state.url("s3"),
        "AWS_ACCESS_KEY_ID": "stack",
        "AWS_SECRET_ACCESS_KEY": "stack",
        "AWS_DEFAULT_REGION": "us-east-1",
        # The service replicas.
        "DATABASE_URL": f"{POSTGRES}/retail_{name}",
        "API_KEY": API_KEY,
        "REDIS_URL": REDIS_URL,
        "REDIS_KEY_PREFIX": f"retail-stack:{name}:ratelimit",
        # The resource cache too: stacks sharing the machine's Redis never see each other's entries.
        "CACHE_KEY_PREFIX": f"retail-stack:{name}:cache",
        "RATE_LIMIT": "200/second",
        "MIGRATE_ON_START": "true",
        "LOG_FORMAT": "json",
    }
    return settings


def nginx_config(prefix: Path, listen: str, upstreams: list[str], *, logs: Path) -> str:
    """nginx as reverse proxy and load balancer of the service's replicas.

    Upstream health with nginx OSS is passive: a replica that refuses connections, times out or answers
    502/503 counts as a failure; after `max_fails` of them within `fail_timeout` it gets no requests for
    `fail_timeout`, then one request tries it again. `proxy_next_upstream` retries a failed attempt on the
    other replica: always when the connection could not be made, and for idempotent methods (GET, HEAD,
    PUT, DELETE ...) also after the request was sent; a POST that reached a dying replica comes back as
    502 and the job's own retries (tenacity, idempotent bulk writes) send it again. Active checks
    (`health_check`) are nginx Plus only.
    """
    servers = "\n".join(f"        server {address} max_fails=1 fail_timeout=5s;" for address in upstreams)
    return f"""# Written by deploy/stack/stack.py; see nginx_config() there for the why.
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {logs}/nginx-error.log warn;

events {{
    worker_connections 256;
}}

http {{
    # Which replica(s) each request went to and what they answered: "a, b" / "502, 200" is a retry.
    log_format retail '$remote_addr [$time_local] "$request" $status '
                      'upstream=$upstream_addr upstream_status=$upstream_status rt=$request_time';
    access_log {logs}/nginx-access.log retail;
    client_body_temp_path {prefix}/body-temp;
    proxy_temp_path {prefix}/proxy-temp;
    fastcgi_temp_path {prefix}/fastcgi-temp;
    uwsgi_temp_path {prefix}/uwsgi-temp;
    scgi_temp_path {prefix}/scgi-temp;

    upstream retail_api {{
{servers}
        keepalive 16;
    }}

    server {{
        listen {listen};
        # The service's own limit (MAX_BODY_BYTES, 64 MiB) decides; nginx must not cut bulk posts first.
        client_max_body_size 80m;
        # Bodies and answers stay in memory: nginx's worker (www-data when the master is root) may not
        # be able to write temp files under a private folder (e.g. a test's 0700 tmp dir).
        client_body_buffer_size 80m;
        proxy_max_temp_file_size 0;

        location = /nginx-health {{
            access_log off;
            return 200 "ok\\n";
        }}

        # The change feed's WebSocket (GET /changes/stream): Upgrade and Connection are hop-by-hop, so
        # nginx forwards the upgrade only when told to. An idle stream is kept alive by uvicorn's pings
        # (every 20 s), well within the read timeout; a replica that dies ends the stream, and the
        # client resumes from its last position on the other one.
        location = /changes/stream {{
            proxy_pass http://retail_api;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 2s;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
            add_header X-Retail-Upstream $upstream_addr always;
        }}

        location / {{
            proxy_pass http://retail_api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 2s;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries 2;
            # Which replica answered: the tests see the balancing, people see it in the access log.
            add_header X-Retail-Upstream $upstream_addr always;
        }}
    }}
}}
"""


#: The compose stack's nginx (docker-compose.yml mounts it); tests/stack checks it is this rendering.
COMPOSE_NGINX = REPO / "deploy" / "nginx" / "compose.conf"


def compose_nginx_config() -> str:
    """nginx_config() for docker-compose.yml's services: the same proxy, container paths and names."""
    return nginx_config(
        Path("/var/cache/nginx"), "80", ["api-1:8000", "api-2:8000"], logs=Path("/var/log/nginx")
    )


def prometheus_config(state: State, scrape_interval: str) -> str:
    """Prometheus for the local stack: every replica under its own `replica` label, and the Pushgateway."""
    import yaml

    replicas = [
        {"targets": [f"127.0.0.1:{state.ports[f'api-{i}']}"], "labels": {"replica": f"api-{i}"}}
        for i in range(1, state.replicas + 1)
    ]
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {"job_name": "retail-api", "metrics_path": "/metrics", "static_configs": replicas},
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{state.ports['pushgateway']}"]}],
            },
            {
                "job_name": "prometheus",
                "static_configs": [{"targets": [f"127.0.0.1:{state.ports['prometheus']}"]}],
            },
        ],
    }
    header = "# Written by deploy/stack/stack.py up: the local stack's targets.\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def alert_rules(alert_for: str | None) -> str:
    """deploy/prometheus/rules.yml, with every `for:` set to `alert_for` when given (test stacks)."""
    import yaml

    text = RULES.read_text()
    if alert_for is None:
        return text
    rules = yaml.safe_load(text)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = alert_for
    return (
        f"# deploy/prometheus/rules.yml with for: {alert_for} (stack.py up --alert-for)\n"
        + yaml.safe_dump(rules, sort_keys=False)
    )


# ---------------------------------------------------------------------------------------------- processes


def spawn(state: State, part: Part, shared: dict[str, str]) -> None:
    """Start `part` as the leader of a new process group, its output to `<dir>/logs/<name>.log`."""
    log = Path(state.dir) / "logs" / f"{part.name}.log"
    env = {**os.environ, **shared, **part.env, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    with log.open("ab") as out:
        out.write(f"\n==> {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(part.command)}\n".encode())
        out.flush()
        process = subprocess.Popen(
            part.command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    part.pid = process.pid
    part.start_ticks = process_start_ticks(process.pid)
    state.save()


def process_tree(pid: int) -> list[tuple[int, int]]:
    """`pid` and every process descended from it, each with its start time (to tell a reused pid).

    A process group is not enough: a task process may start a session of its own, and a machine's death
    takes every process on it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    tree, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            tree.append(child)
            todo.append(child)
    return [(p, ticks) for p in tree if (ticks := process_start_ticks(p)) is not None]


def kill_tree(tree: list[tuple[int, int]]) -> None:
    """SIGKILL each process of `tree` that is still the one recorded."""
    for pid, ticks in tree:
        if process_start_ticks(pid) == ticks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def celery_ping(state: State, worker: str) -> bool:
    """`celery inspect ping` to one worker, through the stack's broker."""
    from celery import Celery

    shared = read_env_file(state.env_file)
    app = Celery(broker=shared["AIRFLOW__CELERY__BROKER_URL"])
    try:
        replies = app.control.ping(destination=[f"{worker}@{state.hostname}"], timeout=2.0)
    except Exception:  # broker not reachable yet: not healthy, asked again
        return False
    finally:
        app.close()
    return any(f"{worker}@{state.hostname}" in reply for reply in replies)


def dag_processor_ready(state: State) -> bool:
    """The dag-processor heartbeats and has parsed the project's DAG into the metadata database."""
    import psycopg

    try:
        with psycopg.connect(
            f"host=127.0.0.1 port=5432 user=postgres dbname=airflow_{state.name}", connect_timeout=3
        ) as conn:
            job = conn.execute(
                "SELECT 1 FROM job WHERE job_type = 'DagProcessorJob' AND state = 'running' "
                "AND latest_heartbeat > now() - interval '60 seconds'"
            ).fetchone()
            dag = conn.execute("SELECT 1 FROM dag WHERE dag_id = 'retail_etl' AND NOT is_stale").fetchone()
    except psycopg.Error:
        return False
    return job is not None and dag is not None


def health_check(state: State, name: str) -> Callable[[], bool]:
    """How `up` and `status` tell that part `name` works."""
    if name.startswith("worker-"):
        return lambda: celery_ping(state, name)
    if name == "airflow-dag-processor":
        return lambda: dag_processor_ready(state)
    urls = {
        "s3": f"{state.url('s3')}/moto-api/",
        "pushgateway": f"{state.url('pushgateway')}/-/ready",
        "prometheus": f"{state.url('prometheus')}/-/ready",
        "nginx": f"{state.url('nginx')}/health",
        "airflow-api-server": f"{state.url('airflow')}/api/v2/monitor/health",
        "airflow-scheduler": f"{state.url('scheduler-health')}/health",
    }
    url = urls.get(name) or f"{state.url(name)}/health"  # api-N
    return lambda: http_ok(url)


def create_bucket(state: State) -> None:
    """The lake's bucket on moto's server (kept in its memory: a new `up` starts with an empty lake)."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=state.url("s3"),
        aws_access_key_id="stack",
        aws_secret_access_key="stack",
        region_name="us-east-1",
    )
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET)


# ---------------------------------------------------------------------------------------------- commands


def plan(args: argparse.Namespace, directory: Path, tools: dict[str, str]) -> State:
    """Ports, parts and their commands for a new stack."""
    names = ["nginx", "s3", "pushgateway", "prometheus", "airflow", "scheduler-health"]
    names += [f"api-{i}" for i in range(1, args.replicas + 1)]
    names += [f"worker-{i}-logs" for i in range(1, args.workers + 1)]
    ports = {name: free_port() for name in names}
    state = State(
        name=args.name,
        dir=str(directory),
        ports=ports,
        replicas=args.replicas,
        workers=args.workers,
        parts={},
        hostname=socket.gethostname(),
    )
    airflow = tools["airflow"]
    nginx_prefix = directory / "nginx"
    parts = [
        Part("s3", [tools["moto_server"], "-H", "127.0.0.1", "-p", str(ports["s3"])], url=state.url("s3")),
        Part(
            "pushgateway",
            [
                tools["prometheus-pushgateway"],
                f"--web.listen-address=127.0.0.1:{ports['pushgateway']}",
                # Debian's build persists to /var/lib/prometheus by default: shared with every other one.
                f"--persistence.file={directory / 'pushgateway.data'}",
            ],
            url=state.url("pushgateway"),
        ),
        Part(
            "prometheus",
            [
                tools["prometheus"],
                f"--config.file={directory / 'prometheus' / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'prometheus' / 'data'}",
                f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
            ],
            url=state.url("prometheus"),
        ),
    ]
    parts += [
        Part(
            f"api-{i}",
            [
                str(BIN / "uvicorn"),
                "api.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports[f"api-{i}"]),
                "--no-access-log",
            ],
            url=state.url(f"api-{i}"),
        )
        for i in range(1, args.replicas + 1)
    ]
    parts.append(
        Part(
            "nginx",
            [
                tools["nginx"],
                "-p",
                str(nginx_prefix),
                "-c",
                str(nginx_prefix / "nginx.conf"),
                "-e",
                str(directory / "logs" / "nginx-error.log"),
                "-g",
                "daemon off;",
            ],
            url=state.url("nginx"),
        )
    )
    parts += [
        Part("airflow-api-server", [airflow, "api-server"], url=state.url("airflow")),
        Part("airflow-scheduler", [airflow, "scheduler"]),
        Part("airflow-dag-processor", [airflow, "dag-processor"]),
    ]
    parts += [
        Part(
            f"worker-{i}",
            [airflow, "celery", "worker", "--celery-hostname", f"worker-{i}@{state.hostname}"],
            # Each worker serves its task logs to the UI on a port of its own.
            env={"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports[f"worker-{i}-logs"])},
        )
        for i in range(1, args.workers + 1)
    ]
    state.parts = {part.name: part for part in parts}
    return state


def write_configs(state: State, args: argparse.Namespace) -> dict[str, str]:
    """The env file, nginx's and Prometheus' configs; returns the shared settings."""
    directory = Path(state.dir)
    for sub in ("logs", "airflow", "nginx", "prometheus/data"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    shared = shared_settings(state)
    shared["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(args.dags_folder).resolve())
    shared["AIRFLOW_VAR_RETAIL_SOURCE"] = str(Path(args.source).resolve())
    if args.no_schedule:
        # Test stacks: no catch-up of the whole year when the DAG is unpaused; backfills and triggered
        # runs still run.
        shared["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] = "False"
    write_env_file(state.env_file, shared)
    upstreams = [f"127.0.0.1:{state.ports[f'api-{i}']}" for i in range(1, state.replicas + 1)]
    (directory / "nginx" / "nginx.conf").write_text(
        nginx_config(
            directory / "nginx", f"127.0.0.1:{state.ports['nginx']}", upstreams, logs=directory / "logs"
        )
    )
    (directory / "prometheus" / "prometheus.yml").write_text(prometheus_config(state, args.scrape_interval))
    (directory / "prometheus" / "rules.yml").write_text(alert_rules(args.alert_for))
    return shared


def urls(state: State) -> list[tuple[str, str]]:
    """What `up` and `status` print."""
    return [
        ("service (nginx)", state.url("nginx")),
        ("Airflow UI", state.url("airflow")),
        ("object store (S3)", f"{state.url('s3')}  bucket s3://{BUCKET}/lake"),
        ("Prometheus", state.url("prometheus")),
        ("Pushgateway", state.url("pushgateway")),
        *[(f"replica api-{i}", state.url(f"api-{i}")) for i in range(1, state.replicas + 1)],
        ("env file", str(state.env_file)),
        ("logs", str(Path(state.dir) / "logs")),
    ]


def print_urls(state: State) -> None:
    """One line per URL on stdout."""
    for label, url in urls(state):
        print(f"{label:20} {url}")


def cmd_up(args: argparse.Namespace) -> int:
    """Start every part, wait until each is healthy, print the URLs."""
    directory = Path(args.dir).resolve()
    existing = State.load(directory)
    if existing is not None and any(is_ours_and_alive(p) for p in existing.parts.values()):
        if all(
            health_check(existing, n)() for n, p in existing.parts.items() if is_ours_and_alive(p)
        ) and all(is_ours_and_alive(p) for p in existing.parts.values()):
            say(f"already up ({directory})")
            print_urls(existing)
            return 0
        raise StackError(f"a stack is partly running in {directory}: `stack down` first")
    tools = require_tools()
    require_services()
    directory.mkdir(parents=True, exist_ok=True)
    state = plan(args, directory, tools)
    state.save()
    shared = write_configs(state, args)
    started = time.monotonic()
    deadline = started + UP_TIMEOUT
    try:
        say(f"databases retail_{state.name}, airflow_{state.name}; RabbitMQ vhost retail_{state.name}")
        create_databases([f"retail_{state.name}", f"airflow_{state.name}"])
        create_vhost(f"retail_{state.name}")
        # Airflow's schema takes longest: migrate in the background while the rest starts.
        init_log = directory / "logs" / "airflow-init.log"
        init_env = {**os.environ, **shared, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
        with init_log.open("ab") as out:
            migrate = subprocess.Popen(
                [tools["airflow"], "db", "migrate"],
                cwd=REPO,
                env=init_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        first = ["s3", "pushgateway", "prometheus", *[f"api-{i}" for i in range(1, state.replicas + 1)]]
        for name in first:
            spawn(state, state.parts[name], shared)
        for name in first:
            wait_until(name, health_check(state, name), deadline, state.parts[name])
            say(f"{name} healthy")
        create_bucket(state)
        spawn(state, state.parts["nginx"], shared)
        wait_until("nginx", health_check(state, "nginx"), deadline, state.parts["nginx"])
        say("nginx healthy")
        if migrate.wait(max(1.0, deadline - time.monotonic())) != 0:
            raise StackError(f"airflow db migrate failed; see {init_log}")
        # A scheduler never runs a task whose pool does not exist (the DAG's post and read-back tasks).
        run_quiet(
            [tools["airflow"], "pools", "set", "retail_api", "2", "Tasks calling the retail service at once"],
            init_log,
            env=init_env,
        )
        airflow_parts = [n for n in state.parts if n.startswith(("airflow-", "worker-"))]
        for name in airflow_parts:
            spawn(state, state.parts[name], shared)
        for name in airflow_parts:
            wait_until(name, health_check(state, name), deadline, state.parts[name])
            say(f"{name} healthy")
    except BaseException:
        say("up failed: stopping what was started")
        stop_all(state)
        raise
    say(f"up in {time.monotonic() - started:.0f} s")
    print_urls(state)
    return 0


def stop_all(state: State) -> None:
    """Stop every part: SIGTERM to all at once (a graceful stop each), SIGKILL to what is left after
    STOP_TIMEOUT."""
    leaders = [part.pid for part in state.parts.values() if part.pid is not None and is_ours_and_alive(part)]
    trees = [process_tree(pid) for pid in leaders]
    for pid in leaders:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and any(
        process_start_ticks(pid) == ticks for tree in trees for pid, ticks in tree
    ):
        time.sleep(0.2)
    for tree in trees:
        kill_tree(tree)
    for part in state.parts.values():
        part.pid = None
        part.start_ticks = None
    state.save()


def cmd_down(args: argparse.Namespace) -> int:
    """Stop what `up` started (nothing else); with --purge also drop its databases, vhost and folder."""
    directory = Path(args.dir).resolve()
    state = State.load(directory)
    if state is None:
        say(f"no stack in {directory}: nothing to stop")
        return 0
    running = [name for name, part in state.parts.items() if is_ours_and_alive(part)]
    stop_all(state)
    say(f"stopped {', '.join(running) if running else 'nothing (all parts were down)'}")
    if args.purge:
        drop_databases([f"retail_{state.name}", f"airflow_{state.name}"])
        rabbitmqctl("delete_vhost", f"retail_{state.name}")
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"retail-stack:{state.name}:*"))
        if keys:
            client.delete(*keys)
        shutil.rmtree(directory)
        say(f"purged databases retail_{state.name}, airflow_{state.name}, the vhost and {directory}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Each part: running? healthy? Exit 0 only when every part is both."""
    state = State.load(Path(args.dir).resolve())
    if state is None:
        print("no stack here")
        return 1
    ok = True
    for name, part in state.parts.items():
        alive = is_ours_and_alive(part)
        healthy = alive and health_check(state, name)()
        ok = ok and healthy
        condition = "healthy" if healthy else "RUNNING, not healthy" if alive else "down"
        print(f"{name:24} {condition}  pid {part.pid}")
    print_urls(state)
    return 0 if ok else 1


def cmd_kill(args: argparse.Namespace) -> int:
    """SIGKILL one part and every process it started: a machine's sudden death, for the fault tests."""
    state = State.load(Path(args.dir).resolve())
    if state is None or args.part not in state.parts:
        raise StackError(f"no part {args.part!r} in this stack")
    part = state.parts[args.part]
    if part.pid is not None and is_ours_and_alive(part):
        kill_tree(process_tree(part.pid))
    deadline = time.monotonic() + STOP_TIMEOUT
    while is_ours_and_alive(part) and time.monotonic() < deadline:
        time.sleep(0.1)
    say(f"killed {args.part}")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    """Start one part that is down again, with the same command, settings and port; wait until healthy."""
    state = State.load(Path(args.dir).resolve())
    if state is None or args.part not in state.parts:
        raise StackError(f"no part {args.part!r} in this stack")
    part = state.parts[args.part]
    if not is_ours_and_alive(part):
        spawn(state, part, read_env_file(state.env_file))
    wait_until(args.part, health_check(state, args.part), time.monotonic() + UP_TIMEOUT, part)
    say(f"{args.part} healthy")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; a failure is one line on stderr and exit 1."""
    parser = argparse.ArgumentParser(prog="stack", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status", "kill", "start"):
        command = sub.add_parser(name)
        command.add_argument(
            "--dir", default=str(REPO / ".stack"), help="the stack's folder (default .stack)"
        )
        if name in ("kill", "start"):
            command.add_argument("part", help="e.g. api-1, worker-2, nginx")
    up = sub.choices["up"]
    up.add_argument("--name", default="stack", help="names the databases and vhost: retail_<name> ...")
    up.add_argument("--replicas", type=int, default=2)
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--scrape-interval", default="15s")
    up.add_argument("--alert-for", default=None, help="override every alert rule's `for:` (tests: 5s)")
    up.add_argument("--no-schedule", action="store_true", help="no scheduled runs; backfills/triggers only")
    up.add_argument("--dags-folder", default=str(REPO / "dags"), help="the DAGs Airflow runs (default dags/)")
    up.add_argument(
        "--source",
        default=str(REPO / "sample_data" / "online_retail_sample.csv"),
        help="the DAG's default source (Variable retail_source; default the sample)",
    )
    sub.choices["down"].add_argument(
        "--purge", action="store_true", help="also drop databases, vhost, folder"
    )
    args = parser.parse_args(argv)
    if getattr(args, "replicas", 2) < 1 or getattr(args, "workers", 2) < 1:
        parser.error("--replicas and --workers must be at least 1")
    commands = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "kill": cmd_kill, "start": cmd_start}
    try:
        return commands[args.command](args)
    except StackError as error:
        print(f"stack {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
