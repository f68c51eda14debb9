"""Benchmark: SQLite file size against its live data through a compaction and retention soak.

Compaction deletes the head rows it moves into chunks and retention deletes
expired chunks; without incremental auto-vacuum the pages they held stay in
the file as free pages (about half the file). This writes a realistic fleet
(``_dataset.py``: 20 machines x 50 series, one point every 5 s) in time order,
as fast as it goes, and runs maintenance every ``--interval`` seconds of data
time, as the hub's maintenance loop does every 30 s (with a short retention,
so that retention deletes during the run). Throughout, it samples the file
size against the live bytes ``(page_count - freelist_count) * page_size``:
just before each pass gives its free pages back (the worst moment), after it,
and after writes. It prints the largest ratio against the 1.2 limit, the file's
bytes per point, and what giving the pages back costs: time per maintenance
pass, the longest step (how long ingest may wait for the write lock), and its
share of the run. ``--compare`` runs the same soak on a file without
auto-vacuum, to show the ingest and maintenance time without it.

    python benchmarks/bench_sqlite_soak.py [--machines 20] [--hours 2] [--interval 30] [--compare]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import _common as c
import _dataset as d

from lunasentri_core import MachineSamples, RetentionPolicy, Sample
from lunasentri_core.samples import ReadingColumns
from lunasentri_core.storage.sql import SqlStorage, vacuum
from lunasentri_core.storage.sql.metrics import from_ms
from lunasentri_sqlite import SQLiteStorageFactory

LIMIT = 1.2
"""File size over live bytes, at every moment sampled (issue 15)."""
RETENTION = RetentionPolicy(
    raw=timedelta(minutes=15), minute=timedelta(minutes=30), hour=timedelta(minutes=45)
)
"""Short, so that the default run of two hours expires every resolution and deletes
rows (expiry works in whole hours: the first hour's row goes at 1:45)."""

_set_timestamp = Sample.__dict__["timestamp"].__set__
_set_readings = Sample.__dict__["readings"].__set__


def sample(at_ms: int, keys: tuple[Any, ...], values: tuple[float, ...]) -> Sample:
    """A sample as the ingest decoder builds it (readings as columns, checked already)."""
    made: Sample = object.__new__(Sample)
    _set_timestamp(made, from_ms(at_ms))
    _set_readings(made, ReadingColumns(keys, values))
    return made


class Fleet:
    """The data set, tick by tick: every machine's sample at one timestamp."""

    def __init__(self, machines: int, points: int) -> None:
        by_machine: dict[str, list[d.Series]] = {}
        for s in d.day(machines=machines, points=points):
            by_machine.setdefault(s.machine, []).append(s)
        self.machines = by_machine
        self.keys = {m: tuple((s.metric, s.labels) for s in ss) for m, ss in by_machine.items()}
        self.ts = next(iter(by_machine.values()))[0].ts
        self.points = points * sum(len(ss) for ss in by_machine.values())

    def batch(self, i: int) -> list[MachineSamples]:
        at = self.ts[i]
        return [
            MachineSamples(m, [sample(at, self.keys[m], tuple(s.values[i] for s in ss))])
            for m, ss in self.machines.items()
        ]


class Sizes:
    """File size over live bytes, sampled."""

    def __init__(self, path: Path, store: SqlStorage) -> None:
        self.path, self.store = path, store
        self.worst = 0.0
        self.worst_at = ""
        self.samples = 0

    def sample(self, moment: str) -> float:
        page_size, pages, free = vacuum.file_pages(self.store.db)
        live = (pages - free) * page_size
        size = max(pages * page_size, self.path.stat().st_size)
        ratio = size / live
        self.samples += 1
        if ratio > self.worst:
            self.worst, self.worst_at = ratio, f"{moment} ({size / 2**20:.1f} MiB file)"
        return ratio


class Reclaims:
    """The maintenance passes' page giving, timed; the file sampled before each pass's last step."""

    def __init__(self, sizes: Sizes | None) -> None:
        self.sizes = sizes
        self.seconds: list[float] = []
        """Per pass: inside the transactions that freed pages, plus the steps after."""
        self.pages: list[int] = []
        self.longest = 0.0
        """The longest single give-back (inside one transaction, or one step)."""
        self.pass_label = ""

    def start_pass(self, label: str) -> None:
        self.pass_label = label
        self.seconds.append(0.0)
        self.pages.append(0)

    def _timed(self, elapsed: float, pages: int) -> None:
        self.seconds[-1] += elapsed
        self.pages[-1] += pages
        self.longest = max(self.longest, elapsed)

    @contextmanager
    def installed(self) -> Iterator[None]:
        reclaim, give_back = vacuum.reclaim, vacuum.give_back

        def timed_reclaim(db: Any, step: int = vacuum.RECLAIM_STEP) -> int:
            if self.sizes is not None:
                self.sizes.sample(f"before the last step of {self.pass_label}")
            with c.Timer() as timer:
                freed = reclaim(db, step)
            self._timed(timer.elapsed, freed)
            return freed

        def timed_give_back(conn: Any, limit: int = vacuum.IN_TRANSACTION) -> int:
            with c.Timer() as timer:
                freed = give_back(conn, limit)
            self._timed(timer.elapsed, freed)
            return freed

        vacuum.reclaim = timed_reclaim  # type: ignore[assignment]
        vacuum.give_back = timed_give_back  # type: ignore[assignment]
        try:
            yield
        finally:
            vacuum.reclaim, vacuum.give_back = reclaim, give_back  # type: ignore[assignment]


class Soak:
    """One run over the data set; what it measured."""

    def __init__(self, fleet: Fleet, path: Path, interval_ms: int, *, auto_vacuum: bool) -> None:
        self.fleet, self.path, self.interval_ms = fleet, path, interval_ms
        self.auto_vacuum = auto_vacuum
        self.write_s = self.maintain_s = 0.0
        self.passes = 0
        self.maintain_times: list[float] = []

    def run(self) -> tuple[Sizes, Reclaims, int]:
        c.remove_db(self.path)
        if not self.auto_vacuum:
            # A file made before 0.1.0: created without auto-vacuum, never converted.
            conn = c.sqlite_connect(self.path)
            conn.execute("CREATE TABLE placeholder (x)")
            conn.close()
        store = SQLiteStorageFactory.open(f"sqlite:///{self.path}", retention=RETENTION)
        assert isinstance(store, SqlStorage)
        try:
            if self.auto_vacuum:
                store.migrate()
            else:
                store._upgrade()  # the schema, without the conversion
            sizes = Sizes(self.path, store)
            reclaims = Reclaims(sizes)
            with reclaims.installed():
                self._loop(store, sizes, reclaims)
            size = self.path.stat().st_size
        finally:
            store.close()
        return sizes, reclaims, size

    def _loop(self, store: SqlStorage, sizes: Sizes, reclaims: Reclaims) -> None:
        fleet = self.fleet
        next_pass = fleet.ts[0] + self.interval_ms
        for i in range(len(fleet.ts)):
            batch = fleet.batch(i)
            with c.Timer() as timer:
                store.metrics.write(batch)
            self.write_s += timer.elapsed
            if fleet.ts[i] + d.STEP_MS < next_pass:
                continue
            sizes.sample("after writes")
            self.passes += 1
            reclaims.start_pass(f"pass {self.passes}")
            with c.Timer() as timer:
                store.metrics.maintain(from_ms(next_pass))
            self.maintain_s += timer.elapsed
            self.maintain_times.append(timer.elapsed)
            sizes.sample(f"after pass {self.passes}")
            next_pass += self.interval_ms


def soak_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The soak's options (``bench_pg_soak.py`` takes them too)."""
    parser.add_argument("--machines", type=int, default=c.MACHINES, help="machines (default 20)")
    parser.add_argument(
        "--hours", type=float, default=2.0, help="hours of data (default 2; a day: 24)"
    )
    parser.add_argument(
        "--interval", type=float, default=30.0, help="maintenance every N s of data (default 30)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when the limit is missed")
    return parser


def soak_points(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Points per series of the soak the options ask for."""
    points = int(timedelta(hours=args.hours) / c.INTERVAL)
    if points < 2 or args.interval < d.STEP_MS / 1000:
        parser.error("--hours must cover two samples and --interval be at least 5 s")
    return points


def limit_line(what: str, worst: float) -> bool:
    """Print the largest ratio against :data:`LIMIT`; whether it is within."""
    ok = worst <= LIMIT
    print(
        f"largest {what} / live bytes: {worst:.3f}; ratio to the {LIMIT} limit "
        f"{worst / LIMIT:.2f} {c.verdict(ok)}"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = soak_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument(
        "--compare", action="store_true", help="also run without auto-vacuum (twice as long)"
    )
    args = parser.parse_args(argv)
    points = soak_points(parser, args)
    with c.Timer() as generating:
        fleet = Fleet(args.machines, points)
    interval_ms = int(args.interval * 1000)
    with tempfile.TemporaryDirectory(prefix="lunasentri-bench-") as tmp:
        soak = Soak(fleet, Path(tmp, "soak.db"), interval_ms, auto_vacuum=True)
        sizes, reclaims, size = soak.run()
        plain = None
        if args.compare:
            plain = Soak(fleet, Path(tmp, "plain.db"), interval_ms, auto_vacuum=False)
            plain_sizes, _, plain_size = plain.run()

    print(
        f"benchmark: SQLite soak, {args.machines} machines x 50 series at 5 s for "
        f"{args.hours:g} h = {fleet.points:,} points, maintenance every {args.interval:g} s "
        f"({soak.passes} passes), retention raw {RETENTION.raw}, minute {RETENTION.minute}, "
        f"hour {RETENTION.hour} (generated in {generating.elapsed:.0f} s)"
    )
    for line in c.environment():
        print(f"  {line}")
    reclaim_s = sum(reclaims.seconds)
    busy = [s for s, p in zip(reclaims.seconds, reclaims.pages, strict=True) if p]
    print(
        f"  writes {soak.write_s:.1f} s ({fleet.points / soak.write_s / 1000:.0f}k points/s), "
        f"maintenance {soak.maintain_s:.1f} s (median pass "
        f"{statistics.median(soak.maintain_times) * 1000:.1f} ms)"
    )
    print(
        f"  giving pages back: {sum(reclaims.pages):,} pages, {reclaim_s:.2f} s in all "
        f"({reclaim_s / soak.maintain_s:.1%} of maintenance, "
        f"{reclaim_s / (soak.write_s + soak.maintain_s):.1%} of writing and maintenance); "
        f"per pass {reclaim_s / len(reclaims.seconds) * 1000:.2f} ms on average, median of "
        f"those that gave pages back {statistics.median(busy) * 1000 if busy else 0:.2f} ms, "
        f"longest {max(reclaims.seconds) * 1000:.1f} ms; longest in one transaction "
        f"{reclaims.longest * 1000:.1f} ms"
    )
    print(
        f"  file: {size / 2**20:.1f} MiB at the end, {size / fleet.points:.3f} B/point of the "
        f"data written; {sizes.samples} samples, worst {sizes.worst:.3f} {sizes.worst_at}"
    )
    if plain is not None:
        print(
            f"  without auto-vacuum: writes {plain.write_s:.1f} s, maintenance "
            f"{plain.maintain_s:.1f} s; file {plain_size / 2**20:.1f} MiB, worst ratio "
            f"{plain_sizes.worst:.3f} {plain_sizes.worst_at}"
        )
    ok = limit_line("file size", sizes.worst)
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
