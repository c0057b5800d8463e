#!/bin/bash
# The entrypoint of the Airflow base built here (deploy/podman/airflow-base.Dockerfile), as apache/airflow's
# behaves for what this project gives it. First it waits for the metadata database (when one is set), as
# the official one does: compose starts `airflow-init` as soon as PostgreSQL's container runs. Then
# `api-server`, `scheduler`, `celery worker`, ... run as `airflow ARGS`; `bash ...`, `python ...` and
# `airflow ...` run as they are; no arguments start a shell. CONNECTION_CHECK_MAX_COUNT=0 skips the wait.
set -euo pipefail

if [ -n "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-}" ] && [ "${CONNECTION_CHECK_MAX_COUNT:-20}" -gt 0 ]; then
  for attempt in $(seq "${CONNECTION_CHECK_MAX_COUNT:-20}"); do
    airflow db check >/dev/null 2>&1 && break
    if [ "$attempt" -eq "${CONNECTION_CHECK_MAX_COUNT:-20}" ]; then
      echo "error: the metadata database did not answer (airflow db check, $attempt tries)" >&2
      exit 1
    fi
    sleep "${CONNECTION_CHECK_SLEEP_TIME:-3}"
  done
fi

case "${1:-}" in
  "") exec /bin/bash ;;
  bash | python | python3 | airflow) exec "$@" ;;
  *) exec airflow "$@" ;;
esac
