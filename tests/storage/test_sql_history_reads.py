"""A history read's statements: the machine check, the series and the horizons in one.

Each statement is a round trip to PostgreSQL; a one-series read over HTTP made
a separate one for the ownership check and for the retention horizons. These
tests pin what the read does instead, and that it stays right when another
process's maintenance moves a horizon.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sql_support import OpenStorage, round_trips

from lunasentri_core.errors import NotFoundError
from lunasentri_core.model import (
    HistoryQuery,
    MachineSamples,
    Reading,
    Resolution,
    RetentionPolicy,
    Sample,
)
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.testing import make_machine, make_user

T0 = datetime(2025, 3, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def write(storage: SqlStorage, machine_id: str, start: datetime, count: int) -> None:
    storage.metrics.write(
        [
            MachineSamples(
                machine_id,
                [
                    Sample(start + i * 10 * SECOND, [Reading("cpu.percent", float(i))])
                    for i in range(count)
                ],
            )
        ]
    )


def cpu(machine_id: str, start: datetime, end: datetime, step: timedelta) -> HistoryQuery:
    return HistoryQuery(machine_id, "cpu.percent", start, end, step)


@contextmanager
def statements(storage: SqlStorage) -> Iterator[list[str]]:
    """The SQL of every statement run on ``storage``'s engine inside the block."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(" ".join(str(args[2]).split()))

    sa.event.listen(storage.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(storage.engine, "before_cursor_execute", record)


def read(
    storage: SqlStorage,
    query: HistoryQuery,
    *,
    check: bool,
    owner_id: str | None = None,
    last: bool = False,
) -> list[float]:
    with storage.metrics.history_reader(check=check, owner_id=owner_id, last=last) as one:
        return [value for found in one(query) for value in found.values]


def is_postgres(storage: SqlStorage) -> bool:
    return storage.engine.dialect.name == "postgresql"


def test_the_reader_checks_the_machine_as_check_machine_does(storage: SqlStorage) -> None:
    state = storage.state
    alice, bob = state.add_user(make_user(), "h"), state.add_user(make_user(), "h")
    alices = state.add_machine(make_machine(owner_id=alice.id))
    unowned = state.add_machine(make_machine())
    write(storage, alices.id, T0, 12)
    query = cpu(alices.id, T0, T0 + 2 * MINUTE, MINUTE)
    assert read(storage, query, check=True, owner_id=alice.id) == [2.5, 8.5]
    assert read(storage, query, check=True) == [2.5, 8.5]  # an administrator's scope
    for machine_id, owner_id in [
        (alices.id, bob.id),  # another user's machine
        (unowned.id, alice.id),  # nobody's is not hers either
        ("ghost", None),
        ("ghost", alice.id),
    ]:
        for last in (False, True):
            asked = cpu(machine_id, T0, T0 + 2 * MINUTE, MINUTE)
            with pytest.raises(NotFoundError, match="not found"):
                read(storage, asked, check=True, owner_id=owner_id, last=last)
    # The refused reads ended their transactions: the pooled connections read on.
    assert read(storage, query, check=True, owner_id=alice.id, last=True) == [2.5, 8.5]
    # A visible machine without such series: nothing, no error.
    assert read(storage, cpu(unowned.id, T0, T0 + MINUTE, MINUTE), check=True) == []
    # Unchecked (the metric store on its own): series without a machine row still read.
    write(storage, "no-such-row", T0, 12)
    assert read(storage, cpu("no-such-row", T0, T0 + 2 * MINUTE, MINUTE), check=False) == [
        2.5,
        8.5,
    ]
    assert read(storage, cpu("ghost", T0, T0 + MINUTE, MINUTE), check=False) == []


def test_the_check_and_the_horizons_come_with_the_series(storage: SqlStorage) -> None:
    state = storage.state
    alice = state.add_user(make_user(), "h")
    machine = state.add_machine(make_machine(owner_id=alice.id))
    write(storage, machine.id, T0, 360)  # an hour
    storage.metrics.maintain(T0 + 2 * HOUR)
    write(storage, machine.id, T0 + HOUR, 30)  # and some in the head
    query = cpu(machine.id, T0, T0 + 2 * HOUR, MINUTE)
    if is_postgres(storage):
        with round_trips(storage.engine) as trips:
            values = read(storage, query, check=True, owner_id=alice.id)
        assert len(values) == 65
        # BEGIN with the series, then the head and the chunks; the COMMIT alone
        # (a minute read may read raw blobs after its blocks).
        assert [len(trip) for trip in trips] == [2, 1, 1], trips
        assert trips[0][0].startswith("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert "machines" in trips[0][1]
        assert "storage_meta" in trips[0][1]
        assert "samples_head" in trips[1][0]
        assert "metric_chunks" in trips[1][0]
        assert trips[2] == ["COMMIT"]
        return
    with statements(storage) as seen:
        values = read(storage, query, check=True, owner_id=alice.id)
    assert len(values) == 65
    # One statement reads the machine's row, the series and the horizons; one the
    # head and the chunks (SQLite's BEGIN is a statement too).
    queries = [sql for sql in seen if sql.upper() != "BEGIN"]
    assert len([sql for sql in queries if "machines" in sql or "storage_meta" in sql]) == 1
    assert len([sql for sql in queries if "samples_head" in sql]) == 1
    assert len(queries) == 2, queries


def test_a_last_raw_read_commits_with_its_last_statement(storage: SqlStorage) -> None:
    """``last``: a read from raw points is two round trips on PostgreSQL, the
    ``BEGIN`` with the series, the ``COMMIT`` with the head and the chunks; the
    answer is the one of a read that commits on its own."""
    state = storage.state
    alice = state.add_user(make_user(), "h")
    machine = state.add_machine(make_machine(owner_id=alice.id))
    write(storage, machine.id, T0, 720)  # two hours
    storage.metrics.maintain(T0 + 3 * HOUR)
    write(storage, machine.id, T0 + 2 * HOUR, 30)  # and some in the head
    query = cpu(machine.id, T0 + 7 * SECOND, T0 + 3 * HOUR, 13 * MINUTE)  # unaligned: raw
    expected = read(storage, query, check=True, owner_id=alice.id)
    assert len(expected) == 10  # two hours and five minutes of points, 13-minute steps
    if is_postgres(storage):
        with round_trips(storage.engine) as trips:
            assert read(storage, query, check=True, owner_id=alice.id, last=True) == expected
        assert [len(trip) for trip in trips] == [2, 2], trips
        assert trips[0][0].startswith("BEGIN")
        assert "samples_head" in trips[1][0]
        assert trips[1][1] == "COMMIT"
    assert read(storage, query, check=True, owner_id=alice.id, last=True) == expected
    assert storage.metrics.history_columns(query)[0].values.tolist() == expected
    # The read has ended with its one query: another would see another snapshot.
    with storage.metrics.history_reader(check=True, last=True) as one:
        one(query)
        if is_postgres(storage):
            with pytest.raises(RuntimeError, match="one query"):
                one(query)


def test_a_horizon_moved_by_another_process_is_seen_at_once(open_storage: OpenStorage) -> None:
    """Process B reads, process A's maintenance expires the raw points B read, and
    B's next read answers from the minute rollups: no point goes missing because
    B went on with the horizons it had seen."""
    retention = RetentionPolicy(raw=DAY, minute=7 * DAY, hour=None)
    a, b = open_storage(retention), open_storage(retention)
    machine = a.state.add_machine(make_machine())
    write(a, machine.id, T0, 360)
    a.metrics.maintain(T0 + 2 * HOUR)
    # Unaligned: raw points answer while they are kept, minute buckets after.
    query = cpu(machine.id, T0 + 13 * SECOND, T0 + HOUR, 7 * MINUTE)
    with b.metrics.history_reader(check=True) as one:
        (before,) = one(query)
    assert before.resolution is Resolution.RAW
    assert len(before.values) == 9
    report = a.metrics.maintain(T0 + 3 * DAY)
    assert report.expired_rows == 1, "the raw blob of the chunk b read"
    with b.metrics.history_reader(check=True) as one:
        (after,) = one(query)
    assert after.resolution is Resolution.MINUTE
    assert len(after.values) == 9
    assert list(after.timestamps) == list(before.timestamps)


def test_a_last_read_inside_a_snapshot_leaves_its_transaction_open(storage: SqlStorage) -> None:
    """Inside ``snapshot()`` the read shares the block's transaction: ``last``
    must not commit it (later reads of the block would see another snapshot)."""
    machine = storage.state.add_machine(make_machine())
    write(storage, machine.id, T0, 720)
    storage.metrics.maintain(T0 + 3 * HOUR)
    query = cpu(machine.id, T0 + 7 * SECOND, T0 + 2 * HOUR, 13 * MINUTE)  # raw
    expected = storage.metrics.history_columns(query)[0].values.tolist()
    if not is_postgres(storage):
        with storage.snapshot():
            assert storage.metrics.history_columns(query)[0].values.tolist() == expected
        return
    with round_trips(storage.engine) as trips, storage.snapshot():
        assert storage.metrics.history_columns(query)[0].values.tolist() == expected
        storage.state.check_machine(machine.id)
        assert storage.metrics.history_columns(query)[0].values.tolist() == expected
    sent = [sql for trip in trips for sql in trip]
    assert "COMMIT" not in sent[:-1], trips
    assert sent[-1] == "COMMIT"
