"""Benchmark: the latest of 1,000 series (20 machines x 50) in one call, against 20 calls.

A real ``lunasentri serve`` (SQLite) gets 20 machines registered through the
API, each with one sample of 50 readings ingested. Then, over HTTP on
loopback, timed as a client sees them (median of ``--repeat``):

* ``GET /api/v1/latest``: every machine's newest values in one call, read from
  the latest-values table in one query for the page;
* ``GET /api/v1/machines/{id}/latest`` for each of the 20 machines, one after
  the other, as a client without the first call does.

The target: one call takes at most a fifth of the 20 calls.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable

import _common as c
import httpx
from _server import ServerProcess, lighten_httpx
from bench_machine_list import ingest

TARGET = 0.2
"""One call's time over the 20 calls' time, at most."""


def median_ms(repeat: int, run: Callable[[], int]) -> tuple[float, int]:
    """Median milliseconds of ``repeat`` runs, and the values the last one returned."""
    times = []
    count = 0
    for _ in range(repeat):
        started = time.perf_counter()
        count = run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="timed runs of each (30)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    lighten_httpx()

    with ServerProcess() as server:
        keys = server.register([c.machine_id(m) for m in range(c.MACHINES)])
        asyncio.run(ingest(server.url, keys))
        headers = {"authorization": f"Bearer {server.login()}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            listed = client.get("/api/v1/machines", params={"latest": "false"}).json()
            ids = [m["id"] for m in listed["items"]]

            def one_call() -> int:
                response = client.get("/api/v1/latest")
                response.raise_for_status()
                return sum(len(m["items"]) for m in response.json()["items"])

            def per_machine() -> int:
                count = 0
                for machine_id in ids:
                    response = client.get(f"/api/v1/machines/{machine_id}/latest")
                    response.raise_for_status()
                    count += len(response.json()["items"])
                return count

            for run in (one_call, per_machine):
                run()  # warm-up
            one_ms, one_values = median_ms(args.repeat, one_call)
            many_ms, many_values = median_ms(args.repeat, per_machine)

    print(
        f"benchmark: latest values of {len(ids)} machines x {len(c.SHAPES)} series "
        "(SQLite, over loopback HTTP)"
    )
    for line in c.environment():
        print(f"  {line}")
    print(f"  GET /api/v1/latest, one call: {one_ms:.1f} ms ({one_values} values)")
    print(
        f"  GET /api/v1/machines/{{id}}/latest, {len(ids)} calls: {many_ms:.1f} ms "
        f"({many_values} values; median of {args.repeat})"
    )
    ratio = one_ms / many_ms
    ok = ratio <= TARGET and one_values == many_values
    print(
        f"one call / {len(ids)} calls: {ratio:.3f}; target <= {TARGET}, ratio to the target "
        f"{ratio / TARGET:.2f} {c.verdict(ok)}"
    )
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
