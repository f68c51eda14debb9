"""The latest values' forms (:mod:`~lunasentri_core.storage.sql.latest`): PostgreSQL's
rows per machine and part under concurrent writers, its orphans, and migration 0013
both ways."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Connection, Engine

from lunasentri_core.model import MachineSamples, Reading, Sample, new_id
from lunasentri_core.storage.sql import SqlStorage, alembic_config, head_revision, latest
from lunasentri_core.storage.sql.head import Latest
from lunasentri_core.storage.sql.metrics import to_ms
from lunasentri_core.testing import BASE_TIME

T0 = BASE_TIME
T0_MS = to_ms(T0)
SECOND = timedelta(seconds=1)

pytestmark = pytest.mark.postgres


def stored(engine: Engine, machine_id: str) -> dict[int, tuple[int, float]]:
    """A machine's rows of ``latest_values``: each series' ``(ts, value)``; checks
    each row's part, bounds and order on the way."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT part, series_ids, series_ts, series_values, oldest, newest"
            " FROM latest_values WHERE machine_id = %s",
            (machine_id,),
        ).all()
    found = {}
    for part, sids, stamps, values, oldest, newest in rows:
        assert sids == sorted(set(sids))
        assert {sid // latest.PART_IDS for sid in sids} == {part}
        assert (oldest, newest) == (min(stamps), max(stamps))
        found.update((sid, (ts, v)) for sid, ts, v in zip(sids, stamps, values, strict=True))
    return found


def versions(engine: Engine, machine_id: str) -> dict[int, str]:
    """Each part's row version (``xmin``): an update gives the row a new one."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT part, xmin::text FROM latest_values WHERE machine_id = %s", (machine_id,)
        )
        return dict(rows.all())


def upsert(conn: Connection, values: Latest) -> None:
    latest.MachineUpsert(conn.dialect).run(conn, values)


def one_blocked_by_the_other(engine: Engine, first: Latest, second: Latest) -> Callable[[], None]:
    """Upsert ``first`` in an open transaction, then ``second`` in another that waits
    for its row lock; returns what commits the first and waits for the second."""
    holder = engine.connect()
    holder.begin()
    upsert(holder, first)
    waiter = engine.connect()
    waiter.begin()
    pid = waiter.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    failed: list[BaseException] = []

    def second_writer() -> None:
        try:
            upsert(waiter, second)
            waiter.commit()
        except BaseException as error:
            failed.append(error)
        finally:
            waiter.close()

    thread = threading.Thread(target=second_writer)
    thread.start()
    with engine.connect() as watcher:
        # Until the second writer waits for the first one's lock (a condition
        # PostgreSQL reports, polled: no timing involved).
        while not watcher.exec_driver_sql("SELECT pg_blocking_pids(%s)", (pid,)).scalar_one():
            assert thread.is_alive(), failed
            watcher.rollback()

    def finish() -> None:
        holder.commit()
        holder.close()
        thread.join()
        assert not failed, failed

    return finish


@pytest.mark.parametrize("first_newer", [True, False])
def test_two_writers_of_one_machine_at_once_keep_the_newest_of_each_series(
    postgres_engine: Engine, first_newer: bool
) -> None:
    """The second writer waits for the first one's row (new to both of them), then
    merges into what the first committed: the newer point of each series wins,
    and the series only one of them wrote are all kept."""
    machine = new_id()
    new, old = T0_MS + 20_000, T0_MS + 10_000
    first = [(machine, ([1, 2], [new if first_newer else old] * 2, [1.0, 2.0]))]
    second = [(machine, ([1, 2, 3], [old if first_newer else new] * 3, [10.0, 20.0, 30.0]))]
    one_blocked_by_the_other(postgres_engine, first, second)()
    if first_newer:
        assert stored(postgres_engine, machine) == {1: (new, 1.0), 2: (new, 2.0), 3: (old, 30.0)}
    else:
        assert stored(postgres_engine, machine) == {1: (new, 10.0), 2: (new, 20.0), 3: (new, 30.0)}


def test_a_writer_waiting_for_a_machine_replaces_nothing_newer(postgres_engine: Engine) -> None:
    """Both write the same series, the first newer: the waiting one must not take
    the replace-whole path with the row it saw before waiting."""
    machine = new_id()
    with postgres_engine.begin() as conn:
        upsert(conn, [(machine, ([1, 2], [T0_MS] * 2, [0.0, 0.0]))])
    first = [(machine, ([1, 2], [T0_MS + 2000] * 2, [2.0, 2.0]))]
    second = [(machine, ([1, 2], [T0_MS + 1000, T0_MS + 3000], [1.0, 3.0]))]
    one_blocked_by_the_other(postgres_engine, first, second)()
    assert stored(postgres_engine, machine) == {1: (T0_MS + 2000, 2.0), 2: (T0_MS + 3000, 3.0)}


def test_equal_timestamps_keep_the_stored_value(postgres_engine: Engine) -> None:
    machine = new_id()
    with postgres_engine.begin() as conn:
        upsert(conn, [(machine, ([1, 2], [T0_MS, T0_MS], [1.0, 2.0]))])
        upsert(conn, [(machine, ([1, 2], [T0_MS, T0_MS + 1], [9.0, 9.0]))])
    assert stored(postgres_engine, machine) == {1: (T0_MS, 1.0), 2: (T0_MS + 1, 9.0)}


def test_many_machines_in_one_statement(postgres_engine: Engine) -> None:
    machines = sorted(new_id() for _ in range(3))
    values = [
        (m, ([i * 10 + 1, i * 10 + 2], [T0_MS] * 2, [float(i), float(-i)]))
        for i, m in enumerate(machines)
    ]
    with postgres_engine.begin() as conn:
        upsert(conn, values)
        # The next samples of the first machine only, one series fewer.
        upsert(conn, [(machines[0], ([2], [T0_MS + 1000], [5.0]))])
    assert stored(postgres_engine, machines[0]) == {1: (T0_MS, 0.0), 2: (T0_MS + 1000, 5.0)}
    assert stored(postgres_engine, machines[2]) == {21: (T0_MS, 2.0), 22: (T0_MS, -2.0)}


def test_a_machine_of_many_series_keeps_a_row_per_part(postgres_engine: Engine) -> None:
    """A write rewrites only the rows of the parts its series fall in, and a write
    across parts keeps each part's series apart."""
    machine = new_id()
    width = latest.PART_IDS
    sids = list(range(width - 2, 3 * width + 2))  # parts 0-3, the outer two with 2 series
    with postgres_engine.begin() as conn:
        upsert(conn, [(machine, (sids, [T0_MS] * len(sids), [float(s) for s in sids]))])
    assert sorted(versions(postgres_engine, machine)) == [0, 1, 2, 3]
    before = versions(postgres_engine, machine)
    # One series of part 1 newer, one of part 3 older than stored (merged, kept).
    newer, older = width + 5, 3 * width
    with postgres_engine.begin() as conn:
        upsert(conn, [(machine, ([newer, older], [T0_MS + 1000, T0_MS - 1000], [-1.0, -2.0]))])
    after = versions(postgres_engine, machine)
    assert sorted(p for p in before if before[p] != after[p]) == [1, 3]
    expected = {sid: (T0_MS, float(sid)) for sid in sids}
    expected[newer] = (T0_MS + 1000, -1.0)
    assert stored(postgres_engine, machine) == expected


@pytest.mark.parametrize(
    ("sids", "runs"),
    [
        ([], []),
        ([5], [(0, 0, 1)]),
        ([1, 255, 256, 300, 1000], [(0, 0, 2), (1, 2, 4), (3, 4, 5)]),
        ([256, 511], [(1, 0, 2)]),
    ],
)
def test_parts_split_sorted_ids_into_runs(
    sids: list[int], runs: list[tuple[int, int, int]]
) -> None:
    assert list(latest.parts(sids)) == runs


def test_the_parameters_as_plain_lists_store_the_same(postgres_engine: Engine) -> None:
    """The form other PostgreSQL drivers get (:meth:`~.latest.MachineUpsert.run` packs
    the number arrays in binary for psycopg 3 only) merges alike."""
    machines = sorted(new_id() for _ in range(2))
    first = [
        (machines[0], ([1, 300], [T0_MS] * 2, [1.0, 2.0])),
        (machines[1], ([7], [T0_MS], [3.0])),
    ]
    second = [(machines[0], ([1, 2], [T0_MS + 1, T0_MS - 1], [4.0, 5.0]))]
    statement = latest.MachineUpsert(postgres_engine.dialect).sql
    with postgres_engine.begin() as conn:
        for values in (first, second):
            conn.exec_driver_sql(statement, latest.MachineUpsert.parameters(values, packed=False))
    assert stored(postgres_engine, machines[0]) == {
        1: (T0_MS + 1, 4.0),
        2: (T0_MS - 1, 5.0),
        300: (T0_MS, 2.0),
    }
    assert stored(postgres_engine, machines[1]) == {7: (T0_MS, 3.0)}


def write(storage: SqlStorage, machine: str, at: int, names: tuple[str, ...]) -> None:
    sample = Sample(T0 + at * SECOND, [Reading(n, float(at)) for n in names])
    storage.metrics.write([MachineSamples(machine, [sample])])


def test_a_machine_deleted_and_made_again_keeps_only_its_live_series(
    postgres_engine: Engine,
) -> None:
    """A writer with stale ids (another process) merges dead series into the
    row of a machine deleted and written again: maintenance strips them."""
    storage = SqlStorage(postgres_engine)
    machine = new_id()
    write(storage, machine, 1, ("a", "b"))
    dead = sorted(stored(postgres_engine, machine))
    storage.metrics.delete_machine(machine)
    assert stored(postgres_engine, machine) == {}
    write(storage, machine, 2, ("a",))
    (live,) = stored(postgres_engine, machine)
    with postgres_engine.begin() as conn:
        upsert(conn, [(machine, (dead, [T0_MS + 3000] * 2, [3.0, 3.0]))])
    assert sorted(stored(postgres_engine, machine)) == sorted([*dead, live])
    assert [(v.series.metric, v.value) for v in storage.metrics.latest([machine])] == [("a", 2.0)]
    storage.metrics.maintain(T0 + timedelta(days=1))
    assert stored(postgres_engine, machine) == {live: (T0_MS + 2000, 2.0)}
    assert [(v.series.metric, v.value) for v in storage.metrics.latest([machine])] == [("a", 2.0)]
    storage.close()


def test_migration_0013_moves_the_latest_values_and_back(empty_postgres_engine: Engine) -> None:
    storage = SqlStorage(empty_postgres_engine)
    storage.migrate()
    one, two, many = new_id(), new_id(), new_id()
    write(storage, one, 1, ("a", "b"))
    write(storage, one, 2, ("b",))
    write(storage, two, 5, ("a",))
    before = storage.metrics.latest([one, two])
    found = {(v.series.machine_id, v.series.metric): v.value for v in before}
    assert found == {(one, "a"): 1.0, (one, "b"): 2.0, (two, "a"): 5.0}
    # Series ids 4 to 303: two parts.
    write(storage, many, 7, tuple(f"m{i}" for i in range(latest.PART_IDS + 44)))
    kept = stored(empty_postgres_engine, many)
    with empty_postgres_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0012")
    with empty_postgres_engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT ts, value FROM series_latest ORDER BY value").all()
    assert rows[:3] == [(T0_MS + 1000, 1.0), (T0_MS + 2000, 2.0), (T0_MS + 5000, 5.0)]
    assert rows[3:] == [(T0_MS + 7000, 7.0)] * (latest.PART_IDS + 44)
    storage.migrate()
    assert storage.schema_revision() == head_revision()
    with empty_postgres_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM series_latest").scalar_one() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM latest_values").scalar_one() == 4
        options = conn.execute(
            sa.text(
                "SELECT reloptions FROM pg_class "
                "WHERE oid = to_regclass(current_schema() || '.latest_values')"
            )
        ).scalar_one()
    assert options == ["fillfactor=50", "toast_tuple_target=8160"]
    assert storage.metrics.latest([one, two]) == before
    assert stored(empty_postgres_engine, many) == kept
    assert sorted(versions(empty_postgres_engine, many)) == [0, 1]
    write(storage, one, 3, ("a",))
    assert [v.value for v in storage.metrics.latest([one])] == [3.0, 2.0]
    storage.close()
