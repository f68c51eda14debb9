"""The engine layer: transactions, locks, bulk inserts and the messages of driver errors."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine

from lunasentri_core.errors import NotFoundError, StorageError
from lunasentri_core.model import Machine, MachineSamples, Reading, Sample, new_id
from lunasentri_core.storage.sql import Database, SqlStorage
from lunasentri_core.storage.sql.database import describe_error
from lunasentri_core.testing import BASE_TIME


def a_batch(machine: str, value: float = 1.0) -> list[MachineSamples]:
    return [MachineSamples(machine, [Sample(BASE_TIME, [Reading("proc.count", value)])])]


def test_only_sqlite_and_postgresql_are_supported() -> None:
    engine = sa.create_mock_engine("mysql://", lambda *a, **k: None)
    with pytest.raises(StorageError, match="supports sqlite and postgresql, not mysql"):
        Database(engine)  # type: ignore[arg-type]


def test_a_writer_waits_for_another_connections_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    storage = SqlStorage(sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 10}))
    storage.migrate()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, holder.execute, args=("COMMIT",))
    release.start()
    try:
        assert storage.metrics.write(a_batch(new_id())) == 1
    finally:
        release.join()
        holder.close()
        storage.close()


def test_a_lock_held_too_long_is_a_clear_error_and_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    storage = SqlStorage(sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1}))
    storage.migrate()
    machine = new_id()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StorageError, match="locked by another writer") as raised:
            storage.metrics.write(a_batch(machine))
        assert str(path) in str(raised.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert storage.metrics.latest([machine]) == []
    assert storage.metrics.write(a_batch(machine)) == 1
    storage.close()


def test_reads_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    storage = SqlStorage(sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1}))
    storage.migrate()
    machine = new_id()
    storage.metrics.write(a_batch(machine))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode = WAL")
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert [v.value for v in storage.metrics.latest([machine])] == [1.0]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        storage.close()


def test_a_serialized_single_connection_store_is_safe_across_threads() -> None:
    engine = sa.create_engine(
        "sqlite://", poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
    )
    storage = SqlStorage(engine, serialize=True)
    storage.migrate()
    machines = [new_id() for _ in range(4)]
    errors: list[BaseException] = []

    def work(machine: str) -> None:
        try:
            for i in range(30):
                storage.metrics.write(a_batch(machine, i))
                storage.metrics.latest(machines)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(m,)) for m in machines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, repr(errors[0])
    assert sorted(v.series.machine_id for v in storage.metrics.latest(machines)) == sorted(machines)
    storage.close()


def _begins(engine: Engine) -> list[int]:
    """A list whose length counts the transactions begun on ``engine`` from now on."""
    begun: list[int] = []
    event.listen(engine, "begin", lambda conn: begun.append(1))
    return begun


def test_a_snapshot_runs_both_stores_reads_in_one_transaction(engine: Engine) -> None:
    storage = SqlStorage(engine)
    storage.migrate()
    machine = storage.state.add_machine(Machine(new_id(), f"m-{new_id()}"))
    storage.metrics.write(a_batch(machine.id))
    begun = _begins(engine)
    with storage.snapshot():
        with storage.db.read() as outer, storage.db.read() as inner:
            assert inner is outer
        assert storage.state.get_machine(machine.id) == machine
        assert [v.value for v in storage.metrics.latest([machine.id])] == [1.0]
    assert len(begun) == 1
    # Outside the block each read has its own transaction again.
    storage.state.get_machine(machine.id)
    storage.metrics.latest([machine.id])
    assert len(begun) == 3
    storage.close()


def test_a_snapshot_is_one_threads_and_sees_one_moment(engine: Engine) -> None:
    if engine.dialect.name == "sqlite":
        # As the SQLite plugin opens it: a writer does not wait for readers.
        with sqlite3.connect(str(engine.url.database)) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
    storage = SqlStorage(engine)
    storage.migrate()
    first = storage.state.add_machine(Machine(new_id(), f"m-{new_id()}"))
    added: list[Machine] = []
    with storage.snapshot():
        storage.state.get_machine(first.id)  # the snapshot is taken by its first read
        # Another thread reads (and writes) outside it, in transactions of its own.
        thread = threading.Thread(
            target=lambda: added.append(
                storage.state.add_machine(Machine(new_id(), f"m-{new_id()}"))
            )
        )
        thread.start()
        thread.join(30)
        (second,) = added
        with pytest.raises(NotFoundError):
            storage.state.get_machine(second.id)
    assert storage.state.get_machine(second.id) == second
    storage.close()


def test_a_failed_read_in_a_snapshot_ends_it(engine: Engine) -> None:
    storage = SqlStorage(engine)
    storage.migrate()
    machine = storage.state.add_machine(Machine(new_id(), f"m-{new_id()}", owner_id=None))
    begun = _begins(engine)
    with pytest.raises(NotFoundError), storage.snapshot():
        storage.state.get_machine(machine.id, owner_id=new_id())  # not this owner's
    with storage.db.read() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    assert len(begun) == 2  # the failed snapshot's connection is not reused
    assert storage.state.get_machine(machine.id) == machine
    storage.close()


def test_installing_transaction_control_twice_is_harmless(sqlite_engine: Engine) -> None:
    first, second = SqlStorage(sqlite_engine), SqlStorage(sqlite_engine)
    first.migrate()
    second.metrics.write(a_batch("m"))
    assert len(first.metrics.latest(["m"])) == 1


def test_bulk_insert_keeps_the_column_order(engine: Engine) -> None:
    table = sa.Table(
        "bulk_probe",
        sa.MetaData(),
        sa.Column("a", sa.Integer, primary_key=True),
        sa.Column("b", sa.Text),
        sa.Column("c", sa.Float),
    )
    table.create(engine)
    db = Database(engine)
    bulk = db.bulk_insert(table, ("a", "b", "c"), lambda ins: ins.on_conflict_do_nothing())
    count = 2 * bulk.ROWS_PER_STATEMENT + 7
    columns = (list(range(count)), [f"n{i}" for i in range(count)], [i / 2 for i in range(count)])
    with db.write() as conn:
        bulk.run(conn, columns)
        bulk.run(conn, ([0, count], ["again", "new"], [9.0, 9.0]))  # a conflict is skipped
        bulk.run(conn, ([], [], []))
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table).order_by(table.c.a)).all()
    assert len(rows) == count + 1
    assert tuple(rows[5]) == (5, "n5", 2.5)
    assert tuple(rows[0]) == (0, "n0", 0.0)
    assert tuple(rows[-1]) == (count, "new", 9.0)
    table.drop(engine)


def test_bulk_insert_on_sqlite_takes_few_statements_whatever_the_row_count(
    sqlite_engine: Engine,
) -> None:
    # Each statement lets go of the GIL once, and a writer thread waits to get it
    # back: rows go in power-of-two statements, never one statement per row.
    table = sa.Table(
        "bulk_count",
        sa.MetaData(),
        sa.Column("a", sa.Integer, primary_key=True),
        sa.Column("b", sa.Float),
    )
    table.create(sqlite_engine)
    db = Database(sqlite_engine)
    bulk = db.bulk_insert(table, ("a", "b"), lambda ins: ins.on_conflict_do_nothing())
    per = bulk.ROWS_PER_STATEMENT
    statements: list[int] = []

    def count(conn: object, cursor: object, sql: str, params: object, *_: object) -> None:
        if sql.startswith("INSERT INTO bulk_count"):
            statements.append(sql.count("?") // 2)

    sa.event.listen(sqlite_engine, "before_cursor_execute", count)
    rows = 2 * per + 300 + 7  # 300 + 7 = 256 + 32 + 16 + 2 + 1
    with db.write() as conn:
        bulk.run(conn, (list(range(rows)), [float(i) for i in range(rows)]))
    sa.event.remove(sqlite_engine, "before_cursor_execute", count)
    assert statements == [per, per, 256, 32, 16, 2, 1]
    with sqlite_engine.connect() as conn:
        stored = conn.execute(sa.select(table.c.a, table.c.b).order_by(table.c.a)).all()
    assert [tuple(row) for row in stored] == [(i, float(i)) for i in range(rows)]


@pytest.mark.parametrize(
    ("driver_message", "error_class", "expected"),
    [
        ("database is locked", exc.OperationalError, "locked by another writer"),
        ("attempt to write a readonly database", exc.OperationalError, "is read-only"),
        ("file is not a database", exc.DatabaseError, "is not a SQLite database"),
        ("no such table: series", exc.OperationalError, "run `lunasentri db migrate`"),
        ('relation "series" does not exist', exc.ProgrammingError, "run `lunasentri db migrate`"),
        (
            "connection failed: Connection refused\nIs the server running?",
            exc.OperationalError,
            "cannot reach db: connection failed: Connection refused",
        ),
        ("disk I/O error", exc.OperationalError, "db: disk I/O error"),
    ],
)
def test_driver_errors_become_one_line_messages(
    driver_message: str, error_class: type[exc.DBAPIError], expected: str
) -> None:
    error = error_class("SELECT 1", {}, Exception(driver_message))
    message = describe_error("db", error)
    assert expected in message
    assert "\n" not in message
