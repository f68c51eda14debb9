"""Benchmark: a 1-minute read of one series' day, minutes stored or derived from raw.

Since issue 15's change a chunk keeps no minute blob while its raw points are
kept: a minute read decodes the raw blob and makes the minute rollups from it
(:func:`~lunasentri_core.storage.sql.blocks.minutes_of_raw`) where it decoded
a minute blob before. Two SQLite stores hold the same day (a machine of 50
series, a point every 5 s, values with one decimal): one as compaction writes
it now (raw blobs only), one with the minute blobs an older release wrote
(``_store_minutes``, what expiry stores). The same query (a day at 1-minute
steps, avg) is timed on each in turns, with the decoded-block caches emptied
before each read (cold: a block read the first time) and kept (warm: a
dashboard redrawing the same day).

    python benchmarks/bench_minutes_from_raw.py [--repeat 30]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lunasentri_core import HistoryQuery, MachineSamples, Reading, RetentionPolicy, Sample
from lunasentri_core.storage.sql import SqlStorage, blocks
from lunasentri_core.storage.sql.metrics import _store_minutes, to_ms
from lunasentri_sqlite import SQLiteStorageFactory

T0 = datetime(2026, 12, 1, tzinfo=UTC)
DAY = timedelta(days=1)
EVERY = timedelta(seconds=5)
SERIES = 50


def open_store(path: Path) -> SqlStorage:
    store = SQLiteStorageFactory.open(f"sqlite:///{path}", retention=RetentionPolicy())
    assert isinstance(store, SqlStorage)
    store.migrate()
    return store


def build(path: Path) -> None:
    store = open_store(path)
    rng = random.Random(15)
    level = [rng.uniform(0, 100) for _ in range(SERIES)]
    for hour in range(24):
        samples = []
        for i in range(hour * 720, (hour + 1) * 720):
            readings = []
            for s in range(SERIES):
                level[s] = min(100.0, max(0.0, level[s] + rng.gauss(0, 2)))
                readings.append(Reading("cpu.percent", round(level[s], 1), {"cpu": str(s)}))
            samples.append(Sample(T0 + i * EVERY, readings))
        store.metrics.write([MachineSamples("m0", samples)])
        store.metrics.maintain(T0 + (hour + 1) * EVERY * 720)
    store.close()


def clear_caches() -> None:
    blocks._read_compressed_minutes.cache_clear()
    blocks._compressed_minutes_of_raw.cache_clear()
    blocks._read_compressed_raw.cache_clear()


def timed_read(store: SqlStorage, query: HistoryQuery, *, cold: bool) -> float:
    if cold:
        clear_caches()
    started = time.perf_counter()
    (answer,) = store.metrics.history(query)
    elapsed = time.perf_counter() - started
    assert len(answer.points) == 1440
    return elapsed * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="reads timed per case")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        derived_path, stored_path = Path(tmp, "derived.db"), Path(tmp, "stored.db")
        build(derived_path)
        shutil.copy(derived_path, stored_path)
        stored = open_store(stored_path)
        with stored.db.write() as conn:
            _store_minutes(conn, None, to_ms(T0 + 2 * DAY))
        derived = open_store(derived_path)
        query = HistoryQuery(
            "m0", "cpu.percent", T0, T0 + DAY, timedelta(minutes=1), labels={"cpu": "7"}
        )
        times: dict[tuple[str, bool], list[float]] = {}
        for _ in range(args.repeat):
            for cold in (True, False):
                for name, store in (("minute blobs", stored), ("from raw", derived)):
                    timed_read(store, query, cold=cold)  # fills the caches when warm
                    times.setdefault((name, cold), []).append(timed_read(store, query, cold=cold))
        for (name, cold), found in times.items():
            print(
                f"  {'cold' if cold else 'warm'} {name}: median {statistics.median(found):.2f} ms, "
                f"min {min(found):.2f} ms ({len(found)} reads)"
            )
        stored.close()
        derived.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
