"""Shared pieces of the benchmarks: the synthetic fleet, timing, the verdict line.

The fleet is 1,000 series: 20 machines x 50 readings, shaped like what the psutil
collector reports (CPU per core, memory, swap, disks per mount, network per
interface, processes, load). Values are random; timestamps are 5 s apart.
"""

from __future__ import annotations

import gc
import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lunasentri_core import MachineSamples, Reading, Sample

MACHINES = 20
INTERVAL = timedelta(seconds=5)
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def reading_shapes() -> list[tuple[str, dict[str, str]]]:
    """The 50 series of one machine: (metric, labels)."""
    shapes: list[tuple[str, dict[str, str]]] = []
    shapes += [("cpu.percent", {"cpu": str(i)}) for i in range(8)]
    shapes += [("cpu.percent", {})]
    shapes += [(m, {}) for m in ("mem.total", "mem.used", "swap.total", "swap.used")]
    for mount in ("/", "/home", "/var", "/data", "/boot"):
        shapes += [("disk.total", {"mount": mount}), ("disk.used", {"mount": mount})]
    for nic in ("eth0", "eth1", "lo", "docker0"):
        shapes += [
            (m, {"nic": nic})
            for m in ("net.rx_bytes", "net.tx_bytes", "net.rx_rate", "net.tx_rate")
        ]
    shapes += [("proc.count", {}), ("load.1", {}), ("load.5", {}), ("load.15", {})]
    shapes += [("temp.celsius", {"sensor": str(i)}) for i in range(7)]
    assert len(shapes) == 50, len(shapes)
    return shapes


SHAPES = reading_shapes()
SERIES = MACHINES * len(SHAPES)


def machine_id(i: int) -> str:
    return f"machine-{i:03d}"


def make_batches(
    batches: int, samples_per_machine: int, seed: int = 1
) -> list[list[MachineSamples]]:
    """Batches as the ingest writer sends them: every machine's latest request, coalesced.

    Each machine's request carries ``samples_per_machine`` samples (5 s apart);
    one batch holds one request of each of the 20 machines, so consecutive
    batches move forward in time.
    """
    rng = random.Random(seed)
    out = []
    for b in range(batches):
        batch = []
        for m in range(MACHINES):
            samples = []
            for s in range(samples_per_machine):
                at = T0 + INTERVAL * (b * samples_per_machine + s)
                readings = [
                    Reading(metric, rng.random() * 100, labels) for metric, labels in SHAPES
                ]
                samples.append(Sample(at, readings))
            batch.append(MachineSamples(machine_id(m), samples))
        out.append(batch)
    return out


def best_of(repeat: int, run: Callable[[], float]) -> float:
    """The fastest of ``repeat`` runs (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        best = min(best, run())
    return best


class Timer:
    def __init__(self) -> None:
        self.elapsed = 0.0

    def __enter__(self) -> Timer:
        gc.disable()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self._start
        gc.enable()


def sqlite_connect(path: Path) -> sqlite3.Connection:
    """A raw connection with the storage's settings: WAL, synchronous=NORMAL."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def environment() -> Iterator[str]:
    yield f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}"
