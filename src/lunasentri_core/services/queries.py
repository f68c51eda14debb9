"""Reading a machine's metrics: latest values, history, and derived percentages.

Storage keeps totals and amounts used; percentages are derived at query time,
for each pair of a ``<base>.used`` and a ``<base>.total`` series with the same
labels, where the total is above zero:

* ``mem.percent`` = ``mem.used / mem.total * 100``
* ``swap.percent`` = ``swap.used / swap.total * 100``
* ``disk.percent`` = ``disk.used / disk.total * 100``, per ``mount`` (any labels)

In a history, each step's value is the step's aggregated ``used`` over the same
step's aggregated ``total`` (avg over avg, max over max, last over last, ...).
That is exact for ``last``, and for every aggregation while the total stays the
same within a step, which is what totals do until hardware changes. A stored
series of the same name (a collector that reports a percentage itself) wins
over the derived one.

Every query names the machine and the caller's owner scope: another user's
machine is "not found".
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from lunasentri_core.model import (
    HistoryColumns,
    HistoryPoint,
    HistoryQuery,
    Labels,
    SeriesHistory,
    SeriesKey,
    SeriesValue,
)

if TYPE_CHECKING:
    from lunasentri_core.hub import Sentri
    from lunasentri_core.storage.protocols import MetricStore

DERIVED: Mapping[str, tuple[str, str]] = {
    "mem.percent": ("mem.used", "mem.total"),
    "swap.percent": ("swap.used", "swap.total"),
    "disk.percent": ("disk.used", "disk.total"),
}
"""Each derived metric and the (used, total) metrics it divides."""

DEFAULT_RANGE = timedelta(hours=1)
TARGET_POINTS = 500
"""A history without a step gets the smallest "round" step that keeps it at most this long."""
MAX_STEPS = 10_000
_ROUND_STEPS = tuple(
    timedelta(seconds=s)
    for s in (
        *(1, 2, 5, 10, 15, 30),
        *(60, 120, 300, 600, 900, 1800),
        *(3600, 7200, 10800, 21600, 43200),
        *(86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400),
    )
)


@attrs.frozen
class Latest:
    """The newest value of each series of a machine, and the percentages derived from them."""

    machine_id: str
    items: tuple[SeriesValue, ...]
    derived: tuple[SeriesValue, ...]


def auto_step(start: datetime, end: datetime, points: int = TARGET_POINTS) -> timedelta:
    """The smallest round step that covers ``[start, end)`` in at most ``points`` steps."""
    span = end - start
    for step in _ROUND_STEPS:
        if span <= step * points:
            return step
    days = math.ceil(span / timedelta(days=1) / points)
    return timedelta(days=days)


def align(at: datetime, step: timedelta) -> datetime:
    """``at`` rounded down to a multiple of ``step`` since the epoch (as rollups are)."""
    epoch = datetime(1970, 1, 1, tzinfo=at.tzinfo)
    return at - (at - epoch) % step


def derive_latest(values: Sequence[SeriesValue]) -> list[SeriesValue]:
    """The derived percentages of ``values`` (see the module docstring)."""
    by_key = {(v.series.metric, v.series.labels): v for v in values}
    derived = []
    for name, (used_metric, total_metric) in DERIVED.items():
        for (metric, labels), used in by_key.items():
            if metric != used_metric or (name, labels) in by_key:
                continue
            total = by_key.get((total_metric, labels))
            if total is None or total.value <= 0:
                continue
            at = max(used.timestamp, total.timestamp)
            key = SeriesKey(used.series.machine_id, name, labels)
            derived.append(SeriesValue(key, at, used.value / total.value * 100))
    return derived


def derive_history(
    name: str, used: Sequence[SeriesHistory], totals: Sequence[SeriesHistory]
) -> list[SeriesHistory]:
    """Step by step ratios of matching ``used`` and ``total`` series."""
    by_labels: dict[Labels, SeriesHistory] = {t.series.labels: t for t in totals}
    derived = []
    for part in used:
        total = by_labels.get(part.series.labels)
        if total is None:
            continue
        divisors = {p.timestamp: p.value for p in total.points}
        points = tuple(
            HistoryPoint(p.timestamp, p.value / divisors[p.timestamp] * 100)
            for p in part.points
            if divisors.get(p.timestamp, 0.0) > 0
        )
        if points:
            key = attrs.evolve(part.series, metric=name)
            derived.append(SeriesHistory(key, part.resolution, points))
    return derived


async def latest(
    hub: Sentri, machine_id: str, owner_id: str | None, metric: str | None = None
) -> Latest:
    """The newest values of a machine's series (optionally one metric, stored or derived)."""
    wanted: list[str | None] = [metric]
    if metric is not None and metric in DERIVED:
        wanted = [metric, *DERIVED[metric]]

    metrics = hub.storage.metrics
    checked: Callable[..., list[SeriesValue]] | None = getattr(metrics, "machine_latest", None)

    def read() -> list[SeriesValue]:
        if checked is not None:  # the SQL store: the check and the values in one statement
            return checked(machine_id, owner_id, None if metric is None else wanted)
        with _snapshot(hub):
            _check_machine(hub, machine_id, owner_id)
            found: list[SeriesValue] = []
            for name in wanted:
                found.extend(metrics.latest([machine_id], name))
            return found

    values = await hub.run_sync(read)
    derived = derive_latest(values)
    if metric is not None:
        values = [v for v in values if v.series.metric == metric]
        derived = [v for v in derived if v.series.metric == metric]
    return Latest(machine_id, tuple(_ordered(values)), tuple(_ordered(derived)))


