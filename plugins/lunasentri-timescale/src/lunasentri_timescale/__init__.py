"""LunaSentri storage on PostgreSQL, with TimescaleDB detection.

Registered through the ``lunasentri`` entry point as the storage backend for
``postgresql:`` and ``postgresql+psycopg:`` URLs (both use psycopg 3), e.g.
``postgresql://lunasentri:secret@db.example:5432/lunasentri``. Settings come
from ``[plugins.timescale]``; see :class:`TimescaleSettings`.

The backend says which mode it runs in (:attr:`TimescaleStorage.mode`):
``timescale`` when the ``timescaledb`` extension is installed in the database or
available to it, else ``postgres``. Plain PostgreSQL partitions ``metric_chunks``
by day (:mod:`lunasentri_core.storage.sql.partitions`); with the extension
installed before the first migration it becomes a hypertable
(:mod:`lunasentri_timescale.hypertable`).
"""

from __future__ import annotations

from collections.abc import Iterable

from lunasentri_core import hookimpl
from lunasentri_core.storage import StorageFactory
from lunasentri_timescale.factory import (
    Mode,
    Probe,
    TimescaleSettings,
    TimescaleStorage,
    TimescaleStorageFactory,
    choose_mode,
)

__all__ = [
    "Mode",
    "Probe",
    "TimescaleSettings",
    "TimescaleStorage",
    "TimescaleStorageFactory",
    "choose_mode",
    "lunasentri_register_storage",
]


@hookimpl
def lunasentri_register_storage() -> Iterable[type[StorageFactory]]:
    return [TimescaleStorageFactory]
