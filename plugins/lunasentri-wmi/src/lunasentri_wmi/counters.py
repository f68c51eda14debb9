"""Percentages and rates from two samples of Windows' raw performance counters.

The ``Win32_PerfRawData_*`` classes hold cumulative counters and the time they
were read (``Timestamp_Sys100NS``, in 100-ns units); the cooked values that
``Win32_PerfFormattedData_*`` shows come from the difference of two samples,
with the formula of each counter's type. Taking both samples ourselves, one poll
apart, measures the whole interval instead of the last second the formatted
class would show.
"""

from __future__ import annotations

import attrs

SYS100NS_PER_SECOND = 10_000_000
"""``Frequency_Sys100NS``: ``Timestamp_Sys100NS`` counts 100-ns intervals."""


@attrs.frozen
class RawSample:
    """One instance's counter and the ``Timestamp_Sys100NS`` it was read at."""

    value: int
    timestamp: int


def inverse_timer_percent(before: RawSample, after: RawSample) -> float | None:
    """``PERF_100NSEC_TIMER_INV`` (e.g. ``PercentProcessorTime``) as a busy percentage.

    The raw counter is the time the processor was *idle*; busy is
    ``100 * (1 - Δidle / Δtime)``, clamped to 0..100 as Windows does (the two
    clocks are read at slightly different instants). None when no time passed
    or the counter went backwards (a reboot in between).
    """
    elapsed = after.timestamp - before.timestamp
    idle = after.value - before.value
    if elapsed <= 0 or idle < 0:
        return None
    return min(100.0, max(0.0, 100.0 * (1.0 - idle / elapsed)))


def bulk_count_rate(before: RawSample, after: RawSample) -> float | None:
    """``PERF_COUNTER_BULK_COUNT`` (e.g. ``BytesReceivedPersec``) as a per-second rate.

    None when no time passed or the counter went backwards (the interface was
    reset or re-created): the increase since then is unknown, so no rate
    rather than a wrong one.
    """
    elapsed = after.timestamp - before.timestamp
    delta = after.value - before.value
    if elapsed <= 0 or delta < 0:
        return None
    return delta / (elapsed / SYS100NS_PER_SECOND)
