"""Benchmark: the CPU of one lone ``Sentri.ingest`` of an agent's sample, in process.

The hub on a temporary SQLite file (default settings), ``--machines``
machines, then ``--writes`` calls of one 25-reading sample each, one at a
time with ``--gap`` seconds between them, as a fleet's requests arrive: each
gets its own writer transaction and its own hand-offs between the event loop
and the writer's thread. No HTTP: this is the part of ``bench_agent_request.py``
that the writer and the store own, with less noise.

Reported: the process's CPU (all threads) a write, less what the same number
of bare sleeps costs; the event loop's thread's share; and the writer's
transaction alone (thread CPU of the metric store's ``write``).

    python benchmarks/bench_lone_write.py [--writes 2000] [--gap 0.005] [--machines 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import _common as c
import anyio

from lunasentri_core import MachineSamples, Reading, Sample, Sentri, Settings


async def run(writes: int, gap: float, machine_count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="lunasentri-lone-") as tmp:
        async with Sentri(Settings.load(environ={}, data_dir=Path(tmp) / "data")) as hub:
            machines = [(await hub.add_machine(f"m{i}")).id for i in range(machine_count)]
            start = datetime.now(UTC) - timedelta(hours=1)
            warmup = 200
            samples = [
                [
                    Sample(
                        start + timedelta(seconds=k), [Reading(f"m.r{j}", k + j) for j in range(25)]
                    )
                ]
                for k in range(warmup + writes)
            ]
            for k in range(warmup):
                await hub.ingest(machines[k % machine_count], samples[k])
                await anyio.sleep(gap)

            transaction = [0.0]
            metrics: Any = hub.storage.metrics
            write = metrics.write

            def timed(batch: Sequence[MachineSamples], **kwargs: Any) -> int:
                began = time.thread_time()
                try:
                    return int(write(batch, **kwargs))
                finally:
                    transaction[0] += time.thread_time() - began

            metrics.write = timed
            began = time.process_time()
            for _ in range(writes):
                await anyio.sleep(gap)
            sleeps = time.process_time() - began

            began, loop_began = time.process_time(), time.thread_time()
            for k in range(warmup, warmup + writes):
                await hub.ingest(machines[k % machine_count], samples[k])
                await anyio.sleep(gap)
            loop = time.thread_time() - loop_began
            cpu = time.process_time() - began
            metrics.write = write
    return {
        "write": (cpu - sleeps) / writes * 1e6,
        "loop": (loop - sleeps) / writes * 1e6,
        "transaction": transaction[0] / writes * 1e6,
        "sleep": sleeps / writes * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--gap", type=float, default=0.005, help="seconds between writes")
    parser.add_argument("--machines", type=int, default=50)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.writes, args.gap, args.machines))
    print(f"benchmark: {args.writes:,} lone writes of 25 readings, {args.gap * 1000:g} ms apart")
    for line in c.environment():
        print(f"  {line}")
    print(f"  load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"CPU a write: {result['write']:,.0f} us (all threads, less the sleeps' "
        f"{result['sleep']:,.0f} us); event loop's thread {result['loop']:,.0f} us; "
        f"the store's transaction {result['transaction']:,.0f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
