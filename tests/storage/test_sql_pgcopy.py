"""Head rows through ``COPY ... FROM STDIN (FORMAT BINARY)`` on PostgreSQL.

Batches of at least ``COPY_MIN_ROWS`` samples go through ``COPY`` on the
write's own connection; smaller ones keep the ``INSERT``. Which one ran shows
in the statements SQLAlchemy sends: ``COPY`` goes to the driver directly, so a
copied batch sends no ``INSERT INTO samples_head``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from lunasentri_core.errors import StorageError, StorageUnavailable
from lunasentri_core.model import (
    Aggregation,
    HistoryQuery,
    MachineSamples,
    Reading,
    Sample,
    new_id,
)
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.storage.sql.pgcopy import COPY_MIN_ROWS, CopyInsert, can_copy
from lunasentri_core.storage.sql.schema import (
    machine_series,
    samples_head,
    series,
    series_latest,
)

pytestmark = pytest.mark.postgres

T0 = datetime(2025, 3, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)
EDGES = (
    -0.0,
    0.0,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1e-300,
    0.1,
    -123456789.123456789,
)
"""Values whose every bit must survive: signed zeros, the largest and the subnormals."""


def bits(value: float) -> bytes:
    return struct.pack("<d", value)


def edge_batch(machines: list[str], samples: int, width: int) -> list[MachineSamples]:
    """``samples`` samples a machine, ``width`` series each, cycling through the edge values."""
    batch = []
    for m, machine in enumerate(machines):
        rows = []
        for s in range(samples):
            readings = [
                Reading("edge", EDGES[(m + s + i) % len(EDGES)], {"n": str(i)})
                for i in range(width)
            ]
            rows.append(Sample(T0 + s * SECOND, readings))
        batch.append(MachineSamples(machine, rows))
    return batch


@pytest.fixture
def storage(postgres_engine: Engine) -> Iterator[SqlStorage]:
    store = SqlStorage(postgres_engine)
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def head_inserts(postgres_engine: Engine) -> Iterator[list[str]]:
    """The INSERT statements into ``samples_head`` that SQLAlchemy sends."""
    sent: list[str] = []

    def record(*args: Any) -> None:
        statement = str(args[2])
        if statement.lstrip().upper().startswith("INSERT INTO SAMPLES_HEAD"):
            sent.append(statement)

    event.listen(postgres_engine, "before_cursor_execute", record)
    yield sent
    event.remove(postgres_engine, "before_cursor_execute", record)


def count(storage: SqlStorage, table: sa.Table) -> int:
    with storage.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def assert_reads_back(storage: SqlStorage, batch: list[MachineSamples]) -> None:
    """Every point of ``batch`` comes back bit for bit, in history and in latest."""
    for ms in batch:
        last = ms.samples[-1].timestamp
        query = HistoryQuery(ms.machine_id, "edge", T0, last + SECOND, SECOND, Aggregation.LAST)
        found = {h.series: h.points for h in storage.metrics.history(query)}
        width = len(ms.samples[0].readings)
        assert len(found) == width
        for sample in ms.samples:
            for reading in sample.readings:
                key = next(k for k in found if k.labels == reading.labels)
                point = next(p for p in found[key] if p.timestamp == sample.timestamp)
                assert bits(point.value) == bits(reading.value), (key, sample.timestamp)
        latest = storage.metrics.latest([ms.machine_id], "edge")
        assert {(v.series.labels, bits(v.value), v.timestamp) for v in latest} == {
            (r.labels, bits(r.value), last) for r in ms.samples[-1].readings
        }


def test_copy_is_for_psycopg_3_on_postgresql_only(postgres_engine: Engine) -> None:
    assert can_copy(postgres_engine.dialect)
    assert not can_copy(sa.create_engine("sqlite://").dialect)
    copy = CopyInsert(postgres_engine.dialect, samples_head, ("ts",), ("int8",))
    assert copy.sql == "COPY samples_head (ts) FROM STDIN (FORMAT BINARY)"
    assert not copy.wanted(COPY_MIN_ROWS - 1)
    assert copy.wanted(COPY_MIN_ROWS)
    with pytest.raises(ValueError, match="one type per column"):
        CopyInsert(postgres_engine.dialect, samples_head, ("ts", "machine_id"), ("int8",))


def test_a_large_batch_is_copied_and_reads_back_bit_for_bit(
    storage: SqlStorage, head_inserts: list[str]
) -> None:
    machines = [new_id() for _ in range(4)]
    # Many series: 4 machines x 300, each sample a row of 2 x 2,400 bytes.
    batch = edge_batch(machines, samples=COPY_MIN_ROWS, width=300)

    assert storage.metrics.write(batch) == 4 * COPY_MIN_ROWS * 300

    assert head_inserts == [], "the batch went through COPY"
    assert count(storage, samples_head) == 4 * COPY_MIN_ROWS
    assert count(storage, series) == 4 * 300
    assert_reads_back(storage, batch)


def test_a_small_batch_keeps_the_insert_and_reads_back_the_same(
    storage: SqlStorage, head_inserts: list[str]
) -> None:
    batch = edge_batch([new_id()], samples=COPY_MIN_ROWS - 1, width=len(EDGES))

    storage.metrics.write(batch)

    assert len(head_inserts) == 1
    assert_reads_back(storage, batch)


def test_copied_and_inserted_batches_of_one_machine_read_back_together(
    storage: SqlStorage, head_inserts: list[str]
) -> None:
    machine = new_id()
    whole = edge_batch([machine], samples=COPY_MIN_ROWS + 2, width=len(EDGES))[0].samples
    storage.metrics.write([MachineSamples(machine, whole[:2])])
    storage.metrics.write([MachineSamples(machine, whole[2:])])

    assert len(head_inserts) == 1, "the first batch only"
    assert_reads_back(storage, [MachineSamples(machine, whole)])


@pytest.fixture
def failing_row(postgres_engine: Engine) -> Iterator[int]:
    """A trigger that fails the head row with this timestamp (ms), mid-``COPY``."""
    bad_ts = int((T0 + 10 * SECOND).timestamp() * 1000)
    with postgres_engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION i14_fail_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'refused row at %', NEW.ts; END $$"
            )
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER i14_fail_row BEFORE INSERT ON samples_head FOR EACH ROW "
            f"WHEN (NEW.ts = {bad_ts}) EXECUTE FUNCTION i14_fail_row()"
        )
    try:
        yield bad_ts
    finally:
        with postgres_engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS i14_fail_row ON samples_head")
            conn.exec_driver_sql("DROP FUNCTION IF EXISTS i14_fail_row()")


def test_an_error_mid_copy_rolls_back_the_whole_batch(
    storage: SqlStorage, head_inserts: list[str], failing_row: int
) -> None:
    machines = [new_id() for _ in range(3)]
    # Each machine's 11th sample fails: the first machine's rows before it are
    # already sent when the server refuses it.
    batch = edge_batch(machines, samples=max(COPY_MIN_ROWS, 20), width=50)

    with pytest.raises(StorageError, match=f"refused row at {failing_row}"):
        storage.metrics.write(batch, seen=[(machines[0], T0)])

    assert head_inserts == []
    for table in (samples_head, series, series_latest, machine_series):
        assert count(storage, table) == 0, f"{table.name} keeps nothing of the batch"

    # Nothing of the failed batch stays cached either (its series ids died with it).
    good = [
        MachineSamples(ms.machine_id, [s for s in ms.samples if s.timestamp != T0 + 10 * SECOND])
        for ms in batch
    ]
    with storage.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER i14_fail_row ON samples_head")
    storage.metrics.write(good)
    assert count(storage, samples_head) == sum(len(ms.samples) for ms in good)
    assert_reads_back(storage, good)


def test_a_connection_lost_at_copy_is_storage_unavailable_and_the_pool_recovers(
    storage: SqlStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = edge_batch([new_id()], samples=COPY_MIN_ROWS, width=20)
    copy_head = storage.metrics._sql.copy_head
    assert copy_head is not None
    run = copy_head.run

    def terminated_first(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        # The write's own session, ended from outside just before its COPY.
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with storage.engine.begin() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        run(conn, rows)

    monkeypatch.setattr(copy_head, "run", terminated_first)
    with pytest.raises(StorageUnavailable):
        storage.metrics.write(batch)
    monkeypatch.undo()

    assert count(storage, samples_head) == 0
    storage.metrics.write(batch)
    assert_reads_back(storage, batch)
