"""The service's Kubernetes Deployment (deploy/k8s/overlays/local) run by `podman kube play` (docs/k8s.md).

    ./dev kube up [--port 8000]     play the Deployment with its ConfigMap and Secret, wait for /health
    ./dev kube status               the pod and its containers
    ./dev kube down                 `podman kube down`, and the Secret podman stored

The objects are the ones `kubectl kustomize deploy/k8s/overlays/local` renders, from the image
`./dev images` builds (`localhost/retail-etl-api:0.1.0`, never pulled). Podman 4.3 plays Pods, Deployments,
ConfigMaps and Secrets, not Services, Jobs or NetworkPolicies, and there is no PostgreSQL, RabbitMQ or
Redis in the play; so, and only so, the played copy differs from the manifests (`adapt`):

- one replica (podman runs one pod per Deployment; SQLite has one writer anyway);
- the database is SQLite in the pod's /tmp (its emptyDir), and the service migrates it when it starts (the
  migrations Job is not played); RABBITMQ_URL and REDIS_URL are dropped (events stay in the outbox, rate
  limits are counted in the process);
- the container's port is published on 127.0.0.1 (`hostPort`), in place of the Service.

Everything else is played as written: the image's own command, the settings from the ConfigMap and the keys
from the Secret (`envFrom`), the non-root user, the read-only root, the dropped capabilities, the resources.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from podman_images import API_IMAGE, REPO, STATE, ImageError, image_exists, podman, podman_env

OVERLAY = REPO / "deploy" / "k8s" / "overlays" / "local"
DEPLOYMENT = "retail-api"
#: The played objects, as given to `podman kube play` and, for `down`, `podman kube down`.
PLAYED = STATE / "kube" / f"{DEPLOYMENT}.yaml"
#: The Secrets `up` stored in podman, by name, one a line: `down` removes them.
STORED_SECRETS = PLAYED.with_suffix(".secrets")
#: The pod `podman kube play` makes of the Deployment's first (and only) replica.
POD = f"{DEPLOYMENT}-pod-0"
#: SQLite in the pod's /tmp emptyDir: the only writable place under the read-only root.
DATABASE_URL = "sqlite:////tmp/retail.db"
#: Settings naming services that the play does not run.
DROPPED_SETTINGS = ("RABBITMQ_URL", "REDIS_URL")
HEALTHY_WITHIN_SECONDS = 90.0

Document = dict[str, Any]


@dataclass(frozen=True)
class Played:
    """The running play: where the service answers, with which key, and how long it took to answer."""

    url: str
    api_key: str
    pod: str
    seconds_to_healthy: float


def kubectl() -> str:
    """KUBECTL, else the machine's kubectl, else the one ./dev installs into .tools/kubectl."""
    found = os.environ.get("KUBECTL") or shutil.which("kubectl") or str(REPO / ".tools/kubectl/bin/kubectl")
    if not Path(found).exists():
        raise ImageError(
            "kubectl is not installed (it renders deploy/k8s): ./dev test installs it into .tools/kubectl"
        )
    return found


def render() -> list[Document]:
    """The local overlay's documents, as `kubectl kustomize` renders them."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise ImageError(f"kubectl kustomize {OVERLAY} failed: {result.stderr.strip()[-300:]}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def adapt(documents: Sequence[Document], port: int) -> list[Document]:
    """The service's Deployment with the ConfigMap and Secret it reads, changed as the module says."""
    deployment = copy.deepcopy(
        next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == DEPLOYMENT)
    )
    spec = deployment["spec"]
    spec["replicas"] = 1
    container = spec["template"]["spec"]["containers"][0]
    if container["image"] != API_IMAGE:
        raise ImageError(f"the overlay names {container['image']}, not the image built here ({API_IMAGE})")
    for published in container["ports"]:
        published.update(hostPort=port, hostIP="127.0.0.1")
    references = {next(iter(source)): next(iter(source.values()))["name"] for source in container["envFrom"]}
    played = []
    for doc in documents:
        name = doc["metadata"]["name"]
        if doc["kind"] == "ConfigMap" and name == references["configMapRef"]:
            config = copy.deepcopy(doc)
            config["data"]["MIGRATE_ON_START"] = "true"
            played.append(config)
        elif doc["kind"] == "Secret" and name == references["secretRef"]:
            secret = copy.deepcopy(doc)
            data = secret["data"]
            for dropped in DROPPED_SETTINGS:
                data.pop(dropped, None)
            data["DATABASE_URL"] = _base64(DATABASE_URL)
            played.append(secret)
    if len(played) != 2:
        raise ImageError(f"the overlay has no ConfigMap and Secret named {sorted(references.values())}")
    return [*played, deployment]


