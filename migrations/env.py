"""Alembic's entry point: migrates the database named by SETPOINT_DATABASE_URL to the models' shape."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool

import models
from models.database import make_engine
from setpoint import settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = models.metadata


def database_url() -> str:
    return config.attributes.get("database_url") or settings.get().database_url


def run_migrations_offline() -> None:
    from models.database import driver_url

    context.configure(url=driver_url(database_url()), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