def _ordered(values: Sequence[SeriesValue]) -> list[SeriesValue]:
    return sorted(values, key=lambda v: (v.series.metric, v.series.labels))


async def history(hub: Sentri, query: HistoryQuery, owner_id: str | None) -> list[SeriesHistory]:
    """A metric's series over a range; a derived metric's from its used and total series."""
    return await histories(hub, [query], owner_id)


async def histories(
    hub: Sentri, asked: Sequence[HistoryQuery], owner_id: str | None
) -> list[SeriesHistory]:
    """As :func:`history` for each query (of one machine), in order, in one worker call."""
    return [found.to_history() for found in await history_columns(hub, asked, owner_id)]


async def history_columns(
    hub: Sentri, asked: Sequence[HistoryQuery], owner_id: str | None
) -> list[HistoryColumns]:
    """:func:`histories` as columns: from a store's ``history_reader`` (every query
    in one read, the SQL store) or ``history_columns`` where it has one, else from
    its points."""

    def read() -> list[HistoryColumns]:
        with _history_reader(hub, asked, owner_id) as one:
            found: list[HistoryColumns] = []
            for query in asked:
                # A backend that does not know ``exact`` (or the derivation) may answer more.
                found.extend(c for c in _read_columns(one, query) if query.selects(c.series.labels))
            return found

    return await hub.run_sync(read)


@contextmanager
def _history_reader(
    hub: Sentri, asked: Sequence[HistoryQuery], owner_id: str | None
) -> Iterator[Callable[[HistoryQuery], list[HistoryColumns]]]:
    """What answers the queries, their machines checked: a store's ``history_reader``
    that checks them itself (the SQL store: in the statement matching each query's
    series, no round trip of its own; the reader is one read transaction), else
    after :func:`_check_machine`, in one snapshot with the read."""
    metrics = hub.storage.metrics
    reader: Callable[..., AbstractContextManager[Any]] | None = getattr(
        metrics, "history_reader", None
    )
    if reader is not None and getattr(metrics, "history_reader_checks", False):
        # One stored metric's query is the read's only one (a derived metric's
        # may need its used and total series after): the read may end with it.
        last = len(asked) == 1 and asked[0].metric not in DERIVED
        with reader(check=True, owner_id=owner_id, last=last) as one:
            yield one
        return
    with _snapshot(hub):
        for machine_id in sorted({query.machine_id for query in asked}):
            _check_machine(hub, machine_id, owner_id)
        with reader() if reader is not None else nullcontext(_columns_of(metrics)) as one:
            yield one


def _check_machine(hub: Sentri, machine_id: str, owner_id: str | None) -> None:
    """:class:`~lunasentri_core.NotFoundError` unless the machine exists and is
    ``owner_id``'s (any owner's for ``None``): the store's ``check_machine`` where it
    has one (the SQL store: no row read into a machine), else ``get_machine``."""
    state = hub.storage.state
    check: Callable[[str, str | None], None] | None = getattr(state, "check_machine", None)
    if check is not None:
        check(machine_id, owner_id)
    else:
        state.get_machine(machine_id, owner_id)


def _snapshot(hub: Sentri) -> AbstractContextManager[object]:
    """One read transaction for the ownership check and the read that follows it,
    where the storage offers one (the SQL store's ``snapshot``)."""
    snapshot: Callable[[], AbstractContextManager[object]] | None = getattr(
        hub.storage, "snapshot", None
    )
    return snapshot() if snapshot is not None else nullcontext()


def _columns_of(metrics: MetricStore) -> Callable[[HistoryQuery], list[HistoryColumns]]:
    """A store's ``history_columns`` where it has one, else its points as columns."""
    columns: Callable[[HistoryQuery], list[HistoryColumns]] | None = getattr(
        metrics, "history_columns", None
    )
    if columns is not None:
        return columns
    return lambda q: [HistoryColumns.from_history(h) for h in metrics.history(q)]


def _read_columns(
    one: Callable[[HistoryQuery], list[HistoryColumns]], query: HistoryQuery
) -> list[HistoryColumns]:
    stored = one(query)
    if stored or query.metric not in DERIVED:
        return stored
    used_metric, total_metric = DERIVED[query.metric]
    used = one(attrs.evolve(query, metric=used_metric))
    if not used:
        return []
    return derive_columns(query.metric, used, one(attrs.evolve(query, metric=total_metric)))


def derive_columns(
    name: str, used: Sequence[HistoryColumns], totals: Sequence[HistoryColumns]
) -> list[HistoryColumns]:
    """:func:`derive_history` over columns."""
    by_labels = {t.series.labels: t for t in totals}
    derived = []
    for part in used:
        total = by_labels.get(part.series.labels)
        if total is None:
            continue
        divisors = dict(zip(total.timestamps, total.values, strict=True))
        kept = [
            (at, value / divisor * 100)
            for at, value in zip(part.timestamps, part.values, strict=True)
            if (divisor := divisors.get(at, 0.0)) > 0
        ]
        if kept:
            key = attrs.evolve(part.series, metric=name)
            stamps = array("q", [at for at, _ in kept])
            derived.append(
                HistoryColumns(key, part.resolution, stamps, array("d", [v for _, v in kept]))
            )
    return derived
