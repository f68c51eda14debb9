"""Plain PostgreSQL: metric_chunks partitioned by day, kept ahead, expired by whole partitions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import exc

from lunasentri_core import RetentionPolicy
from lunasentri_core.model import HistoryQuery, MachineSamples, Reading, Sample
from lunasentri_core.storage import storage_partitioning
from lunasentri_core.storage.sql import alembic_config
from lunasentri_core.storage.sql.database import LOCK_CHUNK_INDEXES
from lunasentri_core.storage.sql.metrics import from_ms, to_ms
from lunasentri_core.storage.sql.partitions import (
    DEFAULT_PARTITION,
    KEY_BYTES,
    KEY_SLACK,
    WIDTH_MS,
    create_partition,
    is_partitioned,
    list_partitions,
    partition_name,
    rebuild_keys,
    window,
)
from lunasentri_core.storage.sql.points import float_array, int_array
from lunasentri_core.storage.sql.schema import metric_chunks, series
from lunasentri_timescale import Mode, TimescaleSettings, TimescaleStorage, TimescaleStorageFactory

pytestmark = pytest.mark.postgres

DAY = timedelta(days=1)
NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)


@pytest.fixture
def open_storage(
    fresh_schema_url: Callable[[], str],
) -> Iterator[Callable[..., TimescaleStorage]]:
    """Open (and migrate) the plugin's storage on a fresh schema, in postgres mode."""
    opened: list[TimescaleStorage] = []
    url = fresh_schema_url()

    def make(ahead: int = 3, retention: RetentionPolicy | None = None) -> TimescaleStorage:
        settings = TimescaleSettings(mode=Mode.POSTGRES, partitions_ahead=ahead)
        storage = TimescaleStorageFactory.open(url, settings=settings, retention=retention)
        assert isinstance(storage, TimescaleStorage)
        opened.append(storage)
        storage.migrate()
        return storage

    yield make
    for storage in opened:
        storage.close()


def days(storage: TimescaleStorage) -> list[int]:
    with storage.db.read() as conn:
        return [p.lo for p in list_partitions(conn)]


def holder(storage: TimescaleStorage, chunk_start: int) -> list[str]:
    """The partitions holding rows of ``chunk_start``."""
    with storage.db.read() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT tableoid::regclass::text FROM metric_chunks WHERE chunk_start = :c"
                ),
                {"c": chunk_start},
            ).scalars()
        )


def series_id(storage: TimescaleStorage) -> int:
    storage.metrics.write([MachineSamples("m1", [Sample(NOW, [Reading("cpu.percent", 1.0)])])])
    with storage.db.read() as conn:
        return int(conn.execute(sa.select(series.c.id)).scalar_one())


def store(storage: TimescaleStorage, sid: int, at: datetime, value: float) -> int:
    """A chunk holding one point at ``at``, as compaction or a bulk load writes it."""
    ms = to_ms(at)
    chunk = ms - ms % 3_600_000
    with storage.db.write() as conn:
        storage.metrics.store_chunk(conn, sid, chunk, int_array([ms]), float_array([value]))
    return chunk


def test_open_creates_the_partitions_ahead_and_says_so(
    open_storage: Callable[..., TimescaleStorage],
) -> None:
    storage = open_storage(ahead=5)
    today = window(to_ms(datetime.now(UTC)))

    # The migration made 3 ahead; opening with the setting made the other two.
    assert days(storage)[-6:] == [today + k * WIDTH_MS for k in range(6)]
    with storage.db.read() as conn:
        assert is_partitioned(conn)
        default = conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": DEFAULT_PARTITION})
        assert default.scalar() == DEFAULT_PARTITION
        brin = conn.execute(
            sa.text(
                "SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam "
                "WHERE c.relname = 'ix_metric_chunks_chunk_start' "
                "AND c.relnamespace = current_schema()::regnamespace"
            )
        ).scalar()
    assert brin == "brin"
    facts = storage_partitioning(storage)
    assert facts is not None
    assert facts["kind"] == "native"
    assert (facts["table"], facts["column"], facts["width_hours"]) == (
        "metric_chunks",
        "chunk_start",
        24,
    )
    assert facts["ahead"] == 5
    assert facts["partitions"] == len(days(storage))


def test_maintenance_keeps_partitions_ahead_as_time_passes(
    open_storage: Callable[..., TimescaleStorage],
) -> None:
    storage = open_storage(ahead=1)
    later = NOW + 40 * DAY

    storage.metrics.maintain(later)

    expected = [window(to_ms(later)), window(to_ms(later)) + WIDTH_MS]
    assert days(storage)[-2:] == expected
    storage.metrics.maintain(later)  # nothing left to create: no error, same partitions
    assert days(storage)[-2:] == expected


