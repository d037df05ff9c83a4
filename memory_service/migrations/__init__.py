"""Alembic revisions of the memory store (``memory_service.store.migrate`` runs them)."""
