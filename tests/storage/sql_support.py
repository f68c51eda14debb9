"""Helpers shared by the SQL storage tests (a plain module: conftest.py is not importable)."""

from __future__ import annotations

from collections.abc import Callable

from lunasentri_core.model import RetentionPolicy
from lunasentri_core.storage.sql import SqlStorage

NO_RETENTION = RetentionPolicy(raw=None, minute=None, hour=None)

OpenStorage = Callable[..., SqlStorage]
"""``open_storage(retention=NO_RETENTION, **kwargs)``: one more migrated store on the database."""
