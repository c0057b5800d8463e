"""The service's settings, read from the environment and `.env`."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

#: The key a development checkout starts with; refused in production.
DEFAULT_API_KEY = "dev-api-key"
#: The key that signs access tokens in a development checkout; refused in production.
DEFAULT_TOKEN_SECRET = "dev-token-secret-not-for-production-use"
#: HS256 keys shorter than this are refused: RFC 7518 §3.2 asks for a key at least as long as the hash.
MIN_TOKEN_SECRET_BYTES = 32
#: The embedded database: a file next to where the service runs, created on first start.
DEFAULT_DATABASE_URL = "sqlite:///./retail.db"


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore")

    DATABASE_URL: str = DEFAULT_DATABASE_URL
    API_KEY: str = Field(default=DEFAULT_API_KEY, min_length=1)
    ENVIRONMENT: Literal["local", "production"] = "local"
    #: Bodies above this many bytes are refused with 413 (the bulk endpoints need a few MiB per batch).
    MAX_BODY_BYTES: int = Field(default=64 * 1024 * 1024, ge=1)
    #: Bulk writes parsed at once per worker process; more wait, unread (bounds a worker's memory).
    MAX_BULK_WRITES_IN_FLIGHT: int = Field(default=2, ge=1)
    #: Apply pending Alembic migrations when the service starts.
    MIGRATE_ON_START: bool = True
    #: How long start-up waits for the database to answer before giving up.
    DB_WAIT_SECONDS: float = Field(default=30.0, ge=0)
    # --- events (api/events): the outbox always fills; the relay publishes it when RABBITMQ_URL is set.
    #: AMQP URL of the broker, e.g. `amqp://guest:guest@127.0.0.1:5672/`; unset: events wait in the outbox.
    RABBITMQ_URL: str | None = None
    #: The durable topic exchange events go to; the routing key is the event type.
    RABBITMQ_EXCHANGE: str = Field(default="retail", min_length=1)
    #: Run the relay as a thread of the service when RABBITMQ_URL is set (off: `python -m api.events.relay`).
    RELAY_IN_SERVICE: bool = True
    #: Events the relay claims and publishes per transaction.
    OUTBOX_BATCH_SIZE: int = Field(default=500, ge=1, le=10_000)
    #: How often an idle relay looks for new events.
    OUTBOX_POLL_SECONDS: float = Field(default=0.5, gt=0)
    #: Longest wait between two attempts to reach an unreachable broker (the wait doubles up to it).
    RELAY_BACKOFF_MAX_SECONDS: float = Field(default=30.0, gt=0)
    #: Published events older than this many days are deleted by the relay; 0 keeps them forever.
    OUTBOX_RETENTION_DAYS: float = Field(default=7.0, ge=0)
    # --- metrics, logs and rate limits (api/observability).
    #: `json` (one object per line) or `text`; unset: json when stderr is not a terminal, text on one.
    LOG_FORMAT: Literal["json", "text"] | None = None
    #: Level of the service's log (DEBUG, INFO, WARNING, ERROR).
    LOG_LEVEL: str = "INFO"
    #: Requests per API key, e.g. `50/second`, `600/minute`, `100/10seconds`; unset or empty: no limit.
    RATE_LIMIT: str | None = None
    #: Redis for the rate-limit counters, shared by every worker and instance (`redis://127.0.0.1:6379/0`);
    #: unset: each process counts on its own. Unreachable: requests go through (fail open) with a warning.
    REDIS_URL: str | None = None
    #: Prefix of the service's keys in Redis.
    REDIS_KEY_PREFIX: str = Field(default="retail:ratelimit", min_length=1)
    # --- access tokens of OAuth2 clients (api/auth): `POST /token`, then `Authorization: Bearer`.
    #: HS256 signing key of access tokens, at least 32 bytes; every worker and replica needs the same one.
    #: Unset: a development default locally; in production no tokens are issued or accepted (API keys are).
    TOKEN_SECRET: str | None = None
    #: Lifetime of an access token; a client asks for a new one when it expires.
    TOKEN_EXPIRE_SECONDS: int = Field(default=900, ge=1, le=86_400)
    #: The tokens' `iss` and `aud` claims: a token is accepted only by the service that issued it.
    TOKEN_ISSUER: str = Field(default="retail-api", min_length=1)
    TOKEN_AUDIENCE: str = Field(default="retail-api", min_length=1)
    # --- the resource cache (api/cache.py), on when REDIS_URL is set.
    #: How long a cached resource GET lives; writes invalidate it earlier. 0: no cache.
    CACHE_TTL_SECONDS: float = Field(default=300.0, ge=0)
    #: Prefix of the cache's keys in Redis: one per deployment sharing a Redis.
    CACHE_KEY_PREFIX: str = Field(default="retail:cache", min_length=1)

    @field_validator("RATE_LIMIT")
    @classmethod
    def _rate_limit_parses(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            from api.observability.ratelimit import Rate

            Rate.parse(value)  # ValueError names the expected form
            return value.strip()
        return None

    @field_validator("LOG_LEVEL")
    @classmethod
    def _log_level_exists(cls, value: str) -> str:
        if not isinstance(logging.getLevelName(value.upper()), int):
            raise ValueError(f"unknown log level {value!r}; use DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @model_validator(mode="after")
    def _refuse_default_key_in_production(self) -> Settings:
        if self.API_KEY == DEFAULT_API_KEY:
            if self.ENVIRONMENT == "production":
                raise ValueError("API_KEY is the development default; set API_KEY to a secret in production")
            logger.warning(
                "API_KEY is the development default %r: fine locally, never in production", DEFAULT_API_KEY
            )
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_token_secret(self) -> Settings:
        if self.TOKEN_SECRET is None:
            return self
        if len(self.TOKEN_SECRET.encode()) < MIN_TOKEN_SECRET_BYTES:
            raise ValueError(f"TOKEN_SECRET must be at least {MIN_TOKEN_SECRET_BYTES} bytes long")
        if self.TOKEN_SECRET == DEFAULT_TOKEN_SECRET and self.ENVIRONMENT == "production":
            raise ValueError(
                "TOKEN_SECRET is the development default; set it to a secret in production "
                '(python -c "import secrets; print(secrets.token_urlsafe(32))")'
            )
        return self

    @property
    def token_signing_key(self) -> str | None:
        """The key access tokens are signed with; None in production without TOKEN_SECRET (tokens off)."""
        if self.TOKEN_SECRET is not None:
            return self.TOKEN_SECRET
        return DEFAULT_TOKEN_SECRET if self.ENVIRONMENT == "local" else None
