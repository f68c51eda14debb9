"""Benchmark: adding the last series to a machine at its series limit.

A machine that already has ``limit - 1`` series (10,000 by default, the default
of ``storage.max_series_per_machine``) sends one sample that creates its last
series. That write must cost what one new series costs, not what the
machine's other series do: it runs inside the shared write transaction, so
whatever it costs, every other machine's ingest waits for it.

Measured on the SQLite backend as the hub opens it, ``MetricStore.write`` with
``max_series`` as the ingest writer calls it, for:

* a process that has the machine's series ids cached (the steady state);
* a fresh process (after a restart: nothing cached);
* a sample of existing series only, at the limit (the common write), for scale;
* a refused sample (one series past the limit).

Each figure is the median over ``--machines`` machines, each taken to its limit
first. The target is 5 ms for adding the last series; the printed ratio is the
cost over 5 ms (at most 1 passes).

    python benchmarks/bench_series_limit.py [--limit 10000] [--machines 7]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import _common as c

from lunasentri_core import MachineSamples, Reading, RetentionPolicy, Sample, SeriesLimitError
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_sqlite import SQLiteStorageFactory

TARGET_S = 0.005
CHUNK = 1_000
"""Series created per sample while filling a machine up (not measured)."""


def open_store(path: Path) -> SqlStorage:
    store = SQLiteStorageFactory.open(f"sqlite:///{path}", retention=RetentionPolicy())
    assert isinstance(store, SqlStorage)
    store.migrate()
    return store


def disks(machine: str, step: int, mounts: range) -> list[MachineSamples]:
    at = c.T0 + step * timedelta(seconds=1)
    readings = [Reading("disk.used", float(i), {"mount": f"/m{i}"}) for i in mounts]
    return [MachineSamples(machine, [Sample(at, readings)])]


def fill(store: SqlStorage, machine: str, count: int, limit: int) -> None:
    for step, start in enumerate(range(0, count, CHUNK)):
        store.metrics.write(
            disks(machine, step, range(start, min(count, start + CHUNK))), max_series=limit
        )


def timed(store: SqlStorage, batch: list[MachineSamples], limit: int) -> float:
    with c.Timer() as timer, contextlib.suppress(SeriesLimitError):
        store.metrics.write(batch, max_series=limit)
    return timer.elapsed


def measure(tmp: Path, limit: int, machines: int) -> dict[str, list[float]]:
    path = tmp / "series.db"
    c.remove_db(path)
    store = open_store(path)
    names = [c.machine_id(i) for i in range(machines)]
    costs: dict[str, list[float]] = {"cached": [], "fresh": [], "existing": [], "refused": []}
    try:
        for machine in names:
            fill(store, machine, limit - 1, limit)
        for k, machine in enumerate(names):
            # Half the machines get their last series from the warm process,
            # half from a fresh one; existing and refused writes follow.
            if k % 2 == 0:
                costs["cached"].append(
                    timed(store, disks(machine, 100, range(limit - 1, limit)), limit)
                )
            else:
                fresh = open_store(path)
                try:
                    last = disks(machine, 100, range(limit - 1, limit))
                    costs["fresh"].append(timed(fresh, last, limit))
                finally:
                    fresh.close()
            costs["existing"].append(timed(store, disks(machine, 101, range(20)), limit))
            costs["refused"].append(
                timed(store, disks(machine, 102, range(limit, limit + 1)), limit)
            )
        assert all(len(store.metrics.list_series(m)) == limit for m in names)
    finally:
        store.close()
    return costs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=10_000, help="series limit (default 10000)")
    parser.add_argument("--machines", type=int, default=7, help="machines measured (default 7)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="lunasentri-bench-") as tmp:
        costs = measure(Path(tmp), args.limit, args.machines)

    print(f"benchmark: series limit, {args.machines} machines at {args.limit:,} series each")
    for line in c.environment():
        print(f"  {line}")
    ok = True
    for name, label in (
        ("cached", "last series, ids cached"),
        ("fresh", "last series, fresh process"),
        ("existing", "20 existing series at the limit"),
        ("refused", "one series past the limit (refused)"),
    ):
        median = statistics.median(costs[name])
        ratio = median / TARGET_S
        if name in ("cached", "fresh"):
            ok = ok and ratio <= 1
            target = f"; ratio {ratio:.2f} of the 5 ms target {c.verdict(ratio <= 1)}"
        else:
            target = f"; ratio {ratio:.2f} of 5 ms"
        print(f"{label}: {median * 1000:.2f} ms (median){target}")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
