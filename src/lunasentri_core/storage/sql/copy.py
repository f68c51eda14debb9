"""Copy a whole deployment from one database of the shared SQL store to another.

``lunasentri db copy SOURCE_URL TARGET_URL`` uses it to move a SQLite
deployment to PostgreSQL (any pair of supported databases works). Every table
of :mod:`~lunasentri_core.storage.sql.schema` is copied row for row, ids
included: API keys and sessions keep their hashes, a credential profile's
sealed secret stays bound to its profile's id, and series keep theirs.

* Both ends must be at the schema revision this LunaSentri knows: the target
  is migrated to it first, a source at another revision is refused.
* The target must hold no data; nothing is overwritten or merged.
* All of it is written in **one transaction** on the target: a copy that
  fails half-way (a full disk, a lost connection, an interrupt) leaves the
  target as empty as it found it, so the same command can simply run again.
  Both databases handle one large transaction well (PostgreSQL's MVCC keeps
  no undo log; SQLite writes it to the WAL), and per-table transactions
  would gain nothing but a half-copied target to clean up.
* The source is read in one snapshot (PostgreSQL: REPEATABLE READ), so the
  rows of every table agree with each other; rows are streamed and written
  in batches (``COPY`` on PostgreSQL, ``executemany`` on SQLite), as the
  values the databases store, so memory stays bounded whatever the size of
  the history.
* The counters of serial columns (``series.id``, ``audit_log.seq``, the
  outbox's ``seq``, ...: PostgreSQL sequences, SQLite's ``sqlite_sequence``)
  are set past the copied values and the source's own counters, so new rows
  do not collide and ids of deleted series are not handed out again.
* Afterwards every table is counted on both ends; :class:`CopyReport` says
  whether the counts agree.
* The latest values have a form per kind of database (:mod:`.latest`): they
  are copied as ``series_latest``, a row per series (on PostgreSQL read from
  both tables, and gathered into ``latest_values`` once written), and counted
  as such; ``latest_values`` is not copied as a table of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import URL, Connection, Engine, make_url

from lunasentri_core.errors import StorageError
from lunasentri_core.storage.sql import latest
from lunasentri_core.storage.sql.backend import SqlStorage, head_revision
from lunasentri_core.storage.sql.database import Statement
from lunasentri_core.storage.sql.schema import (
    latest_values,
    metadata,
    series_latest,
    storage_meta,
)

BATCH_ROWS: Final = 2_000
"""Rows read and inserted at a time: bounds memory (metric chunks are a few KiB each)."""

PROGRESS_ROWS: Final = 100_000
"""A large table reports progress every this many rows."""

BOOKKEEPING_TABLES: Final = frozenset({storage_meta.name})
"""Tables a fresh migration fills itself; the source's rows replace them."""


@attrs.frozen
class TableCount:
    """One table's rows on both ends after a copy."""

    table: str
    source: int
    target: int

    @property
    def ok(self) -> bool:
        return self.source == self.target


@attrs.frozen
class CopyReport:
    """What :func:`copy_database` did: every table's counts, in copy order."""

    tables: tuple[TableCount, ...]

    @property
    def mismatches(self) -> tuple[TableCount, ...]:
        return tuple(t for t in self.tables if not t.ok)

    @property
    def ok(self) -> bool:
        return not self.mismatches


@attrs.frozen
class Progress:
    """A table started (``done=0``), advanced, or finished (``finished=True``)."""

    table: str
    done: int
    total: int
    finished: bool = False


ProgressCallback = Callable[[Progress], None]


