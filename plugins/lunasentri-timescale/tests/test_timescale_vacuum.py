"""PostgreSQL: maintenance vacuums the head after moving many points out of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from lunasentri_core.model import Machine, MachineSamples, Reading, Sample, new_id
from lunasentri_core.storage.sql import vacuum
from lunasentri_timescale import TimescaleStorage

pytestmark = pytest.mark.postgres

START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
SAMPLES = 40
READINGS = 50


def fill_head(storage: TimescaleStorage, start: datetime = START) -> None:
    """``SAMPLES`` samples of ``READINGS`` readings, 5 s apart, from ``start`` (by
    default in an hour that has ended)."""
    machine = storage.state.add_machine(Machine(id=new_id(), name="m1"))
    samples = tuple(
        Sample(
            start + timedelta(seconds=5 * i),
            tuple(Reading(f"metric{j}", float(i * j)) for j in range(READINGS)),
        )
        for i in range(SAMPLES)
    )
    storage.metrics.write([MachineSamples(machine.id, samples)])


def head_pages(storage: TimescaleStorage) -> int:
    with storage.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT pg_relation_size('samples_head') / current_setting('block_size')::int"
                )
            ).scalar_one()
        )


def test_a_pass_moving_many_points_gives_the_emptied_head_back(
    storage: TimescaleStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vacuum, "HEAD_VACUUM_POINTS", SAMPLES * READINGS)
    fill_head(storage)
    before = head_pages(storage)
    assert before > 0

    report = storage.metrics.maintain(datetime.now(UTC))

    assert report.compacted_points == SAMPLES * READINGS
    assert head_pages(storage) == 0
    assert report.freed_pages >= before  # the table's, and its free space map's


def head_vacuums(storage: TimescaleStorage) -> int:
    """Plain VACUUMs of ``samples_head`` so far (the real autovacuum's are apart)."""
    with storage.engine.connect() as conn:
        found = conn.execute(
            sa.text(
                "SELECT vacuum_count FROM pg_stat_user_tables "
                "WHERE relid = to_regclass('samples_head')"
            )
        ).scalar_one()
        return int(found)


def test_a_rewrite_of_the_current_hour_vacuums_the_head(storage: TimescaleStorage) -> None:
    # The default threshold: a few minutes of one machine's samples are enough
    # (the head is emptied every OPEN_CHUNK_EVERY_MS; left to autovacuum, its
    # dead rows stayed in the file for minutes).
    fill_head(storage, START)
    before = head_vacuums(storage)

    report = storage.metrics.maintain(START + timedelta(minutes=5))  # the hour is open

    assert report.compacted_points == SAMPLES * READINGS
    # Counted, not measured by its pages: another session's open snapshot (the
    # test database is shared) can keep VACUUM from removing the dead rows.
    assert head_vacuums(storage) == before + 1
    with storage.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM samples_head")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM metric_chunks")).scalar_one() == READINGS


def test_a_smaller_pass_leaves_the_head_to_autovacuum(
    storage: TimescaleStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vacuum, "HEAD_VACUUM_POINTS", SAMPLES * READINGS + 1)
    fill_head(storage)
    before = head_pages(storage)

    report = storage.metrics.maintain(datetime.now(UTC))

    assert report.compacted_points == SAMPLES * READINGS
    assert report.freed_pages == 0
    assert head_pages(storage) == before  # the rows are gone, their pages not yet


def head_indexes(storage: TimescaleStorage) -> dict[str, bool]:
    """The head's indexes by name, and whether each is valid."""
    with storage.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT c.relname, i.indisvalid FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = to_regclass('samples_head')"
            )
        )
        return dict(rows.all())


def index_bytes(storage: TimescaleStorage) -> int:
    with storage.engine.connect() as conn:
        found = conn.execute(sa.text("SELECT pg_indexes_size('samples_head')")).scalar_one()
        return int(found)


def test_indexes_that_outgrew_the_emptied_head_are_rebuilt(
    storage: TimescaleStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vacuum, "HEAD_VACUUM_POINTS", SAMPLES * READINGS)
    monkeypatch.setattr(vacuum, "HEAD_INDEX_SLACK", 0)
    fill_head(storage)
    indexes = head_indexes(storage)
    # What an interrupted REINDEX CONCURRENTLY leaves: an invalid index (this
    # one fails on the duplicate machine ids).
    with storage.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(sa.exc.IntegrityError):
            conn.execute(
                sa.text(
                    "CREATE UNIQUE INDEX CONCURRENTLY samples_head_ccnew "
                    "ON samples_head (machine_id)"
                )
            )
    assert head_indexes(storage) == {**indexes, "samples_head_ccnew": False}
    before = index_bytes(storage)

    report = storage.metrics.maintain(datetime.now(UTC))

    assert head_indexes(storage) == indexes  # the same ones, valid; the leftover gone
    assert all(indexes.values())
    assert index_bytes(storage) < before
    assert report.freed_pages > 0


def test_indexes_in_proportion_to_the_head_are_left_alone(
    storage: TimescaleStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vacuum, "HEAD_VACUUM_POINTS", SAMPLES * READINGS)
    fill_head(storage)
    with storage.engine.connect() as conn:
        oids = conn.execute(
            sa.text("SELECT indexrelid FROM pg_index WHERE indrelid = to_regclass('samples_head')")
        ).scalars()
        before = sorted(oids)

    storage.metrics.maintain(datetime.now(UTC))

    with storage.engine.connect() as conn:
        oids = conn.execute(
            sa.text("SELECT indexrelid FROM pg_index WHERE indrelid = to_regclass('samples_head')")
        ).scalars()
        assert sorted(oids) == before  # not rebuilt: a rebuild makes new ones


def test_a_vacuum_that_fails_is_logged_and_the_pass_keeps_its_points(
    storage: TimescaleStorage, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(vacuum, "HEAD_VACUUM_POINTS", SAMPLES * READINGS)
    fill_head(storage)

    # Another session holds the head in a lock VACUUM waits for (and the
    # compaction's statements do not); VACUUM gives up at the lock timeout
    # set here for the store's new connections.
    @sa.event.listens_for(storage.engine, "connect")
    def short_lock_timeout(dbapi_connection: object, record: object) -> None:
        dbapi_connection.execute("SET lock_timeout = '200ms'")  # type: ignore[attr-defined]
        dbapi_connection.commit()  # type: ignore[attr-defined]

    storage.engine.dispose()
    other = sa.create_engine(storage.engine.url)
    try:
        with other.connect() as holder:
            holder.execute(sa.text("LOCK TABLE samples_head IN SHARE UPDATE EXCLUSIVE MODE"))
            report = storage.metrics.maintain(datetime.now(UTC))
            holder.rollback()
    finally:
        other.dispose()

    assert report.compacted_points == SAMPLES * READINGS
    assert report.freed_pages == 0
    assert "samples_head was not vacuumed" in caplog.text
    with storage.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM metric_chunks")).scalar_one() == READINGS
