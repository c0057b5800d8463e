"""The service's settings, read from the environment and `.env`."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

#: The key a development checkout starts with; refused in production.
DEFAULT_API_KEY = "dev-api-key"
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
    #: Apply pending Alembic migrations when the service starts.
    MIGRATE_ON_START: bool = True
    #: How long start-up waits for the database to answer before giving up.
    DB_WAIT_SECONDS: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _refuse_default_key_in_production(self) -> Settings:
        if self.API_KEY == DEFAULT_API_KEY:
            if self.ENVIRONMENT == "production":
                raise ValueError("API_KEY is the development default; set API_KEY to a secret in production")
            logger.warning(
                "API_KEY is the development default %r: fine locally, never in production", DEFAULT_API_KEY
            )
        return self
