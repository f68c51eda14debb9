"""Storage protocols and the shared SQLAlchemy Core implementation.

A storage plugin registers a :class:`StorageFactory` for its URL schemes; the SQL
backends (SQLite, PostgreSQL/TimescaleDB) share :mod:`lunasentri_core.storage.sql`.
"""

from lunasentri_core.storage.protocols import (
    Capability,
    Change,
    ChangeKind,
    ChangeListener,
    LoginFailure,
    MachineQuery,
    MaintenanceReport,
    MetricStore,
    PurgePolicy,
    PurgeReport,
    StateStore,
    StorageBackend,
    StorageFactory,
    hold_singleton,
    listen_for_changes,
    storage_mode,
    storage_partitioning,
)

__all__ = [
    "Capability",
    "Change",
    "ChangeKind",
    "ChangeListener",
    "LoginFailure",
    "MachineQuery",
    "MaintenanceReport",
    "MetricStore",
    "PurgePolicy",
    "PurgeReport",
    "StateStore",
    "StorageBackend",
    "StorageFactory",
    "hold_singleton",
    "listen_for_changes",
    "storage_mode",
    "storage_partitioning",
]
