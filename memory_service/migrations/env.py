"""Alembic environment: runs on the connection ``memory_service.store.migrate`` hands over
(``config.attributes["connection"]``); there is no alembic.ini and no URL of its own."""

from __future__ import annotations

from alembic import context

from memory_service.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
