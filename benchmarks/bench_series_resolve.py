"""Benchmark: one write holding one sample from each of many machines, by series state.

What a fleet's writer sees after a restart or when machines join: the time of
``MetricStore.write`` for a batch of one sample (25 readings, shaped like the
psutil collector's) from each of ``--machines`` machines,

* ``new``: no machine has series yet (all are created);
* ``uncached``: the series exist, a fresh store has cached none (a restart);
* ``cached``: the same store writes again (ids from its cache).

On SQLite (a temporary file) and, when a server is configured, PostgreSQL (a
scratch schema). Each state is timed ``--repeat`` times on fresh machines and
the best is kept.

    python benchmarks/bench_series_resolve.py [--machines 500 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from pathlib import Path

import _common as c
import _postgres
import sqlalchemy as sa

from lunasentri_core import MachineSamples, Reading, Sample
from lunasentri_core.storage.sql import SqlStorage

READINGS: list[tuple[str, dict[str, str]]] = [
    ("cpu.percent", {}),
    *[("cpu.percent", {"cpu": str(i)}) for i in range(3)],
    *[(m, {}) for m in ("mem.total", "mem.used", "mem.available", "swap.total", "swap.used")],
    *[(m, {}) for m in ("proc.count", "load.1", "load.5", "load.15")],
    *[(m, {"mount": mount}) for mount in ("/", "/data") for m in ("disk.total", "disk.used")],
    *[
        (m, {"nic": nic})
        for nic in ("eth0", "lo")
        for m in ("net.rx_bytes", "net.tx_bytes", "net.rx_rate", "net.tx_rate")
    ],
]
assert len(READINGS) == 25, len(READINGS)

Store = AbstractContextManager[Callable[[], SqlStorage]]


def batch(prefix: str, machines: int, step: int) -> list[MachineSamples]:
    at = c.T0 + timedelta(seconds=step)
    readings = [Reading(metric, float(step), labels) for metric, labels in READINGS]
    return [MachineSamples(f"{prefix}-{i:05d}", [Sample(at, readings)]) for i in range(machines)]


def timed(store: SqlStorage, machines: list[MachineSamples]) -> float:
    start = time.perf_counter()
    store.metrics.write(machines)
    return time.perf_counter() - start


def measure(open_store: Callable[[], SqlStorage], machines: int, repeat: int) -> dict[str, float]:
    times: dict[str, list[float]] = {"new": [], "uncached": [], "cached": []}
    for r in range(repeat):
        prefix = f"r{r}-{machines}"
        one = open_store()
        try:
            times["new"].append(timed(one, batch(prefix, machines, 0)))
        finally:
            one.close()
        two = open_store()
        try:
            times["uncached"].append(timed(two, batch(prefix, machines, 1)))
            times["cached"].append(timed(two, batch(prefix, machines, 2)))
        finally:
            two.close()
    return {state: min(seconds) for state, seconds in times.items()}


@contextmanager
def sqlite_store() -> Iterator[Callable[[], SqlStorage]]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        SqlStorage(sa.create_engine(url)).migrate()
        yield lambda: SqlStorage(sa.create_engine(url))


@contextmanager
def postgres_store(url: str) -> Iterator[Callable[[], SqlStorage]]:
    with _postgres.scratch_schema(url, "bench_series") as (_, scoped, _name):
        first = SqlStorage(sa.create_engine(scoped))
        first.migrate()
        first.close()
        yield lambda: SqlStorage(sa.create_engine(scoped))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"benchmark: series resolution, one sample x {len(READINGS)} readings per machine")
    backends: list[tuple[str, Callable[[], Store]]] = [("sqlite", sqlite_store)]
    url = _postgres.postgres_url()
    if url is None:
        print(_postgres.skip_line("postgresql"))
    else:
        backends.append(("postgresql", lambda: postgres_store(url)))
    for name, make in backends:
        with make() as open_store:
            for machines in args.machines:
                best = measure(open_store, machines, args.repeat)
                cells = "  ".join(
                    f"{state} {seconds * 1000:8.1f} ms" for state, seconds in best.items()
                )
                print(f"{name:10} {machines:5,} machines  {cells}")


if __name__ == "__main__":
    main()
