"""Sparklines for the dashboard: a series' points as an SVG polyline, drawn on the server."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from lunasentri_core.model import HistoryPoint

WIDTH = 320
HEIGHT = 64


@attrs.frozen
class Sparkline:
    """What a template needs to draw one series."""

    points: str
    """``x,y`` pairs for ``<polyline points=...>``, in a ``WIDTH`` x ``HEIGHT`` box."""
    low: float
    high: float
    last: float


def sparkline(
    points: Sequence[HistoryPoint],
    start: float,
    end: float,
    *,
    floor: float | None = None,
    ceiling: float | None = None,
) -> Sparkline | None:
    """Place ``points`` (epoch seconds ``start`` to ``end`` across) in the box.

    The vertical scale runs from ``floor`` to ``ceiling`` where given (0 to 100
    for a percentage), otherwise from the lowest to the highest value; a flat
    series is drawn across the middle. ``None`` without points.
    """
    if not points or end <= start:
        return None
    values = [p.value for p in points]
    low = min(values) if floor is None else min(floor, *values)
    high = max(values) if ceiling is None else max(ceiling, *values)
    span = high - low
    coords = []
    for point in points:
        x = (point.timestamp.timestamp() - start) / (end - start) * WIDTH
        y = HEIGHT / 2 if span == 0 else HEIGHT - (point.value - low) / span * HEIGHT
        coords.append(f"{x:.1f},{y:.1f}")
    return Sparkline(" ".join(coords), min(values), max(values), values[-1])
