"""Alembic migrations of the shared SQL schema (``script_location`` is this package)."""
