"""Alembic environment for lbp-cds.

Normally driven by ``cds.storage.migrate.upgrade(url)``, which passes an open connection in
``config.attributes["connection"]``. To author a new revision against a database at the current head:
``alembic.command.revision(cds.storage.migrate.alembic_config(url), message="...", autogenerate=True)``
(``CDS_DATABASE_URL`` is used when no URL is given).
"""

from __future__ import annotations

import os

from alembic import context

from cds.storage.engine import make_engine
from cds.storage.models import metadata

config = context.config


def _configure_and_run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    url = config.attributes.get("url") or os.environ.get("CDS_DATABASE_URL")
    context.configure(url=url, target_metadata=metadata, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    url = config.attributes.get("url") or os.environ.get("CDS_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: pass one to cds.storage.migrate.upgrade() or set CDS_DATABASE_URL")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _configure_and_run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
