"""Celery settings of the stack's Airflow workers: Airflow's defaults, and the job imported once per
worker process instead of at the start of every task.

Named by `[celery] celery_config_options = retail_celery_config.CELERY_CONFIG` (the local stack puts
this folder on PYTHONPATH; the image copies the file into `$AIRFLOW_HOME/config`, which Airflow puts on
`sys.path`).

Why: on Linux a Celery worker's pool process runs each task's supervisor, which forks the task's own
process from itself (`airflow.sdk.execution_time.supervisor`). Whatever the pool process has imported,
the task process has too, for free. The DAG's tasks import `etl.pipeline` (pyarrow, numpy, httpx, fsspec,
s3fs: 0.35-0.6 s of imports on this machine, once
Airflow's own are loaded) inside each task, which keeps parsing the DAG file cheap but paid
the import in every one of the 6 tasks of every run. Importing it once here, in each pool process when it
starts, takes that cost off every task. The same holds for what an S3 client is made from (botocore's
service model and endpoint rules, ~0.15 s), loaded here into the job's shared session
(`etl.lake.prepare_s3_client`). Only worker pool processes import it: the scheduler, which
imports this module for the executor's Celery app, never fires `worker_process_init`.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import worker_process_init

log = logging.getLogger(__name__)

#: What the tasks import; in the order they import it.
PRELOADED_MODULES = ("etl.pipeline",)

CELERY_CONFIG: dict[str, Any] = dict(DEFAULT_CELERY_CONFIG)


@worker_process_init.connect
def import_the_job(**_: Any) -> None:
    """Import the job's modules in a worker pool process before it runs any task. A failed import is
    logged, not raised: the task then imports it itself, and fails with the error where it is seen."""
    for module in PRELOADED_MODULES:
        try:
            importlib.import_module(module)
        except Exception:
            log.exception("could not preload %s; each task will import it itself", module)
    try:
        # The tasks' first S3 request then skips making the client's model (~0.15 s a task).
        from etl.lake import prepare_s3_client

        prepare_s3_client()
    except Exception:
        log.exception("could not prepare the S3 client; each task will make its own")
