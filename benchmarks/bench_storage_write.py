"""Benchmark (a): storage write throughput against raw sqlite3 ``executemany``.

Writes the same points twice, in the same run:

* through the SQLite storage backend (``lunasentri-sqlite``), batch by batch with
  ``MetricStore.write`` as the ingest writer calls it (model objects in, one
  transaction per batch, series ids resolved, idempotent insert, latest values);
* as the physical limit: plain ``sqlite3`` ``executemany`` of ready
  ``(series_id, ts, value)`` tuples into an unindexed table, WAL,
  ``synchronous=NORMAL``, one transaction per batch.

The two sides take turns batch by batch, so that whatever else the machine does
hits both alike; each run starts from fresh files, and each side keeps its best
of ``--repeat`` runs. A third side (the store without its latest-value upkeep)
shows what keeping ``latest`` cheap costs.

    python benchmarks/bench_storage_write.py [--batches 40] [--samples 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import _common as c

from lunasentri_core import MachineSamples, RetentionPolicy
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_sqlite import SQLiteStorageFactory

TARGET = 0.5


def raw_rows(batches: list[list[MachineSamples]]) -> list[list[tuple[int, int, float]]]:
    """The same points as ``(series_id, ts, value)`` tuples, built outside the timing."""
    ids: dict[tuple[str, str, tuple[tuple[str, str], ...]], int] = {}
    out = []
    for batch in batches:
        rows = []
        for ms in batch:
            for sample in ms.samples:
                ts = (sample.timestamp - c.T0) // timedelta(milliseconds=1)
                for r in sample.readings:
                    sid = ids.setdefault((ms.machine_id, r.metric, r.labels), len(ids) + 1)
                    rows.append((sid, ts, r.value))
        out.append(rows)
    return out


class RawSide:
    """The limit: plain sqlite3, one unindexed table, ``executemany`` per batch."""

    def __init__(self, path: Path) -> None:
        c.remove_db(path)
        self.conn = c.sqlite_connect(path)
        self.conn.execute("CREATE TABLE points (series_id INTEGER, ts INTEGER, value REAL)")

    def write(self, rows: list[tuple[int, int, float]]) -> None:
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT INTO points VALUES (?, ?, ?)", rows)
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


class StoreSide:
    """The SQLite backend as the hub opens it, fed model objects."""

    def __init__(self, path: Path, warmup: list[MachineSamples], latest: bool = True) -> None:
        self.store = open_store(path)
        # Series are created once in a real deployment; creating them is not
        # the steady state being measured.
        self.store.metrics.write(warmup)
        if not latest:
            self.store.metrics._sql.upsert_latest = _Skip()  # type: ignore[assignment]

    def write(self, batch: list[MachineSamples]) -> None:
        self.store.metrics.write(batch)

    def close(self) -> None:
        self.store.close()


class _Skip:
    def run(self, conn: object, columns: object) -> None:
        return None


def open_store(path: Path) -> SqlStorage:
    c.remove_db(path)
    store = SQLiteStorageFactory.open(f"sqlite:///{path}", retention=RetentionPolicy())
    assert isinstance(store, SqlStorage)
    store.migrate()
    return store


def measure(
    tmp: Path,
    warmup: list[MachineSamples],
    batches: list[list[MachineSamples]],
    rows: list[list[tuple[int, int, float]]],
) -> tuple[float, float, float]:
    """Seconds spent by each side over all batches, batch by batch in turn.

    Alternating single batches (in a rotating order) gives every side the same
    share of whatever else the machine is doing.
    """
    sides = [
        RawSide(tmp / "raw.db"),
        StoreSide(tmp / "store.db", warmup),
        StoreSide(tmp / "nolatest.db", warmup, latest=False),
    ]
    spent = [0.0, 0.0, 0.0]
    inputs = [rows, batches, batches]
    try:
        for i in range(len(batches)):
            for k in range(3):
                side = (i + k) % 3
                with c.Timer() as timer:
                    sides[side].write(inputs[side][i])  # type: ignore[arg-type]
                spent[side] += timer.elapsed
    finally:
        for side in sides:
            side.close()
    return spent[0], spent[1], spent[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40, help="batches per run (default 40)")
    parser.add_argument(
        "--samples", type=int, default=10, help="samples per machine per batch (default 10)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per side (default 3)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)

    all_batches = c.make_batches(args.batches + 1, args.samples)
    warmup, batches = all_batches[0], all_batches[1:]
    points = sum(len(s.readings) for batch in batches for ms in batch for s in ms.samples)
    per_batch = points // len(batches)
    rows = raw_rows(batches)

    with tempfile.TemporaryDirectory(prefix="lunasentri-bench-") as tmp:
        raw_best = store_best = nolatest_best = float("inf")
        for _ in range(args.repeat):
            raw_s, store_s, nolatest_s = measure(Path(tmp), warmup, batches, rows)
            raw_best, store_best = min(raw_best, raw_s), min(store_best, store_s)
            nolatest_best = min(nolatest_best, nolatest_s)

        store = open_store(Path(tmp, "store.db"))
        store.metrics.write(warmup)
        for batch in batches:
            store.metrics.write(batch)
        with c.Timer() as compaction:
            report = store.metrics.maintain(c.T0 + timedelta(days=1))
        store.close()

    raw_rate = points / raw_best
    store_rate = points / store_best
    ratio = store_rate / raw_rate
    print(
        f"benchmark (a): storage write, {c.SERIES:,} series, "
        f"{len(batches)} batches of {per_batch:,} points"
    )
    for line in c.environment():
        print(f"  {line}")
    verdict = c.verdict(ratio >= TARGET)
    print(
        f"write throughput: {store_rate:,.0f} points/s; raw sqlite3 executemany: "
        f"{raw_rate:,.0f} rows/s; ratio {ratio:.2f} (target >= {TARGET:.2f}) {verdict}"
    )
    latest_share = 1 - nolatest_best / store_best
    print(f"  of which keeping latest values: {latest_share:.0%} of write time")
    rate = report.compacted_points / compaction.elapsed
    print(
        f"  compaction afterwards (maintain): {rate:,.0f} points/s "
        f"({report.compacted_points:,} points, {report.rollup_rows:,} rollup rows)"
    )
    return 1 if args.strict and ratio < TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
