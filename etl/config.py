"""The job's settings: one class, read from the environment (prefix `RETAIL_`) and `.env`.

The command line and the DAG override what they name; everything else comes from here.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class JobSettings(BaseSettings):
    """Where the service, the lake and the other destinations are, and how hard to push the service."""

    model_config = SettingsConfigDict(env_prefix="RETAIL_", env_file=".env", extra="ignore")

    api_url: str = "http://127.0.0.1:8000"
    api_key: SecretStr | None = None
    source: str | None = None
    lake: str = "./lake"
    cache_dir: Path = Path.home() / ".cache" / "retail-etl"
    #: Requests in flight at once; the service's database has one writer on SQLite, more on PostgreSQL.
    concurrency: int = Field(default=4, ge=1, le=64)
    #: Lines per bulk request; a whole invoice always travels in one request.
    lines_per_request: int = Field(default=20_000, ge=100, le=50_000)
    page_size: int = Field(default=1000, ge=1, le=5000)
    #: Lines a run holds in memory at once: its days go through the stages in batches of at most this many
    #: lines (a day with more is a batch of its own), so a run's memory does not grow with its days.
    lines_per_batch: int = Field(default=250_000, ge=1_000)
    #: Total seconds a single request may spend retrying before the run gives up.
    retry_budget_seconds: float = Field(default=300.0, gt=0)
    request_timeout_seconds: float = Field(default=60.0, gt=0)
    #: A Prometheus Pushgateway (`http://host:9091`) that receives each run's metrics; unset: no push.
    pushgateway_url: str | None = None
    #: Load each day into this warehouse too: a DuckDB file path (`duckdb:///...`) or `postgresql://...`.
    warehouse_url: str | None = None
    #: Announce each day written on this broker (`amqp://guest:guest@127.0.0.1:5672/%2F`); unset: no message.
    notify_url: str | None = None
    #: The topic exchange of those messages (routing key `day.published`).
    notify_exchange: str = "retail.lake"
