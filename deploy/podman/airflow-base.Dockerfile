# Airflow laid out as the apache/airflow image lays it out, on the base made here from Debian's packages, for
# machines that cannot pull apache/airflow (`./dev images`, deploy/podman/podman_images.py). Dockerfile.airflow
# builds on it unchanged: it installs with pip as the `airflow` user and reads AIRFLOW_VERSION.
#
# What it shares with apache/airflow: the `airflow` user (uid 50000, group 0, home /home/airflow),
# AIRFLOW_HOME=/opt/airflow with dags/, logs/, config/ and plugins/ writable by group 0, pip installing into
# the environment Airflow runs from (/home/airflow/.local, first on PATH, as the official image's user site),
# curl (compose's health checks), and an /entrypoint that waits for the metadata database, then runs
# `airflow ARGS` unless ARGS start with bash, python or airflow. What it does not have: the official image's
# providers beyond PostgreSQL and FAB (the project's `stack` extra adds Celery's at its pinned version) and
# its constraints file (the project pins what matters; pip resolves the rest).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

ARG AIRFLOW_VERSION=3.3.2
ENV AIRFLOW_VERSION=${AIRFLOW_VERSION} \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW_USER_HOME_DIR=/home/airflow \
    PATH=/home/airflow/.local/bin:${PATH} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# tini: the init process (dumb-init in the official image) that forwards signals and reaps the children.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl tini \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --uid 50000 --gid 0 --home-dir /home/airflow --create-home --shell /bin/bash airflow \
    && mkdir -p /opt/airflow/dags /opt/airflow/logs /opt/airflow/config /opt/airflow/plugins \
    && chown -R airflow:0 /opt/airflow \
    && chmod -R g+rwX /opt/airflow /home/airflow

USER airflow
RUN python3 -m venv /home/airflow/.local \
    && pip install "apache-airflow[postgres,fab]==${AIRFLOW_VERSION}"

# After the install: a change to the entrypoint does not reinstall Airflow.
COPY --chmod=0755 deploy/podman/airflow-entrypoint.sh /entrypoint

WORKDIR /opt/airflow
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--", "/entrypoint"]
CMD []
