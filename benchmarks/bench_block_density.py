"""Benchmark (d): bytes per point of compacted blocks, and the cost of decoding them.

The data is a realistic day (``_dataset.py``): 20 machines x 50 series, one
point every 5 s, 17.28M points, shaped and rounded as the collectors report
them. Each series' day is cut into hourly chunks as compaction cuts it, and
encoded three times in the same run, with the block format compaction writes
now (version 3), with version 2 (the format before it) and with version 1
(plain columns, zlib level 1):

* encoding: bytes per point of the raw and minute-rollup blobs, encode time
  per point, and the time to decode one series-day (24 raw blocks) of a
  percentage, a byte counter and the worst-case series (full-precision floats);
* on disk: a SQLite store holding the day as compaction leaves it (the
  chunks of each hour written together by ``SqlMetricStore.store_chunks``, in
  page order (``row_order.py``), the head compacted), after ``VACUUM``: file
  size and used pages per point, and the payload (both blobs) and the rest of
  the used pages apart. For comparison, the same with the rows in series
  order (each written by ``store_chunk``, where compaction before page order
  left them: the order of the open hour's first pass), in version 3, 2 and 1.
  The newest file is also rewritten with 8 and 16 KiB pages to show what a
  larger page gives.

The target is 2.0 bytes per point of file (issue 15).

    python benchmarks/bench_block_density.py [--machines 20] [--repeat 20] [--jitter-ms 0]
"""

from __future__ import annotations

import argparse
import functools
import random
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import _common as c
import _dataset as d

from lunasentri_core import MachineSamples, Reading, RetentionPolicy, Sample
from lunasentri_core.storage.sql import CHUNK_MS, SqlStorage, blocks
from lunasentri_core.storage.sql.metrics import from_ms
from lunasentri_core.storage.sql.points import (
    MINUTE_MS,
    FloatArray,
    IntArray,
    Rollups,
    bucket_stats,
    float_array,
)
from lunasentri_core.storage.sql.schema import labels_to_json
from lunasentri_sqlite import SQLiteStorageFactory

LAYOUTS: tuple[tuple[str, int, bool], ...] = (
    ("v1 blocks in series order", 1, False),
    ("v2 blocks in series order (before)", 2, False),
    ("v3 blocks in series order", 3, False),
    ("v3 blocks in page order (now)", 3, True),
)
"""The stores built: label, block format, rows in page order."""
TARGET = 2.0
"""Bytes per point of the SQLite file after compaction and VACUUM."""


def chunks(s: d.Series) -> Iterator[tuple[int, IntArray, FloatArray]]:
    """``(chunk_start, ts, values)`` of a series, hour by hour."""
    lo = 0
    while lo < len(s.ts):
        start = s.ts[lo] - s.ts[lo] % CHUNK_MS
        hi = lo
        while hi < len(s.ts) and s.ts[hi] < start + CHUNK_MS:
            hi += 1
        yield start, s.ts[lo:hi], s.values[lo:hi]
        lo = hi


def minute_columns(start: int, ts: IntArray, values: FloatArray) -> list[IntArray | FloatArray]:
    return Rollups.from_stats(
        bucket_stats(ts, values, MINUTE_MS, start, start + CHUNK_MS)
    ).columns()


class Encoded:
    """Bytes and encode time of one format over the whole data set."""

    def __init__(self, version: int) -> None:
        self.encode = functools.partial(blocks.encode, version=version)
        self.raw = self.minutes = 0
        self.seconds = 0.0

    def add(self, start: int, ts: IntArray, values: FloatArray) -> None:
        with c.Timer() as timer:
            raw = self.encode((ts, values))
        self.seconds += timer.elapsed
        self.raw += len(raw)
        self.minutes += len(self.encode(minute_columns(start, ts, values)))


def decode_ms(day: list[bytes], repeat: int) -> float:
    """Median ms to decode one series-day of raw blocks, as a history read does."""
    times = []
    for _ in range(repeat):
        with c.Timer() as timer:
            for blob in day:
                blocks.decode_raw(blob)
        times.append(timer.elapsed * 1000)
    return statistics.median(times)