def _base64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def api_key(documents: Sequence[Document]) -> str:
    """The service's API key, from the played Secret."""
    secret = next(doc for doc in documents if doc["kind"] == "Secret")
    return base64.b64decode(secret["data"]["API_KEY"]).decode()


def up(port: int = 8000, timeout: float = HEALTHY_WITHIN_SECONDS) -> Played:
    """Play the service's Deployment, publishing it on 127.0.0.1:`port`, and wait for /health 200."""
    if not image_exists(API_IMAGE):
        raise ImageError(f"there is no image {API_IMAGE}: build it first (./dev images api)")
    documents = adapt(render(), port)
    down()  # a play left by an interrupted run
    PLAYED.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        store_secrets([doc for doc in documents if doc["kind"] == "Secret"])
        played = [doc for doc in documents if doc["kind"] != "Secret"]
        PLAYED.write_text(yaml.safe_dump_all(played, sort_keys=False))
        podman("kube", "play", str(PLAYED))
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, started + timeout)
    except BaseException:
        down()
        raise
    return Played(url, api_key(documents), POD, time.monotonic() - started)


def store_secrets(secrets: Sequence[Document]) -> None:
    """Each Secret as a podman secret that `envFrom: secretRef` reads.

    Podman 4.3 stores a Secret played from YAML as YAML but reads `secretRef` as JSON, and refuses it
    ("secret ... is not valid JSON", containers/podman#16269): so the Secret is stored here, as the JSON
    object of its base64 values that `secretRef` reads, and is not in the played file.
    """
    names = [secret["metadata"]["name"] for secret in secrets]
    STORED_SECRETS.write_text("".join(f"{name}\n" for name in names))
    for secret in secrets:
        # Given on stdin: the keys are never written to a file.
        created = subprocess.run(
            ["podman", "secret", "create", secret["metadata"]["name"], "-"],
            input=json.dumps(secret["data"]),
            env=podman_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if created.returncode != 0:
            raise ImageError(f"podman secret create failed: {created.stderr.strip()[-300:]}")


def wait_until_healthy(url: str, deadline: float) -> None:
    """Return once GET /health answers 200; raise an ImageError with the pod's last log lines at the
    deadline."""
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=3) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as error:
            last = f"/health answered {error.code}"
        except OSError as error:
            last = str(getattr(error, "reason", error))
        time.sleep(0.5)
    logs = podman("pod", "logs", "--tail", "20", POD, check=False)
    raise ImageError(f"{url}/health did not answer 200 ({last}); the pod's log: {logs.stdout[-1500:]}")


def down() -> None:
    """`podman kube down` of what `up` played, and the secrets it stored; nothing when nothing is played."""
    if PLAYED.exists():
        podman("kube", "down", str(PLAYED), check=False)
        PLAYED.unlink()
    if STORED_SECRETS.exists():
        for name in STORED_SECRETS.read_text().split():
            podman("secret", "rm", name, check=False)
        STORED_SECRETS.unlink()


def status() -> str:
    """`podman pod ps` and `podman ps` of the play's pod."""
    pods = podman("pod", "ps", "--filter", f"name={POD}", check=False).stdout
    containers = podman("ps", "-a", "--filter", f"pod={POD}", check=False).stdout if POD in pods else ""
    return pods + containers


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: up, down or status; one line on failure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--port", type=int, default=8000, help="on 127.0.0.1 (up; default 8000)")
    parser.add_argument("--json", action="store_true", help="up: print where it answers as JSON")
    options = parser.parse_args(argv)
    try:
        if options.action == "up":
            played = up(options.port)
            if options.json:
                print(json.dumps(asdict(played)))
            else:
                print(
                    f"{played.url}/health answers 200 after {played.seconds_to_healthy:.1f} s "
                    f"(pod {played.pod}, API key {played.api_key}); ./dev kube down removes it"
                )
        elif options.action == "down":
            down()
        else:
            print(status(), end="")
    except ImageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