def test_old_and_far_future_chunks_are_stored_and_old_ones_get_their_partition(
    open_storage: Callable[..., TimescaleStorage],
) -> None:
    storage = open_storage()
    sid = series_id(storage)
    old = datetime(2001, 9, 9, 1, 46, 40, tzinfo=UTC)
    future = datetime(2200, 1, 1, 12, tzinfo=UTC)

    old_chunk = store(storage, sid, old, 1.5)
    future_chunk = store(storage, sid, future, 2.5)

    assert holder(storage, old_chunk) == [DEFAULT_PARTITION]
    assert holder(storage, future_chunk) == [DEFAULT_PARTITION]
    storage.metrics.maintain(NOW)
    # Kept forever by default: the old day gets a partition, its row moves there;
    # the far-future row stays in the DEFAULT partition (no partition for it yet).
    assert holder(storage, old_chunk) == [partition_name(window(old_chunk))]
    assert holder(storage, future_chunk) == [DEFAULT_PARTITION]
    # Its raw points expired (7 days by default); the hour rollup answers.
    hour = old.replace(minute=0, second=0)
    history = storage.metrics.history(
        HistoryQuery("m1", "cpu.percent", hour, hour + timedelta(hours=1), timedelta(hours=1))
    )
    assert [(p.timestamp, p.value) for s in history for p in s.points] == [(hour, 1.5)]


def test_retention_drops_whole_expired_partitions_and_keeps_newer_rows(
    open_storage: Callable[..., TimescaleStorage],
) -> None:
    storage = open_storage()
    sid = series_id(storage)
    chunks = {k: store(storage, sid, NOW - k * DAY, float(k)) for k in range(10)}
    storage.metrics.maintain(NOW)  # every day gets its partition (nothing expires yet)
    before = days(storage)
    assert all(window(c) in before for c in chunks.values())

    storage.metrics.retention = RetentionPolicy(
        raw=timedelta(days=1), minute=timedelta(days=2), hour=timedelta(days=4)
    )
    report = storage.metrics.maintain(NOW)

    horizon = to_ms(NOW - 4 * DAY) // 3_600_000 * 3_600_000
    gone = [lo for lo in before if lo + WIDTH_MS <= horizon]
    assert gone, "some partitions lie wholly past the horizon"
    assert not set(gone) & set(days(storage))
    with storage.db.read() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM pg_class WHERE relname = ANY(:names)"),
            {"names": [partition_name(lo) for lo in gone]},
        ).scalar()
        in_tree = conn.execute(
            sa.text("SELECT count(*) FROM pg_inherits WHERE inhparent = 'metric_chunks'::regclass")
        ).scalar()
    assert left == 0, "detached and dropped, not just emptied"
    assert in_tree == len(days(storage)) + 1  # and the DEFAULT partition
    assert report.expired_rows >= len(gone)
    for k, chunk in chunks.items():
        rows = holder(storage, chunk)
        if chunk >= horizon:
            assert rows == [partition_name(window(chunk))], k
        else:
            assert rows == [], k
    with storage.db.read() as conn:
        kept = conn.execute(
            sa.select(metric_chunks.c.chunk_start, metric_chunks.c.raw.is_not(None))
            .where(metric_chunks.c.chunk_start >= horizon)
            .order_by(metric_chunks.c.chunk_start)
        ).all()
    # The edge day keeps the row-by-row path: its raw blobs past a day are cleared.
    assert [raw for start, raw in kept] == [
        start >= to_ms(NOW - DAY) - 3_600_000 for start, _ in kept
    ]


def test_the_migration_converts_an_existing_table_with_its_rows(
    fresh_schema_url: Callable[[], str],
) -> None:
    url = fresh_schema_url()
    storage = TimescaleStorageFactory.open(url, settings=TimescaleSettings(mode=Mode.POSTGRES))
    try:
        with storage.db.write() as conn:
            command.upgrade(alembic_config(conn), "0008")
        with storage.db.write() as conn:
            assert not is_partitioned(conn)
            conn.execute(sa.insert(series).values(id=7, machine_id="m", metric="x", labels="[]"))
            starts = [to_ms(NOW) // 3_600_000 * 3_600_000 - k * 3_600_000 * 13 for k in range(6)]
            conn.execute(
                sa.insert(metric_chunks),
                [{"series_id": 7, "chunk_start": s, "hour_count": 1} for s in starts],
            )

        storage.migrate()

        with storage.db.read() as conn:
            assert is_partitioned(conn)
            rows = conn.execute(
                sa.text("SELECT chunk_start, tableoid::regclass::text FROM metric_chunks")
            ).all()
        assert sorted(rows) == sorted((s, partition_name(window(s))) for s in starts)
        # The primary key (series_id, chunk_start) holds on the partitioned table.
        with pytest.raises(exc.IntegrityError), storage.db.write() as conn:
            conn.execute(
                sa.insert(metric_chunks).values(series_id=7, chunk_start=starts[0], hour_count=2)
            )
        with storage.db.write() as conn:
            command.downgrade(alembic_config(conn), "0008")
        with storage.db.read() as conn:
            assert not is_partitioned(conn)
            assert sorted(conn.execute(sa.select(metric_chunks.c.chunk_start)).scalars()) == sorted(
                starts
            )
    finally:
        storage.close()


def key_bytes(storage: TimescaleStorage, name: str) -> int:
    with storage.db.read() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT pg_relation_size(indexrelid) FROM pg_index "
                    "WHERE indrelid = to_regclass(:n) AND indisprimary"
                ),
                {"n": name},
            ).scalar_one()
        )


