"""PostgreSQL: maintenance rewrites the small tables a pass left mostly free space."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from lunasentri_core.model import HistoryQuery, Machine, MachineSamples, Reading, Sample, new_id
from lunasentri_core.storage.sql import rewrite
from lunasentri_core.storage.sql.metrics import to_ms
from lunasentri_core.storage.sql.partitions import partition_name, window
from lunasentri_core.storage.sql.singleton import lock_key
from lunasentri_timescale import TimescaleStorage

pytestmark = pytest.mark.postgres


def ended_hour(now: datetime) -> datetime:
    """Two hours before ``now``'s hour, or 21:00 when that would put :data:`NOW` in the next day.

    Maintenance runs at :data:`NOW` and makes that day's partition: the hour
    must fall in the same day, or its rows land in another partition than
    :data:`PARTITION` (these tests failed when run between 00:00 and 02:00 UTC).
    """
    hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    return hour.replace(hour=21) if hour.hour > 21 else hour


HOUR = ended_hour(datetime.now(UTC))
NOW = HOUR + timedelta(hours=2, minutes=1)
READINGS = 40
SAMPLES = 360  # half an hour every 5 s: chunk rows of a few KB
PARTITION = partition_name(window(to_ms(HOUR)))


@pytest.fixture
def machine(storage: TimescaleStorage) -> str:
    return storage.state.add_machine(Machine(id=new_id(), name="m1")).id


def write(storage: TimescaleStorage, machine: str, first: int, count: int) -> None:
    """Samples ``first`` to ``first + count`` of the hour (5 s apart), every reading."""
    samples = tuple(
        Sample(
            HOUR + timedelta(seconds=5 * i),
            tuple(Reading(f"metric{j}", float(i * j % 97)) for j in range(READINGS)),
        )
        for i in range(first, first + count)
    )
    storage.metrics.write([MachineSamples(machine, samples)])


def churned(storage: TimescaleStorage, machine: str) -> None:
    """The hour compacted, then again with late points: its rows written twice."""
    write(storage, machine, 0, SAMPLES // 2)
    storage.metrics.maintain(NOW)
    write(storage, machine, SAMPLES // 2, SAMPLES // 2)


def filenode(storage: TimescaleStorage, table: str = PARTITION) -> int:
    """The table's file: a rewrite gives it a new one."""
    with storage.engine.connect() as conn:
        found = conn.execute(sa.text("SELECT pg_relation_filenode(to_regclass(:t))"), {"t": table})
        return int(found.scalar_one())


def chunks(storage: TimescaleStorage) -> list[tuple[object, ...]]:
    with storage.engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT series_id, chunk_start, md5(raw), md5(minutes), hour_count, "
                    "hour_sum, hour_last FROM metric_chunks ORDER BY 1, 2"
                )
            ).all()
        )


def history(storage: TimescaleStorage, machine: str) -> list[tuple[datetime, float]]:
    found = storage.metrics.history(
        HistoryQuery(machine, "metric7", HOUR, HOUR + timedelta(hours=1), timedelta(seconds=5))
    )
    return [(p.timestamp, p.value) for s in found for p in s.points]


def expected(count: int) -> list[tuple[datetime, float]]:
    return [(HOUR + timedelta(seconds=5 * i), float(i * 7 % 97)) for i in range(count)]


def test_a_pass_rewrites_the_partition_it_left_mostly_free(
    storage: TimescaleStorage, machine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rewrite, "MIN_WASTE_BYTES", 0)
    churned(storage, machine)
    before = filenode(storage)

    report = storage.metrics.maintain(NOW)

    assert report.compacted_points == READINGS * SAMPLES // 2
    assert filenode(storage) != before
    assert history(storage, machine) == expected(SAMPLES)
    with storage.engine.connect() as conn:
        found = rewrite.measure(conn, PARTITION)
    # Other sessions of the shared test database may hold snapshots that keep
    # the replaced rows alive through the rewrite, so only their count is sure.
    assert found.live > 0
    assert len(chunks(storage)) == READINGS


def test_a_partition_written_once_is_left_alone(storage: TimescaleStorage, machine: str) -> None:
    storage.metrics.maintain(NOW)  # the day's partition exists before its rows come
    write(storage, machine, 0, SAMPLES)
    before = filenode(storage)

    report = storage.metrics.maintain(NOW)

    assert report.compacted_points == READINGS * SAMPLES
    assert filenode(storage) == before
    assert history(storage, machine) == expected(SAMPLES)


