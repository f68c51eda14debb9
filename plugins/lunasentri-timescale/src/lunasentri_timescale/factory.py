"""The PostgreSQL storage factory: URL checks, a pooled psycopg 3 engine, mode detection."""

from __future__ import annotations

import enum
import logging
import math
from datetime import timedelta
from typing import Any, ClassVar
from urllib.parse import urlsplit

import attrs
import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import URL, Engine, make_url

from lunasentri_core import RetentionPolicy, StorageError, StorageUnavailable
from lunasentri_core.storage import Capability, StorageBackend
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.storage.sql.database import LOCK_MIGRATE
from lunasentri_core.storage.sql.partitions import DEFAULT_AHEAD, NativePartitions
from lunasentri_timescale import liveness
from lunasentri_timescale.hypertable import HypertableChunks, is_hypertable, make_hypertable

log = logging.getLogger(__name__)

DRIVER = "psycopg"


class Mode(enum.StrEnum):
    """How the backend uses the database; ``[plugins.timescale] mode``."""

    AUTO = "auto"
    """Setting only: ``timescale`` when the extension is installed or available,
    else ``postgres``."""
    POSTGRES = "postgres"
    """Plain PostgreSQL, whatever extensions the server has."""
    TIMESCALE = "timescale"
    """TimescaleDB: the ``timescaledb`` extension is installed in the database or available."""


