"""The project's images, built with podman on a base made here from Debian's packages (issue 30).

    ./dev images                                   the base (once), the service image, the Airflow image
    python deploy/podman/podman_images.py api      the base and the service image only

Where no registry can be reached, `FROM python:3.11-slim` and `FROM apache/airflow:...` cannot be pulled. The
Dockerfiles take their base as a build argument (`BASE_IMAGE`, defaulting to the public image), and this
script gives them a base made with mmdebstrap from Debian bookworm's packages instead:

- `localhost/retail-etl-base:bookworm-<key>`: Debian's python3 (3.11) in a virtualenv at /opt/venv that is
  first on PATH, so `python`, `pip` and the scripts pip installs behave as in python:3.11-slim (pip into a
  virtualenv: Debian's system Python refuses `pip install`, PEP 668). `<key>` is a hash of everything the
  base is made from (suite, packages, hooks, this machine's local CA certificates): a second run finds it.
- `localhost/retail-etl-airflow-base:3.3.2`: Airflow on that base as apache/airflow lays it out
  (deploy/podman/airflow-base.Dockerfile).
- `localhost/retail-etl-api:0.1.0` and `localhost/retail-etl-airflow:3.3.2`: Dockerfile and
  Dockerfile.airflow, unchanged, named as docker-compose.yml and deploy/k8s/overlays/local name them.

Every podman command runs with a containers.conf of the project's (CONTAINERS_CONF, written to
.tools/podman/): resource limits no higher than this machine's and the runc runtime (see `containers_conf`).
An image is built under a temporary tag and given its name only once it is complete, so a failed or
interrupted build leaves no tag behind; podman keeps the layers it built, and the next build reuses them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[2]
#: Generated files (the containers.conf, the base's tarball while it is imported); .tools/ is git-ignored.
STATE = REPO / ".tools" / "podman"

SUITE = "bookworm"
#: The base's package sources: the release, its updates and its security fixes.
SOURCES = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
#: python3-venv brings ensurepip (Debian's pip wheel); ca-certificates lets pip and apt use HTTPS.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
VENV = "/opt/venv"
#: CA certificates added to this machine (Debian's place for them): the base trusts them too, so that pip
#: and apt inside a build get through an HTTPS proxy that this machine trusts.
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
#: What python:3.11-slim sets and the Dockerfiles rely on.
BASE_CHANGES = (
    f"ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    f"ENV VIRTUAL_ENV={VENV}",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)

BASE_NAME = "localhost/retail-etl-base"
#: A second name of the newest base, for what cannot compute the hash (docker-compose.podman.yml's builds).
BASE_ALIAS = f"{BASE_NAME}:{SUITE}"
API_IMAGE = "localhost/retail-etl-api:0.1.0"
AIRFLOW_BASE_IMAGE = "localhost/retail-etl-airflow-base:3.3.2"
AIRFLOW_IMAGE = "localhost/retail-etl-airflow:3.3.2"
AIRFLOW_VERSION = "3.3.2"

#: The Debian packages ./dev installs (runc: on a host with cgroup v1, Debian's default crun refuses to
#: start containers, "cgroups in hybrid mode not supported"; catatonit: the pause process of pods).
INSTALL_HINT = "apt-get install podman runc mmdebstrap catatonit"
#: What a build downloads from: Debian's archive (the base, apt in the Airflow base) and PyPI (pip).
NETWORK_PROBES = ("http://deb.debian.org/debian/dists/bookworm/Release.gpg", "https://pypi.org/simple/pip/")


class ImageError(Exception):
    """A build that cannot go on, with a message of one line saying what to do."""


@dataclass(frozen=True)
class Built:
    """One image: its name, how long making it took now, and its size."""

    image: str
    seconds: float
    size_bytes: int
    #: False when it already existed and nothing was run (the base); podman's layer cache is not told.
    made: bool = True


def containers_conf() -> Path:
    """The project's containers.conf, written for this machine, which every podman command is given.

    podman's default asks for 1048576 open files, more than this machine's hard limit allows, and the
    container then fails to start (`setrlimit RLIMIT_NOFILE: Operation not permitted`): the limits are this
    process's hard limits, so never higher than the host's. runc, when installed, because crun refuses a
    cgroup v1 host. The machine's /etc/containers files are left alone.
    """
    limits = []
    for name, limit, cap in (
        ("nofile", resource.RLIMIT_NOFILE, 1048576),
        ("nproc", resource.RLIMIT_NPROC, 32768),
    ):
        hard = resource.getrlimit(limit)[1]
        value = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        limits.append(f'"{name}={value}:{value}"')
    lines = [
        "# Written by deploy/podman/podman_images.py: podman's settings for this project's builds and runs.",
        "[containers]",
        f"default_ulimits = [{', '.join(limits)}]",
    ]
    if shutil.which("runc"):
        lines += ["", "[engine]", 'runtime = "runc"']
    path = STATE / "containers.conf"
    text = "\n".join(lines) + "\n"
    if not path.exists() or path.read_text() != text:
        STATE.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


def podman_env() -> dict[str, str]:
    """The environment of every podman command: this one, with the project's containers.conf unless the
    caller names one (CONTAINERS_CONF)."""
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(containers_conf()))
    return env


def require(*tools: str) -> None:
    """Raise an ImageError naming the Debian packages to install when one of `tools` is missing."""
    for tool in tools:
        if shutil.which(tool) is None:
            raise ImageError(f"{tool} is not installed: {INSTALL_HINT}")


def podman(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS` with the project's containers.conf."""
    require("podman")
    result = subprocess.run(
        ["podman", *args], env=podman_env(), text=True, capture_output=capture, check=False
    )
    if check and result.returncode != 0:
        detail = (result.stderr or "").strip().splitlines()
        raise ImageError(f"podman {args[0]} failed: {detail[-1] if detail else f'exit {result.returncode}'}")
    return result


