"""Benchmark (c): one psutil collection against the raw psutil calls it makes.

The limit is measured in the same run: the bare psutil calls the collector makes
(the same functions, the same mounts), repeated as often as the collector, with
the two alternated in short rounds so that drifting load on the machine hits both
alike. The ratio is the median of the rounds' paired ratios.

    python benchmarks/bench_psutil_collect.py [--rounds 200] [--batch 5] [--per-cpu] [--strict]

The target is reported, not asserted (as benchmarks/run.py expects); ``--strict``
exits 1 when the ratio is above it.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable

import psutil

from lunasentri_core import Target
from lunasentri_psutil import PsutilCollector, PsutilSettings

TARGET_RATIO = 1.5


def raw_calls(collector: PsutilCollector) -> Callable[[], object]:
    """The psutil calls one collection makes, with nothing around them."""
    per_cpu = collector.settings.per_cpu
    mounts = collector.mounts()
    getloadavg = getattr(os, "getloadavg", None)

    def calls() -> object:
        psutil.cpu_times()
        if per_cpu:
            psutil.cpu_times(percpu=True)
        psutil.virtual_memory()
        psutil.swap_memory()
        psutil.net_io_counters(pernic=True)
        psutil.disk_partitions(all=True)
        for mount in mounts:
            psutil.disk_usage(mount)
        psutil.pids()
        return getloadavg() if getloadavg is not None else None

    return calls


def per_call_ns(function: Callable[[], object], batch: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(batch):
        function()
    return (time.perf_counter_ns() - start) / batch


def measure(rounds: int, batch: int, per_cpu: bool) -> tuple[float, float, float, int]:
    """Median per-call times of both, and the median of the rounds' paired ratios."""
    collector = PsutilCollector(PsutilSettings(per_cpu=per_cpu))
    target = Target(machine_id="bench")

    def collect() -> object:
        return collector.collect(target)

    raw = raw_calls(collector)
    # Warm caches and reach the steady state (rates need a previous collection).
    per_call_ns(collect, batch * 4)
    per_call_ns(raw, batch * 4)
    readings = len(collector.collect(target))

    collect_times: list[float] = []
    raw_times: list[float] = []
    gc.collect()
    for round_ in range(rounds):
        # Alternate which goes first so neither always runs on a warmer cache.
        if round_ % 2:
            raw_times.append(per_call_ns(raw, batch))
            collect_times.append(per_call_ns(collect, batch))
        else:
            collect_times.append(per_call_ns(collect, batch))
            raw_times.append(per_call_ns(raw, batch))
    # Each round's two batches ran back to back under the same load from other
    # processes, so their ratio cancels most of it; the median drops the rest.
    ratios = [c / r for c, r in zip(collect_times, raw_times, strict=True)]
    return (
        statistics.median(collect_times),
        statistics.median(raw_times),
        statistics.median(ratios),
        readings,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="alternations (default 200)")
    parser.add_argument("--batch", type=int, default=5, help="calls of each per round (default 5)")
    parser.add_argument("--per-cpu", action="store_true", help="collect per-CPU percentages")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)

    collect_ns, raw_ns, ratio, readings = measure(args.rounds, args.batch, args.per_cpu)
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"
    print(
        f"psutil collect: {collect_ns / 1e6:.3f} ms/collection ({readings} readings); "
        f"raw psutil calls: {raw_ns / 1e6:.3f} ms; "
        f"ratio {ratio:.2f} (target <= {TARGET_RATIO}) {verdict}"
    )
    return 1 if args.strict and verdict == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())
