"""The shared SQL metric store beyond the contract: its layout, maintenance, several processes."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sql_support import NO_RETENTION, OpenStorage

from lunasentri_core.errors import StorageUnavailable
from lunasentri_core.model import (
    Aggregation,
    HistoryQuery,
    MachineSamples,
    Reading,
    Resolution,
    RetentionPolicy,
    Sample,
    SeriesKey,
    new_id,
)
from lunasentri_core.storage.sql import SqlStorage, choose_resolution, latest, rewrite
from lunasentri_core.storage.sql.head import pack_series_ids, pack_values
from lunasentri_core.storage.sql.metrics import Horizons, to_ms
from lunasentri_core.storage.sql.schema import metric_chunks, samples_head, series, series_latest
from lunasentri_core.testing import (
    assert_history_equal,
    assert_latest_equal,
    points_of,
    reference_history,
    reference_latest,
)

T0 = datetime(2025, 3, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def samples(
    machine: str, start: datetime, count: int, every: timedelta = 10 * SECOND, base: float = 0
) -> list[MachineSamples]:
    return [
        MachineSamples(
            machine,
            [
                Sample(
                    start + i * every,
                    [
                        Reading("cpu.percent", base + i),
                        Reading("disk.used", 1000 + base + i, {"mount": "/"}),
                    ],
                )
                for i in range(count)
            ],
        )
    ]


def count_rows(storage: SqlStorage, table: sa.Table) -> int:
    with storage.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def latest_count(storage: SqlStorage) -> int:
    """Latest values stored, one per series, in the database's form of them."""
    with storage.engine.connect() as conn:
        return latest.count(conn)


def drop_latest(storage: SqlStorage, sid: int) -> None:
    """Remove one series' latest value (as a restore could leave it)."""
    with storage.engine.begin() as conn:
        conn.execute(sa.delete(series_latest).where(series_latest.c.series_id == sid))
        if storage.db.is_postgres:
            conn.exec_driver_sql(
                "UPDATE latest_values AS l SET (series_ids, series_ts, series_values) ="
                " (SELECT array_agg(u.s ORDER BY u.s), array_agg(u.t ORDER BY u.s),"
                " array_agg(u.v ORDER BY u.s)"
                " FROM unnest(l.series_ids, l.series_ts, l.series_values) AS u(s, t, v)"
                " WHERE u.s <> %s) WHERE %s = ANY(l.series_ids)",
                (sid, sid),
            )


