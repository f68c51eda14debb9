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
from collections.abc import Iterable, Iterator, Sequence
from itertools import compress, islice, repeat
from math import copysign, fsum
from operator import floordiv, lt, sub, truediv
from typing import Final, NamedTuple, TypeAlias

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


def chunk_minutes(ts: IntArray, values: FloatArray, chunk_start: int) -> Rollups:
    """The minute rollups of a chunk's points: what compaction stores once the
    chunk's raw points expire, and what readers derive from them until then."""
    return Rollups.from_stats(
        bucket_stats(ts, values, MINUTE_MS, chunk_start, chunk_start + CHUNK_MS)
    )


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


class _Spans(NamedTuple):
    """The non-empty steps of sorted keys: step ``ks[x]`` holds keys ``[lo[x], hi[x])``."""

    ks: IntArray
    lo: Sequence[int]
    hi: Sequence[int]

    def slices(self) -> list[slice]:
        return list(map(slice, self.lo, self.hi))

    def counts(self) -> list[int]:
        return list(map(sub, self.hi, self.lo))

    def single(self) -> slice | None:
        """The keys' slice when each non-empty step holds exactly one key (a
        rollup bucket per step, a point per step): their values are the answer."""
        if self.lo and self.hi[-1] - self.lo[0] == len(self.lo):
            return slice(self.lo[0], self.hi[-1])
        return None


DENSE: Final = 4
"""Steps per key up to which :func:`_spans` bisects at every step boundary at once."""


def _spans(keys: IntArray, start: int, end: int, step: int, width: int | None = None) -> _Spans:
    """The non-empty steps of ``keys`` in ``[start, end)``, found in bulk.

    No more keys than steps: each key's step is computed (``map``), and when
    no two keys share one, that is the answer. Otherwise, while the steps
    from the first key's to the last key's are not many more than the keys,
    every boundary is bisected by one ``map`` and the empty steps dropped by
    ``compress``: no Python code runs per step or per key. Sparser keys with
    several in some step (a few bursts over many steps) are walked step by
    step, visiting only the non-empty ones.

    ``width``: the keys are multiples of it (rollup bucket starts), so a step no
    longer than that holds at most one; when there are as many keys as steps from
    the first key's to the last's, each step holds one.
    """
    i = bisect_left(keys, start)
    n = bisect_left(keys, end, i)
    if i == n:
        return _Spans(int_array(), [], [])
    first = (keys[i] - start) // step
    last = (keys[n - 1] - start) // step
    steps = last - first + 1
    if width is not None and step <= width and steps == n - i:
        return _Spans(int_array(range(first, last + 1)), range(i, n), range(i + 1, n + 1))
    if steps >= n - i:
        # No more keys than steps: each key may well have a step of its own
        # (minute buckets at minute steps, points at steps of their interval).
        # Then every key's step, two C calls a key, is the answer.
        ks = list(map(floordiv, map(sub, keys[i:n], repeat(start)), repeat(step)))
        if all(map(lt, ks, islice(ks, 1, None))):
            return _Spans(int_array(ks), range(i, n), range(i + 1, n + 1))
    if steps > DENSE * (n - i) + 16:
        found = list(_steps(keys, start, end, step))
        return _Spans(
            int_array(k for k, _, _ in found), [a for _, a, _ in found], [b for _, _, b in found]
        )
    # Every boundary from the first step's start to the last step's end: the
    # first is i (no key of the range lies before it) and the last n.
    bounds = start + first * step
    edges = list(
        map(
            bisect_left,
            repeat(keys, steps + 1),
            range(bounds, bounds + (steps + 1) * step, step),
            repeat(i, steps + 1),
            repeat(n, steps + 1),
        )
    )
    lo, hi = edges[:-1], edges[1:]
    full = list(map(sub, hi, lo))
    return _Spans(
        int_array(compress(range(first, last + 1), full)),
        list(compress(lo, full)),
        list(compress(hi, full)),
    )


def _means(values: FloatArray, spans: _Spans) -> Iterable[float]:
    runs = list(map(values.__getitem__, spans.slices()))
    try:
        return list(map(truediv, map(fsum, runs), spans.counts()))
    except OverflowError:  # a sum past the largest float: mean() takes the slow way
        return list(map(mean, runs))


def downsample_points(
    ts: IntArray,
    values: FloatArray,
    start: int,
    end: int,
    step: int,
    aggregation: Aggregation,
) -> tuple[IntArray, FloatArray]:
    """Every non-empty step ``k`` of raw points in ``[start, end)`` and its value,
    as two columns: ``(ks, values)``."""
    spans = _spans(ts, start, end, step)
    single = spans.single()
    out: Iterable[float]
    if single is not None:  # the mean, least, greatest and last of one value are the value
        out = values[single]
    elif aggregation is Aggregation.AVG:
        out = _means(values, spans)
    elif aggregation is Aggregation.MIN:
        out = map(min, map(values.__getitem__, spans.slices()))
    elif aggregation is Aggregation.MAX:
        out = map(max, map(values.__getitem__, spans.slices()))
    else:
        out = map(values.__getitem__, map(sub, spans.hi, repeat(1)))
    return spans.ks, out if isinstance(out, array) else float_array(out)


def downsample_rollups(
    rollups: Rollups,
    start: int,
    end: int,
    step: int,
    aggregation: Aggregation,
    width: int | None = None,
) -> tuple[IntArray, FloatArray]:
    """Like :func:`downsample_points`, over rollup buckets placed by their start
    (``width``: the buckets', whose starts are multiples of it)."""
    spans = _spans(rollups.buckets, start, end, step, width)
    single = spans.single()
    out: Iterable[float]
    if single is not None and aggregation is Aggregation.AVG:
        # A bucket a step: its sum over its count (exactly what fsum and sum of one give).
        out = map(truediv, rollups.sums[single], rollups.counts[single])
    elif single is not None:
        column = {
            Aggregation.MIN: rollups.mins,
            Aggregation.MAX: rollups.maxs,
            Aggregation.LAST: rollups.lasts,
        }[aggregation]
        out = column[single]
    elif aggregation is Aggregation.AVG:
        slices = spans.slices()
        sums = list(map(rollups.sums.__getitem__, slices))
        counts = map(sum, map(rollups.counts.__getitem__, slices))
        try:
            out = list(map(truediv, map(fsum, sums), counts))
        except OverflowError:
            out = list(map(truediv, map(total, sums), counts))
    elif aggregation is Aggregation.MIN:
        out = map(min, map(rollups.mins.__getitem__, spans.slices()))
    elif aggregation is Aggregation.MAX:
        out = map(max, map(rollups.maxs.__getitem__, spans.slices()))
    else:
        out = map(rollups.lasts.__getitem__, map(sub, spans.hi, repeat(1)))
    return spans.ks, out if isinstance(out, array) else float_array(out)
