"""``SqlStorage``: the metric and state stores over one engine, plus migrations."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import ClassVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Engine

from lunasentri_core.errors import StorageError
from lunasentri_core.model import RetentionPolicy
from lunasentri_core.storage.protocols import Capability, ChangeListener
from lunasentri_core.storage.sql.database import LOCK_MIGRATE, Database
from lunasentri_core.storage.sql.metrics import SqlMetricStore, to_ms
from lunasentri_core.storage.sql.notices import PgChangeListener
from lunasentri_core.storage.sql.partitions import NativePartitions
from lunasentri_core.storage.sql.schema import VERSION_TABLE
from lunasentri_core.storage.sql.singleton import Singletons
from lunasentri_core.storage.sql.state import SqlStateStore
from lunasentri_core.storage.sql.vacuum import convert

SCRIPT_LOCATION = "lunasentri_core.storage.sql:migrations"


def alembic_config(engine_or_connection: Engine | sa.Connection | None = None) -> Config:
    """An Alembic configuration for the shared schema, built without an ``alembic.ini``.

    For maintainers: ``alembic_config()`` with ``command.revision(cfg, ...)`` writes
    a new revision into ``migrations/versions``.
    """
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.set_main_option("version_table", VERSION_TABLE)
    if engine_or_connection is not None:
        cfg.attributes["connection"] = engine_or_connection
    return cfg


def head_revision() -> str | None:
    """The newest revision this version of LunaSentri knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


class SqlStorage:
    """A :class:`~lunasentri_core.storage.StorageBackend` on a SQLAlchemy engine.

    Plugins for SQL databases build an engine (with their dialect's settings)
    and wrap it in this class; it works on SQLite and PostgreSQL.

    :param engine: The engine; this object owns it and disposes of it on close.
    :param retention: How long each resolution of metric data is kept.
    :param name: The backend's name, e.g. the plugin's (``"sqlite"``).
    :param capabilities: What the backend supports, for the contract tests.
    :param label: How error messages name the database (default: the URL
        without its password).
    :param serialize: Run one transaction at a time (a single shared connection).
    """

    DEFAULT_CAPABILITIES: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.ROLLUPS,
            Capability.RETENTION,
            Capability.CONCURRENT_WRITERS,
            Capability.SERIES_LIMIT,
        }
    )

    def __init__(
        self,
        engine: Engine,
        *,
        retention: RetentionPolicy | None = None,
        name: str = "sql",
        capabilities: frozenset[Capability] | None = None,
        label: str | None = None,
        serialize: bool = False,
    ) -> None:
        self.name = name
        self.capabilities = (
            self.DEFAULT_CAPABILITIES if capabilities is None else frozenset(capabilities)
        )
        self.db = Database(engine, label=label, serialize=serialize)
        self.metrics = SqlMetricStore(self.db, retention or RetentionPolicy())
        self.state = SqlStateStore(self.db, self.metrics)
        self.singletons = Singletons(engine)

    @property
    def engine(self) -> Engine:
        return self.db.engine

    def migrate(self) -> None:
        """Apply every pending migration, all in one transaction.

        A SQLite file still without incremental auto-vacuum is then converted,
        once (:func:`~lunasentri_core.storage.sql.vacuum.convert`).
        """
        self._upgrade()
        convert(self.db)
        partitions = self.metrics.partitions
        if partitions is not None:
            # The partitions kept ahead exist from the start, not from the first
            # maintenance pass on.
            partitions.prepare(to_ms(datetime.now(UTC)), None)

    def _upgrade(self) -> None:
        known = head_revision()
        with self.db.write(lock=LOCK_MIGRATE) as conn:
            current = self._current_revision(conn)
            if current == known:
                return
            try:
                command.upgrade(alembic_config(conn), "head")
            except CommandError as error:
                raise StorageError(
                    f"{self.db.label}: cannot migrate from schema revision {current!r}: "
                    f"{error} (is the database from a newer LunaSentri?)"
                ) from error
        if isinstance(self.metrics.partitions, NativePartitions):
            self.metrics.partitions.forget()

    def snapshot(self) -> AbstractContextManager[object]:
        """One read transaction for every read this thread makes inside the block,
        through either store (:meth:`Database.read` with ``share``): a request's
        ownership check and its metric read see one snapshot and cost one
        transaction."""
        return self.db.read(share=True)

    def partitioning(self) -> dict[str, object] | None:
        """How metric chunks are split by time (see :func:`storage_partitioning`)."""
        partitions = self.metrics.partitions
        return None if partitions is None else partitions.describe()

    def schema_revision(self) -> str | None:
        """The schema revision the database is at (``None``: not migrated yet)."""
        with self.db.read() as conn:
            return self._current_revision(conn)

    @staticmethod
    def _current_revision(conn: sa.Connection) -> str | None:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()

    def hold_singleton(self, name: str) -> bool:
        """Whether this process runs the once-only job ``name`` (see :func:`hold_singleton`)."""
        with self.db.errors():
            return self.singletons.hold(name)

    def release_singleton(self, name: str) -> None:
        """Let another process take job ``name`` over at its next pass."""
        with self.db.errors():
            self.singletons.release(name)

    def listen_for_changes(self) -> ChangeListener | None:
        """What other processes commit, heard at once (PostgreSQL ``LISTEN``; see
        :func:`~lunasentri_core.storage.listen_for_changes`). ``None`` on SQLite:
        one process."""
        if not self.db.is_postgres:
            return None
        return PgChangeListener(
            self.engine, self.db.notices.origin, self.state.keys_changed_elsewhere
        )

    def close(self) -> None:
        self.singletons.close()
        self.db.dispose()

    def __repr__(self) -> str:
        return f"<SqlStorage {self.name} {self.db.label}>"
