"""Pure functions over sorted point columns: merging, bucket statistics, downsampling.

Points travel as two parallel arrays, ``ts`` (int64 ms, strictly increasing) and
``values`` (float64). Working on arrays keeps the per-point work in C: slicing,
``fsum``/``min``/``max`` and ``bisect`` never run Python code per point. Sums
use ``math.fsum`` (exactly rounded), so an average does not depend on the order
or the grouping in which points were added up.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from math import copysign, fsum
from typing import NamedTuple, TypeAlias

from lunasentri_core.model import Aggregation

IntArray: TypeAlias = "array[int]"
FloatArray: TypeAlias = "array[float]"

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
CHUNK_MS = HOUR_MS
"""Raw points and minute rollups are packed per series per chunk of this length.

It equals the hour rollup's width, so each chunk's row also carries its hour rollup.
"""


def floor_to(ts: int, width: int) -> int:
    return ts - ts % width


def int_array(values: Iterable[int] = ()) -> IntArray:
    return array("q", values)


def float_array(values: Iterable[float] = ()) -> FloatArray:
    return array("d", values)


class Stats(NamedTuple):
    """Rollup of the points of one bucket."""

    n: int
    total: float
    low: float
    high: float
    last: float


def total(values: FloatArray) -> float:
    """``fsum`` of finite values, held at the largest float when the exact sum is past
    it (two points near 1.7e308): a rollup must be storable, and compaction must not
    fail on such data pass after pass."""
    try:
        return fsum(values)
    except OverflowError:
        return copysign(sys.float_info.max, fsum(v / 2.0 for v in values))


def mean(values: FloatArray) -> float:
    """The average of a non-empty run, exact also where the sum overflows."""
    try:
        return fsum(values) / len(values)
    except OverflowError:
        return fsum(v / len(values) for v in values)


def stats_of(values: FloatArray) -> Stats:
    """The rollup of a non-empty run of values in time order."""
    return Stats(len(values), total(values), min(values), max(values), values[-1])


def merge_points(
    ts: IntArray, values: FloatArray, new_ts: IntArray, new_values: FloatArray
) -> tuple[IntArray, FloatArray, IntArray]:
    """Merge new points into existing ones; on equal timestamps the existing point wins.

    Both inputs are sorted with unique timestamps. Returns the merged columns and
    the timestamps that were actually added.
    """
    if not new_ts:
        return ts, values, int_array()
    if not ts or new_ts[0] > ts[-1]:
        # The common case: a chunk grows at its end.
        return ts + new_ts, values + new_values, new_ts
    existing = dict(zip(ts, values, strict=True))
    added = int_array(t for t in new_ts if t not in existing)
    if not added:
        return ts, values, added
    merged = dict(zip(new_ts, new_values, strict=True))
    merged.update(existing)
    keys = sorted(merged)
    return int_array(keys), float_array(merged[k] for k in keys), added


def sort_points(points: Iterable[tuple[int, float]]) -> tuple[IntArray, FloatArray]:
    """Columns of ``(ts, value)`` pairs with unique timestamps, sorted by time."""
    ordered = sorted(points)
    return int_array(p[0] for p in ordered), float_array(p[1] for p in ordered)


def clip(ts: IntArray, values: FloatArray, lo: int, hi: int) -> tuple[IntArray, FloatArray]:
    """The points with ``lo <= ts < hi``."""
    i = bisect_left(ts, lo)
    j = bisect_left(ts, hi, i)
    if i == 0 and j == len(ts):
        return ts, values
    return ts[i:j], values[i:j]


def bucket_stats(
    ts: IntArray, values: FloatArray, width: int, lo: int | None = None, hi: int | None = None
) -> dict[int, Stats]:
    """Rollups of every non-empty bucket of ``width`` among the points in ``[lo, hi)``."""
    i = 0 if lo is None else bisect_left(ts, lo)
    n = len(ts) if hi is None else bisect_left(ts, hi, i)
    out: dict[int, Stats] = {}
    while i < n:
        bucket = floor_to(ts[i], width)
        j = bisect_left(ts, bucket + width, i, n)
        out[bucket] = stats_of(values[i:j])
        i = j
    return out


class Rollups:
    """Rollup buckets of one series as parallel columns, sorted by bucket start."""

    __slots__ = ("buckets", "counts", "lasts", "maxs", "mins", "sums")

    def __init__(
        self,
        buckets: IntArray,
        counts: IntArray,
        sums: FloatArray,
        mins: FloatArray,
        maxs: FloatArray,
        lasts: FloatArray,
    ) -> None:
        self.buckets = buckets
        self.counts = counts
        self.sums = sums
        self.mins = mins
        self.maxs = maxs
        self.lasts = lasts

    @classmethod
    def empty(cls) -> Rollups:
        return cls(int_array(), int_array(), *(float_array() for _ in range(4)))

    @classmethod
    def from_stats(cls, stats: dict[int, Stats]) -> Rollups:
        keys = sorted(stats)
        rows = [stats[k] for k in keys]
        return cls(
            int_array(keys),
            int_array(r.n for r in rows),
            float_array(r.total for r in rows),
            float_array(r.low for r in rows),
            float_array(r.high for r in rows),
            float_array(r.last for r in rows),
        )

    def to_stats(self) -> dict[int, Stats]:
        return {
            bucket: Stats(count, total, low, high, last)
            for bucket, count, total, low, high, last in zip(
                self.buckets,
                self.counts,
                self.sums,
                self.mins,
                self.maxs,
                self.lasts,
                strict=True,
            )
        }

    def split(self, bucket: int) -> tuple[Rollups, dict[int, Stats]]:
        """The buckets before ``bucket`` as columns, and the others as a dict to edit."""
        i = bisect_left(self.buckets, bucket)
        buckets, counts, sums, mins, maxs, lasts = self.columns()
        before = Rollups(buckets[:i], counts[:i], sums[:i], mins[:i], maxs[:i], lasts[:i])
        after = Rollups(buckets[i:], counts[i:], sums[i:], mins[i:], maxs[i:], lasts[i:])
        return before, after.to_stats()

    def columns(self) -> tuple[IntArray, IntArray, FloatArray, FloatArray, FloatArray, FloatArray]:
        return (self.buckets, self.counts, self.sums, self.mins, self.maxs, self.lasts)

    def extend(self, other: Rollups) -> None:
        """Append buckets that all start after this object's last bucket."""
        self.buckets += other.buckets
        self.counts += other.counts
        self.sums += other.sums
        self.mins += other.mins
        self.maxs += other.maxs
        self.lasts += other.lasts

    def __len__(self) -> int:
        return len(self.buckets)


