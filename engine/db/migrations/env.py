"""Alembic environment: migrates the database named by the config or SHAREDCARE_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

import engine.db.access_schema
import engine.db.ingest_schema  # noqa: F401
from engine.config import load_settings, sync_database_url
from engine.db.schema import metadata

config = context.config


def _url() -> str:
    configured = config.get_main_option("sqlalchemy.url")
    return sync_database_url(configured or load_settings().database_url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = create_engine(_url(), poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    connectable.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
