"""Benchmark: the dashboard's pages as a browser loads them (issue 16, point 10).

A real ``lunasentri serve`` (SQLite) gets ``--machines`` machines (1,000)
registered through the API, each with one sample of 50 readings (the latest
values the cards show); the machines of the overview's first page also get the
last hour every 10 s (their sparklines), and one machine gets the last
``--hours`` (24) every 5 s, with values shaped as the collectors report them
(``_dataset.py``), left as maintenance leaves it (hourly chunks with their
rollups). Then, over HTTP on loopback, timed as a
client sees them (median of ``--repeat``):

* the overview page (``GET /``, its first page of cards with sparklines, the
  status counts and alerts of every machine): target < 200 ms; the same sorted
  by CPU (which reads every machine's latest value) for comparison;
* a machine page's chart data over 24 hours: the two history calls its charts
  make (``GET /api/v1/machines/{id}/history?metric=cpu.percent&exact=true&start=-24h``,
  the CPU as a whole, and one call for the other charts' nine metrics), one after
  the other, so the sum is the server's time for them: target < 100 ms; also
  as the browser sends them, both at once (wall time, for comparison);
* the script and style bytes a first visit downloads, gzipped as sent (the
  login page, the overview, a machine page, and the files they name, each
  once): target < 150 KB (150,000 bytes).

    python benchmarks/bench_dashboard.py                     # 1,000 machines, 24 h
    python benchmarks/bench_dashboard.py --machines 50 --hours 2 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import re
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import _common as c
import attrs
import httpx
from _dataset import machine_values
from _server import ServerProcess, lighten_httpx
from bench_machine_list import ingest

OVERVIEW_TARGET_MS = 200.0
CHARTS_TARGET_MS = 100.0
ASSETS_TARGET_BYTES = 150_000
FIRST_PAGE = 24
"""Cards on the overview's first page (dashboard/overview.py PAGE_SIZE)."""
CHART_CALLS = (
    # dashboard/machine_page.py CHARTS, as machine.js asks for them: the CPU as a whole
    # (its per-core series only where there is none), the other charts in one call.
    {"metric": "cpu.percent", "exact": "true"},
    {
        "metric": ",".join(
            (
                "mem.percent",
                "swap.percent",
                "disk.percent",
                "load.1",
                "load.5",
                "load.15",
                "net.rx_rate",
                "net.tx_rate",
                "proc.count",
            )
        )
    },
)
SAMPLES_PER_REQUEST = 1000
"""50,000 readings a request, half the server's max_batch_points."""
SERVER_ENV = {
    # A day of one machine's samples arrives in seconds here: lift the per-machine limit.
    "LUNASENTRI_SERVER__INGEST_RATE": "0",
    "LUNASENTRI_SERVER__INGEST_BURST": "100000000",
    # Compact soon after the history arrives, so it is stored as it is after a day.
    "LUNASENTRI_STORAGE__MAINTENANCE_INTERVAL": "2",
}
ASSET = re.compile(r'<(?:script[^>]*\ssrc|link[^>]*rel="stylesheet"[^>]*\shref)="([^"]+)"')


def history_bodies(
    span: timedelta, interval: timedelta, rng: random.Random, now: datetime
) -> list[bytes]:
    """Samples from ``now - span`` to ``now``, ``interval`` apart, as gzipped ingest bodies;
    values shaped as the collectors report them (``_dataset.machine_values``), since
    how well they compress is what reading them back costs."""
    count = int(span / interval)
    stamps = [now - span + interval * (n + 1) for n in range(count)]
    columns = machine_values(rng, count)
    bodies = []
    for first in range(0, count, SAMPLES_PER_REQUEST):
        samples = []
        for n in range(first, min(count, first + SAMPLES_PER_REQUEST)):
            metrics: dict[str, list[dict[str, object]]] = {}
            for (metric, labels), values in zip(c.SHAPES, columns, strict=True):
                entry: dict[str, object] = {"value": values[n]}
                if labels:
                    entry["labels"] = labels
                metrics.setdefault(metric, []).append(entry)
            samples.append({"timestamp": stamps[n].isoformat(), "metrics": metrics})
        bodies.append(gzip.compress(json.dumps({"samples": samples}).encode(), 1, mtime=0))
    return bodies


