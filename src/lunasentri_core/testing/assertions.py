"""Comparing a store's answers with the reference, with messages that say what differs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from lunasentri_core.model import SeriesHistory, SeriesValue
from lunasentri_core.testing.reference import series_order

REL_TOLERANCE = 1e-9
"""Averages may be summed in another order than the reference sums them."""


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOLERANCE, abs_tol=REL_TOLERANCE)


def _check_aware(when: datetime, what: str) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise AssertionError(f"{what}: timestamp {when!r} has no timezone (answers must be UTC)")


def assert_history_equal(
    actual: Sequence[SeriesHistory], expected: Sequence[SeriesHistory], *, context: str = ""
) -> None:
    """Same series, same step timestamps and (within rounding) the same values.

    Series order does not matter; points must be in ascending time order. The
    resolution is not compared (see the storage contract for when it is).
    """
    where = f" ({context})" if context else ""
    got = sorted(actual, key=lambda h: series_order(h.series))
    want = sorted(expected, key=lambda h: series_order(h.series))
    got_keys = [h.series for h in got]
    want_keys = [h.series for h in want]
    if got_keys != want_keys:
        raise AssertionError(
            f"series differ{where}:\n  got      {got_keys}\n  expected {want_keys}"
        )
    for have, should in zip(got, want, strict=True):
        _compare_points(have, should, where)


def _compare_points(have: SeriesHistory, should: SeriesHistory, where: str) -> None:
    name = f"{have.series.metric}{dict(have.series.labels)}"
    for point in have.points:
        _check_aware(point.timestamp, name)
    stamps = [p.timestamp for p in have.points]
    if stamps != sorted(stamps):
        raise AssertionError(f"{name}{where}: points are not in ascending time order")
    if len(have.points) != len(should.points):
        raise AssertionError(
            f"{name}{where}: {len(have.points)} points, expected {len(should.points)}\n"
            f"  got steps      {[p.timestamp.isoformat() for p in have.points][:12]}\n"
            f"  expected steps {[p.timestamp.isoformat() for p in should.points][:12]}"
        )
    for got_point, want_point in zip(have.points, should.points, strict=True):
        if got_point.timestamp != want_point.timestamp or not _close(
            got_point.value, want_point.value
        ):
            raise AssertionError(
                f"{name}{where}: got ({got_point.timestamp.isoformat()}, {got_point.value!r}), "
                f"expected ({want_point.timestamp.isoformat()}, {want_point.value!r})"
            )


def assert_latest_equal(actual: Sequence[SeriesValue], expected: Sequence[SeriesValue]) -> None:
    """Same series with the same newest timestamp and value, in any order."""
    got = sorted(actual, key=lambda v: series_order(v.series))
    want = sorted(expected, key=lambda v: series_order(v.series))
    if [v.series for v in got] != [v.series for v in want]:
        raise AssertionError(
            f"latest: series differ:\n  got      {[v.series for v in got]}\n"
            f"  expected {[v.series for v in want]}"
        )
    for have, should in zip(got, want, strict=True):
        _check_aware(have.timestamp, "latest")
        if have.timestamp != should.timestamp or not _close(have.value, should.value):
            raise AssertionError(
                f"latest {have.series}: got ({have.timestamp.isoformat()}, {have.value!r}), "
                f"expected ({should.timestamp.isoformat()}, {should.value!r})"
            )