def _positive(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value <= type(value)(0):
        raise ValueError(f"{attribute.name} must be positive")


def _not_negative(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value < type(value)(0):
        raise ValueError(f"{attribute.name} must not be negative")


@attrs.frozen
class TimescaleSettings:
    """``[plugins.timescale]`` in the settings file."""

    pool_size: int = attrs.field(default=5, validator=_positive)
    """Connections each server process keeps open."""
    max_overflow: int = attrs.field(default=10, validator=_not_negative)
    """Connections opened beyond ``pool_size`` under load, closed again when returned."""
    pool_timeout: timedelta = attrs.field(default=timedelta(seconds=30), validator=_positive)
    """How long a storage call waits for a free connection before it fails."""
    pool_recycle: timedelta = attrs.field(default=timedelta(minutes=30), validator=_positive)
    """Connections older than this are replaced (before a proxy or firewall drops them)."""
    connect_timeout: timedelta = attrs.field(default=timedelta(seconds=10), validator=_positive)
    """How long opening a connection may take (libpq counts whole seconds, at least 2)."""
    statement_timeout: timedelta = attrs.field(default=timedelta(0), validator=_not_negative)
    """PostgreSQL cancels a statement running longer than this; 0 (the default): no limit."""
    application_name: str = "lunasentri"
    """Shown in ``pg_stat_activity``; an ``application_name`` in the URL wins."""
    mode: Mode = attrs.field(default=Mode.AUTO, converter=Mode)
    """``auto``, ``postgres`` or ``timescale`` (refused when the extension is missing)."""
    partitions_ahead: int = attrs.field(default=DEFAULT_AHEAD, validator=_not_negative)
    """Day partitions of ``metric_chunks`` kept ready after the current one (plain
    PostgreSQL; TimescaleDB makes its chunks as rows arrive)."""


@attrs.frozen
class Probe:
    """What the database says about itself when the backend opens."""

    server_version: str
    extension_version: str | None = None
    """The ``timescaledb`` extension's version when it is installed in this database."""
    extension_available: bool = False
    """The server could ``CREATE EXTENSION timescaledb`` (``pg_available_extensions``)."""
    license: str | None = None
    """``timescaledb.license`` (``apache`` or ``timescale``) when the library is loaded."""

    @property
    def has_timescaledb(self) -> bool:
        return self.extension_version is not None or self.extension_available

    def describe(self) -> str:
        if self.extension_version is not None:
            found = f"timescaledb {self.extension_version} installed"
        elif self.extension_available:
            found = "timescaledb available, not installed"
        else:
            found = "no timescaledb"
        licence = f", license {self.license}" if self.license else ""
        return f"PostgreSQL {self.server_version}, {found}{licence}"


def choose_mode(probe: Probe, requested: Mode = Mode.AUTO) -> Mode:
    """The mode to run in, from what the database has and what the settings ask for."""
    if requested is Mode.POSTGRES:
        return Mode.POSTGRES
    if probe.has_timescaledb:
        return Mode.TIMESCALE
    if requested is Mode.TIMESCALE:
        raise StorageError(
            "[plugins.timescale] mode is 'timescale', but the timescaledb extension is "
            f"neither installed in this database nor available ({probe.describe()}); "
            "install TimescaleDB or set mode = 'auto'"
        )
    return Mode.POSTGRES


class TimescaleStorage(SqlStorage):
    """The shared SQL storage on PostgreSQL, knowing which mode it runs in."""

    def __init__(
        self,
        engine: Engine,
        *,
        mode: Mode,
        probe: Probe,
        partitions_ahead: int = DEFAULT_AHEAD,
        **kwargs: Any,
    ) -> None:
        super().__init__(engine, **kwargs)
        self.mode: str = mode.value
        """``timescale`` or ``postgres`` (see :func:`lunasentri_core.storage.storage_mode`)."""
        self.probe = probe
        self.metrics.partitions = self._native = NativePartitions(self.db, partitions_ahead)
        self._choose_partitioning()

    @property
    def _hypertables(self) -> bool:
        """Whether ``metric_chunks`` may be a hypertable: timescale mode, extension installed."""
        return self.mode == Mode.TIMESCALE and self.probe.extension_version is not None

    def _choose_partitioning(self) -> None:
        if not self._hypertables:
            return
        with self.db.read() as conn:
            hyper = is_hypertable(conn)
        self.metrics.partitions = HypertableChunks(self.db) if hyper else self._native

    def migrate(self) -> None:
        """The shared migrations; then, in timescale mode with the extension
        installed, ``metric_chunks`` becomes a hypertable (see :mod:`.hypertable`)."""
        super().migrate()
        if not self._hypertables:
            return
        with self.db.write(lock=LOCK_MIGRATE) as conn:
            if not is_hypertable(conn):
                make_hypertable(conn)
        self._native.forget()
        self._choose_partitioning()

    def __repr__(self) -> str:
        return f"<TimescaleStorage {self.mode} {self.db.label}>"


class TimescaleStorageFactory:
    """Opens ``postgresql:`` URLs as a :class:`TimescaleStorage` over a connection pool."""

    name: ClassVar[str] = "timescale"
    schemes: ClassVar[tuple[str, ...]] = ("postgresql", "postgresql+psycopg")
    settings_class: ClassVar[type[Any] | None] = TimescaleSettings
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        # Several processes may share the database: the shared store takes
        # advisory locks around compaction, series deletion and migrations.
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
        settings = settings if settings is not None else TimescaleSettings()
        if not isinstance(settings, TimescaleSettings):
            raise StorageError(
                f"timescale: expected TimescaleSettings, got {type(settings).__name__}"
            )
        parsed = parse_url(url)
        label = parsed.render_as_string(hide_password=True)
        engine = create_engine(parsed, settings)
        try:
            probe = probe_database(engine, label)
            mode = choose_mode(probe, settings.mode)
        except BaseException:
            engine.dispose()
            raise
        capabilities = cls.capabilities
        if mode is Mode.TIMESCALE:
            capabilities = capabilities | {Capability.TIMESCALEDB}
        log.info("%s: %s; running in %s mode", label, probe.describe(), mode.value)
        try:
            return TimescaleStorage(
                engine,
                mode=mode,
                probe=probe,
                retention=retention,
                name=cls.name,
                capabilities=capabilities,
                label=label,
                partitions_ahead=settings.partitions_ahead,
            )
        except BaseException:
            engine.dispose()
            raise


def shown(url: str) -> str:
    """``url`` for a message: never its password, even when it does not parse."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "the storage URL"
    if password is None:
        return repr(url)
    return repr(url.replace(f":{password}@", ":***@", 1))


def parse_url(url: str) -> URL:
    """A psycopg 3 URL from ``postgresql://`` or ``postgresql+psycopg://``; errors say why."""
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, ValueError):
        raise StorageError(
            f"{shown(url)} is not a storage URL "
            "(expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE)"
        ) from None
    if parsed.get_backend_name() != "postgresql":
        raise StorageError(f"{shown(url)} is not a postgresql:// URL")
    driver = parsed.get_driver_name() if "+" in parsed.drivername else DRIVER
    if driver != DRIVER:
        raise StorageError(
            f"{shown(url)}: the timescale plugin uses psycopg 3, not {driver} "
            "(write postgresql:// or postgresql+psycopg://)"
        )
    if not parsed.database:
        raise StorageError(f"{shown(url)} names no database (add /DATABASE to the URL)")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise StorageError(f"{shown(url)}: port {parsed.port} is out of range")
    return parsed.set(drivername=f"postgresql+{DRIVER}")


def create_engine(url: URL, settings: TimescaleSettings) -> Engine:
    """A pooled engine; libpq options carry the statement timeout."""
    connect_args: dict[str, Any] = {
        "connect_timeout": max(2, math.ceil(settings.connect_timeout.total_seconds())),
    }
    if "application_name" not in url.query:
        connect_args["application_name"] = settings.application_name
    options = _options(url, settings)
    if options:
        # connect_args would replace the URL's own options: merge them instead.
        connect_args["options"] = options
    engine = sa.create_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout.total_seconds(),
        pool_recycle=int(settings.pool_recycle.total_seconds()),
        # The connection returned last is drawn first: under light load the same
        # few serve every request, their statements prepared (psycopg prepares a
        # statement on a connection's fifth use of it), where FIFO took turns
        # through the whole pool: a fresh server's first 25 reads cost 4.0 ms of
        # CPU each against 2.0-3.2 after.
        pool_use_lifo=True,
        connect_args=connect_args,
    )
    # A connection the server dropped (restart, failover) is replaced before
    # use instead of failing the storage call that drew it; pinged only when it
    # may be dead, not at every checkout as pool_pre_ping would.
    liveness.install(engine)
    return engine


