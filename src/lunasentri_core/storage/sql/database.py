"""An engine plus the transaction discipline the stores rely on.

* SQLite: the driver's own transaction handling is switched off and every
  transaction is opened explicitly, ``BEGIN IMMEDIATE`` for writes, so a writer
  takes the write lock up front (waiting ``busy_timeout``) instead of failing
  half-way when it upgrades a read lock. Foreign keys are enforced.
* PostgreSQL: work that must not run twice at once (compaction, deleting
  series, migrations) takes a transaction-scoped advisory lock, so several
  server processes may share one database.

Driver errors are turned into :class:`~lunasentri_core.StorageError` with a
message that names the database; only integrity errors pass through, for the
stores to turn into ``ConflictError``/``NotFoundError``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Final, cast

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from lunasentri_core.errors import StorageError, StorageUnavailable
from lunasentri_core.storage.sql import pgarrays
from lunasentri_core.storage.sql.notices import Notices

WRITE_OPTION: Final = "lunasentri_write"
SUPPORTED_DIALECTS: Final = ("sqlite", "postgresql")

LOCK_MAINTAIN: Final = 0x4C53_0001
"""Advisory lock: compaction, expiry and series deletion."""
LOCK_MIGRATE: Final = 0x4C53_0002
LOCK_HEAD_INDEXES: Final = 0x4C53_0003
"""Advisory lock (session-level, tried): rebuilding the head's indexes (``vacuum.py``)."""


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Autocommit at the driver level; SQLAlchemy's "begin" event below opens
    # every transaction itself (the recipe from SQLAlchemy's SQLite docs).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # Only takes effect in a file without tables yet (see vacuum.py): a file
        # created by this connection is then never left full of free pages.
        cursor.execute("PRAGMA auto_vacuum = INCREMENTAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    write = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def install_transaction_control(engine: Engine) -> None:
    """Make ``engine`` behave as the stores expect (idempotent)."""
    if engine.dialect.name != "sqlite":
        return
    if event.contains(engine, "begin", _sqlite_on_begin):
        return
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    # Connections pooled before the listeners existed would still run in the
    # driver's legacy transaction mode.
    engine.dispose()


class Statement:
    """A statement compiled once into the driver's positional form.

    The hot paths pass plain tuples straight to the driver's ``executemany``,
    which keeps SQLAlchemy's per-row work (dicts, bind processors) out of them.
    Only use it for statements whose parameters need no type processing.
    """

    __slots__ = ("_names", "_sql")

    def __init__(self, stmt: ClauseElement, dialect: Dialect) -> None:
        compiled = cast("SQLCompiler", stmt.compile(dialect=_positional(dialect)))
        self._sql = compiled.string
        self._names = tuple(compiled.positiontup or ())

    @property
    def sql(self) -> str:
        return self._sql

    @property
    def names(self) -> tuple[str, ...]:
        """The parameters' names, in the order the tuples must give them."""
        return self._names

    def many(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        if rows:
            conn.exec_driver_sql(self._sql, list(rows))

    def one(self, conn: Connection, row: tuple[Any, ...] = ()) -> Any:
        """Execute once; the result's rows are plain tuples of driver values."""
        return conn.exec_driver_sql(self._sql, row)


class BulkInsert:
    """An INSERT of many rows per statement, compiled once, fed with columns.

    * SQLite: ``VALUES (...), (...), ...``. One statement for many rows does far
      less work per row than ``executemany`` of a one-row statement (one parse
      and one VM run for all of them), which is what lets a write keep pace with
      raw ``executemany`` into an unindexed table while maintaining a primary
      key. Rows go in statements of power-of-two sizes (the largest that fit,
      up to ``rows_per_statement``): a few statements per batch, whatever its
      size, and a few distinct statements for the driver's cache; up to
      :attr:`EXACT_ROWS` rows (an agent's sample) go in one statement. Few
      statements matter beyond parsing: the driver lets go of the GIL for each,
      and a writer thread then waits for the event loop's thread to hand it
      back (up to ``sys.getswitchinterval()``, 5 ms), every time.
    * PostgreSQL: ``INSERT ... SELECT * FROM unnest(%s::bigint[], ...)``: one
      statement and one array parameter per column for the whole batch. With
      psycopg 3, integer and float columns go as arrays packed in binary format
      (:mod:`.pgarrays`): psycopg's own packing of a list, element by element,
      cost more than the statement itself.
    """

    ROWS_PER_STATEMENT: Final = 1024
    """At most, and less where SQLite's limit on parameters is lower."""
    EXACT_ROWS: Final = 32
    """SQLite: up to this many rows go in one statement of exactly that many (an agent's
    sample: one statement, not one per power of two), at most this many distinct
    statements for the driver's cache."""

    def __init__(
        self,
        db: Database,
        table: sa.Table,
        columns: Sequence[str],
        finish: Callable[[Any], Any],
        rows_per_statement: int = ROWS_PER_STATEMENT,
    ) -> None:
        """``finish`` adds the ``ON CONFLICT`` clause to a dialect INSERT of ``table``."""
        self._width = len(columns)
        self._arrays: ArrayStatement | None = None
        if db.is_postgres:

            def insert(rows: Any) -> Any:
                select = sa.select(*(rows.c[c] for c in columns))
                return finish(db.insert(table).from_select(columns, select))

            self._arrays = ArrayStatement(db, table, columns, insert)
            return

        def values(count: int) -> Statement:
            rows: list[dict[str, Any]] = [
                {c: sa.bindparam(f"{c}_{i}") for c in columns} for i in range(count)
            ]
            stmt = self._build(db, finish(db.insert(table).values(rows)))
            self._check(stmt, tuple(f"{c}_{i}" for i in range(count) for c in columns))
            return stmt

        per = min(rows_per_statement, _sqlite_max_parameters() // self._width)
        self._per = 1 << (per.bit_length() - 1)  # a power of two
        self._sql = _RowsSql(values(1).sql, values(2).sql)
        if self._sql(3) != values(3).sql:
            raise StorageError(f"cannot extend a bulk insert by rows: {values(1).sql}")

    @staticmethod
    def _build(db: Database, stmt: ClauseElement) -> Statement:
        return db.statement(stmt)

    @staticmethod
    def _check(stmt: Statement, expected: tuple[str, ...]) -> None:
        if stmt.names != expected:
            raise StorageError(f"unexpected parameter order compiling a bulk insert: {stmt.sql}")

    def run(self, conn: Connection, columns: Sequence[Sequence[Any]]) -> None:
        """Insert rows given as columns (equally long sequences, one per column)."""
        count = len(columns[0]) if columns else 0
        if not count:
            return
        if self._arrays is not None:
            self._arrays.run(conn, columns)
            return
        width = self._width
        flat: list[Any] = [None] * (count * width)
        for j, column in enumerate(columns):
            flat[j::width] = column
        if count <= self.EXACT_ROWS and count <= self._per:
            conn.exec_driver_sql(self._sql(count), tuple(flat))
            return
        done = 0
        while done < count:
            rows = min(self._per, 1 << ((count - done).bit_length() - 1))
            conn.exec_driver_sql(self._sql(rows), tuple(flat[done * width : (done + rows) * width]))
            done += rows


class ArrayStatement:
    """A PostgreSQL statement over rows given as one array parameter per column.

    ``build`` gets the rows as a derived table (``unnest(%s::bigint[], ...)``
    with ``columns`` as its columns) and returns the statement to compile.
    With psycopg 3, integer and float columns go as arrays packed in binary
    format (:mod:`.pgarrays`): psycopg's own packing of a list, element by
    element, cost more than the statement itself.
    """

    def __init__(
        self,
        db: Database,
        table: sa.Table,
        columns: Sequence[str],
        build: Callable[[Any], Any],
    ) -> None:
        self._packed: tuple[type[pgarrays.PackedArray] | None, ...] = ()
        if db.engine.dialect.driver == "psycopg":
            self._packed = tuple(_packed_kind(table.c[c].type) for c in columns)
        arrays = [sa.bindparam(c, type_=postgresql.ARRAY(table.c[c].type)) for c in columns]
        rows = sa.func.unnest(*arrays).table_valued(*columns).render_derived()
        self._stmt = db.statement(build(rows))
        if self._stmt.names != tuple(columns):
            raise StorageError(f"unexpected parameter order compiling {self._stmt.sql}")

    @property
    def sql(self) -> str:
        return self._stmt.sql

    def run(self, conn: Connection, columns: Sequence[Sequence[Any]]) -> int:
        """Run once for the rows given as columns; the rows it changed (``rowcount``)."""
        result = conn.exec_driver_sql(self._stmt.sql, self._parameters(conn, columns))
        return int(result.rowcount)

    def _parameters(self, conn: Connection, columns: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
        if not any(self._packed):
            return tuple(list(column) for column in columns)
        pgarrays.ensure_registered(conn.connection.driver_connection)
        out: list[Any] = []
        for kind, column in zip(self._packed, columns, strict=True):
            packed = pgarrays.pack(kind, column) if kind is not None else None
            # A None or an out-of-range number: psycopg sends the list as it is.
            out.append(packed if packed is not None else list(column))
        return tuple(out)


def _packed_kind(column_type: sa.types.TypeEngine[Any]) -> type[pgarrays.PackedArray] | None:
    """The binary array a column's values go in (``None``: a plain list)."""
    if isinstance(column_type, sa.BigInteger):
        return pgarrays.Int8Array
    if isinstance(column_type, sa.SmallInteger):
        return None
    if isinstance(column_type, sa.Integer):
        return pgarrays.Int4Array
    if isinstance(column_type, sa.Float) and (
        column_type.precision is None or column_type.precision > 24
    ):
        return pgarrays.Float8Array
    return None


class _RowsSql:
    """The SQL of a multi-row INSERT for any number of rows, from its one- and two-row forms."""

    def __init__(self, one: str, two: str) -> None:
        # Where the two-row form first differs: the second row starts there.
        at = next((i for i, (a, b) in enumerate(zip(one, two, strict=False)) if a != b), len(one))
        extra = two[at : at + len(two) - len(one)]
        if one[:at] + extra + one[at:] != two:
            raise StorageError(f"cannot extend a bulk insert by rows: {one}")
        self._head, self._row, self._tail = one[:at], extra, one[at:]
        self._cache: dict[int, str] = {}

    def __call__(self, rows: int) -> str:
        sql = self._cache.get(rows)
        if sql is None:
            sql = self._cache[rows] = self._head + self._row * (rows - 1) + self._tail
        return sql


def _sqlite_max_parameters() -> int:
    """SQLite's default limit on a statement's parameters (raised in 3.32)."""
    return 32_766 if sqlite3.sqlite_version_info >= (3, 32) else 999


def _positional(dialect: Dialect) -> Dialect:
    if dialect.positional:
        return dialect
    if dialect.paramstyle == "pyformat":
        # Same dialect class, "%s" placeholders: psycopg accepts both forms.
        dialect_class: Any = type(dialect)
        return cast("Dialect", dialect_class(paramstyle="format"))
    raise StorageError(f"the {dialect.name} driver has no positional parameter style")


class Database:
    """Shared by the metric and state stores of one backend."""

    def __init__(self, engine: Engine, *, label: str | None = None, serialize: bool = False):
        if engine.dialect.name not in SUPPORTED_DIALECTS:
            raise StorageError(
                f"the shared SQL storage supports {' and '.join(SUPPORTED_DIALECTS)}, "
                f"not {engine.dialect.name}"
            )
        install_transaction_control(engine)
        self.engine = engine
        self.dialect: str = engine.dialect.name
        self.label = label or engine.url.render_as_string(hide_password=True)
        # A single shared connection (SQLite ":memory:") must never see two
        # transactions at once.
        self._serial: threading.RLock | None = threading.RLock() if serialize else None
        # SQLite takes one writer at a time; threads of this process that wait for
        # the file lock sleep in SQLite's busy handler (1, 2, 5, ... 100 ms steps),
        # so they queue on a lock here instead and get the file lock at once.
        self._writers: threading.Lock | None = threading.Lock() if self.is_sqlite else None
        self.notices = Notices(enabled=self.is_postgres)
        """Changes other processes on the same database hear of at once."""
        self._shared = threading.local()
        """The connection of this thread's :meth:`read` with ``share`` while it is open."""

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def statement(self, stmt: ClauseElement) -> Statement:
        return Statement(stmt, self.engine.dialect)

    def bulk_insert(
        self,
        table: sa.Table,
        columns: Sequence[str],
        finish: Callable[[Any], Any],
    ) -> BulkInsert:
        return BulkInsert(self, table, columns, finish)

    def insert(self, table: sa.Table) -> sqlite.Insert | postgresql.Insert:
        """An INSERT that supports ``ON CONFLICT`` on this database."""
        return sqlite.insert(table) if self.is_sqlite else postgresql.insert(table)

    def _guard(self) -> AbstractContextManager[Any]:
        return self._serial if self._serial is not None else nullcontext()

    @contextmanager
    def read(self, *, share: bool = False) -> Iterator[Connection]:
        """A connection inside a read transaction: every statement sees one snapshot.

        On PostgreSQL that takes REPEATABLE READ (READ COMMITTED gives each
        statement its own snapshot, so a compaction committing between reading
        the chunks and reading the head could hide points). Read-only
        transactions never fail serialization there.

        With ``share``, every :meth:`read` this thread opens inside the block
        (through either store) runs on the same connection, in the same
        transaction, instead of checking out a connection and beginning one of
        its own: a request's ownership check and its read cost one transaction
        and see one snapshot. Writes inside the block still take their own
        connection, and the block's reads do not see them.
        """
        shared: Connection | None = getattr(self._shared, "conn", None)
        if shared is not None:
            yield shared
            return
        with self._guard(), self.errors(), self.engine.connect() as conn:
            if self.is_postgres:
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                if not share:
                    yield conn
                    return
                self._shared.conn = conn
                try:
                    yield conn
                finally:
                    self._shared.conn = None

    @contextmanager
    def write(
        self,
        lock: int | None = None,
        then: Callable[[Connection], None] | None = None,
        *,
        own_begin: bool = False,
    ) -> Iterator[Connection]:
        """A connection inside a write transaction, committed when the block ends.

        ``lock`` names an advisory lock held until commit (PostgreSQL; SQLite
        serializes writers anyway). ``then`` runs after the commit, on the same
        connection outside the transaction (not when the block raised).

        ``own_begin`` (PostgreSQL with psycopg 3): the driver is in autocommit and
        the block's first statement must be
        :func:`~lunasentri_core.storage.sql.pgwrite.begin_and_read`, which sends the
        ``BEGIN`` with that statement in one round trip; the commit or rollback at
        the end of the block ends that transaction as usual, and the pool restores
        the driver's mode when it gets the connection back.
        """
        writers = self._writers if self._writers is not None else nullcontext()
        with self._guard(), writers, self.errors(), self.engine.connect() as conn:
            conn.execution_options(**{WRITE_OPTION: True})
            if own_begin:
                if lock is not None or not self.is_postgres:
                    raise ValueError("own_begin is for PostgreSQL writes without a lock")
                conn.execution_options(isolation_level="AUTOCOMMIT")
            with conn.begin():
                if lock is not None and self.is_postgres:
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock)))
                yield conn
            if then is not None:
                then(conn)

    @contextmanager
    def driver_connection(self) -> Iterator[Any]:
        """SQLite: the driver's own connection, outside any transaction, holding this
        process's turn to write (for statements that must run outside a transaction,
        or step to completion: ``VACUUM``, ``PRAGMA incremental_vacuum``)."""
        writers = self._writers if self._writers is not None else nullcontext()
        with self._guard(), writers, self.errors():
            raw = self.engine.raw_connection()
            try:
                yield raw.driver_connection
            finally:
                raw.close()

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Turn driver errors (except integrity errors) into :class:`StorageError`."""
        try:
            yield
        except exc.IntegrityError:
            raise
        except exc.OperationalError as error:
            raise StorageUnavailable(describe_error(self.label, error)) from error
        except exc.DBAPIError as error:
            raise StorageError(describe_error(self.label, error)) from error
        except exc.TimeoutError as error:
            # Every pooled connection stayed busy for the pool's timeout: load,
            # not a fault, so callers may retry (the writer does).
            reason = str(error).split(" (Background", 1)[0]
            raise StorageUnavailable(f"{self.label}: no free connection: {reason}") from error
        except exc.SQLAlchemyError as error:
            raise StorageError(f"{self.label}: {error}") from error

    def dispose(self) -> None:
        self.engine.dispose()


def describe_error(label: str, error: exc.DBAPIError) -> str:
    """A one-line explanation of a driver error, naming the database."""
    original = str(error.orig).strip().splitlines()[0] if error.orig is not None else str(error)
    text = original.lower()
    if "database is locked" in text or "database table is locked" in text:
        return f"{label}: the database is locked by another writer; try again later"
    if "readonly database" in text or "read-only" in text:
        return f"{label} is read-only: LunaSentri needs to write to it ({original})"
    if "file is not a database" in text:
        return f"{label} is not a SQLite database file"
    if ("no such table" in text or "undefinedtable" in text or "does not exist" in text) and (
        "relation" in text or "table" in text
    ):
        return (
            f"{label} has no LunaSentri schema, or an older one: "
            f"run `lunasentri db migrate` ({original})"
        )
    if isinstance(error, exc.OperationalError) and (
        "connection" in text or "could not" in text or "timeout" in text
    ):
        return f"cannot reach {label}: {original}"
    return f"{label}: {original}"