def send(client: httpx.Client, key: str, bodies: Sequence[bytes]) -> int:
    headers = {
        "authorization": f"Bearer {key}",
        "content-type": "application/json",
        "content-encoding": "gzip",
    }
    for body in bodies:
        response = client.post("/api/v1/ingest", content=body, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"ingest: {response.status_code} {response.text[:300]}")
    return len(bodies)


def wait_for_compaction(server: ServerProcess, timeout: float = 300.0) -> int:
    """Wait until maintenance has moved the old points out of the head table (its row
    count stays put across two passes); returns the rows left there."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{server.database()}?mode=ro", uri=True) as conn:
            rows = int(conn.execute("SELECT count(*) FROM samples_head").fetchone()[0])
        if rows == last:
            return rows
        last = rows
        time.sleep(5)  # two maintenance passes (every 2 s)
    raise RuntimeError(f"the head table still changes after {timeout:.0f} s ({last} rows)")


@attrs.frozen
class Timing:
    wall_ms: float
    """Median, as the client sees it."""
    cpu_ms: float
    """The server's CPU time per run (all its threads), on average."""
    wait_ms: float
    """Time the server's threads waited for a CPU per run, on average: other processes
    holding the cores, which an idle machine would not add."""


def measure(server: ServerProcess, repeat: int, run: Callable[[], object]) -> Timing:
    times = []
    cpu, waits = server.cpu_seconds(), server.run_queue()
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    cpu = server.cpu_seconds() - cpu
    return Timing(statistics.median(times), cpu / repeat * 1000, waits.seconds() / repeat * 1000)


def report(name: str, timing: Timing, target: float | None, repeat: int) -> bool:
    """Print one case's line; whether it met ``target`` (as the client saw it)."""
    line = f"{name}: {timing.wall_ms:.1f} ms (median of {repeat})"
    detail = (
        f"  server CPU {timing.cpu_ms:.1f} ms a run, waiting for a CPU "
        f"{timing.wait_ms:.1f} ms a run (load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores)"
    )
    if target is None:
        print(f"{line}; no target (for comparison)")
        print(detail)
        return True
    ok = timing.wall_ms < target
    print(f"{line}; target < {target:.0f} ms, ratio {timing.wall_ms / target:.2f} {c.verdict(ok)}")
    print(f"{detail}; CPU ratio {timing.cpu_ms / target:.2f}")
    return ok


def get_ok(client: httpx.Client, path: str, **params: str) -> httpx.Response:
    response = client.get(path, params=params)
    if response.status_code != 200:
        raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
    return response


def charts_at_once(url: str, token: str, machine_id: str, hours: int) -> float:
    """Wall milliseconds of the chart's history calls sent together, as the page does."""
    limits = httpx.Limits(max_connections=len(CHART_CALLS))

    async def run() -> float:
        async with httpx.AsyncClient(
            base_url=url, cookies={"lunasentri_session": token}, limits=limits, timeout=60
        ) as client:
            path = f"/api/v1/machines/{machine_id}/history"
            started = time.perf_counter()
            answers = await asyncio.gather(
                *(
                    client.get(path, params={**params, "start": f"-{hours}h"})
                    for params in CHART_CALLS
                )
            )
            elapsed = (time.perf_counter() - started) * 1000
        for answer in answers:
            answer.raise_for_status()
        return elapsed

    return asyncio.run(run())