def image_exists(image: str) -> bool:
    """Whether podman has an image of that name."""
    return podman("image", "exists", image, check=False).returncode == 0


def image_id(image: str) -> str | None:
    """The image's id, or None when there is no image of that name."""
    result = podman("image", "inspect", "--format", "{{.Id}}", image, check=False)
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def image_size(image: str) -> int:
    """The image's size in bytes, all its layers (what `podman images` shows)."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


def unreachable() -> str | None:
    """The first of NETWORK_PROBES that does not answer, with why, or None when all answer."""
    for url in NETWORK_PROBES:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15):
                pass
        except urllib.error.HTTPError:
            continue  # it answered
        except (OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            return f"{url} ({reason})"
    return None


def require_network() -> None:
    """Raise a one-line ImageError when Debian's archive or PyPI cannot be reached."""
    where = unreachable()
    if where:
        raise ImageError(
            f"no network: cannot reach {where}; the images are built from Debian's and PyPI's packages"
        )


def local_ca_certificates() -> list[Path]:
    """This machine's added CA certificates (update-ca-certificates reads only `*.crt`)."""
    return sorted(LOCAL_CA_DIR.glob("*.crt")) if LOCAL_CA_DIR.is_dir() else []


def mmdebstrap_command(tarball: Path) -> list[str]:
    """The command that makes the base's root filesystem as a tarball."""
    certificates = local_ca_certificates()
    hooks = []
    if certificates:
        hooks += [
            "--customize-hook=copy-in " + " ".join(str(path) for path in certificates) + f" {LOCAL_CA_DIR}/",
            '--customize-hook=chroot "$1" update-ca-certificates',
        ]
    hooks.append(f'--customize-hook=chroot "$1" python3 -m venv {VENV}')
    return [
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        "--include=" + ",".join(BASE_PACKAGES),
        *hooks,
        SUITE,
        str(tarball),
        *SOURCES,
    ]


def base_image() -> str:
    """The base's name: a hash of everything it is made from, so that a change makes a new one."""
    digest = hashlib.sha256()
    digest.update(json.dumps([mmdebstrap_command(Path("base.tar")), BASE_CHANGES]).encode())
    for path in local_ca_certificates():
        digest.update(path.read_bytes())
    return f"{BASE_NAME}:{SUITE}-{digest.hexdigest()[:12]}"


def temporary_name(image: str) -> str:
    """The name an image is built under until it is complete."""
    return f"{image}-building-{os.getpid()}"


