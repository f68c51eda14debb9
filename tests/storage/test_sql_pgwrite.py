"""PostgreSQL: a metric write's round trips (``pgwrite``), and that folding them kept
every guarantee: the whole write or nothing, deadlock retries, last_seen, latest values."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sql_support import round_trips
from sqlalchemy.engine import Engine

from lunasentri_core.errors import StorageError
from lunasentri_core.model import MachineSamples, Reading, Sample, new_id
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.storage.sql import metrics as metrics_module
from lunasentri_core.storage.sql.pgcopy import COPY_MIN_ROWS
from lunasentri_core.storage.sql.schema import samples_head
from lunasentri_core.testing import make_machine

pytestmark = pytest.mark.postgres

T0 = datetime(2025, 3, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@pytest.fixture
def storage(postgres_engine: Engine) -> Iterator[SqlStorage]:
    store = SqlStorage(postgres_engine)
    store.migrate()
    yield store
    store.close()


def batch_of(machine_ids: list[str], samples: int, start: datetime = T0) -> list[MachineSamples]:
    return [
        MachineSamples(
            machine_id,
            [
                Sample(
                    start + i * SECOND,
                    tuple(Reading("edge", float(i * 10 + j), {"n": str(j)}) for j in range(5)),
                )
                for i in range(samples)
            ],
        )
        for machine_id in machine_ids
    ]


def latest_values(storage: SqlStorage, machine_id: str) -> dict[str, tuple[datetime, float]]:
    return {
        dict(v.series.labels)["n"]: (v.timestamp, v.value)
        for v in storage.metrics.latest([machine_id], "edge")
    }


def head_rows(storage: SqlStorage) -> int:
    with storage.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(samples_head)).scalar_one())


def test_a_write_transaction_takes_four_round_trips(storage: SqlStorage) -> None:
    """BEGIN with the epoch read; COPY (two); latest values, last_seen, COMMIT and
    the watched-machines look-up after it. It took eight."""
    machines = [storage.state.add_machine(make_machine()).id for _ in range(4)]
    storage.metrics.write(batch_of(machines, COPY_MIN_ROWS), seen=[(m, T0) for m in machines])
    later = batch_of(machines, COPY_MIN_ROWS, T0 + 100 * SECOND)  # series cached: steady state

    with round_trips(storage.engine) as trips:
        storage.metrics.write(later, seen=[(m, T0 + 100 * SECOND) for m in machines])

    assert [[statement.split()[0] for statement in trip] for trip in trips] == [
        ["BEGIN", "SELECT"],  # the series epoch
        ["COPY"],
        [],  # COPY's rows, once the server asked for them
        ["WITH", "COMMIT", "WITH"],  # latest values and last_seen; the watched machines
    ], trips
    assert {m.last_seen for m in storage.state.list_machines()} == {T0 + 100 * SECOND}


def test_latest_values_take_new_series_newer_points_and_leave_older_ones(
    storage: SqlStorage,
) -> None:
    machine = storage.state.add_machine(make_machine()).id
    first = MachineSamples(
        machine,
        [
            Sample(
                T0 + 10 * SECOND,
                (Reading("edge", 1.0, {"n": "a"}), Reading("edge", 2.0, {"n": "b"})),
            )
        ],
    )
    storage.metrics.write([first], seen=[(machine, T0 + 10 * SECOND)])
    mixed = MachineSamples(
        machine,
        [
            Sample(T0 + 5 * SECOND, (Reading("edge", 20.0, {"n": "b"}),)),  # older: stays
            Sample(
                T0 + 20 * SECOND,
                (
                    Reading("edge", 10.0, {"n": "a"}),  # newer: taken
                    Reading("edge", 30.0, {"n": "c"}),
                ),
            ),  # new series
        ],
    )
    # last_seen never goes backwards, even in the same statement as newer points.
    storage.metrics.write([mixed], seen=[(machine, T0)])

    assert latest_values(storage, machine) == {
        "a": (T0 + 20 * SECOND, 10.0),
        "b": (T0 + 10 * SECOND, 2.0),
        "c": (T0 + 20 * SECOND, 30.0),
    }
    assert storage.state.get_machine(machine).last_seen == T0 + 10 * SECOND


@pytest.fixture
def failing_latest(postgres_engine: Engine) -> Iterator[None]:
    """A trigger on ``latest_values`` that fails the first statement touching it as a
    deadlock victim (SQLSTATE 40P01), and every one with ``lsw_fail`` set to always."""
    with postgres_engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE lsw_fail (always boolean NOT NULL)")
        conn.exec_driver_sql("INSERT INTO lsw_fail VALUES (false)")
        conn.exec_driver_sql("CREATE SEQUENCE lsw_tries")
        conn.exec_driver_sql(
            "CREATE FUNCTION lsw_fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF (SELECT always FROM lsw_fail) THEN RAISE EXCEPTION 'refused latest'; END IF; "
            "IF nextval('lsw_tries') = 1 THEN "
            "RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END IF; "
            "RETURN NULL; END $$"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER lsw_fail AFTER INSERT OR UPDATE ON latest_values "
            "FOR EACH STATEMENT EXECUTE FUNCTION lsw_fail()"
        )
    try:
        yield
    finally:
        with postgres_engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS lsw_fail ON latest_values")
            conn.exec_driver_sql("DROP FUNCTION IF EXISTS lsw_fail()")
            conn.exec_driver_sql("DROP SEQUENCE IF EXISTS lsw_tries")
            conn.exec_driver_sql("DROP TABLE IF EXISTS lsw_fail")


def test_a_deadlock_in_the_last_statement_rolls_back_the_write_and_it_is_tried_again(
    storage: SqlStorage, failing_latest: None
) -> None:
    machine = storage.state.add_machine(make_machine()).id
    batch = batch_of([machine], COPY_MIN_ROWS)

    storage.metrics.write(batch, seen=[(machine, T0)])

    # The first try's COPY was rolled back with it: each row once.
    assert head_rows(storage) == COPY_MIN_ROWS
    assert latest_values(storage, machine)["0"] == (T0 + (COPY_MIN_ROWS - 1) * SECOND, 150.0)
    assert storage.state.get_machine(machine).last_seen == T0


def test_a_failing_last_statement_stores_nothing_and_leaves_the_pool_sound(
    storage: SqlStorage, failing_latest: None
) -> None:
    machine = storage.state.add_machine(make_machine()).id
    with storage.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE lsw_fail SET always = true")

    with pytest.raises(StorageError, match="refused latest"):
        storage.metrics.write(batch_of([machine], COPY_MIN_ROWS), seen=[(machine, T0)])

    assert head_rows(storage) == 0
    assert storage.state.get_machine(machine).last_seen is None
    # The write's connection went back to the pool out of autocommit: a transaction
    # of someone else's on it still rolls back whole.
    with storage.engine.connect() as conn:
        assert conn.connection.driver_connection.autocommit is False  # type: ignore[union-attr]
        conn.exec_driver_sql("UPDATE lsw_fail SET always = false")
        conn.rollback()
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT always FROM lsw_fail").scalar_one() is True


def test_series_deleted_by_another_connection_between_writes_are_made_again(
    postgres_engine: Engine,
) -> None:
    """The epoch read with BEGIN still sees another store's deletion."""
    one, two = SqlStorage(postgres_engine), SqlStorage(postgres_engine)
    machine = new_id()
    one.metrics.write(batch_of([machine], COPY_MIN_ROWS))
    assert two.metrics.delete_machine(machine) == 5
    one.metrics.write(batch_of([machine], COPY_MIN_ROWS, T0 + 100 * SECOND))
    assert len(two.metrics.list_series(machine)) == 5
    assert set(latest_values(two, machine)) == {str(j) for j in range(5)}


