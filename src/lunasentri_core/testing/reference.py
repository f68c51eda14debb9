"""A naive, obviously-correct model of what a metric store answers.

The storage contract compares a backend's answers with these functions, and a
backend author can use them for their own tests. They pin down the semantics
the :class:`~lunasentri_core.storage.MetricStore` protocol describes:

* a (series, timestamp) keeps the first value written;
* history covers ``[start, end)``; step ``k`` covers
  ``[start + k*step, start + (k+1)*step)`` (steps are aligned to ``start``, the
  last one is cut at ``end``) and is reported at its start;
* only non-empty steps are reported, and a series with no point in the range is
  absent from the answer;
* ``labels`` selects series whose labels include every given pair;
* ``last`` is the value of the latest point in the step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime

import attrs

from lunasentri_core.model import (
    Aggregation,
    HistoryPoint,
    HistoryQuery,
    MachineSamples,
    Resolution,
    SeriesHistory,
    SeriesKey,
    SeriesValue,
)


@attrs.frozen
class StoredPoint:
    series: SeriesKey
    timestamp: datetime
    value: float


def points_of(batches: Iterable[Sequence[MachineSamples]]) -> list[StoredPoint]:
    """The points a store holds after writing ``batches`` in order (first value wins)."""
    kept: dict[tuple[SeriesKey, datetime], StoredPoint] = {}
    for batch in batches:
        for machine in batch:
            for sample in machine.samples:
                for reading in sample.readings:
                    key = SeriesKey(machine.machine_id, reading.metric, reading.labels)
                    point = StoredPoint(key, sample.timestamp, reading.value)
                    kept.setdefault((key, sample.timestamp), point)
    return list(kept.values())


def _selected(series: SeriesKey, query: HistoryQuery) -> bool:
    if series.machine_id != query.machine_id or series.metric != query.metric:
        return False
    return query.selects(series.labels)


def aggregate(values: Sequence[tuple[datetime, float]], aggregation: Aggregation) -> float:
    """Combine the ``(timestamp, value)`` points of one step."""
    if aggregation is Aggregation.AVG:
        return math.fsum(v for _, v in values) / len(values)
    if aggregation is Aggregation.MIN:
        return min(v for _, v in values)
    if aggregation is Aggregation.MAX:
        return max(v for _, v in values)
    return max(values, key=lambda point: point[0])[1]


def reference_history(
    points: Iterable[StoredPoint], query: HistoryQuery, resolution: Resolution = Resolution.RAW
) -> list[SeriesHistory]:
    """What ``history(query)`` answers for ``points``, ordered by metric and labels."""
    steps: dict[SeriesKey, dict[int, list[tuple[datetime, float]]]] = {}
    for point in points:
        if not _selected(point.series, query) or not query.start <= point.timestamp < query.end:
            continue
        index = (point.timestamp - query.start) // query.step
        steps.setdefault(point.series, {}).setdefault(index, []).append(
            (point.timestamp, point.value)
        )
    answer = []
    for series in sorted(steps, key=series_order):
        history = tuple(
            HistoryPoint(query.start + index * query.step, aggregate(values, query.aggregation))
            for index, values in sorted(steps[series].items())
        )
        answer.append(SeriesHistory(series, resolution, history))
    return answer


def reference_latest(
    points: Iterable[StoredPoint], machine_ids: Sequence[str], metric: str | None = None
) -> list[SeriesValue]:
    """What ``latest(machine_ids, metric)`` answers for ``points``, ordered by series."""
    newest: dict[SeriesKey, StoredPoint] = {}
    for point in points:
        if point.series.machine_id not in machine_ids:
            continue
        if metric is not None and point.series.metric != metric:
            continue
        seen = newest.get(point.series)
        if seen is None or point.timestamp > seen.timestamp:
            newest[point.series] = point
    return [
        SeriesValue(key, newest[key].timestamp, newest[key].value)
        for key in sorted(newest, key=series_order)
    ]


def series_order(series: SeriesKey) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """A sort key for series, to compare answers whose order is unspecified."""
    return (series.machine_id, series.metric, series.labels)