def test_a_partition_past_the_size_limit_is_left_alone(
    storage: TimescaleStorage, machine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rewrite, "MIN_WASTE_BYTES", 0)
    monkeypatch.setattr(rewrite, "MAX_BYTES", 8192)
    churned(storage, machine)
    before = filenode(storage)

    storage.metrics.maintain(NOW)

    assert filenode(storage) == before
    assert history(storage, machine) == expected(SAMPLES)


def test_a_reader_that_began_before_the_rewrite_reads_what_it_saw(
    storage: TimescaleStorage, machine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rewrite, "MIN_WASTE_BYTES", 0)
    churned(storage, machine)
    seen = chunks(storage)
    before = filenode(storage)
    other = sa.create_engine(storage.engine.url)
    try:
        with other.connect() as reader:
            reader = reader.execution_options(isolation_level="REPEATABLE READ")
            # Its snapshot is taken here; it has not touched metric_chunks yet,
            # so it holds no lock the rewrite waits for.
            reader.execute(sa.text("SELECT count(*) FROM series")).scalar_one()

            storage.metrics.maintain(NOW)
            assert filenode(storage) != before

            rows = reader.execute(
                sa.text(
                    "SELECT series_id, chunk_start, md5(raw), md5(minutes), hour_count, "
                    "hour_sum, hour_last FROM metric_chunks ORDER BY 1, 2"
                )
            ).all()
            reader.rollback()
    finally:
        other.dispose()
    assert [tuple(row) for row in rows] == seen  # the versions of its snapshot, not none
    assert history(storage, machine) == expected(SAMPLES)


def test_a_rewrite_that_cannot_get_its_lock_gives_up_and_the_pass_keeps_its_points(
    storage: TimescaleStorage,
    machine: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(rewrite, "MIN_WASTE_BYTES", 0)
    monkeypatch.setattr(rewrite, "LOCK_TIMEOUT", "100ms")
    churned(storage, machine)
    before = filenode(storage)
    other = sa.create_engine(storage.engine.url)
    try:
        with other.connect() as holder:
            # A long read of the partition: VACUUM FULL must wait for it.
            holder.execute(sa.text(f'LOCK TABLE "{PARTITION}" IN ACCESS SHARE MODE'))
            with caplog.at_level("INFO", logger=rewrite.__name__):
                report = storage.metrics.maintain(NOW)
            holder.rollback()
    finally:
        other.dispose()

    assert report.compacted_points == READINGS * SAMPLES // 2
    assert filenode(storage) == before
    assert f"{PARTITION} not rewritten this pass" in caplog.text
    assert history(storage, machine) == expected(SAMPLES)
    # The lock timeout was the rewrite's own: the pool's connection is back to the default.
    with storage.engine.connect() as conn:
        assert conn.execute(sa.text("SHOW lock_timeout")).scalar_one() == "0"


def test_another_process_rewriting_makes_this_one_skip(
    storage: TimescaleStorage, machine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rewrite, "MIN_WASTE_BYTES", 0)
    churned(storage, machine)
    before = filenode(storage)
    other = sa.create_engine(storage.engine.url)
    try:
        with other.connect() as holder:
            schema = holder.execute(sa.text("SELECT current_schema()")).scalar_one()
            key = {"c": lock_key(rewrite.LOCK_NAME, schema)[0]}
            key["o"] = lock_key(rewrite.LOCK_NAME, schema)[1]
            holder.execute(sa.text("SELECT pg_advisory_lock(:c, :o)"), key)
            report = storage.metrics.maintain(NOW)
            holder.execute(sa.text("SELECT pg_advisory_unlock(:c, :o)"), key)
    finally:
        other.dispose()

    assert report.compacted_points == READINGS * SAMPLES // 2
    assert filenode(storage) == before
    assert history(storage, machine) == expected(SAMPLES)


def test_switched_off_nothing_is_rewritten(
    storage: TimescaleStorage, machine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rewrite, "MIN_WASTE_BYTES", 0)
    storage.metrics.rewrite_bloated = False
    churned(storage, machine)
    before = filenode(storage)

    storage.metrics.maintain(NOW)

    assert filenode(storage) == before