@pytest.fixture
def unpinged(postgres_engine: Engine) -> Iterator[SqlStorage]:
    """A store whose pool does not ping a connection it hands out (as the timescale
    plugin's pool does while the connection is in use)."""
    store = SqlStorage(postgres_engine)
    yield store
    store.close()


def backend_pids(storage: SqlStorage) -> set[int]:
    with storage.engine.connect() as conn:
        return {int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())}


def test_a_write_on_a_connection_the_server_dropped_is_tried_again(
    unpinged: SqlStorage, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = new_id()
    unpinged.metrics.write(batch_of([machine], COPY_MIN_ROWS))
    drop_pooled(unpinged, postgres_url)

    tries: list[BaseException | None] = []
    write = unpinged.metrics._write

    def recorded(*args: Any) -> int:
        try:
            done = write(*args)
        except BaseException as error:
            tries.append(error)
            raise
        tries.append(None)
        return done

    monkeypatch.setattr(unpinged.metrics, "_write", recorded)
    unpinged.metrics.write(batch_of([machine], COPY_MIN_ROWS, T0 + 100 * SECOND))

    assert [type(t).__name__ for t in tries] == ["_DroppedConnection", "NoneType"]
    assert head_rows(unpinged) == 2 * COPY_MIN_ROWS  # the second try stored it, once


def drop_pooled(storage: SqlStorage, postgres_url: str) -> None:
    """End the session of the pool's only connection from another one (a restart)."""
    admin = sa.create_engine(postgres_url)
    try:
        with admin.begin() as conn:
            for pid in backend_pids(storage):
                conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    finally:
        admin.dispose()


def test_a_failed_look_up_after_the_commit_keeps_the_write(
    storage: SqlStorage, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    machine = storage.state.add_machine(make_machine()).id
    failing = "SELECT 1 / 0 WHERE %s::int IS NOT NULL AND %s::text[] IS NOT NULL"
    monkeypatch.setattr(metrics_module, "WATCHED_DRIVER_SQL", failing)

    storage.metrics.write(batch_of([machine], COPY_MIN_ROWS), seen=[(machine, T0)])

    assert "a query after a committed write failed: division by zero" in caplog.text
    assert head_rows(storage) == COPY_MIN_ROWS
    assert storage.state.get_machine(machine).last_seen == T0
    monkeypatch.undo()
    storage.metrics.write(batch_of([machine], COPY_MIN_ROWS, T0 + 100 * SECOND))
    assert head_rows(storage) == 2 * COPY_MIN_ROWS
