"""Percentages and rates from two polls' raw Windows performance counters."""

from __future__ import annotations

TICKS_PER_SECOND = 10_000_000
"""``Timestamp_Sys100NS`` counts 100-ns intervals: its ``Frequency_Sys100NS``."""


def busy_percent(
    idle_before: int, time_before: int, idle_after: int, time_after: int
) -> float | None:
    """The CPU's busy share between two samples of ``PercentProcessorTime``, 0 to 100.

    The raw counter is a ``PERF_100NSEC_TIMER_INV``: it counts time spent *idle*,
    in the same 100-ns units as ``Timestamp_Sys100NS``, so busy is ``1 - Δidle /
    Δtime``. ``None`` when no time passed, or when a counter went backwards (the
    host rebooted): the share of that interval cannot be known.
    """
    elapsed = time_after - time_before
    idle = idle_after - idle_before
    if elapsed <= 0 or idle < 0:
        return None
    return min(100.0, max(0.0, 100.0 * (1.0 - idle / elapsed)))


def counter_rate(before: int, after: int, seconds: float) -> float | None:
    """Per-second rate of a cumulative counter, or ``None`` when it cannot be known.

    A counter lower than before was reset (interface re-created, reboot, 32-bit
    wrap): no rate rather than a wrong one.
    """
    if after < before or seconds <= 0:
        return None
    return (after - before) / seconds
