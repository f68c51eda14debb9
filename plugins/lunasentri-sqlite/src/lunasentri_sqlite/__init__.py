"""LunaSentri storage in one SQLite file.

Registered through the ``lunasentri`` entry point as the storage backend for
``sqlite:`` URLs (``sqlite:////var/lib/lunasentri/lunasentri.db``, or
``sqlite://`` for a throwaway in-memory store). Settings come from
``[plugins.sqlite]``; see :class:`SQLiteSettings`.
"""

from __future__ import annotations

from collections.abc import Iterable

from lunasentri_core import hookimpl
from lunasentri_core.storage import StorageFactory
from lunasentri_sqlite.factory import SQLiteSettings, SQLiteStorageFactory, Synchronous

__all__ = ["SQLiteSettings", "SQLiteStorageFactory", "Synchronous", "lunasentri_register_storage"]


@hookimpl
def lunasentri_register_storage() -> Iterable[type[StorageFactory]]:
    return [SQLiteStorageFactory]
