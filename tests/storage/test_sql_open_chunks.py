"""Compaction leaves the current hour's chunks uncompressed and compresses ended hours.

Every pass rewrites the chunk of the current hour of every series that
reported; compressing it each time made a pass cost more the later in the hour
it ran. On PostgreSQL the current hour is compressed too: an updated row's old
version stays in the table's file, and plain blocks left several times the
live data there. Answers must not depend on whether a chunk is compressed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from lunasentri_core.model import Aggregation, HistoryQuery, MachineSamples, Reading, Sample
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.storage.sql.blocks import (
    FLAG_ZLIB,
    FORMAT_V1,
    FORMAT_VERSION,
    decode_raw,
    minutes_of_raw,
)
from lunasentri_core.storage.sql.metrics import to_ms
from lunasentri_core.storage.sql.schema import metric_chunks

HOUR_START = datetime(2025, 3, 1, 10, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def write(storage: SqlStorage, start: datetime, count: int) -> None:
    storage.metrics.write(
        [
            MachineSamples(
                "m1",
                [
                    Sample(
                        start + i * 5 * SECOND,
                        [
                            Reading("cpu.percent", float(i)),
                            Reading("disk.used", 100.0 + i, {"mount": "/"}),
                        ],
                    )
                    for i in range(count)
                ],
            )
        ]
    )


def chunk_flags(storage: SqlStorage) -> dict[int, int]:
    """Per chunk start: the flags byte of the raw blob.

    Open chunks are plain version 1 blocks; ended ones version 3, compressed.
    No chunk has a minute blob while its raw points are kept.
    """
    c = metric_chunks.c
    with storage.db.read() as conn:
        rows = conn.execute(sa.select(c.chunk_start, c.raw, c.minutes)).all()
    flags: dict[int, int] = {}
    for chunk_start, raw, minutes in rows:
        assert raw is not None
        assert minutes is None
        version = FORMAT_VERSION if raw[1] & FLAG_ZLIB else FORMAT_V1
        assert raw[0] == version
        assert flags.setdefault(chunk_start, raw[1]) == raw[1], "series of one hour disagree"
    return flags


def history(storage: SqlStorage, start: datetime, end: datetime) -> list[object]:
    query = HistoryQuery(
        machine_id="m1",
        metric="disk.used",
        start=start,
        end=end,
        step=timedelta(minutes=1),
        aggregation=Aggregation.AVG,
    )
    return [(p.timestamp, p.value) for h in storage.metrics.history(query) for p in h.points]


def test_the_open_hour_stays_uncompressed_and_an_ended_hour_is_compressed(
    storage: SqlStorage,
) -> None:
    storage.metrics.compress_open = False  # SQLite's way (PostgreSQL's: the next test)
    write(storage, HOUR_START, 6)  # 10:00:00 .. 10:00:25
    storage.metrics.maintain(HOUR_START + 40 * SECOND)
    assert chunk_flags(storage) == {to_ms(HOUR_START): 0}
    assert history(storage, HOUR_START, HOUR_START + timedelta(hours=2)) == [(HOUR_START, 102.5)]

    write(storage, HOUR_START + 60 * SECOND, 6)  # a later pass appends to the open chunk
    storage.metrics.maintain(HOUR_START + 90 * SECOND)
    assert chunk_flags(storage) == {to_ms(HOUR_START): 0}
    minute = HOUR_START + timedelta(minutes=1)
    grown = [(HOUR_START, 102.5), (minute, 102.5)]
    assert history(storage, HOUR_START, HOUR_START + timedelta(hours=2)) == grown

    # The last points of the hour arrive; the pass after the hour has ended
    # writes the chunk for the last time, compressed.
    write(storage, HOUR_START + timedelta(minutes=59, seconds=50), 2)
    storage.metrics.maintain(HOUR_START + timedelta(hours=1, seconds=5))
    assert chunk_flags(storage) == {to_ms(HOUR_START): FLAG_ZLIB}
    last = (HOUR_START + timedelta(minutes=59), 100.5)
    assert history(storage, HOUR_START, HOUR_START + timedelta(hours=2)) == [*grown, last]


def test_postgresql_compresses_the_open_hour_too(storage: SqlStorage) -> None:
    assert storage.metrics.compress_open is storage.db.is_postgres
    write(storage, HOUR_START, 6)
    storage.metrics.maintain(HOUR_START + 40 * SECOND)
    open_flags = FLAG_ZLIB if storage.db.is_postgres else 0
    assert chunk_flags(storage) == {to_ms(HOUR_START): open_flags}
    assert history(storage, HOUR_START, HOUR_START + timedelta(hours=2)) == [(HOUR_START, 102.5)]

    write(storage, HOUR_START + timedelta(minutes=6), 6)  # the next rewrite appends to it
    storage.metrics.maintain(HOUR_START + timedelta(minutes=6, seconds=30))
    assert chunk_flags(storage) == {to_ms(HOUR_START): open_flags}
    six = HOUR_START + timedelta(minutes=6)
    assert history(storage, HOUR_START, HOUR_START + timedelta(hours=2)) == [
        (HOUR_START, 102.5),
        (six, 102.5),
    ]
    c = metric_chunks.c
    with storage.db.read() as conn:
        (raw,) = conn.execute(
            sa.select(c.raw).where(c.chunk_start == to_ms(HOUR_START)).limit(1)
        ).one()
    assert len(decode_raw(raw)[0]) == 12  # both rewrites' points, in one block


def test_open_and_compressed_chunks_decode_to_the_same_points(storage: SqlStorage) -> None:
    write(storage, HOUR_START, 12)
    storage.metrics.maintain(HOUR_START + timedelta(minutes=5))
    c = metric_chunks.c
    with storage.db.read() as conn:
        open_rows = conn.execute(sa.select(c.series_id, c.raw)).all()
    # Late points of the same (now ended) hour make compaction rewrite it compressed.
    write(storage, HOUR_START + timedelta(minutes=30), 1)
    storage.metrics.maintain(HOUR_START + timedelta(hours=1, minutes=1))
    with storage.db.read() as conn:
        sealed = dict(conn.execute(sa.select(c.series_id, c.raw)).all())
    for sid, raw in open_rows:
        ts, values = decode_raw(raw)
        sealed_ts, sealed_values = decode_raw(sealed[sid])
        assert list(sealed_ts[:-1]) == list(ts)
        assert list(sealed_values[:-1]) == list(values)
        open_buckets = minutes_of_raw(raw)[0]
        assert minutes_of_raw(sealed[sid])[0][: len(open_buckets)] == open_buckets
