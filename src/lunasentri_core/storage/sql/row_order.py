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
in, then bin after bin. It costs a sort and a scan per row; PostgreSQL
(which moves values this size out of line) is indifferent to the order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

PAGE_BYTES: Final = 4096 - 8
"""Cell bytes of a 4 KiB table leaf page (its header takes 8)."""
ROW_OVERHEAD: Final = 64
"""Bytes of a chunk row besides its blobs: cell pointer and header, key, record header,
hour rollup columns."""


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