def first_visit_assets(url: str, token: str, machine_id: str) -> dict[str, int]:
    """Each script and style a first visit loads, with the bytes sent for it (gzipped)."""
    sizes: dict[str, int] = {}
    headers = {"accept-encoding": "gzip"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as anonymous:
        pages = [get_ok(anonymous, "/login").text]
    with httpx.Client(
        base_url=url, headers=headers, cookies={"lunasentri_session": token}, timeout=60
    ) as client:
        pages += [get_ok(client, "/").text, get_ok(client, f"/machines/{machine_id}").text]
        for page in pages:
            for path in ASSET.findall(page):
                if path in sizes:
                    continue  # cached for a year (immutable) after its first download
                with client.stream("GET", path) as response:
                    response.raise_for_status()
                    for _ in response.iter_raw():
                        pass
                    sizes[path] = response.num_bytes_downloaded
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=1000, help="machines (1,000)")
    parser.add_argument("--hours", type=int, default=24, help="hours of one machine's history")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per case (20)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    lighten_httpx()
    rng = random.Random(1)

    with ServerProcess(SERVER_ENV) as server:
        started = time.perf_counter()
        names = [f"bench-{n:04d}" for n in range(args.machines)]
        keys = server.register(names)
        asyncio.run(ingest(server.url, keys))
        now = datetime.now(UTC).replace(microsecond=0)
        with httpx.Client(base_url=server.url, timeout=120) as client:
            hour = timedelta(hours=1)
            sent = sum(
                send(client, key, history_bodies(hour, timedelta(seconds=10), rng, now))
                for key in keys[:FIRST_PAGE]
            )
            day = history_bodies(timedelta(hours=args.hours), c.INTERVAL, rng, now)
            sent += send(client, keys[0], day)
        head_rows = wait_for_compaction(server)
        setup = time.perf_counter() - started
        token = server.login()
        with httpx.Client(
            base_url=server.url, cookies={"lunasentri_session": token}, timeout=60
        ) as client:
            machine_id = get_ok(client, "/api/v1/machines", name=names[0]).json()["items"][0]["id"]
            overview = get_ok(client, "/")
            cards = overview.text.count('<li class="card"')
            history = f"/api/v1/machines/{machine_id}/history"

            def charts() -> int:
                points = 0
                for params in CHART_CALLS:
                    body = get_ok(client, history, **params, start=f"-{args.hours}h").json()
                    points += sum(len(series["points"]) for series in body["series"])
                return points

            points = charts()
            for _ in range(2):  # warm-up
                get_ok(client, "/")
                get_ok(client, "/", sort="cpu")
                charts()
            overview_t = measure(server, args.repeat, lambda: get_ok(client, "/"))
            sorted_t = measure(server, args.repeat, lambda: get_ok(client, "/", sort="cpu"))
            charts_t = measure(server, args.repeat, charts)
        together_ms = statistics.median(
            charts_at_once(server.url, token, machine_id, args.hours) for _ in range(args.repeat)
        )
        assets = first_visit_assets(server.url, token, machine_id)

    print(
        f"benchmark: the dashboard, {args.machines:,} machines x {len(c.SHAPES)} series, one "
        f"with {args.hours} h every {c.INTERVAL.total_seconds():.0f} s (SQLite, over loopback "
        f"HTTP; set up in {setup:.0f} s with {sent} history requests; {head_rows:,} rows left "
        "in the head table)"
    )
    for line in c.environment():
        print(f"  {line}")
    ok = report(
        f"overview page (GET /, {cards} cards of {args.machines:,} machines, "
        f"{len(overview.content) / 1024:.0f} KiB)",
        overview_t,
        OVERVIEW_TARGET_MS,
        args.repeat,
    )
    report("  sorted by CPU (GET /?sort=cpu)", sorted_t, None, args.repeat)
    ok &= report(
        f"machine page, {args.hours} h chart data ({len(CHART_CALLS)} history calls one "
        f"after the other, {points:,} points)",
        charts_t,
        CHARTS_TARGET_MS,
        args.repeat,
    )
    print(f"  all at once, as the page sends them: {together_ms:.1f} ms wall; no target")
    total = sum(assets.values())
    ok &= total < ASSETS_TARGET_BYTES
    print(
        f"first visit (login, overview, a machine page): {len(assets)} script and style "
        f"files, {total:,} bytes sent gzipped; target < {ASSETS_TARGET_BYTES:,} bytes, ratio "
        f"{total / ASSETS_TARGET_BYTES:.2f} {c.verdict(total < ASSETS_TARGET_BYTES)}"
    )
    for path, size in sorted(assets.items(), key=lambda item: -item[1]):
        print(f"  {size:>8,}  {path.rsplit('/', 1)[-1]}")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
