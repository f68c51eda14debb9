"""Benchmark (b): a one-series-day history query, downsampled to 500 steps.

The store holds 1,000 series (20 machines x 50), each with a day of points every
5 s (17,280 per series), laid out as maintenance leaves them: hourly packed
chunks with their rollups, and the last 30 s of every series still in the head
table. The queried series is written through ``MetricStore.write`` and compacted
by ``maintain``; the other 999 series' chunks are rows built by the same
compaction code once per hour and stored for each of them, which gives the
same table at a fraction of the set-up time.

The figure is the median of ``--repeat`` queries. Measured in the same run, as
a reference: plain sqlite3 fetching the same 17,280 rows from a
``(series_id, ts)`` index, with no downsampling at all.

    python benchmarks/bench_history_query.py
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import _common as c

from lunasentri_core import HistoryQuery, MachineSamples, Reading, RetentionPolicy, Sample
from lunasentri_core.storage.sql import CHUNK_MS, SqlStorage
from lunasentri_core.storage.sql.metrics import Horizons, _chunk_row, to_ms
from lunasentri_core.storage.sql.points import float_array, int_array
from lunasentri_sqlite import SQLiteStorageFactory

TARGET_MS = 10.0
DAY = timedelta(days=1)
STEPS = 500
HEAD = timedelta(seconds=30)
"""What the head still holds: the hub runs maintenance every 30 s by default."""
QUERIED = (c.machine_id(0), "cpu.percent", (("cpu", "0"),))


def points_per_series() -> int:
    return DAY // c.INTERVAL


def build(path: Path) -> SqlStorage:
    c.remove_db(path)
    store = SQLiteStorageFactory.open(f"sqlite:///{path}", retention=RetentionPolicy())
    assert isinstance(store, SqlStorage)
    store.migrate()
    metrics = store.metrics
    rng = random.Random(7)
    # Every series once, so that all 1,000 exist with their ids.
    store.metrics.write(c.make_batches(1, 1)[0])
    with store.engine.connect() as conn:
        ids = {
            (machine, metric, labels): sid
            for sid, machine, metric, labels in conn.exec_driver_sql(
                "SELECT id, machine_id, metric, labels FROM series"
            )
        }
    queried_sid = next(
        sid
        for (machine, metric, labels), sid in ids.items()
        if (machine, metric) == QUERIED[:2] and labels == '[["cpu","0"]]'
    )
    compacted_until = to_ms(c.T0 + DAY - HEAD)
    step_ms = c.INTERVAL // timedelta(milliseconds=1)
    t0 = to_ms(c.T0)
    with store.db.write() as conn:
        for chunk_start in range(t0, compacted_until, CHUNK_MS):
            ts = int_array(
                range(chunk_start, min(chunk_start + CHUNK_MS, compacted_until), step_ms)
            )
            values = float_array(round(rng.uniform(0, 100), 1) for _ in ts)
            row, _ = _chunk_row(0, chunk_start, ts, values, ts, None, Horizons())
            assert row is not None
            rows = [(sid, *row[1:]) for sid in ids.values() if sid != queried_sid]
            metrics._sql.upsert_chunk.many(conn, rows)

    # The queried series goes the way every point goes: write, then maintain.
    total = points_per_series()
    for hour in range(24):
        samples = [
            Sample(
                c.T0 + c.INTERVAL * i,
                [Reading(QUERIED[1], round(rng.uniform(0, 100), 1), dict(QUERIED[2]))],
            )
            for i in range(hour * 720, min((hour + 1) * 720, total))
        ]
        metrics.write([MachineSamples(QUERIED[0], samples)])
        metrics.maintain(c.T0 + DAY - HEAD)
    # The last 30 s of the other 999 series, not compacted yet.
    tail = []
    for m in range(c.MACHINES):
        samples = []
        for i in range(total - HEAD // c.INTERVAL, total):
            readings = [
                Reading(metric, rng.uniform(0, 100), labels)
                for metric, labels in c.SHAPES
                if (c.machine_id(m), metric, tuple(labels.items())) != QUERIED
            ]
            samples.append(Sample(c.T0 + c.INTERVAL * i, readings))
        tail.append(MachineSamples(c.machine_id(m), samples))
    metrics.write(tail)
    return store


def raw_reference(path: Path, store: SqlStorage, repeat: int) -> float:
    """Median ms of plain sqlite3 fetching the queried series' day from a (series_id, ts) index."""
    c.remove_db(path)
    conn = c.sqlite_connect(path)
    conn.execute(
        "CREATE TABLE points (series_id INTEGER, ts INTEGER, value REAL, "
        "PRIMARY KEY (series_id, ts)) WITHOUT ROWID"
    )
    (history,) = store.metrics.history(query(timedelta(seconds=5)))
    rows = [(1, to_ms(p.timestamp), p.value) for p in history.points]
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO points VALUES (?, ?, ?)", rows)
    conn.execute("COMMIT")
    start, end = to_ms(c.T0), to_ms(c.T0 + DAY)
    sql = "SELECT ts, value FROM points WHERE series_id = ? AND ts >= ? AND ts < ?"
    times = []
    for _ in range(repeat):
        with c.Timer() as timer:
            fetched = conn.execute(sql, (1, start, end)).fetchall()
        times.append(timer.elapsed * 1000)
    assert len(fetched) == len(rows)
    conn.close()
    return statistics.median(times)


