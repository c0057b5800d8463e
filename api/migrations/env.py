"""Alembic environment: one code path for the service's migrate-on-start and for the CLI.

The service passes an open connection in `config.attributes["connection"]`; the CLI
(`alembic -c api/alembic.ini upgrade head`) builds an engine from DATABASE_URL.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from api.core.config import Settings
from api.core.db import WRITE_OPTION, lock_for_migrations, make_engine
from api.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite alters tables by copying them; batch mode lets later migrations do that.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # With SQLAlchemy emitting BEGIN (api.core.db), SQLite DDL is transactional too: all or nothing.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        lock_for_migrations(connection)
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit the SQL instead of running it (`alembic upgrade head --sql`)."""
    context.configure(
        url=Settings().DATABASE_URL,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run against the service's connection, or against DATABASE_URL from the command line."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # Only the command line configures logging: inside the service it would silence uvicorn's loggers.
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    engine = make_engine(Settings().DATABASE_URL)
    try:
        with engine.connect() as connection:
            connection.execution_options(**{WRITE_OPTION: True})
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
