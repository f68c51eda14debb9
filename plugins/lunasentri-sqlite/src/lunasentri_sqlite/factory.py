"""The SQLite storage factory: path checks, engine settings, the shared SQL storage."""

from __future__ import annotations

import enum
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import attrs
import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import StaticPool

from lunasentri_core import RetentionPolicy, StorageError
from lunasentri_core.storage import Capability, StorageBackend
from lunasentri_core.storage.sql import SqlStorage

log = logging.getLogger(__name__)

SQLITE_MAGIC = b"SQLite format 3\x00"

POOL_SIZE = 20
"""Connections a file database keeps open. The server's worker threads use up to
about this many at once (8 reads of the hub, 8 key and 8 session lookups, the
ingest writer, maintenance); SQLAlchemy's default of 5 made every connection
past it a new one, opened with its pragmas and closed again on return: most of
the cost of a key lookup under load."""


class Synchronous(enum.StrEnum):
    """SQLite's ``PRAGMA synchronous``: how often it waits for the disk."""

    OFF = "OFF"
    NORMAL = "NORMAL"
    """With WAL: a power cut may lose the last transactions, never corrupts the file."""
    FULL = "FULL"
    EXTRA = "EXTRA"


def _positive(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value <= type(value)(0):
        raise ValueError(f"{attribute.name} must be positive")


@attrs.frozen
class SQLiteSettings:
    """``[plugins.sqlite]`` in the settings file."""

    busy_timeout: timedelta = attrs.field(default=timedelta(seconds=30), validator=_positive)
    """How long a writer waits for another connection's write lock before giving up."""
    synchronous: Synchronous = Synchronous.NORMAL
    cache_size_mib: int = attrs.field(default=64, validator=_positive)
    """Page cache per connection, in MiB."""


class SQLiteStorageFactory:
    """Opens ``sqlite:`` URLs as a :class:`~lunasentri_core.storage.sql.SqlStorage`."""

    name: ClassVar[str] = "sqlite"
    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)
    settings_class: ClassVar[type[Any] | None] = SQLiteSettings
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        # Several processes may write: SQLite's file lock serializes them and
        # the shared store re-reads series ids another process deleted.
        {
            Capability.ROLLUPS,
            Capability.RETENTION,
            Capability.CONCURRENT_WRITERS,
            Capability.SERIES_LIMIT,
        }
    )

    @classmethod
    def open(
        cls, url: str, *, settings: Any = None, retention: RetentionPolicy | None = None
    ) -> StorageBackend:
        settings = settings if settings is not None else SQLiteSettings()
        if not isinstance(settings, SQLiteSettings):
            raise StorageError(f"sqlite: expected SQLiteSettings, got {type(settings).__name__}")
        parsed = _parse(url)
        path = _database_path(parsed)
        if path is None:
            engine = sa.create_engine(
                "sqlite://",
                poolclass=StaticPool,
                connect_args={"check_same_thread": False},
            )
            label, serialize = "sqlite in-memory database", True
        else:
            check_path(path)
            engine = sa.create_engine(
                parsed if _is_uri(parsed) else parsed.set(database=str(path)),
                connect_args={"timeout": settings.busy_timeout.total_seconds()},
                pool_size=POOL_SIZE,
            )
            label, serialize = str(path), False
        _install_pragmas(engine, settings, wal=path is not None)
        _check_database(engine, label)
        return SqlStorage(
            engine,
            retention=retention,
            name=cls.name,
            capabilities=cls.capabilities,
            label=label,
            serialize=serialize,
        )


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except exc.ArgumentError as error:
        raise StorageError(f"{url!r} is not a storage URL ({error})") from error
    if parsed.get_backend_name() != "sqlite":
        raise StorageError(f"{url!r} is not a sqlite: URL")
    if parsed.get_driver_name() not in ("pysqlite", ""):
        raise StorageError(f"{url!r}: only the standard sqlite3 driver is supported")
    return parsed


def _is_uri(url: URL) -> bool:
    return url.query.get("uri") in ("true", "1")


def _database_path(url: URL) -> Path | None:
    """The database file's absolute path; ``None`` for an in-memory database."""
    database = url.database or ""
    if _is_uri(url) and database.startswith("file:"):
        # sqlite:///file:/path/l.db?mode=ro&uri=true (SQLite's own URI form)
        database = database.removeprefix("file:")
        database = "/" + database.lstrip("/") if database.startswith("//") else database
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return None
    return Path(database).expanduser().absolute()


def check_path(path: Path) -> None:
    """Refuse, with a message naming the path, a file SQLite could not use safely.

    Checked before SQLite touches anything, so nothing is created or changed
    when the answer is no.
    """
    directory = path.parent
    if not directory.exists():
        raise StorageError(
            f"directory {directory} does not exist (create it or change storage_url)"
        )
    if not directory.is_dir():
        raise StorageError(f"{directory} is not a directory (change storage_url)")
    if path.is_dir():
        raise StorageError(f"{path} is a directory, not a database file (change storage_url)")
    if not path.exists():
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StorageError(
                f"directory {directory} is read-only: cannot create the database {path.name} there"
            )
        return
    if not os.access(path, os.R_OK):
        raise StorageError(f"{path} is not readable (check its permissions)")
    _check_header(path)
    if not os.access(path, os.W_OK):
        raise StorageError(
            f"{path} is read-only: LunaSentri writes to its database (check its permissions)"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StorageError(
            f"directory {directory} is read-only: SQLite needs to create "
            f"{path.name}-wal and {path.name}-shm next to the database"
        )


def _check_header(path: Path) -> None:
    with path.open("rb") as file:
        header = file.read(len(SQLITE_MAGIC))
    if header and header != SQLITE_MAGIC:
        raise StorageError(
            f"{path} is not a SQLite database (it holds something else; "
            "it was left untouched: point storage_url at another file)"
        )


def _install_pragmas(engine: Engine, settings: SQLiteSettings, *, wal: bool) -> None:
    pragmas = [
        f"PRAGMA busy_timeout = {int(settings.busy_timeout.total_seconds() * 1000)}",
        f"PRAGMA synchronous = {settings.synchronous.value}",
        f"PRAGMA cache_size = {-settings.cache_size_mib * 1024}",
        "PRAGMA foreign_keys = ON",
    ]
    if wal:
        pragmas.insert(0, "PRAGMA journal_mode = WAL")
    # Before anything that writes the file's header (journal_mode = WAL does): a
    # new file's auto-vacuum mode is fixed when it is first written.
    pragmas.insert(0, "PRAGMA auto_vacuum = INCREMENTAL")

    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for pragma in pragmas:
                cursor.execute(pragma)
        finally:
            cursor.close()

    event.listen(engine, "connect", on_connect)


def _check_database(engine: Engine, label: str) -> None:
    """Open one connection now, so a broken file fails here with a clear message."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    except exc.DBAPIError as error:
        engine.dispose()
        reason = str(error.orig).strip() if error.orig is not None else str(error)
        if "not a database" in reason:
            raise StorageError(f"{label} is not a SQLite database") from error
        if "readonly" in reason or "read-only" in reason:
            raise StorageError(
                f"{label} is read-only: LunaSentri writes to its database"
            ) from error
        if "unable to open" in reason:
            raise StorageError(
                f"cannot open {label}: {reason} (check the path and permissions)"
            ) from error
        raise StorageError(f"cannot open {label}: {reason}") from error
    if label != "sqlite in-memory database" and str(mode).lower() != "wal":
        log.warning(
            "%s: journal mode is %s, not WAL (the file system may not support it)", label, mode
        )
