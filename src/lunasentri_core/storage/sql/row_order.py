"""The order in which compaction writes the chunk rows of an ended hour: pages filled.

SQLite gives a new row the next rowid and appends it to the table's last leaf
page, starting a new page when the row does not fit; ``VACUUM`` copies the
rows in rowid order, so the same holds after it. Compressed chunk rows are
1-3 KB and 4 KiB pages hold 4,088 bytes of cells: written in series order
(all the byte counters of a machine after each other, 2.6 KB each), a quarter
of the file was empty space in pages, more than the rows' key, column and
index overhead together (``benchmarks/bench_block_density.py``: 2.57 bytes a
point of file in series order, 1.95 in page order, for 1.75 of blobs).

Compaction therefore writes the rows of an ended hour in first-fit-decreasing
order: the largest row first, each row into the first page-sized bin it fits
in, then bin after bin. It costs a sort and a scan per row.

PostgreSQL keeps chunk rows whole in 8 KiB heap pages (migration 0012) and
appends an insert to the page it last wrote to, taking a new one (or one the
free space map knows has room) when the row does not fit: the same holds with
its page and its row sizes (:data:`PG_PAGE_BYTES`, :func:`pg_row_bytes`),
exact so that a bin never overflows its page (an overflow would push the
following rows a page on). Bins of the SQLite size left 5.90 rows a page there,
these 6.00 (``benchmarks/bench_vs_victoriametrics.py --postgres``, a whole day).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

PAGE_BYTES: Final = 4096 - 8
"""Cell bytes of a 4 KiB table leaf page (its header takes 8)."""
ROW_OVERHEAD: Final = 64
"""Bytes of a chunk row besides its blobs: cell pointer and header, key, record header,
hour rollup columns."""
PG_PAGE_BYTES: Final = 8192 - 24
"""Bytes of an 8 KiB heap page for line pointers and tuples (its header takes 24)."""
_PG_MAXALIGN: Final = 8
_PG_TUPLE_HEADER: Final = 23
_PG_LINE_POINTER: Final = 4
_PG_COLUMNS: Final = 9
"""``metric_chunks``' columns, for the null bitmap."""


def _align(offset: int, to: int) -> int:
    return offset + (-offset) % to


def _varlena(offset: int, size: int) -> int:
    """The offset past a ``bytea`` of ``size`` bytes stored inline uncompressed at ``offset``:
    up to 126 bytes take a 1-byte header and no alignment, longer ones 4 bytes, int-aligned."""
    if size <= 126:
        return offset + 1 + size
    return _align(offset, 4) + 4 + size


def pg_row_bytes(raw: int | None, minutes: int | None, hour: bool) -> int:
    """Bytes of a ``metric_chunks`` row in a PostgreSQL heap page, its line pointer included.

    In the table's column order (``series_id`` int4, ``chunk_start`` int8,
    ``raw`` and ``minutes`` bytea, ``hour_count`` int4, four float8): each
    value aligned to its type; a null takes no bytes but puts a bitmap in the
    header. ``raw``/``minutes``: blob lengths (``None``: null); ``hour``: the
    hour rollup columns are set.
    """
    offset = 4 + 4 + 8
    for blob in (raw, minutes):
        if blob is not None:
            offset = _varlena(offset, blob)
    if hour:
        offset = _align(offset, 4) + 4
        offset = _align(offset, 8) + 4 * 8
    nulls = raw is None or minutes is None or not hour
    header = _PG_TUPLE_HEADER + ((_PG_COLUMNS + 7) // 8 if nulls else 0)
    return _align(_align(header, _PG_MAXALIGN) + offset, _PG_MAXALIGN) + _PG_LINE_POINTER


def page_order(sizes: Sequence[int], page: int = PAGE_BYTES) -> list[int]:
    """Indexes of ``sizes`` (row bytes) in first-fit-decreasing order into bins of ``page``.

    A row larger than a page (SQLite moves its tail to overflow pages) takes a
    bin of its own. Equal sizes keep their order, so the result is stable.
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        size = sizes[index]
        for b, free in enumerate(room):
            if size <= free:
                bins[b].append(index)
                room[b] = free - size
                break
        else:
            bins.append([index])
            room.append(max(0, page - size))
    return [index for found in bins for index in found]
