"""Benchmark: the heartbeat sweep over 100,000 machines on SQLite.

A fleet of ``--machines`` machines (bulk-loaded, all online, last heard from in
the last minute) sits in a SQLite file. The hub's heartbeat then sweeps it, as
the server does every 30 s, in three situations:

* steady: nobody is due a change (what almost every sweep is);
* 1 % silent: that many machines go offline, each change recorded with its
  outbox entry;
* 10 % silent: a large outage.

Each sweep is set against a limit measured on the same file in the same run:
raw ``sqlite3`` reading every machine's id, status, last_seen and threshold,
the least any sweep that looks at each machine must do.

    python benchmarks/bench_heartbeat.py [--machines 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import _common as c
import anyio
import sqlalchemy as sa

from lunasentri_core import MachineStatus, Sentri, Settings
from lunasentri_core.model import Machine
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.storage.sql.rows import machine_values
from lunasentri_core.storage.sql.schema import machines

TARGET = 1.0
"""Seconds a sweep of the whole fleet may take."""

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


STARTED = NOW - timedelta(hours=1)
"""When the hub starts listening: long enough before NOW that no machine is in the
heartbeat's start-up grace (a fresh start would keep silent machines online)."""


class Clock:
    def __init__(self) -> None:
        self.now = STARTED

    def __call__(self) -> datetime:
        return self.now


def load_fleet(hub: Sentri, count: int, silent: int) -> None:
    """``count`` machines online; the first ``silent`` last reported 5 minutes ago."""
    storage = hub.storage
    assert isinstance(storage, SqlStorage)
    engine = storage.engine
    rows = []
    for i in range(count):
        last_seen = NOW - timedelta(minutes=5) if i < silent else NOW - timedelta(seconds=i % 60)
        machine = Machine(
            id=f"m{i:06d}",
            name=f"machine-{i:06d}",
            status=MachineStatus.ONLINE,
            last_seen=last_seen,
            created_at=NOW - timedelta(days=1),
        )
        rows.append(machine_values(machine))
    with engine.begin() as conn:
        conn.execute(sa.delete(machines))
        for start in range(0, len(rows), 10_000):
            conn.execute(sa.insert(machines), rows[start : start + 10_000])


def raw_scan(path: Path) -> float:
    conn = sqlite3.connect(path)
    try:
        with c.Timer() as timer:
            rows = conn.execute(
                "SELECT id, status, last_seen, offline_after_us FROM machines"
            ).fetchall()
        assert rows
    finally:
        conn.close()
    return timer.elapsed


async def sweep(hub: Sentri) -> tuple[float, int]:
    started = time.perf_counter()
    changes = await hub.heartbeat.sweep()
    return time.perf_counter() - started, len(changes)


async def measure(data_dir: Path, count: int, repeat: int) -> None:
    settings = Settings.load(environ={}, data_dir=data_dir, heartbeat_interval="1d")
    clock = Clock()
    async with Sentri(settings, clock=clock) as hub:
        await anyio.wait_all_tasks_blocked()  # the heartbeat has started listening
        clock.now = NOW
        db_path = data_dir / "lunasentri.db"
        cases = (("steady", 0), ("1 % silent", count // 100), ("10 % silent", count // 10))
        for label, silent in cases:
            best, best_raw, changed = float("inf"), float("inf"), 0
            for _ in range(repeat):
                await anyio.to_thread.run_sync(load_fleet, hub, count, silent)
                best_raw = min(best_raw, raw_scan(db_path))
                elapsed, changed = await sweep(hub)
                best = min(best, elapsed)
            if changed != silent:
                raise SystemExit(f"{label}: {changed} changes recorded, {silent} expected")
            ratio = best / best_raw
            print(
                f"{label:>12}: sweep {best * 1000:8.1f} ms, {changed:6d} changes recorded; "
                f"raw scan {best_raw * 1000:6.1f} ms; ratio {ratio:5.1f}; "
                f"target < {TARGET:g} s: {c.verdict(best < TARGET)}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for line in c.environment():
        print(line)
    print(f"heartbeat sweep over {args.machines:,} machines (best of {args.repeat})")
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(measure, Path(tmp), args.machines, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
