"""The pure parts of the SQL storage: packed blocks, merging, rollups, downsampling."""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lunasentri_core.errors import StorageError
from lunasentri_core.model import Aggregation
from lunasentri_core.storage.sql import blocks
from lunasentri_core.storage.sql.points import (
    MINUTE_MS,
    FloatArray,
    IntArray,
    Rollups,
    bucket_stats,
    downsample_points,
    downsample_rollups,
    float_array,
    int_array,
    merge_points,
    sort_points,
)

finite = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e12, max_value=1e12)
timestamps = st.integers(min_value=-(10**12), max_value=10**13)


def points(min_size: int = 0) -> st.SearchStrategy[dict[int, float]]:
    return st.dictionaries(timestamps, finite, min_size=min_size, max_size=60)


def columns(data: dict[int, float]) -> tuple[IntArray, FloatArray]:
    return sort_points(data.items())


def naive_steps(
    data: dict[int, float], start: int, end: int, step: int, aggregation: Aggregation
) -> list[tuple[int, float]]:
    steps: dict[int, list[tuple[int, float]]] = {}
    for ts, value in sorted(data.items()):
        if start <= ts < end:
            steps.setdefault((ts - start) // step, []).append((ts, value))
    out = []
    for k, pts in sorted(steps.items()):
        values = [v for _, v in pts]
        if aggregation is Aggregation.AVG:
            out.append((k, math.fsum(values) / len(values)))
        elif aggregation is Aggregation.MIN:
            out.append((k, min(values)))
        elif aggregation is Aggregation.MAX:
            out.append((k, max(values)))
        else:
            out.append((k, pts[-1][1]))
    return out


def pairs(steps: tuple[IntArray, FloatArray]) -> list[tuple[int, float]]:
    ks, values = steps
    assert ks.typecode == "q"
    assert values.typecode == "d"
    return list(zip(ks, values, strict=True))


def assert_steps_close(
    got: tuple[IntArray, FloatArray] | Sequence[tuple[int, float]],
    want: tuple[IntArray, FloatArray] | Sequence[tuple[int, float]],
) -> None:
    got = pairs(got) if isinstance(got, tuple) else got
    want = pairs(want) if isinstance(want, tuple) else want
    assert [k for k, _ in got] == [k for k, _ in want]
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6), (a, b)


# --------------------------------------------------------------------------- blocks


@given(points())
def test_raw_block_round_trip(data: dict[int, float]) -> None:
    ts, values = columns(data)
    decoded_ts, decoded_values = blocks.decode_raw(blocks.encode_raw(ts, values))
    assert list(decoded_ts) == list(ts)
    assert list(decoded_values) == list(values)


def test_minute_block_round_trip() -> None:
    stats = bucket_stats(
        int_array([0, 1_000, 61_000, 200_000]), float_array([1.0, 3.0, -2.0, 7.5]), MINUTE_MS
    )
    rollups = Rollups.from_stats(stats)
    decoded = Rollups(*blocks.decode_minutes(blocks.encode(rollups.columns())))
    assert decoded.to_stats() == stats


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x01",
        struct.pack("<BBI", 9, 1, 0) + zlib.compress(b""),
        struct.pack("<BBI", 1, 1, 3) + zlib.compress(b"\x00" * 47),
        struct.pack("<BBI", 1, 1, 1) + zlib.compress(b"\x00" * 17),
        struct.pack("<BBI", 1, 1, 1) + b"not zlib at all",
    ],
    ids=["empty", "short-header", "unknown-version", "short", "long", "not-compressed"],
)
def test_corrupt_blocks_are_reported(blob: bytes) -> None:
    with pytest.raises(StorageError, match="corrupt"):
        blocks.decode_raw(blob)


def test_columns_must_be_equally_long() -> None:
    with pytest.raises(ValueError, match="same length"):
        blocks.encode((int_array([1, 2]), float_array([1.0])))


# --------------------------------------------------------------------------- merging


@given(points(), points())
def test_merge_keeps_existing_points(old: dict[int, float], new: dict[int, float]) -> None:
    ts, values = columns(old)
    new_ts, new_values = columns(new)
    merged_ts, merged_values, added = merge_points(ts, values, new_ts, new_values)
    expected = {**new, **old}
    assert list(merged_ts) == sorted(expected)
    assert list(merged_values) == [expected[t] for t in sorted(expected)]
    assert list(added) == sorted(set(new) - set(old))


# --------------------------------------------------------------------------- downsampling


steps = st.integers(min_value=1, max_value=10**9)


@given(
    points(),
    timestamps,
    st.integers(min_value=1, max_value=10**10),
    steps,
    st.sampled_from(Aggregation),
)
def test_downsample_points_matches_the_naive_reference(
    data: dict[int, float], start: int, length: int, step: int, aggregation: Aggregation
) -> None:
    ts, values = columns(data)
    got = downsample_points(ts, values, start, start + length, step, aggregation)
    assert_steps_close(got, naive_steps(data, start, start + length, step, aggregation))


dense_points = st.dictionaries(
    st.integers(min_value=0, max_value=100_000), finite, min_size=0, max_size=300
)


@given(
    dense_points,
    st.integers(min_value=-1_000, max_value=50_000),
    st.integers(min_value=1, max_value=120_000),
    st.integers(min_value=1, max_value=2_000),
    st.sampled_from(Aggregation),
)
def test_downsample_in_bulk_is_exactly_the_reference(
    data: dict[int, float], start: int, length: int, step: int, aggregation: Aggregation
) -> None:
    # Many points a step and many steps a point: both ways of finding the steps
    # (every boundary at once, or walking the non-empty steps). The sums are
    # exactly rounded (fsum), so the values are equal, not only close.
    ts, values = columns(data)
    got = pairs(downsample_points(ts, values, start, start + length, step, aggregation))
    assert got == naive_steps(data, start, start + length, step, aggregation)


