"""docker-compose.podman.yml is an override, not a second topology: it changes where docker-compose.yml's
images come from and nothing else but one default-preserving setting (docs/scale.md). Offline and fast;
benchmarks/compose_stack.py runs the two files together under podman-compose."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
#: What the override may set on a service: the image and how to build it; a profile (Grafana, which
#: Debian does not package); deploy's mode (podman-compose runs `replicas` only with it written out); the
#: scheduler's AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE, true unless AIRFLOW_USE_JOB_SCHEDULE says otherwise.
ALLOWED_KEYS = {"image", "build", "profiles", "deploy", "environment"}


def load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / name).read_text())
    return loaded


def test_the_override_names_only_compose_services_and_changes_only_their_images() -> None:
    compose, override = load("docker-compose.yml")["services"], load("docker-compose.podman.yml")["services"]
    assert set(override) <= set(compose)
    for name, service in override.items():
        assert set(service) <= ALLOWED_KEYS, name
        if "deploy" in service:
            assert service["deploy"] == {"mode": "replicated"}, name
            assert compose[name]["deploy"]["replicas"] == 2
        if "environment" in service:
            assert service["environment"] == {
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "${AIRFLOW_USE_JOB_SCHEDULE:-true}"
            }, name
    # Only Grafana is left out, and said so.
    assert {name for name, service in override.items() if "profiles" in service} == {"grafana"}
    assert (
        "Grafana is not here: Debian does not package it" in (REPO / "docker-compose.podman.yml").read_text()
    )


def test_every_image_compose_pulls_is_built_on_the_local_base() -> None:
    compose, override = load("docker-compose.yml")["services"], load("docker-compose.podman.yml")["services"]
    pulled = {name for name, service in compose.items() if "build" not in service and name != "grafana"}
    # outbox-relay runs the service's image, which compose builds for api-1 and api-2.
    assert pulled - set(override) == {"outbox-relay"}
    for name in pulled - {"outbox-relay"}:
        build = override[name]["build"]
        assert override[name]["image"].startswith("localhost/retail-etl-"), name
        assert build["args"]["BASE_IMAGE"] == "localhost/retail-etl-base:bookworm", name
        dockerfile = (REPO / build["dockerfile"]).read_text()
        assert re.search(r"^ARG BASE_IMAGE\nFROM \$\{BASE_IMAGE\}", dockerfile, re.M), name
        if "target" in build:
            assert re.search(rf"^FROM \$\{{BASE_IMAGE\}} AS {build['target']}$", dockerfile, re.M), name
    # The project's own images: the same Dockerfiles as compose's, on the local bases.
    for name, service in override.items():
        if name in compose and "build" in compose[name]:
            assert service["build"]["dockerfile"] == compose[name]["build"]["dockerfile"], name
            assert service["build"]["args"]["BASE_IMAGE"].startswith("localhost/retail-etl-"), name
