"""The sync's lock (`<lake>/_sync/lock`): whose lock is taken over before its lease is over, and whose is not.

A real lock file in a local lake and real processes: a child that runs, one that exited and was reaped,
one that exited and was not (a zombie). tests/e2e/test_sync_killed.py does it with a SIGKILLed sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from etl.errors import SyncBusyError
from etl.sync import LOCK_LEASE_SECONDS, _lock, _this_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PID namespaces and /proc are Linux's")


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    (tmp_path / "_sync").mkdir()
    return tmp_path / "_sync" / "lock"


@pytest.fixture
def running() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid names no process now
    return child.pid


def hold(lock_path: Path, pid: int, **where: Any) -> dict[str, Any]:
    """A lock as a sync of `pid` writes it, just taken (its lease has an hour to go)."""
    here = _this_process()
    holder = {
        "owner": f"{where.get('host', here['host'])}:{pid}:abcd1234",
        "host": here["host"],
        "pid_namespace": here["pid_namespace"],
        "pid": pid,
        **where,
        "since": time.time(),
        "lease_seconds": LOCK_LEASE_SECONDS,
    }
    lock_path.write_text(json.dumps(holder))
    return holder


def take(lock_path: Path) -> dict[str, Any]:
    """Take the lock and release it; what it held meanwhile."""
    with _lock(fsspec.filesystem("file"), str(lock_path)):
        taken: dict[str, Any] = json.loads(lock_path.read_text())
    assert not lock_path.exists()
    return taken


def test_the_lock_of_a_sync_that_runs_here_is_respected(
    lock_path: Path, running: subprocess.Popen[bytes]
) -> None:
    holder = hold(lock_path, running.pid)
    with pytest.raises(SyncBusyError, match=f"another sync \\({holder['owner']}\\) holds the lake"):
        take(lock_path)
    assert json.loads(lock_path.read_text()) == holder


def test_the_lock_of_a_sync_whose_process_is_gone_is_taken_over_at_once(lock_path: Path) -> None:
    hold(lock_path, dead_pid())
    assert take(lock_path)["pid"] == os.getpid()


def test_the_lock_of_an_exited_sync_not_reaped_yet_is_taken_over(lock_path: Path) -> None:
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        state = Path(f"/proc/{zombie.pid}/stat")
        wait_for("the child exited", lambda: state.read_text().rsplit(")", 1)[1].split()[0] == "Z", 30, 0.01)
        hold(lock_path, zombie.pid)
        assert take(lock_path)["pid"] == os.getpid()
    finally:
        zombie.wait()


@pytest.mark.parametrize(
    "where",
    [
        {"host": "another-host"},  # its processes are not ours to see
        {"pid_namespace": "pid:[1]"},  # another container with our host name
    ],
)
def test_the_lock_of_a_sync_elsewhere_waits_for_its_lease(lock_path: Path, where: dict[str, str]) -> None:
    hold(lock_path, dead_pid(), **where)
    with pytest.raises(SyncBusyError):
        take(lock_path)


def test_a_lock_that_does_not_say_where_its_sync_runs_waits_for_its_lease(lock_path: Path) -> None:
    # As the job wrote it before its locks named host, PID namespace and pid.
    owner = f"{_this_process()['host']}:{dead_pid()}:abcd1234"
    lock_path.write_text(json.dumps({"owner": owner, "since": time.time(), "lease_seconds": 3600}))
    with pytest.raises(SyncBusyError):
        take(lock_path)
    lock_path.write_text(json.dumps({"owner": owner, "since": time.time() - 7200, "lease_seconds": 3600}))
    take(lock_path)
