"""Alembic migrations; applied by `coordinator.db.migrate` on every start."""
