"""Benchmark: the machine list of 1,000 machines with 50 series each (issue 15, point 4).

A real ``lunasentri serve`` (SQLite) gets 1,000 machines registered through the
API, each with one sample of 50 readings ingested (so the latest-values table
holds 50,000 rows). Then, over HTTP on loopback, timed as a client sees them
(median of ``--repeat``):

* a page of 100 machines with their latest values: the first page, and one in
  the middle reached by its cursor (target < 50 ms each);
* the full list without latest values, one page of 1,000 (target < 100 ms);
* for comparison, the full list with latest values (1,000 x 50 values + derived).

The server's RSS is read before the timed calls (after one warm-up call of each
kind, which loads code and fills caches) and after them: it must come back to
that baseline (target: within 10 MiB), which a list built whole in memory for
every call does not.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence

import _common as c
import httpx
from _server import ServerProcess, lighten_httpx

MACHINES = 1000
PAGE = 100
PAGE_TARGET_MS = 50.0
FULL_TARGET_MS = 100.0
RSS_TARGET_MIB = 10.0
MIB = 1024 * 1024


def sample_body(rng: random.Random) -> bytes:
    """One sample of the 50 series of benchmarks/_common.SHAPES, gzipped as agents send."""
    metrics: dict[str, list[dict[str, object]]] = {}
    for metric, labels in c.SHAPES:
        entry: dict[str, object] = {"value": round(rng.random() * 100, 2)}
        if labels:
            entry["labels"] = labels
        metrics.setdefault(metric, []).append(entry)
    raw = json.dumps({"samples": [{"timestamp": time.time(), "metrics": metrics}]}).encode()
    return gzip.compress(raw, mtime=0)


async def ingest(url: str, keys: Sequence[str], concurrency: int = 16) -> None:
    rng = random.Random(1)
    queue = iter(keys)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def worker() -> None:
            for key in queue:
                headers = {
                    "authorization": f"Bearer {key}",
                    "content-type": "application/json",
                    "content-encoding": "gzip",
                }
                response = await client.post(
                    "/api/v1/ingest", content=sample_body(rng), headers=headers
                )
                if response.status_code != 200:
                    raise RuntimeError(f"ingest: {response.status_code} {response.text}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def timed(client: httpx.Client, params: dict[str, str], repeat: int) -> tuple[float, int, int]:
    """Median milliseconds of ``repeat`` calls, the items and bytes of the answer."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get("/api/v1/machines", params=params)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return statistics.median(times), len(response.json()["items"]), len(response.content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="calls timed per case (30)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    lighten_httpx()

    with ServerProcess() as server:
        started = time.perf_counter()
        names = [f"bench-{n:04d}" for n in range(MACHINES)]
        keys = server.register(names)
        asyncio.run(ingest(server.url, keys))
        setup = time.perf_counter() - started
        headers = {"authorization": f"Bearer {server.login()}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            first = client.get("/api/v1/machines", params={"limit": str(PAGE)}).json()
            middle = {"limit": str(PAGE), "cursor": first["next_cursor"]}
            for _ in range(4):  # a cursor into the middle of the list
                middle["cursor"] = client.get("/api/v1/machines", params=middle).json()[
                    "next_cursor"
                ]
            cases = {
                "page of 100, latest values, first": {"limit": str(PAGE)},
                "page of 100, latest values, middle": middle,
                "full list (1,000), no latest values": {"limit": "1000", "latest": "false"},
                "full list (1,000), latest values": {"limit": "1000"},
            }
            for params in cases.values():
                timed(client, params, 2)  # warm-up
            baseline = server.rss_bytes()
            paged = {k: v for k, v in cases.items() if "full list (1,000), latest" not in k}
            results = {name: timed(client, params, args.repeat) for name, params in paged.items()}
            after = server.rss_bytes()
            whole = [k for k in cases if k not in paged]
            results.update({name: timed(client, cases[name], args.repeat) for name in whole})
            after_whole = server.rss_bytes()
            # Again: memory that is only reused (the allocator keeps what the biggest
            # answer needed) stays flat; a leak grows by as much again.
            for params in cases.values():
                timed(client, params, args.repeat)
            again = server.rss_bytes()

    print(
        f"benchmark: GET /api/v1/machines, {MACHINES:,} machines x {len(c.SHAPES)} series "
        f"(SQLite, over loopback HTTP; set up in {setup:.0f} s)"
    )
    for line in c.environment():
        print(f"  {line}")
    ok = True
    for name, (ms, items, size) in results.items():
        target = FULL_TARGET_MS if "no latest" in name else PAGE_TARGET_MS
        line = (
            f"{name}: {ms:.1f} ms (median of {args.repeat}; {items} items, {size / 1024:.0f} KiB)"
        )
        if "full list (1,000), latest" in name:
            print(f"{line}; no target (for comparison)")
            continue
        ok &= ms < target
        print(f"{line}; target < {target:.0f} ms, ratio {ms / target:.2f} {c.verdict(ms < target)}")
    growth = (after - baseline) / MIB
    rss_ok = growth < RSS_TARGET_MIB
    ok &= rss_ok
    calls = args.repeat * len(paged)
    print(
        f"server RSS: {baseline / MIB:.0f} MiB before the timed calls, {after / MIB:.0f} MiB "
        f"after the {calls} calls of the first three cases: {growth:+.1f} MiB; target < "
        f"{RSS_TARGET_MIB:.0f} MiB, ratio {max(growth, 0) / RSS_TARGET_MIB:.2f} "
        f"{c.verdict(rss_ok)}"
    )
    print(
        f"  after the {args.repeat} full lists with latest values: {after_whole / MIB:.0f} MiB "
        f"({(after_whole - after) / MIB:+.1f} MiB: the allocator keeps what the biggest answer "
        "needed)"
    )
    calls = args.repeat * len(cases)
    print(
        f"  after {calls} more of all four: {again / MIB:.0f} MiB "
        f"({(again - after_whole) / MIB:+.1f} MiB; "
        "what keeps growing with the calls is a leak, what does not is reuse)"
    )
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