@given(points(min_size=1), st.sampled_from(Aggregation))
def test_a_bucket_a_step_answers_from_the_buckets(
    data: dict[int, float], aggregation: Aggregation
) -> None:
    # Minute steps over minute rollups: each step is one bucket, read without slicing.
    ts, values = columns(data)
    rollups = Rollups.from_stats(bucket_stats(ts, values, MINUTE_MS))
    start = rollups.buckets[0]
    end = rollups.buckets[-1] + MINUTE_MS
    got = pairs(downsample_rollups(rollups, start, end, MINUTE_MS, aggregation))
    stats = rollups.to_stats()
    pick = {
        Aggregation.AVG: lambda s: s.total / s.n,
        Aggregation.MIN: lambda s: s.low,
        Aggregation.MAX: lambda s: s.high,
        Aggregation.LAST: lambda s: s.last,
    }[aggregation]
    assert got == [((b - start) // MINUTE_MS, pick(stats[b])) for b in sorted(stats)]


def test_downsample_over_sparse_steps() -> None:
    # Two points a million steps apart: the steps between are never visited.
    ts, values = int_array([0, 10**9]), float_array([1.0, 2.0])
    got = downsample_points(ts, values, 0, 10**9 + 1, 1_000, Aggregation.AVG)
    assert pairs(got) == [(0, 1.0), (10**6, 2.0)]
    assert pairs(downsample_points(ts, values, 1, 10**9, 1_000, Aggregation.LAST)) == []
    # Bursts far apart, several points in a step: the non-empty steps are walked.
    ts = int_array([0, 1, 2, 10**9, 10**9 + 1])
    values = float_array([1.0, 2.0, 3.0, 4.0, 6.0])
    got = downsample_points(ts, values, 0, 10**9 + 2, 1_000, Aggregation.AVG)
    assert pairs(got) == [(0, 2.0), (10**6, 5.0)]


def test_downsample_average_past_the_largest_float() -> None:
    # The bulk sum overflows: the step's average is still exact.
    big = 1.7e308
    ts, values = int_array([0, 1, 10]), float_array([big, big, 4.0])
    got = pairs(downsample_points(ts, values, 0, 20, 10, Aggregation.AVG))
    assert got == [(0, big), (1, 4.0)]
    rollups = Rollups.from_stats(bucket_stats(ts, values, 1))
    assert pairs(downsample_rollups(rollups, 0, 20, 10, Aggregation.AVG))[1] == (1, 4.0)


@given(
    points(),
    st.integers(min_value=-(10**4), max_value=10**4),
    st.integers(min_value=1, max_value=200),
    st.integers(min_value=1, max_value=120),
    st.sampled_from(Aggregation),
)
def test_aligned_rollups_answer_like_raw_points(
    data: dict[int, float],
    start_minute: int,
    minutes: int,
    step_minutes: int,
    aggregation: Aggregation,
) -> None:
    # Buckets and steps aligned to the minute: rollups must give the raw answer.
    start = start_minute * MINUTE_MS
    end = start + minutes * MINUTE_MS
    step = step_minutes * MINUTE_MS
    ts, values = columns({t % (10**7): v for t, v in data.items()})
    rollups = Rollups.from_stats(bucket_stats(ts, values, MINUTE_MS))
    raw = downsample_points(ts, values, start, end, step, aggregation)
    assert_steps_close(downsample_rollups(rollups, start, end, step, aggregation), raw)


@given(points(min_size=1), st.integers(min_value=1, max_value=10**7))
def test_bucket_stats(data: dict[int, float], width: int) -> None:
    ts, values = columns(data)
    stats = bucket_stats(ts, values, width)
    assert sum(s.n for s in stats.values()) == len(data)
    for bucket, s in stats.items():
        inside = [(t, v) for t, v in sorted(data.items()) if bucket <= t < bucket + width]
        assert s.n == len(inside)
        assert s.low == min(v for _, v in inside)
        assert s.high == max(v for _, v in inside)
        assert s.last == inside[-1][1]
        assert math.isclose(s.total, math.fsum(v for _, v in inside), rel_tol=1e-9, abs_tol=1e-3)


@given(
    points(),
    st.integers(min_value=-(10**7), max_value=10**7),
    st.integers(min_value=1, max_value=10**6),
    st.integers(min_value=1, max_value=2 * MINUTE_MS),
    st.sampled_from(Aggregation),
)
def test_rollups_with_their_width_answer_as_without(
    data: dict[int, float], start: int, span: int, step: int, aggregation: Aggregation
) -> None:
    # Told the buckets' width, steps no longer than it (each holding at most one
    # bucket) may be found by arithmetic: the answer must be the same, unaligned too.
    ts, values = columns({t % (10**7): v for t, v in data.items()})
    rollups = Rollups.from_stats(bucket_stats(ts, values, MINUTE_MS))
    end = start + span
    told = downsample_rollups(rollups, start, end, step, aggregation, MINUTE_MS)
    plain = downsample_rollups(rollups, start, end, step, aggregation)
    assert list(told[0]) == list(plain[0])
    assert [struct.pack("<d", v) for v in told[1]] == [struct.pack("<d", v) for v in plain[1]]
