"""The SQLAlchemy Core implementation of storage shared by the SQL backends.

A plugin for a SQL database builds a SQLAlchemy engine and wraps it::

    from lunasentri_core.storage.sql import SqlStorage

    storage = SqlStorage(engine, retention=retention, name="sqlite")
    storage.migrate()

:class:`SqlStorage` works on SQLite and PostgreSQL. The layout (a write-optimised
head table, hourly packed chunks with minute and hour rollups) is described in
``docs/storage.md``.
"""

from lunasentri_core.storage.sql.backend import (
    SCRIPT_LOCATION,
    SqlStorage,
    alembic_config,
    head_revision,
)
from lunasentri_core.storage.sql.database import Database, install_transaction_control
from lunasentri_core.storage.sql.metrics import SqlMetricStore, choose_resolution
from lunasentri_core.storage.sql.points import CHUNK_MS, HOUR_MS, MINUTE_MS
from lunasentri_core.storage.sql.schema import VERSION_TABLE, metadata
from lunasentri_core.storage.sql.state import SqlStateStore

__all__ = [
    "CHUNK_MS",
    "HOUR_MS",
    "MINUTE_MS",
    "SCRIPT_LOCATION",
    "VERSION_TABLE",
    "Database",
    "SqlMetricStore",
    "SqlStateStore",
    "SqlStorage",
    "alembic_config",
    "choose_resolution",
    "head_revision",
    "install_transaction_control",
    "metadata",
]