def query(step: timedelta) -> HistoryQuery:
    machine, metric, labels = QUERIED
    return HistoryQuery(machine, metric, c.T0, c.T0 + DAY, step, labels=labels)


def time_query(store: SqlStorage, q: HistoryQuery, repeat: int) -> tuple[float, str, int]:
    times = []
    for _ in range(repeat):
        with c.Timer() as timer:
            (answer,) = store.metrics.history(q)
        times.append(timer.elapsed * 1000)
    return statistics.median(times), answer.resolution.value, len(answer.points)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50, help="queries timed (default 50)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="lunasentri-bench-") as tmp:
        with c.Timer() as setup:
            store = build(Path(tmp, "store.db"))
        with store.engine.connect() as conn:
            head = conn.exec_driver_sql(
                "SELECT sum(length(series_ids)) / 8 FROM samples_head"
            ).scalar()
            chunks = conn.exec_driver_sql("SELECT count(*) FROM metric_chunks").scalar()
        step = DAY / STEPS
        median_ms, resolution, steps = time_query(store, query(step), args.repeat)
        minute_ms, minute_resolution, minute_steps = time_query(
            store, query(timedelta(minutes=5)), args.repeat
        )
        raw_ms = raw_reference(Path(tmp, "raw.db"), store, args.repeat)
        store.close()

    ok = median_ms < TARGET_MS
    print(
        f"benchmark (b): one-series-day history, {points_per_series():,} points at 5 s, "
        f"among {c.SERIES:,} series ({chunks:,} chunk rows, {head:,} points in the head; "
        f"set up in {setup.elapsed:.0f} s)"
    )
    for line in c.environment():
        print(f"  {line}")
    print(
        f"history query, {STEPS} steps of {step.total_seconds():g} s, avg: {median_ms:.2f} ms "
        f"(median of {args.repeat}, answered from {resolution}, {steps} points); "
        f"target < {TARGET_MS:.0f} ms {c.verdict(ok)}"
    )
    print(
        f"  reference, raw sqlite3 fetch of the same {points_per_series():,} rows from a "
        f"(series_id, ts) index, no downsampling: {raw_ms:.2f} ms; ratio {median_ms / raw_ms:.2f}"
    )
    print(
        f"  same day, 5 min steps: {minute_ms:.2f} ms (answered from {minute_resolution}, "
        f"{minute_steps} points)"
    )
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