def _steps(keys: IntArray, start: int, end: int, step: int) -> Iterator[tuple[int, int, int]]:
    """``(k, i, j)``: keys ``[i, j)`` fall in step ``k``, i.e. ``[start + k*step, +step)``.

    Only non-empty steps are visited, so the cost follows the number of keys,
    not the number of steps.
    """
    i = bisect_left(keys, start)
    n = bisect_left(keys, end, i)
    while i < n:
        k = (keys[i] - start) // step
        j = bisect_left(keys, start + (k + 1) * step, i, n)
        yield k, i, j
        i = j


def downsample_points(
    ts: IntArray,
    values: FloatArray,
    start: int,
    end: int,
    step: int,
    aggregation: Aggregation,
) -> list[tuple[int, float]]:
    """``(k, value)`` for every non-empty step ``k`` of raw points in ``[start, end)``."""
    out: list[tuple[int, float]] = []
    append = out.append
    if aggregation is Aggregation.AVG:
        for k, i, j in _steps(ts, start, end, step):
            append((k, mean(values[i:j])))
    elif aggregation is Aggregation.MIN:
        for k, i, j in _steps(ts, start, end, step):
            append((k, min(values[i:j])))
    elif aggregation is Aggregation.MAX:
        for k, i, j in _steps(ts, start, end, step):
            append((k, max(values[i:j])))
    else:
        for k, _, j in _steps(ts, start, end, step):
            append((k, values[j - 1]))
    return out


def downsample_rollups(
    rollups: Rollups, start: int, end: int, step: int, aggregation: Aggregation
) -> list[tuple[int, float]]:
    """Like :func:`downsample_points`, over rollup buckets placed by their start."""
    out: list[tuple[int, float]] = []
    append = out.append
    keys = rollups.buckets
    if aggregation is Aggregation.AVG:
        sums, counts = rollups.sums, rollups.counts
        for k, i, j in _steps(keys, start, end, step):
            append((k, total(sums[i:j]) / sum(counts[i:j])))
    elif aggregation is Aggregation.MIN:
        for k, i, j in _steps(keys, start, end, step):
            append((k, min(rollups.mins[i:j])))
    elif aggregation is Aggregation.MAX:
        for k, i, j in _steps(keys, start, end, step):
            append((k, max(rollups.maxs[i:j])))
    else:
        for k, _, j in _steps(keys, start, end, step):
            append((k, rollups.lasts[j - 1]))
    return out
