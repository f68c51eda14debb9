"""Compaction writes an ended hour's chunk rows in page order (first fit, largest first)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sql_support import NO_RETENTION
from sqlalchemy.engine import Engine

from lunasentri_core.model import Aggregation, HistoryQuery, MachineSamples, Reading, Sample
from lunasentri_core.storage.sql import SqlStorage, partitions
from lunasentri_core.storage.sql.metrics import to_ms
from lunasentri_core.storage.sql.row_order import (
    PAGE_BYTES,
    PG_PAGE_BYTES,
    ROW_OVERHEAD,
    page_order,
    pg_row_bytes,
)
from lunasentri_core.storage.sql.schema import metric_chunks, series

PAGE = 1000


def pages(sizes: list[int], page: int = PAGE) -> list[list[int]]:
    """How rows written one after the other fill pages: the next page when one is full."""
    out: list[list[int]] = []
    room = 0
    for size in sizes:
        if not out or size > room:
            out.append([])
            room = page
        out[-1].append(size)
        room = max(0, room - size)
    return out


row_sizes = st.lists(st.integers(min_value=1, max_value=2 * PAGE), max_size=80)


@given(row_sizes)
def test_page_order_is_a_permutation(sizes: list[int]) -> None:
    assert sorted(page_order(sizes, PAGE)) == list(range(len(sizes)))


@given(row_sizes)
def test_no_row_of_a_later_page_fits_in_an_earlier_one(sizes: list[int]) -> None:
    """First fit: a row starts a new page only when no earlier page has room for it."""
    laid_out = pages([sizes[i] for i in page_order(sizes, PAGE)])
    for i, earlier in enumerate(laid_out):
        room = PAGE - sum(earlier)
        for later in laid_out[i + 1 :]:
            assert min(later) > room


def test_page_order_needs_a_page_more_than_the_least_possible_series_order_six() -> None:
    """A machine's hour: small gauges, then the 16 byte counters of 2.6 KB each."""
    sizes = [1_100] * 9 + [90] * 9 + [700] * 16 + [2_600] * 16
    in_order = pages(sizes, PAGE_BYTES)
    packed = pages([sizes[i] for i in page_order(sizes)], PAGE_BYTES)
    least = math.ceil(sum(sizes) / PAGE_BYTES)
    assert (len(in_order), len(packed), least) == (22, 17, 16)


def test_equal_rows_keep_their_order() -> None:
    assert page_order([5, 5, 5, 5], PAGE) == [0, 1, 2, 3]


# --------------------------------------------------------------------------- compaction

HOUR = datetime(2025, 3, 1, 10, tzinfo=UTC)


def write_hour(storage: SqlStorage, machines: int, until: timedelta) -> None:
    """Series of very different sizes: noise, one-decimal walks and percentages, constants."""
    rng = random.Random(15)
    walk = 50.0
    for step in range(int(until / timedelta(seconds=5))):
        at = HOUR + timedelta(seconds=5 * step)
        walk += rng.gauss(0, 1)
        readings = [Reading("noise", rng.random(), {"n": str(n)}) for n in range(3)] + [
            Reading("walk", round(walk, 1)),
            Reading("total", 4096.0),
            # Rows of about 1 KB, a few to a page: what makes page order differ
            # from size order now that rows hold no minute blob (the raw one is kept).
            Reading("percent", round(rng.uniform(0, 100), 1)),
        ]
        storage.metrics.write(
            [MachineSamples(f"m{m}", [Sample(at, readings)]) for m in range(machines)]
        )


def chunk_rows(storage: SqlStorage, sqlite: bool) -> list[tuple[int, int]]:
    """(series id, row bytes) of the hour's chunks, in table order on SQLite."""
    c = metric_chunks.c
    query = sa.select(c.series_id, c.raw, c.minutes).where(c.chunk_start == to_ms(HOUR))
    if sqlite:
        query = query.order_by(sa.literal_column("rowid"))
    with storage.db.read() as conn:
        rows = conn.execute(query).all()
    # No minute blob while the raw points are kept (what _row_bytes counts as 0).
    return [(sid, len(raw) + len(minutes or b"") + ROW_OVERHEAD) for sid, raw, minutes in rows]


