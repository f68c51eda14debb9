"""The reference model of a metric store, and the comparisons built on it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lunasentri_core import (
    Aggregation,
    HistoryPoint,
    HistoryQuery,
    MachineSamples,
    Reading,
    Resolution,
    Sample,
    SeriesHistory,
    SeriesKey,
    SeriesValue,
)
from lunasentri_core.testing import (
    BASE_TIME,
    assert_history_equal,
    assert_latest_equal,
    points_of,
    reference_history,
    reference_latest,
)

T0 = BASE_TIME
S = timedelta(seconds=1)
ROOT = SeriesKey("m", "disk.used", {"mount": "/"})
HOME = SeriesKey("m", "disk.used", {"mount": "/home"})


def batch(*points: tuple[int, float, str]) -> list[MachineSamples]:
    """Points as (seconds after T0, value, mount)."""
    return [
        MachineSamples(
            "m",
            [
                Sample(T0 + s * S, [Reading("disk.used", v, {"mount": mount})])
                for s, v, mount in points
            ],
        )
    ]


POINTS = points_of(
    [
        batch((0, 1, "/"), (10, 3, "/"), (70, 5, "/"), (130, 9, "/home"), (5, 2, "/")),
        batch((10, 100, "/")),  # a retry with another value: the first one stays
    ]
)


def history(
    aggregation: Aggregation, **overrides: object
) -> list[tuple[str, list[tuple[int, float]]]]:
    fields: dict[str, object] = {
        "machine_id": "m",
        "metric": "disk.used",
        "start": T0,
        "end": T0 + 180 * S,
        "step": 60 * S,
        "aggregation": aggregation,
    }
    fields.update(overrides)
    answer = reference_history(POINTS, HistoryQuery(**fields))  # type: ignore[arg-type]
    return [
        (
            h.series.label("mount") or "",
            [(int((p.timestamp - T0) / S), p.value) for p in h.points],
        )
        for h in answer
    ]


@pytest.mark.parametrize(
    ("aggregation", "root"),
    [
        (Aggregation.AVG, [(0, 2.0), (60, 5.0)]),
        (Aggregation.MIN, [(0, 1.0), (60, 5.0)]),
        (Aggregation.MAX, [(0, 3.0), (60, 5.0)]),
        (Aggregation.LAST, [(0, 3.0), (60, 5.0)]),
    ],
)
def test_reference_history_aggregates_steps(
    aggregation: Aggregation, root: list[tuple[int, float]]
) -> None:
    assert history(aggregation) == [("/", root), ("/home", [(120, 9.0)])]


def test_reference_history_range_labels_and_alignment() -> None:
    assert history(Aggregation.LAST, end=T0 + 70 * S) == [("/", [(0, 3.0)])]
    assert history(Aggregation.LAST, start=T0 + 5 * S, step=30 * S) == [
        ("/", [(5, 3.0), (65, 5.0)]),
        ("/home", [(125, 9.0)]),
    ]
    assert history(Aggregation.AVG, labels={"mount": "/home"}) == [("/home", [(120, 9.0)])]
    assert history(Aggregation.AVG, labels={"mount": "/srv"}) == []
    assert history(Aggregation.AVG, metric="cpu.percent") == []


def test_reference_latest() -> None:
    assert reference_latest(POINTS, ["m"]) == [
        SeriesValue(ROOT, T0 + 70 * S, 5.0),
        SeriesValue(HOME, T0 + 130 * S, 9.0),
    ]
    assert reference_latest(POINTS, ["other"]) == []


def _history(*points: tuple[datetime, float], series: SeriesKey = ROOT) -> SeriesHistory:
    return SeriesHistory(series, Resolution.RAW, tuple(HistoryPoint(t, v) for t, v in points))


def test_assert_history_equal_tolerates_rounding_and_order() -> None:
    a, b = _history((T0, 0.1 + 0.2)), _history((T0, 1.0), series=HOME)
    assert_history_equal([b, a], [_history((T0, 0.3)), _history((T0, 1.0), series=HOME)])


@pytest.mark.parametrize(
    ("actual", "message"),
    [
        ([], "series differ"),
        ([_history((T0, 1.5))], r"got \(2026-01-05T00:00:00\+00:00, 1.5\), expected"),
        ([_history((T0, 1.0), (T0 + S, 2.0))], "2 points, expected 1"),
        ([_history((T0.replace(tzinfo=None), 1.0))], "has no timezone"),
    ],
)
def test_assert_history_equal_says_what_differs(actual: list[SeriesHistory], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        assert_history_equal(actual, [_history((T0, 1.0))])


def test_assert_history_equal_wants_ascending_points() -> None:
    with pytest.raises(AssertionError, match="not in ascending time order"):
        assert_history_equal([_history((T0 + S, 1.0), (T0, 1.0))], [_history((T0, 1.0))])


def test_assert_latest_equal() -> None:
    value = SeriesValue(ROOT, T0, 1.0)
    assert_latest_equal([value], [SeriesValue(ROOT, T0.astimezone(UTC), 1.0 + 1e-12)])
    with pytest.raises(AssertionError, match="series differ"):
        assert_latest_equal([], [value])
    with pytest.raises(AssertionError, match="got"):
        assert_latest_equal([SeriesValue(ROOT, T0 + S, 1.0)], [value])