def ensure_base(log: IO[str] | None = None) -> Built:
    """The base image: found, or made with mmdebstrap and imported."""
    image = base_image()
    if image_exists(image):
        podman("tag", image, BASE_ALIAS)
        return Built(image, 0.0, image_size(image), made=False)
    require("mmdebstrap")
    require_network()
    started = time.monotonic()
    STATE.mkdir(parents=True, exist_ok=True)
    tarball = STATE / f"base-{os.getpid()}.tar"
    temporary = temporary_name(image)
    try:
        _log(log, f"making {image} from Debian's packages (mmdebstrap)")
        made = subprocess.run(mmdebstrap_command(tarball), stdout=log, stderr=subprocess.STDOUT, check=False)
        if made.returncode != 0:
            raise ImageError(f"mmdebstrap failed (exit {made.returncode}) making {image}: see its output")
        changes = [arg for change in BASE_CHANGES for arg in ("--change", change)]
        podman("import", "--quiet", *changes, str(tarball), temporary)
        podman("tag", temporary, image, BASE_ALIAS)
    finally:
        tarball.unlink(missing_ok=True)
        podman("untag", temporary, temporary, check=False)
    return Built(image, time.monotonic() - started, image_size(image))


def build(
    image: str,
    dockerfile: str,
    build_args: Mapping[str, str],
    log: IO[str] | None = None,
    target: str | None = None,
) -> Built:
    """`podman build` of `dockerfile` (relative to the repository, its context; its stage `target`) named
    `image` on success.

    Under a temporary name until it is complete; a failure removes that name and says in one line why
    (no network is checked for, as a build whose layers are all cached needs none). The image the name
    pointed to before is removed when nothing else uses it.
    """
    temporary = temporary_name(image)
    previous = image_id(image)
    args = [arg for name, value in build_args.items() for arg in ("--build-arg", f"{name}={value}")]
    if target:
        args += ["--target", target]  # one stage of a multi-stage Dockerfile
    started = time.monotonic()
    _log(log, f"building {image} from {dockerfile}")
    try:
        result = subprocess.run(
            ["podman", "build", "--layers", "-f", dockerfile, *args, "-t", temporary, str(REPO)],
            env=podman_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
        if result.returncode != 0:
            where = unreachable()
            if where:
                raise ImageError(f"no network: cannot reach {where}; building {image} needs it")
            raise ImageError(f"building {image} failed (podman build exit {result.returncode}): see its log")
        podman("tag", temporary, image)
    finally:
        if image_exists(temporary):
            podman("untag", temporary, temporary, check=False)
    seconds = time.monotonic() - started
    if previous and previous != image_id(image):
        podman("rmi", previous, check=False)  # refused when a container or another name still uses it
    return Built(image, seconds, image_size(image))


#: What `./dev images` builds, by name: the base is made first in every case.
TARGETS = ("api", "airflow")


def build_images(targets: Sequence[str] = TARGETS, log: IO[str] | None = None) -> list[Built]:
    """The base, then each of `targets` (`api`, `airflow`) built on it; what was made and how long it took."""
    require("podman")
    base = ensure_base(log)
    done = [base]
    if "api" in targets:
        done.append(build(API_IMAGE, "Dockerfile", {"BASE_IMAGE": base.image}, log))
    if "airflow" in targets:
        done.append(
            build(
                AIRFLOW_BASE_IMAGE,
                "deploy/podman/airflow-base.Dockerfile",
                {"BASE_IMAGE": base.image, "AIRFLOW_VERSION": AIRFLOW_VERSION},
                log,
            )
        )
        done.append(build(AIRFLOW_IMAGE, "Dockerfile.airflow", {"BASE_IMAGE": AIRFLOW_BASE_IMAGE}, log))
    return done


def _log(log: IO[str] | None, message: str) -> None:
    stream = log or sys.stderr
    print(f"==> {message}", file=stream, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: build, print one line per image (or JSON), exit 1 with one line on failure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", metavar="|".join(TARGETS), help="default: all of them")
    parser.add_argument("--json", action="store_true", help="print what was built as JSON")
    options = parser.parse_args(argv)
    unknown = set(options.targets) - set(TARGETS)
    if unknown:
        parser.error(f"no such image: {', '.join(sorted(unknown))} (choose from {', '.join(TARGETS)})")
    try:
        done = build_images(options.targets or TARGETS)
    except ImageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; no image was given its name", file=sys.stderr)
        return 130
    if options.json:
        print(json.dumps([asdict(built) for built in done], indent=2))
    for built in done:
        how = f"built in {built.seconds:.1f} s" if built.made else "already there"
        print(f"{built.image}: {how}, {built.size_bytes / 1e6:.0f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
