"""Percentages and rates from two snapshots of cumulative counters."""

from __future__ import annotations

from collections.abc import Sequence

# Linux counts guest time inside user/nice already; adding it again would
# inflate both the total and the busy share.
_NOT_IN_TOTAL = frozenset({"guest", "guest_nice"})
_IDLE = frozenset({"idle", "iowait"})


class CpuTimesLayout:
    """Which fields of a psutil ``scputimes`` tuple are idle and which are counted.

    The fields differ by OS (Linux has ``iowait`` and ``steal``, Windows has
    ``interrupt`` and ``dpc``), so the layout is read from the tuple's own names.
    """

    __slots__ = ("_counted", "_idle")

    def __init__(self, fields: Sequence[str]) -> None:
        self._counted = tuple(i for i, f in enumerate(fields) if f not in _NOT_IN_TOTAL)
        self._idle = frozenset(i for i, f in enumerate(fields) if f in _IDLE)

    def busy_percent(self, before: Sequence[float], after: Sequence[float]) -> float | None:
        """The busy share of the CPU time that passed between two snapshots, 0 to 100.

        ``None`` when no time passed (two snapshots within one clock tick), since
        0 % would claim an idle CPU. A field that went backwards (seen on some
        kernels) counts as zero, as ``top`` does.
        """
        total = 0.0
        idle = 0.0
        for i in self._counted:
            delta = after[i] - before[i]
            if delta > 0:
                total += delta
                if i in self._idle:
                    idle += delta
        if total <= 0:
            return None
        return (total - idle) / total * 100.0


def counter_rate(before: int, after: int, seconds: float) -> float | None:
    """Per-second rate of a cumulative counter, or ``None`` when it cannot be known.

    A counter lower than before was reset (interface re-created, reboot, wrap):
    the increase since the reset is unknown, so no rate rather than a wrong one.
    """
    if after < before or seconds <= 0:
        return None
    return (after - before) / seconds