def redact(url: str | URL) -> str:
    """The URL as it may be shown: the password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        return "<unparsable URL>"


def open_engine(url: str, *, must_exist: bool = False) -> Engine:
    """An engine on a ``sqlite:`` or ``postgresql:`` URL, for the shared SQL store.

    ``postgresql://`` means psycopg 3 (``postgresql+psycopg://``). A SQLite
    file that ``must_exist`` (a copy's source) is refused when it does not,
    rather than silently created empty.
    """
    try:
        parsed = make_url(url)
    except exc.ArgumentError as error:
        raise StorageError(f"{redact(url)} is not a database URL ({error})") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.get_driver_name() in ("", "psycopg2"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        return sa.create_engine(parsed)
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise StorageError(f"{redact(url)}: an in-memory SQLite database cannot be copied")
        path = Path(database).expanduser()
        if must_exist and not path.is_file():
            raise StorageError(f"{path} does not exist (check the source URL)")
        if not path.parent.is_dir():
            raise StorageError(f"directory {path.parent} does not exist")
        return sa.create_engine(parsed)
    raise StorageError(f"{redact(url)}: copy supports sqlite: and postgresql: URLs, not {backend}:")


def copy_database(
    source: Engine,
    target: Engine,
    *,
    progress: ProgressCallback | None = None,
    batch_rows: int = BATCH_ROWS,
) -> CopyReport:
    """Copy every table of ``source`` into the empty ``target``; see the module's doc.

    The engines stay open (the caller disposes of them).

    :raises StorageError: the source is not at the current schema revision, the
        target holds data, or a database fails; the target is then unchanged
        (apart from its migration).
    """
    report = progress or (lambda _: None)
    if _same_database(source.url, target.url):
        raise StorageError(f"source and target are the same database: {redact(source.url)}")
    source_store = SqlStorage(source, label=redact(source.url))
    target_store = SqlStorage(target, label=redact(target.url))
    check_source_revision(source_store)
    # Checked before migrating too: a target with data is not touched at all.
    with target_store.db.errors():
        check_target_empty(target, target_store.db.label)
    target_store.migrate()
    with source_store.db.read() as reader, target_store.db.write() as writer:
        check_target_empty(writer, target_store.db.label)
        counts = [_copy_table(table, reader, writer, report, batch_rows) for table in _tables()]
        reset_sequences(reader, writer)
    with target_store.db.read() as conn:
        return CopyReport(
            tuple(
                TableCount(table.name, source_count, _count(conn, table))
                for table, source_count in zip(_tables(), counts, strict=True)
            )
        )


def _same_database(a: URL, b: URL) -> bool:
    if a.get_backend_name() == "sqlite" and b.get_backend_name() == "sqlite":
        return (
            bool(a.database)
            and Path(a.database or "").resolve() == Path(b.database or "").resolve()
        )
    return a.render_as_string(hide_password=False) == b.render_as_string(hide_password=False)


def _tables() -> Sequence[sa.Table]:
    """Every table copied, parents before children (foreign keys hold after each
    insert): all but ``latest_values``, copied as ``series_latest``."""
    return [table for table in metadata.sorted_tables if table is not latest_values]


def check_source_revision(store: SqlStorage) -> None:
    """Refuse a source at another schema revision than this LunaSentri's."""
    expected = head_revision()
    current = store.schema_revision()
    if current == expected:
        return
    if current is None:
        raise StorageError(
            f"source {store.db.label} has no LunaSentri schema (is it the right database?)"
        )
    raise StorageError(
        f"source {store.db.label} is at schema revision {current}, this LunaSentri "
        f"expects {expected}: run `lunasentri db migrate` on the source with this "
        "version first (or copy with the LunaSentri that wrote it)"
    )


def check_target_empty(target: Engine | Connection, label: str) -> None:
    """Refuse a target where any of the store's tables already has a row."""
    present = set(sa.inspect(target).get_table_names())
    for table in metadata.sorted_tables:
        if table.name in BOOKKEEPING_TABLES or table.name not in present:
            continue
        with _connection(target) as conn:
            has_rows = conn.execute(sa.select(sa.literal(1)).select_from(table).limit(1)).first()
        if has_rows is not None:
            raise StorageError(
                f"target {label} is not empty (table {table.name} has rows): copy only "
                "into a new database; to start over, drop and recreate it (PostgreSQL) "
                "or delete the file (SQLite)"
            )


@contextmanager
def _connection(bind: Engine | Connection) -> Iterator[Connection]:
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.connect() as conn:
        yield conn


def _copy_table(
    table: sa.Table,
    reader: Connection,
    writer: Connection,
    report: ProgressCallback,
    batch_rows: int,
) -> int:
    """Copy one table's rows; returns how many the source had."""
    total = _count(reader, table)
    report(Progress(table.name, 0, total))
    if table.name in BOOKKEEPING_TABLES:
        writer.execute(table.delete())
    plain = _plain_twin(table)
    # Primary-key order: deterministic, and the order of serial columns.
    order = [plain.c[c.name] for c in table.primary_key.columns]
    select = sa.select(plain).order_by(*order)
    if table is series_latest:
        select = latest.series_rows(reader.dialect.name == "postgresql").order_by("series_id")
    select = select.execution_options(yield_per=batch_rows)
    done, next_report = 0, PROGRESS_ROWS
    with _row_sink(plain, writer) as sink:
        for rows in reader.execute(select).partitions():
            sink(rows)
            done += len(rows)
            if done >= next_report:
                report(Progress(table.name, done, total))
                next_report += PROGRESS_ROWS
    if done != total:
        # The snapshot should make this impossible: refuse to commit a partial copy.
        raise StorageError(f"{table.name}: counted {total} rows in the source but read {done}")
    if table is series_latest:
        latest.gather(writer)
    report(Progress(table.name, done, total, finished=True))
    return total


def _plain_twin(table: sa.Table) -> sa.Table:
    """``table`` with each column typed as what the database stores (no constraints).

    Rows then travel as stored values: a timestamp stays its integer of
    microseconds instead of becoming a datetime and back, which is both exact
    by construction and cheaper.
    """
    columns = []
    for column in table.columns:
        kind = column.type
        if isinstance(kind, sa.types.TypeDecorator):
            kind = kind.impl_instance
        columns.append(sa.Column(column.name, kind))
    return sa.Table(table.name, sa.MetaData(), *columns)


Sink = Callable[[Sequence[sa.Row[Any]]], None]


@contextmanager
def _row_sink(plain: sa.Table, writer: Connection) -> Iterator[Sink]:
    """Where a table's batches of rows go: one ``COPY`` on PostgreSQL, INSERTs elsewhere."""
    if writer.dialect.name == "postgresql" and writer.dialect.driver == "psycopg":
        with _postgres_copy(plain, writer) as sink:
            yield sink
        return
    # The rows hold stored values already: straight to the driver's executemany.
    names = [c.name for c in plain.columns]
    insert = Statement(plain.insert().values({n: sa.bindparam(n) for n in names}), writer.dialect)
    if insert.names != tuple(names):
        raise StorageError(f"unexpected parameter order compiling {insert.sql}")

    def execute(rows: Sequence[sa.Row[Any]]) -> None:
        insert.many(writer, [tuple(row) for row in rows])

    yield execute


@contextmanager
def _postgres_copy(plain: sa.Table, writer: Connection) -> Iterator[Sink]:
    """Stream rows into ``COPY ... FROM STDIN`` in the writer's transaction.

    COPY takes rows several times faster than batched INSERTs; psycopg adapts
    each Python value (bytes to bytea, bool, int, float, text) itself.
    """
    import psycopg  # the driver of postgresql+psycopg engines

    quote = writer.dialect.identifier_preparer
    names = ", ".join(quote.quote(c.name) for c in plain.columns)
    sql = f"COPY {quote.format_table(plain)} ({names}) FROM STDIN"
    driver = writer.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    try:
        with driver.cursor() as cursor, cursor.copy(sql) as copy:

            def write(rows: Sequence[sa.Row[Any]]) -> None:
                for row in rows:
                    copy.write_row(tuple(row))

            yield write
    except psycopg.Error as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise StorageError(f"copying {plain.name}: {first}") from error


def _count(conn: Connection, table: sa.Table) -> int:
    if table is series_latest:
        return latest.count(conn)
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _serial_columns() -> Iterator[sa.Column[Any]]:
    """Integer primary keys the database assigns (``series.id``, every ``seq``, ...)."""
    for table in _tables():
        for column in table.primary_key.columns:
            if column is table.autoincrement_column:
                yield column


def reset_sequences(source: Connection, target: Connection) -> None:
    """Move the target's counters of serial columns past every value already used.

    Past the largest copied value, and past the source's own counter where it
    has one: ids of deleted series are never handed out again (another process
    may still hold one in its cache).

    * PostgreSQL: each serial column's sequence (``setval``).
    * SQLite: ``sqlite_sequence`` of the ``AUTOINCREMENT`` tables (``series``);
      the other integer keys follow the largest value present by themselves.
    """
    if target.dialect.name == "postgresql":
        _reset_postgres_sequences(source, target)
    else:
        _reset_sqlite_sequences(source, target)


def _reset_postgres_sequences(source: Connection, target: Connection) -> None:
    for column in _serial_columns():
        table = column.table.name
        sequence = target.execute(
            sa.select(sa.func.pg_get_serial_sequence(table, column.name))
        ).scalar_one_or_none()
        if sequence is None:
            continue
        used = target.execute(sa.select(sa.func.max(column))).scalar_one_or_none() or 0
        last = max(int(used), _source_counter(source, table, column.name))
        if last > 0:
            target.execute(sa.select(sa.func.setval(sequence, last, True)))


def _reset_sqlite_sequences(source: Connection, target: Connection) -> None:
    for column in _serial_columns():
        table = column.table
        if not table.dialect_options["sqlite"].get("autoincrement"):
            continue
        counter = _source_counter(source, table.name, column.name)
        current = _sqlite_counter(target, table.name)
        if counter <= current:
            continue
        params = {"name": table.name, "seq": counter}
        if target.execute(
            sa.text("UPDATE sqlite_sequence SET seq = :seq WHERE name = :name"), params
        ).rowcount:
            continue
        target.execute(
            sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:name, :seq)"), params
        )


def _sqlite_counter(conn: Connection, table: str) -> int:
    try:
        value = conn.execute(
            sa.text("SELECT seq FROM sqlite_sequence WHERE name = :name"), {"name": table}
        ).scalar_one_or_none()
    except exc.OperationalError:  # no AUTOINCREMENT table yet: no sqlite_sequence
        return 0
    return int(value or 0)


def _source_counter(source: Connection, table: str, column: str) -> int:
    """The last value the source handed out for ``table.column`` (0 when it keeps none)."""
    if source.dialect.name == "sqlite":
        return _sqlite_counter(source, table)
    sequence = source.execute(
        sa.select(sa.func.pg_get_serial_sequence(table, column))
    ).scalar_one_or_none()
    if sequence is None:
        return 0
    value = source.execute(sa.text(f"SELECT last_value, is_called FROM {sequence}")).first()
    return int(value[0]) if value is not None and value[1] else 0