def head_points(storage: SqlStorage) -> int:
    """Points in the head (its rows are samples)."""
    with storage.engine.connect() as conn:
        blobs = conn.execute(sa.select(samples_head.c.series_ids)).scalars()
        return sum(len(blob) // 8 for blob in blobs)


def cpu(
    machine: str,
    start: datetime,
    end: datetime,
    step: timedelta,
    agg: Aggregation = Aggregation.AVG,
) -> HistoryQuery:
    return HistoryQuery(machine, "cpu.percent", start, end, step, agg)


# --------------------------------------------------------------------------- layout


def test_writes_land_in_the_head_and_maintain_packs_them(storage: SqlStorage) -> None:
    machine = new_id()
    batch = samples(machine, T0, 400)
    storage.metrics.write(batch)
    assert head_points(storage) == 800
    assert count_rows(storage, samples_head) == 400, "a row per sample"
    assert count_rows(storage, metric_chunks) == 0

    report = storage.metrics.maintain(T0 + DAY)

    assert report.compacted_points == 800
    assert report.rollup_rows > 0
    assert head_points(storage) == 0
    # 400 samples at 10 s span two hours: two chunks per series.
    assert count_rows(storage, metric_chunks) == 4
    query = cpu(machine, T0, T0 + DAY, 10 * SECOND)
    assert_history_equal(
        storage.metrics.history(query), reference_history(points_of([batch]), query)
    )


def test_latest_of_one_batch_is_its_newest_point_and_the_first_among_equals(
    storage: SqlStorage,
) -> None:
    # Runs of samples with the same series (as a machine sends them), broken by
    # a sample with other series, out of time order, with equal timestamps.
    a, b = new_id(), new_id()

    def sample(seconds: int, value: float, *, disk: bool = True) -> Sample:
        readings = [Reading("cpu.percent", value)]
        if disk:
            readings.append(Reading("disk.used", value + 1000, {"mount": "/"}))
        return Sample(T0 + seconds * SECOND, readings)

    batch = [
        MachineSamples(a, [sample(5, 1), sample(9, 2), sample(9, 3), sample(3, 4)]),
        MachineSamples(a, [sample(9, 5, disk=False), sample(12, 6, disk=False)]),
        MachineSamples(b, [sample(7, 7), sample(7, 8)]),
        MachineSamples(a, [sample(9, 9), sample(1, 10)]),
    ]
    storage.metrics.write(batch)
    found = storage.metrics.latest([a, b])
    assert_latest_equal(found, reference_latest(points_of([batch]), [a, b]))
    values = {(v.series.machine_id, v.series.metric): v.value for v in found}
    assert values == {
        (a, "cpu.percent"): 6,
        (a, "disk.used"): 1002,
        (b, "cpu.percent"): 7,
        (b, "disk.used"): 1007,
    }


def test_maintain_leaves_points_newer_than_now_in_the_head(storage: SqlStorage) -> None:
    machine = new_id()
    storage.metrics.write(samples(machine, T0, 60))
    storage.metrics.maintain(T0 + 5 * MINUTE)
    # 5 minutes of 10 s samples, two series.
    assert head_points(storage) == 2 * (60 - 30)
    assert storage.metrics.maintain(T0 + 5 * MINUTE).compacted_points == 0


def test_a_retry_after_compaction_keeps_the_first_values(storage: SqlStorage) -> None:
    machine = new_id()
    first = samples(machine, T0, 30)
    storage.metrics.write(first)
    storage.metrics.maintain(T0 + HOUR)
    retry = samples(machine, T0, 40, base=500)  # same timestamps, other values, and 10 more
    storage.metrics.write(retry)
    expected = points_of([first, retry])
    query = cpu(machine, T0, T0 + HOUR, 10 * SECOND)
    for _ in range(2):  # before and after the retried points are compacted
        assert_history_equal(storage.metrics.history(query), reference_history(expected, query))
        assert_latest_equal(
            storage.metrics.latest([machine]), reference_latest(expected, [machine])
        )
        report = storage.metrics.maintain(T0 + HOUR)
    assert report.compacted_points == 0
    assert head_points(storage) == 0


def test_a_retry_while_in_the_head_keeps_the_first_values(storage: SqlStorage) -> None:
    # Both writes are still in the head: it holds the retried points twice.
    machine = new_id()
    first = samples(machine, T0, 30)
    retry = samples(machine, T0 + 100 * SECOND, 40, base=500)  # 20 timestamps overlap
    storage.metrics.write(first)
    storage.metrics.write(retry)
    assert head_points(storage) == 2 * (30 + 40)
    expected = points_of([first, retry])
    query = cpu(machine, T0, T0 + HOUR, 10 * SECOND)
    assert_history_equal(storage.metrics.history(query), reference_history(expected, query))
    (history,) = storage.metrics.history(query)
    assert [p.value for p in history.points][10:12] == [10.0, 11.0], "the first write's values"
    report = storage.metrics.maintain(T0 + HOUR)
    assert report.compacted_points == 2 * 50
    assert head_points(storage) == 0
    assert_history_equal(storage.metrics.history(query), reference_history(expected, query))


def test_compaction_takes_machines_in_groups(
    storage: SqlStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lunasentri_core.storage.sql.metrics.COMPACT_MACHINES", 2)
    machines = [new_id() for _ in range(5)]
    batches = [samples(m, T0, 400, base=i * 1000) for i, m in enumerate(machines)]
    for batch in batches:
        storage.metrics.write(batch)
    report = storage.metrics.maintain(T0 + DAY)
    assert report.compacted_points == 5 * 800
    assert head_points(storage) == 0
    assert count_rows(storage, metric_chunks) == 5 * 4
    for machine, batch in zip(machines, batches, strict=True):
        query = cpu(machine, T0, T0 + DAY, 10 * SECOND)
        assert_history_equal(
            storage.metrics.history(query), reference_history(points_of([batch]), query)
        )


def test_deleting_a_machine_empties_only_its_head(storage: SqlStorage) -> None:
    gone, kept = new_id(), new_id()
    storage.metrics.write(samples(gone, T0, 10))
    storage.metrics.write(samples(kept, T0, 10))
    assert storage.metrics.delete_machine(gone) == 2
    assert head_points(storage) == 20
    with storage.engine.connect() as conn:
        owners = conn.execute(sa.select(samples_head.c.machine_id).distinct()).scalars().all()
    assert owners == [kept]
    assert storage.metrics.history(cpu(gone, T0, T0 + HOUR, MINUTE)) == []


def test_late_points_merge_into_existing_chunks(storage: SqlStorage) -> None:
    machine = new_id()
    even = [
        MachineSamples(
            machine, [Sample(T0 + i * 20 * SECOND, [Reading("cpu.percent", i)]) for i in range(90)]
        )
    ]
    odd = [
        MachineSamples(
            machine,
            [Sample(T0 + (i * 20 + 10) * SECOND, [Reading("cpu.percent", -i)]) for i in range(90)],
        )
    ]
    storage.metrics.write(even)
    storage.metrics.maintain(T0 + DAY)
    storage.metrics.write(odd)
    storage.metrics.maintain(T0 + DAY)
    points = points_of([even, odd])
    for step in (10 * SECOND, MINUTE, 7 * MINUTE, HOUR):
        for agg in Aggregation:
            query = cpu(machine, T0, T0 + DAY, step, agg)
            assert_history_equal(
                storage.metrics.history(query),
                reference_history(points, query),
                context=f"{step} {agg}",
            )


def test_batches_larger_than_one_statement(storage: SqlStorage) -> None:
    machine = new_id()
    readings = [Reading("disk.used", float(i), {"mount": f"/m{i}"}) for i in range(1001)]
    batch = [MachineSamples(machine, [Sample(T0, readings), Sample(T0 + SECOND, readings[:7])])]
    assert storage.metrics.write(batch) == 1008
    assert head_points(storage) == 1008
    assert latest_count(storage) == 1001
    latest = {v.series: (v.timestamp, v.value) for v in storage.metrics.latest([machine])}
    assert latest[SeriesKey(machine, "disk.used", {"mount": "/m3"})] == (T0 + SECOND, 3.0)
    assert latest[SeriesKey(machine, "disk.used", {"mount": "/m1000"})] == (T0, 1000.0)


def test_latest_keeps_the_first_value_of_its_timestamp(storage: SqlStorage) -> None:
    machine = new_id()
    at = T0 + MINUTE
    older = Sample(at - SECOND, [Reading("proc.count", 0)])
    batch = [
        MachineSamples(machine, [Sample(at, [Reading("proc.count", 1)]), older]),
        MachineSamples(machine, [Sample(at, [Reading("proc.count", 3)]), older]),
    ]
    storage.metrics.write(batch)
    (latest,) = storage.metrics.latest([machine])
    assert (latest.timestamp, latest.value) == (at, 1.0)


def test_timestamps_are_kept_to_the_millisecond(storage: SqlStorage) -> None:
    machine = new_id()
    at = T0 + timedelta(milliseconds=1234, microseconds=999)
    storage.metrics.write([MachineSamples(machine, [Sample(at, [Reading("proc.count", 1)])])])
    (latest,) = storage.metrics.latest([machine])
    assert latest.timestamp == T0 + timedelta(milliseconds=1234)
    assert latest.timestamp.tzinfo is UTC


def test_latest_moves_forward_where_rows_are_newer_older_or_missing(storage: SqlStorage) -> None:
    """A batch whose series have newer, older and no stored latest values at once
    (PostgreSQL merges the machine's row series by series)."""
    machine = new_id()
    names = ("a", "b", "c", "d")
    storage.metrics.write(
        [MachineSamples(machine, [Sample(T0 + MINUTE, [Reading(n, 1.0) for n in names])])]
    )
    with storage.engine.begin() as conn:
        rows = conn.execute(sa.select(series.c.metric, series.c.id))
        ids = {row.metric: row.id for row in rows}
    drop_latest(storage, ids["c"])  # as a restore could leave it
    batch = [
        MachineSamples(
            machine,
            [
                Sample(T0 + 2 * MINUTE, [Reading("a", 2.0), Reading("c", 2.0)]),
                Sample(T0, [Reading("b", 0.0), Reading("d", 0.0)]),
            ],
        )
    ]
    storage.metrics.write(batch)
    found = {v.series.metric: (v.timestamp, v.value) for v in storage.metrics.latest([machine])}
    assert found == {
        "a": (T0 + 2 * MINUTE, 2.0),
        "b": (T0 + MINUTE, 1.0),
        "c": (T0 + 2 * MINUTE, 2.0),
        "d": (T0 + MINUTE, 1.0),
    }


def test_the_ingest_writer_keeps_two_transactions_in_flight_on_postgresql_only(
    storage: SqlStorage,
) -> None:
    assert storage.metrics.write_transactions == (2 if storage.db.is_postgres else 1)


def test_bloated_tables_are_rewritten_on_postgresql_only(storage: SqlStorage) -> None:
    assert storage.metrics.rewrite_bloated == storage.db.is_postgres
    if storage.db.is_sqlite:
        # Asked anyway, it does nothing: the file gives its pages back itself.
        assert rewrite.rewrite_bloated(storage.db, ["series_latest"]) == 0


def test_a_write_chosen_as_a_deadlock_victim_is_tried_again(
    storage: SqlStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL rolls the whole transaction back: writing it again is safe."""
    metrics = storage.metrics
    real = metrics._write
    calls = []

    class _Orig(Exception):
        sqlstate = "40P01"

    def deadlocking(*args: object) -> int:
        calls.append(args)
        if len(calls) == 1:
            try:
                raise sa.exc.OperationalError("UPDATE", None, _Orig("deadlock detected"))
            except sa.exc.OperationalError as error:
                raise StorageUnavailable("deadlock detected") from error
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(metrics, "_write", deadlocking)
    machine = new_id()
    assert metrics.write(samples(machine, T0, 3)) == 6
    assert len(calls) == 2
    assert head_points(storage) == 6

    calls.clear()
    other = StorageUnavailable("the server went away")
    monkeypatch.setattr(metrics, "_write", lambda *args: (calls.append(args), _raise(other)))
    with pytest.raises(StorageUnavailable, match="went away"):
        metrics.write(samples(machine, T0 + HOUR, 1))
    assert len(calls) == 1


def _raise(error: BaseException) -> None:
    raise error


# --------------------------------------------------------------------------- resolutions


def test_choose_resolution() -> None:
    minute, hour = 60_000, 3_600_000
    everything = Horizons()
    assert choose_resolution(0, 10_000, everything) is Resolution.RAW
    assert choose_resolution(0, minute, everything) is Resolution.MINUTE
    assert choose_resolution(0, 15 * minute, everything) is Resolution.MINUTE
    assert choose_resolution(0, hour, everything) is Resolution.HOUR
    assert choose_resolution(13_000, hour, everything) is Resolution.RAW, "unaligned start"
    assert choose_resolution(0, 90_000, everything) is Resolution.RAW, "unaligned step"
    raw_gone = Horizons(raw=10 * hour)
    assert choose_resolution(13_000, 90_000, raw_gone) is Resolution.MINUTE
    assert choose_resolution(11 * hour + 13_000, 90_000, raw_gone) is Resolution.RAW
    assert choose_resolution(13_000, 90_000, Horizons(raw=hour, minute=hour)) is Resolution.HOUR
    assert choose_resolution(0, minute, Horizons(raw=hour, minute=hour)) is Resolution.HOUR
    assert choose_resolution(0, hour, Horizons(raw=hour, minute=hour, hour=hour)) is Resolution.HOUR


def test_aligned_steps_are_served_from_rollups_exactly(storage: SqlStorage) -> None:
    machine = new_id()
    batch = samples(machine, T0, 1000)
    storage.metrics.write(batch)
    storage.metrics.maintain(T0 + 2 * HOUR)  # the last part stays in the head
    points = points_of([batch])
    end = T0 + 1000 * 10 * SECOND + 7 * SECOND  # cuts a minute bucket in two
    for step, resolution in (
        (MINUTE, Resolution.MINUTE),
        (HOUR, Resolution.HOUR),
        (5 * MINUTE, Resolution.MINUTE),
    ):
        for agg in Aggregation:
            query = cpu(machine, T0, end, step, agg)
            answer = storage.metrics.history(query)
            assert {h.resolution for h in answer} == {resolution}
            assert_history_equal(answer, reference_history(points, query), context=f"{step} {agg}")


def test_expired_raw_points_are_answered_from_rollups(open_storage: OpenStorage) -> None:
    storage = open_storage(RetentionPolicy(raw=DAY, minute=7 * DAY, hour=None))
    machine = new_id()
    storage.metrics.write(samples(machine, T0, 360))
    report = storage.metrics.maintain(T0 + 3 * DAY)
    assert report.expired_rows == 2  # the raw blob of one chunk, for two series
    # An unaligned query: raw would be exact but is gone; minute buckets answer.
    query = cpu(machine, T0 + 13 * SECOND, T0 + HOUR, 7 * MINUTE)
    (answer,) = storage.metrics.history(query)
    assert answer.resolution is Resolution.MINUTE
    assert answer.points[0].timestamp == T0 + 13 * SECOND
    assert len(answer.points) == 9


def test_retention_clears_each_resolution_then_the_row(open_storage: OpenStorage) -> None:
    storage = open_storage(RetentionPolicy(raw=DAY, minute=2 * DAY, hour=3 * DAY))
    machine = new_id()
    storage.metrics.write(samples(machine, T0, 10))
    storage.metrics.maintain(T0 + HOUR)
    query = cpu(machine, T0, T0 + HOUR, HOUR)

    def columns() -> tuple[bool, bool, bool]:
        with storage.engine.connect() as conn:
            raw, minutes, count = conn.execute(
                sa.select(
                    metric_chunks.c.raw, metric_chunks.c.minutes, metric_chunks.c.hour_count
                ).limit(1)
            ).one()
        return raw is not None, minutes is not None, count is not None

    # No minute blob while the raw points are kept: reads derive the minutes.
    assert columns() == (True, False, True)
    storage.metrics.maintain(T0 + DAY + 2 * HOUR)
    assert columns() == (False, True, True)
    storage.metrics.maintain(T0 + 2 * DAY + 2 * HOUR)
    assert columns() == (False, False, True)
    assert [h.resolution for h in storage.metrics.history(query)] == [Resolution.HOUR]
    report = storage.metrics.maintain(T0 + 3 * DAY + 2 * HOUR)
    assert report.expired_rows == 4  # hour columns of two series, then their rows
    assert count_rows(storage, metric_chunks) == 0
    assert storage.metrics.history(query) == []
    # The series and their latest values stay until the machine is deleted.
    assert len(storage.metrics.latest([machine])) == 2


def test_late_points_still_reach_the_rollups_that_are_kept(open_storage: OpenStorage) -> None:
    storage = open_storage(RetentionPolicy(raw=DAY, minute=7 * DAY, hour=None))
    machine, late = new_id(), new_id()
    storage.metrics.write(samples(machine, T0 + 10 * DAY, 6))
    storage.metrics.maintain(T0 + 10 * DAY + HOUR)  # sets the horizons
    # A machine whose agent spooled three days offline sends its backlog.
    backlog = samples(late, T0 + 7 * DAY, 360)
    storage.metrics.write(backlog)
    report = storage.metrics.maintain(T0 + 10 * DAY + HOUR)
    assert report.compacted_points == 720
    query = cpu(late, T0 + 7 * DAY, T0 + 7 * DAY + HOUR, 5 * MINUTE, Aggregation.MAX)
    answer = storage.metrics.history(query)
    assert [h.resolution for h in answer] == [Resolution.MINUTE]
    assert_history_equal(answer, reference_history(points_of([backlog]), query))


def test_late_points_for_an_expired_chunk_are_dropped(open_storage: OpenStorage) -> None:
    storage = open_storage(RetentionPolicy(raw=DAY, minute=7 * DAY, hour=None))
    machine = new_id()
    storage.metrics.write(samples(machine, T0, 6))
    storage.metrics.maintain(T0 + 3 * DAY)  # raw of that chunk expires
    query = cpu(machine, T0, T0 + HOUR, HOUR)
    before = storage.metrics.history(query)
    # Their duplicates cannot be told apart any more: they must not count twice.
    storage.metrics.write(samples(machine, T0, 6, base=100))
    report = storage.metrics.maintain(T0 + 3 * DAY)
    assert report.expired_rows == 12
    assert storage.metrics.history(query) == before


# --------------------------------------------------------------------------- several processes


def test_series_deleted_by_another_process(open_storage: OpenStorage) -> None:
    one, two = open_storage(), open_storage()
    machine = new_id()
    one.metrics.write(samples(machine, T0, 3))  # "one" now caches the machine's series ids
    assert two.metrics.delete_machine(machine) == 2
    again = samples(machine, T0 + HOUR, 3)
    one.metrics.write(again)
    assert len(two.metrics.list_series(machine)) == 2
    assert_latest_equal(
        two.metrics.latest([machine]), reference_latest(points_of([again]), [machine])
    )
    query = cpu(machine, T0, T0 + DAY, MINUTE)
    assert_history_equal(two.metrics.history(query), reference_history(points_of([again]), query))


def test_series_created_by_a_failed_write_are_not_cached(
    storage: SqlStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = new_id()
    insert = storage.metrics._sql.insert_head

    class Failing:
        def run(self, *args: object) -> None:
            raise RuntimeError("the database went away")

    monkeypatch.setattr(storage.metrics._sql, "insert_head", Failing())
    with pytest.raises(RuntimeError):
        storage.metrics.write(samples(machine, T0, 3))
    monkeypatch.setattr(storage.metrics._sql, "insert_head", insert)
    assert storage.metrics.list_series(machine) == []
    batch = samples(machine, T0, 3)
    storage.metrics.write(batch)
    assert_latest_equal(
        storage.metrics.latest([machine]), reference_latest(points_of([batch]), [machine])
    )


def test_points_of_a_series_deleted_in_flight_are_dropped(storage: SqlStorage) -> None:
    machine = new_id()
    storage.metrics.write(samples(machine, T0, 3))
    storage.metrics.delete_machine(machine)
    # What a writer holding stale ids in another process leaves behind.
    with storage.engine.begin() as conn:
        conn.execute(
            sa.insert(samples_head).values(
                machine_id=machine,
                ts=to_ms(T0),
                series_ids=pack_series_ids([1]),
                series_values=pack_values([1.0]),
            )
        )
        conn.execute(sa.insert(series_latest).values(series_id=1, ts=to_ms(T0), value=1.0))
        if storage.db.is_postgres:
            storage.metrics._sql.upsert_latest.run(conn, [(machine, ([1], [to_ms(T0)], [1.0]))])
    assert latest_count(storage) == (2 if storage.db.is_postgres else 1)
    report = storage.metrics.maintain(T0 + DAY)
    assert report.expired_rows == 1
    assert head_points(storage) == 0
    assert latest_count(storage) == 0
    assert count_rows(storage, metric_chunks) == 0


def test_concurrent_writers_maintenance_and_readers(open_storage: OpenStorage) -> None:
    stores = [open_storage(), open_storage()]
    machines = [new_id() for _ in range(4)]
    batches = [samples(m, T0, 120, base=i) for i, m in enumerate(machines)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(machines) + 2, timeout=60)

    def run(work: object) -> None:
        try:
            barrier.wait()
            work()  # type: ignore[operator]
        except BaseException as error:
            errors.append(error)

    def writer(i: int) -> None:
        for sample in batches[i][0].samples:
            stores[i % 2].metrics.write([MachineSamples(machines[i], [sample])])

    def maintainer() -> None:
        for k in range(10):
            stores[k % 2].metrics.maintain(T0 + DAY)

    def reader() -> None:
        for _ in range(10):
            stores[1].metrics.latest(machines)
            stores[0].metrics.history(cpu(machines[0], T0, T0 + DAY, MINUTE))

    threads = [threading.Thread(target=run, args=(lambda i=i: writer(i),)) for i in range(4)]
    threads += [
        threading.Thread(target=run, args=(maintainer,)),
        threading.Thread(target=run, args=(reader,)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, repr(errors[0])
    stores[0].metrics.maintain(T0 + DAY)
    points = points_of(batches)
    assert_latest_equal(stores[1].metrics.latest(machines), reference_latest(points, machines))
    for machine in machines:
        query = cpu(machine, T0, T0 + DAY, 10 * SECOND)
        assert_history_equal(stores[0].metrics.history(query), reference_history(points, query))


def test_writers_sharing_series_keep_the_newest_latest_values(open_storage: OpenStorage) -> None:
    """Two writers of one store and one of another write the same series at once, in
    interleaved time order (as the ingest writer's transactions in flight may): no
    write fails, and every latest value is the newest point written."""
    first = open_storage()
    stores = [first, first, open_storage()]
    machines = [new_id() for _ in range(3)]
    names = [f"m{j}" for j in range(40)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores), timeout=60)

    def batch(k: int) -> list[MachineSamples]:
        at = T0 + k * SECOND
        return [
            MachineSamples(m, [Sample(at, [Reading(n, float(k)) for n in names])]) for m in machines
        ]

    def writer(i: int) -> None:
        try:
            barrier.wait()
            for k in range(i, 60, len(stores)):
                stores[i].metrics.write(batch(k))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, repr(errors[0])
    found = first.metrics.latest(machines)
    assert len(found) == len(machines) * len(names)
    assert {(v.timestamp, v.value) for v in found} == {(T0 + 59 * SECOND, 59.0)}


def test_maintain_reports_nothing_to_do(storage: SqlStorage) -> None:
    report = storage.metrics.maintain(T0)
    assert (report.compacted_points, report.rollup_rows, report.expired_rows) == (0, 0, 0)


def test_no_retention_keeps_everything(storage: SqlStorage) -> None:
    assert storage.metrics.retention == NO_RETENTION
    machine = new_id()
    storage.metrics.write(samples(machine, T0, 3))
    assert storage.metrics.maintain(T0 + 3650 * DAY).expired_rows == 0
    (answer,) = storage.metrics.history(cpu(machine, T0, T0 + HOUR, SECOND))
    assert answer.resolution is Resolution.RAW
    assert len(answer.points) == 3


def test_latest_keeps_the_newer_value_when_an_older_batch_arrives_later(
    storage: SqlStorage,
) -> None:
    # Batches as large as the ingest writer's (COPY and packed arrays on
    # PostgreSQL): a late batch older than the stored values, or at their very
    # timestamps, changes nothing; a newer one for some series moves only those.
    machines = [new_id() for _ in range(4)]
    shapes = [("disk.used", {"mount": f"/m{i}"}) for i in range(60)]

    def batch(at: datetime, value: float, count: int = 5, series: int = 60) -> list[MachineSamples]:
        return [
            MachineSamples(
                machine,
                [
                    Sample(
                        at - s * SECOND,
                        [
                            Reading(m, value + j, labels)
                            for j, (m, labels) in enumerate(shapes[:series])
                        ],
                    )
                    for s in range(count)
                ],
            )
            for machine in machines
        ]

    def latest() -> dict[tuple[str, str], tuple[datetime, float]]:
        return {
            (v.series.machine_id, v.series.labels[0][1]): (v.timestamp, v.value)
            for v in storage.metrics.latest(machines)
        }

    newer = T0 + MINUTE
    storage.metrics.write(batch(newer, 1000))
    expected = {(m, f"/m{j}"): (newer, 1000.0 + j) for m in machines for j in range(60)}
    assert latest() == expected
    storage.metrics.write(batch(T0, 5000))  # older
    storage.metrics.write(batch(newer, 9000, count=1))  # the same timestamp again
    assert latest() == expected
    storage.metrics.write(batch(newer + SECOND, 7000, count=1, series=30))
    for m in machines:
        for j in range(30):
            expected[m, f"/m{j}"] = (newer + SECOND, 7000.0 + j)
    assert latest() == expected
