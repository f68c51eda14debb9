"""Where a one-series history read's time goes, in process (``bench_pg_read_turns.py parts``).

The store's read (``SqlMetricStore.history_columns``) is repeated on the kept
schema with its parts wrapped in timers: its statements (the series, then the
head rows and blobs: a round trip each, :mod:`~lunasentri_core.storage.sql.pgread`;
the 1-minute read commits in a third), the decoding of the blobs, the
aggregation into steps (with its step boundaries and means apart) and the
step starts; then the HTTP answer's JSON (``routes.queries``' own functions) is
timed on the columns read. What a request costs besides (the HTTP stack,
authentication, the worker-thread hop) is the server's CPU per request
(``measure``) less these.

The wrappers cost about a microsecond a call: the parts are figures to compare
with each other and with the total, which is timed without them first.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from lunasentri_core import HistoryQuery, RetentionPolicy
from lunasentri_core.model import Aggregation
from lunasentri_core.server.routes import queries as routes
from lunasentri_core.storage.sql import SqlStorage, blocks, metrics, points
from lunasentri_timescale import TimescaleStorageFactory

PARTS: tuple[tuple[Any, str, str], ...] = (
    (metrics.SqlMetricStore, "_match_series", "series and horizons (BEGIN with them)"),
    (metrics._HistoryReader, "_head_and_blobs", "head rows and blobs (raw: COMMIT with them)"),
    (metrics.SqlMetricStore, "_raw_points", "raw blobs decoded, clipped, merged"),
    (blocks, "read_raw", "  of which decoding (cached by bytes)"),
    (metrics.SqlMetricStore, "_rollups", "minute rollups decoded and redone"),
    (metrics, "downsample_points", "aggregation into steps"),
    (metrics, "downsample_rollups", "aggregation into steps"),
    (points, "_spans", "  of which step boundaries"),
    (points, "_means", "  of which means (fsum)"),
    (metrics, "_step_stamps", "step starts"),
)
"""What is timed: (module or class, attribute, label); a label may name several."""


@contextmanager
def timed_parts(spent: dict[str, list[float]]) -> Iterator[None]:
    """Each part of :data:`PARTS` adds its thread CPU seconds to ``spent[label]``
    while the block runs (the module attributes put back after)."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in PARTS]
    for (owner, name, label), (_, _, original) in zip(PARTS, saved, strict=True):
        setattr(owner, name, _timer(original, spent.setdefault(label, [0.0])))
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def _timer(function: Callable[..., Any], total: list[float]) -> Callable[..., Any]:
    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            total[0] += time.thread_time() - started

    return timed


def breakdown(state: dict[str, Any], repeat: int) -> None:
    store = TimescaleStorageFactory.open(str(state["url"]), retention=RetentionPolicy())
    assert isinstance(store, SqlStorage)
    columns = store.metrics.history_columns
    try:
        start = datetime.fromtimestamp(float(state["start"]), UTC)
        end = datetime.fromtimestamp(float(state["end"]), UTC)
        for name, step in (("h500", (end - start) / 500), ("h1m", timedelta(minutes=1))):
            query = HistoryQuery(
                machine_id=str(state["machine"]),
                metric="cpu.percent",
                start=start,
                end=end,
                step=step,
                aggregation=Aggregation.AVG,
                labels=(("cpu", "0"),),
            )
            _report(name, functools.partial(columns, query), repeat)
    finally:
        store.close()


def _report(name: str, read: Callable[[], list[Any]], repeat: int) -> None:
    for _ in range(10):  # warm: prepared statements, caches
        found = read()
    walls, cpu = [], time.thread_time()
    for _ in range(repeat):
        started = time.perf_counter()
        read()
        walls.append(time.perf_counter() - started)
    cpu = (time.thread_time() - cpu) / repeat
    spent: dict[str, list[float]] = {}
    with timed_parts(spent):
        for _ in range(repeat):
            read()

    def answer() -> bytes:
        return orjson.dumps(
            {"series": list(map(routes._series_json, found, routes._step_starts(found)))}
        )

    json_cpu = time.thread_time()
    for _ in range(repeat):
        answer()
    json_cpu = (time.thread_time() - json_cpu) / repeat
    print(
        f"{name}: the store's read {statistics.median(walls) * 1000:.3f} ms wall (median),"
        f" {cpu * 1000:.3f} ms CPU; parts, CPU ms a read:"
    )
    for label, (seconds,) in spent.items():
        if seconds:
            print(f"  {label:44} {seconds / repeat * 1000:.3f}")
    parts = sum(seconds for label, (seconds,) in spent.items() if not label.startswith(" "))
    rest = cpu - parts / repeat
    print(f"  {'the rest (connection, transaction, objects)':44} {rest * 1000:.3f}")
    print(f"  {'the answer as JSON (route code, orjson)':44} {json_cpu * 1000:.3f}")
