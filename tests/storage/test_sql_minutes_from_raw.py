"""Minute rollups stored only once a chunk's raw points expire (issue 15).

While a chunk keeps its raw points it has no minute blob: minute reads derive
the rollups from the raw blob with the function compaction stores them with.
Retention stores them before it clears the raw points, in two phases; answers
must be the same before and after, and no phase may lose a point or a rollup.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sql_support import OpenStorage

from lunasentri_core.model import (
    Aggregation,
    HistoryQuery,
    Labels,
    MachineSamples,
    Reading,
    Resolution,
    RetentionPolicy,
    Sample,
    SeriesHistory,
    new_id,
)
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.storage.sql.metrics import CHUNK_MS, _store_minutes, to_ms
from lunasentri_core.storage.sql.schema import metric_chunks, storage_meta
from lunasentri_core.testing import assert_history_equal, points_of, reference_history

T0 = datetime(2025, 6, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
SERIES = [("cpu.percent", {}), ("disk.used", {"mount": "/"})]
SPAN_MS = 3 * CHUNK_MS
"""The points of an example: three hours (chunks), then late points in a fourth."""

_bases = itertools.count()
"""Examples share a store whose horizons only move forward: each its own days."""

values = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


def chunk_columns(storage: SqlStorage, since: datetime = T0) -> list[tuple[int, bool, bool]]:
    """Per chunk row from ``since`` on: its start, and whether it holds raw points
    and minutes."""
    c = metric_chunks.c
    with storage.engine.connect() as conn:
        rows = conn.execute(
            sa.select(c.chunk_start, c.raw, c.minutes).where(c.chunk_start >= to_ms(since))
        ).all()
    return sorted((start, raw is not None, minutes is not None) for start, raw, minutes in rows)


def raw_horizon(storage: SqlStorage) -> int | None:
    with storage.engine.connect() as conn:
        return conn.execute(
            sa.select(storage_meta.c.value).where(storage_meta.c.key == "horizon_raw")
        ).scalar()


def samples_at(machine: str, start: datetime, count: int, every: timedelta) -> MachineSamples:
    return MachineSamples(
        machine,
        [
            Sample(start + i * every, [Reading(m, i * 0.1 + len(m), lab) for m, lab in SERIES])
            for i in range(count)
        ],
    )


def minute_queries(machine: str, start: datetime, hours: int) -> list[HistoryQuery]:
    """Minute-aligned queries (answered from the minute rollups) over ``hours``."""
    end = start + hours * HOUR
    return [
        HistoryQuery(machine, metric, start, end, step, agg, labels=labels)
        for metric, labels in SERIES
        for step in (MINUTE, 5 * MINUTE)
        for agg in Aggregation
    ]


def answers(storage: SqlStorage, queries: list[HistoryQuery]) -> list[list[SeriesHistory]]:
    out = [storage.metrics.history(query) for query in queries]
    assert {h.resolution for found in out for h in found} <= {Resolution.MINUTE}
    return out


@st.composite
def points(draw: st.DrawFn, machine: str, base: datetime, span_ms: int) -> MachineSamples:
    samples = []
    for _ in range(draw(st.integers(1, 40))):
        at = base + draw(st.integers(0, span_ms - 1)) * MS
        chosen = draw(st.lists(st.sampled_from(range(len(SERIES))), min_size=1, unique=True))
        readings = [Reading(SERIES[i][0], draw(values), SERIES[i][1]) for i in chosen]
        samples.append(Sample(at, readings))
    return MachineSamples(machine, samples)


@st.composite
def aligned_queries(draw: st.DrawFn, machine: str, base: datetime) -> HistoryQuery:
    """Queries whose start, step and end fall on minutes: what minute rollups answer
    exactly (an end inside a bucket is redone from raw points while they are kept)."""
    start = draw(st.integers(-10, 4 * 60)) * MINUTE
    step = draw(st.sampled_from([1, 2, 5, 15, 30])) * MINUTE
    end = start + draw(st.integers(1, 5 * 60)) * MINUTE
    metric, labels = SERIES[draw(st.integers(0, len(SERIES) - 1))]
    agg = draw(st.sampled_from(Aggregation))
    return HistoryQuery(machine, metric, base + start, base + end, step, agg, labels=labels)


def chunks_with_points(batch: MachineSamples) -> set[tuple[str, Labels, int]]:
    return {
        (r.metric, r.labels, to_ms(s.timestamp) // CHUNK_MS)
        for s in batch.samples
        for r in s.readings
    }


def kept_late(late: MachineSamples, stored: set[tuple[str, Labels, int]]) -> MachineSamples:
    """The late points a store keeps once the raw points expired: those of chunks
    that had no row (a row without raw points cannot tell a duplicate apart)."""
    samples = []
    for sample in late.samples:
        chunk = to_ms(sample.timestamp) // CHUNK_MS
        readings = [r for r in sample.readings if (r.metric, r.labels, chunk) not in stored]
        if readings:
            samples.append(Sample(sample.timestamp, readings))
    return MachineSamples(late.machine_id, samples)


@pytest.mark.parametrize("minute_keep", [7 * DAY, None])
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_minute_reads_are_the_same_before_and_after_the_minutes_are_stored(
    open_storage: OpenStorage, minute_keep: timedelta | None, data: st.DataObject
) -> None:
    storage = open_storage(RetentionPolicy(raw=DAY, minute=minute_keep, hour=None))
    machine = new_id()
    base = T0 + next(_bases) * 30 * DAY
    first = data.draw(points(machine, base, SPAN_MS), label="points")
    storage.metrics.write([first])
    storage.metrics.maintain(base + 4 * HOUR)  # every point compacted, raw kept
    assert all(raw and not minutes for _, raw, minutes in chunk_columns(storage, base))
    queries = [data.draw(aligned_queries(machine, base), label="query") for _ in range(4)]
    derived = answers(storage, queries)
    for query, found in zip(queries, derived, strict=True):
        assert_history_equal(found, reference_history(points_of([[first]]), query))

    storage.metrics.maintain(base + 2 * DAY)  # raw points expire: minutes stored first
    assert all(minutes and not raw for _, raw, minutes in chunk_columns(storage, base))
    assert answers(storage, queries) == derived

    # Late points: dropped where the chunk's row lost its raw points, kept as
    # minutes where the series had no row in that hour (the fourth one always).
    late = data.draw(points(machine, base, SPAN_MS + CHUNK_MS), label="late points")
    storage.metrics.write([late])
    storage.metrics.maintain(base + 2 * DAY)
    expected = points_of([[first], [kept_late(late, chunks_with_points(first))]])
    for query, found in zip(queries, answers(storage, queries), strict=True):
        assert_history_equal(found, reference_history(expected, query))


def test_a_crash_between_the_phases_loses_nothing(
    open_storage: OpenStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(RetentionPolicy(raw=DAY, minute=7 * DAY, hour=None))
    machine = new_id()
    storage.metrics.write([samples_at(machine, T0, 720, 10 * SECOND)])  # two hours
    storage.metrics.maintain(T0 + 3 * HOUR)
    queries = minute_queries(machine, T0, 2)
    before = answers(storage, queries)
    horizon = raw_horizon(storage)

    def crash(now_ms: int) -> None:
        raise RuntimeError("killed between the phases")

    monkeypatch.setattr(storage.metrics, "_expire_now", crash)
    with pytest.raises(RuntimeError, match="between the phases"):
        storage.metrics.maintain(T0 + 2 * DAY)
    # Phase one stored the minutes; the raw points and the horizon are untouched.
    assert chunk_columns(storage) == [(to_ms(T0 + h * HOUR), True, True) for h in (0, 0, 1, 1)]
    assert raw_horizon(storage) == horizon
    assert answers(storage, queries) == before

    monkeypatch.undo()
    report = storage.metrics.maintain(T0 + 2 * DAY)
    assert report.expired_rows == 4  # raw blobs of two series, two hours
    assert report.rollup_rows == 0  # every minute blob was there already
    assert chunk_columns(storage) == [(to_ms(T0 + h * HOUR), False, True) for h in (0, 0, 1, 1)]
    assert answers(storage, queries) == before


def test_a_failing_second_phase_keeps_the_raw_points(
    open_storage: OpenStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(RetentionPolicy(raw=DAY, minute=7 * DAY, hour=None))
    machine = new_id()
    storage.metrics.write([samples_at(machine, T0, 360, 10 * SECOND)])
    storage.metrics.maintain(T0 + 2 * HOUR)
    queries = minute_queries(machine, T0, 1)
    before = answers(storage, queries)

    def fail(conn: object) -> None:
        raise RuntimeError("failed inside the second phase")

    # The last step of the second phase's transaction: all of it rolls back.
    monkeypatch.setattr(storage.metrics, "_clean_orphans", fail)
    with pytest.raises(RuntimeError, match="second phase"):
        storage.metrics.maintain(T0 + 2 * DAY)
    assert [raw for _, raw, _ in chunk_columns(storage)] == [True, True]
    assert answers(storage, queries) == before
    monkeypatch.undo()
    storage.metrics.maintain(T0 + 2 * DAY)
    assert chunk_columns(storage) == [(to_ms(T0), False, True)] * 2
    assert answers(storage, queries) == before


def test_a_chunk_rewritten_between_the_phases_gets_its_minutes_in_the_second(
    open_storage: OpenStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(RetentionPolicy(raw=DAY, minute=7 * DAY, hour=None))
    machine = new_id()
    storage.metrics.write([samples_at(machine, T0, 360, 10 * SECOND)])
    storage.metrics.maintain(T0 + 2 * HOUR)
    expire_at = to_ms(T0 + 2 * DAY)
    storage.metrics._materialize_minutes(expire_at)  # the first phase alone
    assert chunk_columns(storage) == [(to_ms(T0), True, True)] * 2
    # A late point compacted before the second phase: the rewritten row keeps
    # its raw points (not expired yet) and so has no minutes again.
    late = MachineSamples(
        machine, [Sample(T0 + 30 * MINUTE + SECOND, [Reading("cpu.percent", 1e6)])]
    )
    storage.metrics.write([late])
    storage.metrics._compact(to_ms(T0 + 2 * HOUR))
    assert sorted(chunk_columns(storage)) == [(to_ms(T0), True, False), (to_ms(T0), True, True)]

    monkeypatch.setattr(storage.metrics, "_materialize_minutes", lambda now_ms: 0)
    storage.metrics.maintain(T0 + 2 * DAY)  # the second phase alone
    assert chunk_columns(storage) == [(to_ms(T0), False, True)] * 2
    everything = points_of([[samples_at(machine, T0, 360, 10 * SECOND)], [late]])
    for query in minute_queries(machine, T0, 1):
        assert_history_equal(storage.metrics.history(query), reference_history(everything, query))


def test_raw_points_kept_forever_never_store_minutes(open_storage: OpenStorage) -> None:
    storage = open_storage(RetentionPolicy(raw=None, minute=DAY, hour=None))
    machine = new_id()
    batch = samples_at(machine, T0, 720, 10 * SECOND)
    storage.metrics.write([batch])
    report = storage.metrics.maintain(T0 + 30 * DAY)
    assert report.expired_rows == 0
    assert chunk_columns(storage) == [(to_ms(T0 + h * HOUR), True, False) for h in (0, 0, 1, 1)]
    # Past the minute retention, minute-aligned steps are answered from raw points.
    for query in minute_queries(machine, T0, 2):
        found = storage.metrics.history(query)
        assert {h.resolution for h in found} == {Resolution.RAW}
        assert_history_equal(found, reference_history(points_of([[batch]]), query))


def test_raw_kept_longer_than_minutes_stores_no_minutes(open_storage: OpenStorage) -> None:
    storage = open_storage(RetentionPolicy(raw=7 * DAY, minute=DAY, hour=None))
    machine = new_id()
    batch = samples_at(machine, T0, 720, 10 * SECOND)
    storage.metrics.write([batch])
    storage.metrics.maintain(T0 + 3 * HOUR)
    before = answers(storage, minute_queries(machine, T0, 2))
    report = storage.metrics.maintain(T0 + 3 * DAY)  # minutes expire, raw kept
    assert (report.rollup_rows, report.expired_rows) == (0, 0)
    assert chunk_columns(storage) == [(to_ms(T0 + h * HOUR), True, False) for h in (0, 0, 1, 1)]
    for query, was in zip(minute_queries(machine, T0, 2), before, strict=True):
        found = storage.metrics.history(query)
        assert {h.resolution for h in found} == {Resolution.RAW}
        assert_history_equal(found, was)
    report = storage.metrics.maintain(T0 + 9 * DAY)  # then raw: nothing to store first
    assert (report.rollup_rows, report.expired_rows) == (0, 4)
    assert chunk_columns(storage) == [(to_ms(T0 + h * HOUR), False, False) for h in (0, 0, 1, 1)]


def test_stored_minute_blobs_of_older_releases_are_read_as_they_are(
    storage: SqlStorage,
) -> None:
    """Stores written before this change keep their minute blobs (no migration):
    reads take the blob where a row has one, whatever its raw points."""
    machine = new_id()
    batch = samples_at(machine, T0, 360, 10 * SECOND)
    storage.metrics.write([batch])
    storage.metrics.maintain(T0 + 2 * HOUR)
    queries = minute_queries(machine, T0, 1)
    derived = answers(storage, queries)
    storage.metrics._materialize_minutes(to_ms(T0 + 2 * HOUR))  # no-op: raw kept forever
    assert chunk_columns(storage) == [(to_ms(T0), True, False)] * 2
    with storage.db.write() as conn:  # both blobs, as an older release left them
        _store_minutes(conn, None, to_ms(T0 + HOUR))
    assert chunk_columns(storage) == [(to_ms(T0), True, True)] * 2
    assert answers(storage, queries) == derived