def noisy_series() -> d.Series:
    """The worst case: a random walk at full float64 precision (no decimal scale fits)."""
    rng = random.Random(3)
    ts = d.timestamps(rng, d.to_ms(c.T0), d.POINTS_PER_DAY, 0)
    values, x = [], 50.0
    for _ in ts:
        x += rng.gauss(0, 1)
        values.append(x)
    return d.Series("noisy", "noisy", (), ts, float_array(values))


@contextmanager
def writing_version(version: int) -> Iterator[None]:
    """Make compaction write ``version`` (to build the comparison file)."""
    original = blocks.encode
    blocks.encode = functools.partial(original, version=version)  # type: ignore[assignment]
    try:
        yield
    finally:
        blocks.encode = original  # type: ignore[assignment]


def build_store(path: Path, series: list[d.Series], *, packed: bool) -> tuple[int, int, int]:
    """A SQLite store holding every series' day as compaction leaves it; (file, used, blob) bytes.

    ``packed``: each hour's rows in page order, as compaction writes them now;
    else in series order, as it did before.
    """
    c.remove_db(path)
    store = SQLiteStorageFactory.open(f"sqlite:///{path}", retention=RetentionPolicy())
    assert isinstance(store, SqlStorage)
    store.migrate()
    first: dict[str, list[Reading]] = {}
    for s in series:
        first.setdefault(s.machine, []).append(Reading(s.metric, s.values[0], dict(s.labels)))
    at = from_ms(series[0].ts[0])
    store.metrics.write([MachineSamples(m, [Sample(at, r)]) for m, r in first.items()])
    with store.engine.connect() as conn:
        ids = {
            (machine, metric, labels): sid
            for sid, machine, metric, labels in conn.exec_driver_sql(
                "SELECT id, machine_id, metric, labels FROM series"
            )
        }
    hours: dict[int, dict[int, tuple[IntArray, FloatArray]]] = {}
    for s in series:
        sid = ids[(s.machine, s.metric, labels_to_json(s.labels))]
        for start, ts, values in chunks(s):
            hours.setdefault(start, {})[sid] = (ts, values)
    for start, hour in sorted(hours.items()):
        with store.db.write() as conn:
            if packed:
                store.metrics.store_chunks(conn, start, hour)
            else:
                for sid, (ts, values) in sorted(hour.items()):
                    store.metrics.store_chunk(conn, sid, start, ts, values)
    store.metrics.maintain(from_ms(series[0].ts[-1] + 1))
    with store.engine.connect() as conn:
        # What the rows hold, not what the chunks encode to: a chunk whose raw
        # points are kept (the default 7 days) stores no minute blob.
        payload = conn.exec_driver_sql(
            "SELECT coalesce(sum(length(raw)), 0) + coalesce(sum(length(minutes)), 0)"
            " FROM metric_chunks"
        ).scalar_one()
    store.close()
    conn = c.sqlite_connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("VACUUM")
    page_size, pages, free = (
        conn.execute(f"PRAGMA {name}").fetchone()[0]
        for name in ("page_size", "page_count", "freelist_count")
    )
    conn.close()
    return path.stat().st_size, (pages - free) * page_size, payload


def page_sizes(path: Path, sizes: tuple[int, ...] = (8192, 16384)) -> dict[int, tuple[int, int]]:
    """(file, used) bytes of ``path`` rewritten by VACUUM with larger pages.

    A chunk row (both blobs) takes 1-2 KB in version 2: two fit in a 4 KiB
    page and a third does not, so a quarter of every page stays empty; larger
    pages waste less of themselves.
    """
    out = {}
    for size in sizes:
        copy = path.with_name(f"{path.stem}-{size}.db")
        copy.write_bytes(path.read_bytes())
        conn = sqlite3.connect(copy, isolation_level=None)
        conn.execute("PRAGMA journal_mode = DELETE")  # WAL files keep their page size
        conn.execute(f"PRAGMA page_size = {size}")
        conn.execute("VACUUM")
        pages, free = (
            conn.execute(f"PRAGMA {n}").fetchone()[0] for n in ("page_count", "freelist_count")
        )
        conn.close()
        out[size] = (copy.stat().st_size, (pages - free) * size)
        copy.unlink()
    return out