def test_an_ended_day_gets_its_primary_key_rebuilt_once(
    open_storage: Callable[..., TimescaleStorage],
) -> None:
    storage = open_storage()
    partitions = storage.metrics.partitions
    assert partitions is not None
    day = window(to_ms(NOW)) - 2 * WIDTH_MS
    sids = range(1, 401)
    with storage.db.write() as conn:
        ended = create_partition(conn, day, wait=True)
        rows = [{"id": s, "machine_id": "m", "metric": f"s{s}", "labels": "{}"} for s in sids]
        conn.execute(sa.insert(series), rows)
    # An hour of every series at a time, as compaction writes ended hours.
    for hour in range(24):
        start = day + hour * 3_600_000
        chunks = {s: (int_array([start + s]), float_array([s + hour])) for s in sids}
        with storage.db.write() as conn:
            storage.metrics.store_chunks(conn, start, chunks)
    # Three series in four deleted: their entries' pages stay in the key.
    with storage.db.write() as conn:
        conn.execute(sa.delete(series).where(series.c.id % 4 != 0))
        conn.execute(sa.delete(metric_chunks).where(metric_chunks.c.series_id % 4 != 0))
    kept = [s for s in sids if s % 4 == 0]
    grown = key_bytes(storage, ended)
    slack = KEY_SLACK * KEY_BYTES * len(kept) * 24
    assert grown > slack + 2 * 8192
    today = partition_name(window(to_ms(NOW)))
    untouched = key_bytes(storage, today)

    assert partitions.settle(day + WIDTH_MS) == 0, "its last hour may still come"
    with storage.db.engine.connect() as reader:
        # A read older than the rebuild: it waits for it, then gives up for this pass.
        reader.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ")
        reader.exec_driver_sql("SELECT 1 FROM series LIMIT 1")
        assert partitions.settle(day + WIDTH_MS + 3_600_000) == 0
        reader.exec_driver_sql("ROLLBACK")
    assert key_bytes(storage, ended) == grown
    assert partitions.settle(day + WIDTH_MS + 3_600_000) == 1
    rebuilt = key_bytes(storage, ended)
    assert rebuilt <= slack + 2 * 8192 < grown
    assert key_bytes(storage, today) == untouched, "the current day is still written"
    assert partitions.settle(day + 2 * WIDTH_MS) == 0, "rebuilt once"
    with storage.db.read() as conn:
        valid = conn.execute(
            sa.text(
                "SELECT bool_and(indisvalid) AND count(*) = 2 FROM pg_index "
                "WHERE indrelid = to_regclass(:n)"
            ),
            {"n": ended},
        ).scalar_one()
    assert valid, "the key and the BRIN index: the copy the failed rebuild left is dropped"

    # Reads and an upsert through the rebuilt key.
    query = HistoryQuery("m", "s8", from_ms(day), from_ms(day + WIDTH_MS), timedelta(hours=1))
    (answer,) = storage.metrics.history(query)
    assert [p.value for p in answer.points] == [8.0 + hour for hour in range(24)]
    with storage.db.write() as conn:
        storage.metrics.store_chunk(conn, 8, day, int_array([day + 8]), float_array([-1.0]))
    (answer,) = storage.metrics.history(query)
    assert answer.points[0].value == -1.0
    assert holder(storage, day) == [ended] * len(kept)


def test_a_rebuild_another_process_runs_is_left_to_it(
    open_storage: Callable[..., TimescaleStorage],
) -> None:
    storage = open_storage()
    with storage.db.engine.connect() as other:
        other.exec_driver_sql("SELECT pg_advisory_lock(%s)", (LOCK_CHUNK_INDEXES,))
        try:
            with storage.db.engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                assert rebuild_keys(conn, [f"{DEFAULT_PARTITION}_pkey"]) == 0
        finally:
            other.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (LOCK_CHUNK_INDEXES,))
