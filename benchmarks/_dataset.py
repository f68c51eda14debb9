"""A realistic day of metrics for storage-density benchmarks: 20 machines x 50 series at 5 s.

Values are shaped and quantised as the collectors report them, because that is
what a compressor sees in production:

* ``cpu.percent``: a random walk in [0, 100] with one decimal (psutil rounds);
* ``mem.used`` / ``swap.used``: byte sizes, a random walk in 4 KiB pages;
* ``*.total``: near-constant gauges (a total that changes a few times a day);
* ``disk.used``: byte sizes growing slowly, with the odd cleanup;
* ``net.rx_bytes`` / ``net.tx_bytes``: monotonically increasing counters;
* ``net.*_rate``: the counter's increase over the 5 s step (bytes/s, at most one decimal);
* ``proc.count``: an integer random walk;
* ``load.*``: random walks with two decimals (as ``/proc/loadavg``);
* ``temp.celsius``: a slow random walk in steps of 0.5 °C (one decimal).

Timestamps are exact 5 s steps, as the issue's comparison data set (and a
scheduled agent) has them; ``jitter_ms`` adds a random delay to every sample
to see what irregular timestamps cost.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from typing import NamedTuple

import _common as c

from lunasentri_core.storage.sql.metrics import to_ms
from lunasentri_core.storage.sql.points import FloatArray, IntArray, float_array, int_array

DAY = timedelta(days=1)
STEP_MS = c.INTERVAL // timedelta(milliseconds=1)
POINTS_PER_DAY = DAY // c.INTERVAL


class Series(NamedTuple):
    machine: str
    metric: str
    labels: tuple[tuple[str, str], ...]
    ts: IntArray
    values: FloatArray


def _walk(
    rng: random.Random, n: int, start: float, step: float, lo: float, hi: float, digits: int
) -> list[float]:
    out = []
    x = start
    for _ in range(n):
        x = min(hi, max(lo, x + rng.gauss(0, step)))
        out.append(round(x, digits))
    return out


def _pages(rng: random.Random, n: int, start: int, pages: int, hi: int) -> list[float]:
    """Byte sizes moving by whole 4 KiB pages."""
    out = []
    x = start
    for _ in range(n):
        x = min(hi, max(0, x + 4096 * int(rng.gauss(0, pages))))
        out.append(float(x))
    return out


def _constant(rng: random.Random, n: int, value: float, changes: int) -> list[float]:
    out = [value] * n
    for at in sorted(rng.randrange(n) for _ in range(changes)):
        value += 4096 * rng.randrange(-1000, 1000)
        out[at:] = [value] * (n - at)
    return out


def _counter(rng: random.Random, n: int, rate: float) -> tuple[list[float], list[float]]:
    """A byte counter and its rate over each 5 s step."""
    total = float(rng.randrange(10**9, 10**12))
    counts, rates = [], []
    previous = total
    for _ in range(n):
        increase = int(rng.expovariate(1 / rate))
        total += increase
        counts.append(total)
        rates.append((total - previous) / (STEP_MS / 1000))
        previous = total
    return counts, rates


def machine_values(rng: random.Random, n: int) -> list[list[float]]:
    """The 50 series of one machine, in the order of :data:`_common.SHAPES`."""
    out: list[list[float]] = []
    counters: dict[str, tuple[list[float], list[float]]] = {}
    for metric, labels in c.SHAPES:
        if metric == "cpu.percent":
            out.append(_walk(rng, n, rng.uniform(5, 60), 2.0, 0.0, 100.0, 1))
        elif metric.endswith(".total"):
            size = 4096 * rng.randrange(2**18, 2**28)
            out.append(_constant(rng, n, float(size), rng.randrange(3)))
        elif metric in ("mem.used", "swap.used"):
            out.append(_pages(rng, n, 4096 * rng.randrange(2**16, 2**21), 64, 2**43))
        elif metric == "disk.used":
            out.append(_pages(rng, n, 4096 * rng.randrange(2**20, 2**26), 2, 2**45))
        elif metric.startswith("net."):
            # net.rx_bytes and net.rx_rate are one counter seen twice.
            key = (labels["nic"], metric[:6])
            if key not in counters:
                counters[key] = _counter(rng, n, rng.choice([2_000.0, 50_000.0, 2_000_000.0]))
            count, rate = counters[key]
            out.append(count if metric.endswith("_bytes") else rate)
        elif metric == "proc.count":
            out.append(_walk(rng, n, rng.randrange(150, 400), 1.0, 50, 2000, 0))
        elif metric.startswith("load."):
            out.append(_walk(rng, n, rng.uniform(0.1, 4), 0.05, 0.0, 64.0, 2))
        elif metric == "temp.celsius":
            out.append([round(2 * v) / 2 for v in _walk(rng, n, 45, 0.2, 20, 95, 1)])
        else:
            raise AssertionError(metric)
    return out


def timestamps(rng: random.Random, start_ms: int, n: int, jitter_ms: int) -> IntArray:
    if not jitter_ms:
        return int_array(range(start_ms, start_ms + n * STEP_MS, STEP_MS))
    return int_array(start_ms + i * STEP_MS + rng.randrange(jitter_ms) for i in range(n))


def day(
    machines: int = c.MACHINES,
    points: int = POINTS_PER_DAY,
    *,
    jitter_ms: int = 0,
    seed: int = 15,
) -> Iterator[Series]:
    """Every series of the data set, machine by machine (the same data for the same seed)."""
    start_ms = to_ms(c.T0)
    for m in range(machines):
        rng = random.Random(seed * 1_000 + m)
        ts = timestamps(rng, start_ms, points, jitter_ms)
        for (metric, labels), values in zip(c.SHAPES, machine_values(rng, points), strict=True):
            yield Series(
                c.machine_id(m), metric, tuple(sorted(labels.items())), ts, float_array(values)
            )