def _options(url: URL, settings: TimescaleSettings) -> str:
    given = url.query.get("options", "")
    parts = [given] if isinstance(given, str) else list(given)
    milliseconds = int(settings.statement_timeout.total_seconds() * 1000)
    if milliseconds:
        parts.append(f"-c statement_timeout={milliseconds}")
    return " ".join(p for p in parts if p)


PROBE = sa.text(
    """
    SELECT current_setting('server_version'),
           (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),
           EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),
           current_setting('timescaledb.license', true)
    """
)


def probe_database(engine: Engine, label: str) -> Probe:
    """Connect once (so a wrong URL fails now, clearly) and look for TimescaleDB."""
    try:
        with engine.connect() as conn:
            row = conn.execute(PROBE).one()
    except exc.DBAPIError as error:
        raise _connect_error(label, error) from error
    return Probe(
        server_version=str(row[0]).split()[0],
        extension_version=row[1],
        extension_available=bool(row[2]),
        license=row[3] or None,
    )


def _connect_error(label: str, error: exc.DBAPIError) -> StorageError:
    """Unavailable (try again later) when the server does not answer; else a plain error."""
    reason = str(error.orig).strip() if error.orig is not None else str(error)
    first = reason.splitlines()[0] if reason else type(error).__name__
    text = reason.lower()
    unknown_role = "role " in text and "does not exist" in text
    if unknown_role or "password authentication failed" in text or "no pg_hba.conf" in text:
        return StorageError(f"{label}: the server refused the login: {first}")
    if "does not exist" in text and "database" in text:
        return StorageError(f"{label}: {first} (create it: createdb, or CREATE DATABASE)")
    if isinstance(error, exc.OperationalError) and "statement timeout" not in text:
        return StorageUnavailable(f"cannot reach {label}: {first}")
    return StorageError(f"{label}: {first}")