def timed(run: Callable[[], tuple[int, int, int]]) -> tuple[int, int, int, float]:
    with c.Timer() as timer:
        file_bytes, used, payload = run()
    return file_bytes, used, payload, timer.elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=c.MACHINES, help="machines (default 20)")
    parser.add_argument("--repeat", type=int, default=20, help="decodes timed (default 20)")
    parser.add_argument(
        "--jitter-ms", type=int, default=0, help="random delay of each sample (default 0)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    if not 0 <= args.jitter_ms < d.STEP_MS:
        parser.error(
            f"--jitter-ms must be below the step ({d.STEP_MS} ms): timestamps must increase"
        )

    with c.Timer() as generating:
        series = list(d.day(machines=args.machines, jitter_ms=args.jitter_ms))
    points = sum(len(s.ts) for s in series)
    versions = (blocks.FORMAT_V1, blocks.FORMAT_V2, blocks.FORMAT_VERSION)
    formats = {version: Encoded(version) for version in versions}
    for s in series:
        for start, ts, values in chunks(s):
            for encoded in formats.values():
                encoded.add(start, ts, values)

    samples = {
        "cpu.percent": series[0],
        "net.rx_bytes": next(s for s in series if s.metric == "net.rx_bytes"),
        "full-precision walk": noisy_series(),
    }
    decoding = {
        (name, version): decode_ms([encoded.encode((t, v)) for _, t, v in chunks(s)], args.repeat)
        for name, s in samples.items()
        for version, encoded in formats.items()
    }
    noisy_bytes = {
        version: sum(
            len(encoded.encode((t, v))) for _, t, v in chunks(samples["full-precision walk"])
        )
        for version, encoded in formats.items()
    }

    with tempfile.TemporaryDirectory(prefix="lunasentri-bench-") as tmp:
        on_disk = {}
        for layout in LAYOUTS:
            _, version, packed = layout
            with writing_version(version):
                path = Path(tmp, f"v{version}-{packed}.db")
                on_disk[layout] = timed(
                    lambda path=path, packed=packed: build_store(path, series, packed=packed)
                )
        larger_pages = page_sizes(Path(tmp, f"v{blocks.FORMAT_VERSION}-True.db"))

    v3 = blocks.FORMAT_VERSION
    print(
        f"benchmark (d): block density, {len(series):,} series x {d.POINTS_PER_DAY:,} points "
        f"at 5 s = {points:,} points, jitter up to {args.jitter_ms} ms "
        f"(generated in {generating.elapsed:.0f} s)"
    )
    for line in c.environment():
        print(f"  {line}")
    for version, encoded in formats.items():
        encode_us = encoded.seconds / points * 1e6
        worst = noisy_bytes[version] / d.POINTS_PER_DAY
        print(
            f"  blocks v{version}: raw {encoded.raw / points:.3f} B/point, minute rollups "
            f"{encoded.minutes / points:.3f} B/point; raw encode {encode_us:.2f} us/point; "
            f"worst case (full-precision walk) {worst:.2f} B/point"
        )
    for name in samples:
        times = ", ".join(f"v{v} {decoding[(name, v)]:.2f} ms" for v in versions)
        print(
            f"  decode one series-day ({name}, 24 blocks): {times} (median of {args.repeat}; "
            f"per block v{v3} {decoding[(name, v3)] / 24 * 1000:.0f} us)"
        )
    for (label, _, _), (file_bytes, used, payload, seconds) in on_disk.items():
        print(
            f"  SQLite file, {label}, after VACUUM: {file_bytes / points:.3f} B/point "
            f"({file_bytes / 2**20:.1f} MiB; used pages {used / points:.3f} B/point: blobs "
            f"{payload / points:.3f}, rows, indexes and free space in pages "
            f"{(used - payload) / points:.3f}; built in {seconds:.0f} s)"
        )
    for size, (file_bytes, used) in larger_pages.items():
        print(
            f"  the v{v3} file in page order rewritten with {size // 1024} KiB pages: "
            f"{file_bytes / points:.3f} B/point (used pages {used / points:.3f} B/point)"
        )
    now, before = (on_disk[layout][0] / points for layout in (LAYOUTS[-1], LAYOUTS[1]))
    ratio = now / TARGET
    ok = now <= TARGET
    print(
        f"file bytes per point: {now:.3f} (before, v2 in series order: {before:.3f}); "
        f"ratio to the {TARGET} target "
        f"{ratio:.2f} {c.verdict(ok)}"
    )
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
