"""A machine's latest values with its ownership check, in one statement.

``/latest`` checked the machine, then read its values: with the ``BEGIN`` and
``COMMIT`` around them, four round trips to PostgreSQL. ``machine_latest`` reads
the values through the machine's row, one statement on its own snapshot.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sql_support import round_trips

from lunasentri_core.errors import NotFoundError
from lunasentri_core.model import MachineSamples, Reading, Sample
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.testing import make_machine, make_user

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def write(storage: SqlStorage, machine_id: str) -> None:
    readings = [
        Reading("cpu.percent", 12.5),
        Reading("mem.used", 2.0),
        Reading("mem.total", 8.0),
        Reading("disk.used", 1.0, {"mount": "/"}),
        Reading("disk.used", 3.0, {"mount": "/home"}),
    ]
    for i in range(2):
        storage.metrics.write(
            [MachineSamples(machine_id, [Sample(T0 + i * timedelta(seconds=10), readings)])]
        )


def test_the_values_are_those_of_latest(storage: SqlStorage) -> None:
    state = storage.state
    alice = state.add_user(make_user(), "h")
    machine = state.add_machine(make_machine(owner_id=alice.id))
    other = state.add_machine(make_machine(owner_id=alice.id))
    write(storage, machine.id)
    write(storage, other.id)
    metrics = storage.metrics
    assert len(metrics.machine_latest(machine.id, alice.id)) == 5
    assert metrics.machine_latest(machine.id, alice.id) == metrics.latest([machine.id])
    for names in (["cpu.percent"], ["disk.used"], ["mem.percent", "mem.used", "mem.total"]):
        expected = [v for name in names for v in metrics.latest([machine.id], name)]
        found = metrics.machine_latest(machine.id, alice.id, names)
        assert sorted(found, key=str) == sorted(expected, key=str)
        assert all(v.series.machine_id == machine.id for v in found)
    assert metrics.machine_latest(machine.id, alice.id, ["no.such"]) == []
    assert metrics.machine_latest(machine.id, alice.id, []) == []


def test_the_machine_is_checked_as_check_machine_does(storage: SqlStorage) -> None:
    state = storage.state
    alice, bob = state.add_user(make_user(), "h"), state.add_user(make_user(), "h")
    alices = state.add_machine(make_machine(owner_id=alice.id))
    unowned = state.add_machine(make_machine())
    write(storage, alices.id)
    write(storage, "no-such-row")  # values without a machine are nobody's
    metrics = storage.metrics
    assert len(metrics.machine_latest(alices.id, None)) == 5  # an administrator's scope
    for machine_id, owner_id in [
        (alices.id, bob.id),  # another user's machine
        (unowned.id, alice.id),  # nobody's is not hers either
        ("ghost", None),
        ("ghost", alice.id),
        ("no-such-row", None),
    ]:
        for names in (None, ["cpu.percent"]):
            with pytest.raises(NotFoundError, match="not found"):
                metrics.machine_latest(machine_id, owner_id, names)
            with pytest.raises(NotFoundError):
                state.check_machine(machine_id, owner_id)
    # A visible machine without values: none, no error.
    assert metrics.machine_latest(unowned.id, None) == []
    assert metrics.machine_latest(unowned.id, None, ["cpu.percent"]) == []


def test_one_statement_one_round_trip(storage: SqlStorage) -> None:
    state = storage.state
    alice = state.add_user(make_user(), "h")
    machine = state.add_machine(make_machine(owner_id=alice.id))
    write(storage, machine.id)
    seen: list[str] = []

    def record(*args: object) -> None:
        seen.append(str(args[2]))

    sa.event.listen(storage.engine, "before_cursor_execute", record)
    try:
        assert len(storage.metrics.machine_latest(machine.id, alice.id, ["cpu.percent"])) == 1
    finally:
        sa.event.remove(storage.engine, "before_cursor_execute", record)
    queries = [sql for sql in seen if sql.upper() != "BEGIN"]
    assert len(queries) == 1, queries
    postgres = storage.engine.dialect.name == "postgresql"
    table = "latest_values" if postgres else "series_latest"
    assert "machines" in queries[0]
    assert table in queries[0]
    if postgres:
        with round_trips(storage.engine) as trips:
            storage.metrics.machine_latest(machine.id, alice.id)
            with pytest.raises(NotFoundError):
                storage.metrics.machine_latest(machine.id, "someone else")
        # No BEGIN, no COMMIT: one statement is a snapshot of its own.
        assert [len(trip) for trip in trips] == [1, 1], trips
        assert all(table in trip[0] for trip in trips)