def test_an_ended_hour_is_rewritten_in_page_order_with_every_point(storage: SqlStorage) -> None:
    """SQLite appends rows in rowid order (PostgreSQL's pages: the test below)."""
    sqlite = storage.engine.dialect.name == "sqlite"
    write_hour(storage, 4, timedelta(minutes=30))
    storage.metrics.maintain(HOUR + timedelta(minutes=30))  # the open hour, series order
    open_rows = chunk_rows(storage, sqlite)
    if sqlite:
        assert [sid for sid, _ in open_rows] == sorted(sid for sid, _ in open_rows)

    write_hour(storage, 4, timedelta(hours=1))  # the rest of the hour (the first half again)
    storage.metrics.maintain(HOUR + timedelta(hours=2))
    rows = chunk_rows(storage, sqlite)
    sizes = [size for _, size in rows]
    if sqlite:
        assert page_order(sizes, PAGE_BYTES) == list(range(len(rows)))
        assert sizes != sorted(sizes, reverse=True), "page order is not size order"
    assert len(rows) == len(open_rows) == 4 * 6

    with storage.db.read() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(series)).scalar()
    assert count == 4 * 6
    query = HistoryQuery(
        "m3", "walk", HOUR, HOUR + timedelta(hours=1), timedelta(seconds=5), Aggregation.AVG
    )
    (answer,) = storage.metrics.history(query)
    assert len(answer.points) == 720


def test_postgres_row_bytes_follow_the_heap_layout() -> None:
    """Header 24, int4 + pad + int8, the blobs (1-byte header up to 126 bytes, else 4 and
    int-aligned), int4, four float8 aligned to 8; the tuple aligned to 8, a line pointer.
    A null takes a bitmap (header 32)."""
    assert pg_row_bytes(1000, 500, True) == 24 + 16 + 1004 + 504 + 4 + 32 + 4
    assert pg_row_bytes(100, 50, True) == 24 + 16 + 101 + 51 + 4 + 4 + 32 + 4
    assert pg_row_bytes(None, None, True) == 32 + 16 + 4 + 4 + 32 + 4
    assert pg_row_bytes(1000, None, False) == 32 + 16 + 1004 + 4 + 4
    assert PG_PAGE_BYTES == 8168


@pytest.mark.postgres
def test_an_ended_hour_fills_postgresql_pages_as_page_order_says(
    postgres_engine: Engine,
) -> None:
    """Each bin of the PostgreSQL page order is one heap page: no row spills over."""
    storage = SqlStorage(postgres_engine, retention=NO_RETENTION)
    storage.migrate()
    lo = partitions.window(to_ms(HOUR))
    # A new partition: the one an earlier test made holds its dead rows.
    drop_partition(storage, partitions.partition_name(lo))
    with storage.db.write() as conn:
        made = partitions.create_partition(conn, lo, wait=True)
    try:
        write_hour(storage, 40, timedelta(hours=1))
        storage.metrics.maintain(HOUR + timedelta(hours=2))
        with storage.db.read() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT (ctid::text::point)[0]::int, octet_length(raw), "
                    "octet_length(minutes), hour_count, pg_column_size(t.*) "
                    f'FROM "{made}" t ORDER BY ctid'
                )
            ).all()
        sizes = [pg_row_bytes(row[1], row[2], row[3] is not None) for row in rows]
        # The tuples as PostgreSQL stores them, aligned, with their line pointers.
        assert sizes == [-(-row[4] // 8) * 8 + 4 for row in rows]
        assert len(rows) == 40 * 6
        assert page_order(sizes, PG_PAGE_BYTES) == list(range(len(rows)))
        blocks = [
            [size for row, size in zip(rows, sizes, strict=True) if row[0] == block]
            for block in sorted({row[0] for row in rows})
        ]
        assert blocks == pages(sizes, PG_PAGE_BYTES)
    finally:
        drop_partition(storage, made)
        storage.close()


def drop_partition(storage: SqlStorage, name: str) -> None:
    with storage.db.write() as conn:
        if conn.execute(sa.text("SELECT to_regclass(:n)"), {"n": name}).scalar() is not None:
            conn.execute(sa.text(f'ALTER TABLE metric_chunks DETACH PARTITION "{name}"'))
            conn.execute(sa.text(f'DROP TABLE "{name}"'))
