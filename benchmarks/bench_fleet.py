"""Benchmark: a fleet of agents against one server, at their real pace.

A real ``lunasentri serve`` (uvicorn, one worker, SQLite, default settings)
runs in its own process on a loopback port. ``--agents`` machines are
registered through the API (concurrently; the setup time is reported on its
own), then each simulated agent posts one sample of 25 readings (what the
psutil collector reports for a small machine) every ``--interval`` seconds for
``--duration`` seconds, gzipped as the agent sends it. Start times are spread
evenly over the first interval, so the server sees a steady
``agents / interval`` requests a second, as a real fleet makes it. Like the
agent's spool, an agent that falls behind (slow answers, errors) sends every
sample that is due in its next request, so nothing is lost, and retries a
failed request after a second; it gives up on what is left ``GRACE`` seconds
after the end.

The load comes from one process (``--processes`` for more) with asyncio and
httpx. Every agent has its own keep-alive connection, as real agents have (and
as httpx scales: one shared pool of hundreds of connections costs the client
several times the CPU per request); ``--connections N`` shares N instead.

Reported: samples delivered against those due, errors (the target is none),
the request rate achieved against the intended one (below it when agents had
to batch), request latency p50/p99, and how long a sample took from being due
to being acknowledged (the freshness of the data on the server).

    python benchmarks/bench_fleet.py [--agents 2000] [--interval 5] [--duration 120]
        [--connections 0] [--processes 1] [--strict]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import json
import multiprocessing
import random
import ssl
import sys
import time
from collections.abc import Sequence

import _common as c
import _server
import attrs
import httpx

READINGS: list[tuple[str, dict[str, str]]] = [
    ("cpu.percent", {}),
    *[("cpu.percent", {"cpu": str(i)}) for i in range(3)],
    ("mem.total", {}),
    ("mem.used", {}),
    ("mem.available", {}),
    ("swap.total", {}),
    ("swap.used", {}),
    ("proc.count", {}),
    ("load.1", {}),
    ("load.5", {}),
    ("load.15", {}),
    *[(m, {"mount": mount}) for mount in ("/", "/data") for m in ("disk.total", "disk.used")],
    *[
        (m, {"nic": nic})
        for nic in ("eth0", "lo")
        for m in ("net.rx_bytes", "net.tx_bytes", "net.rx_rate", "net.tx_rate")
    ],
]
"""One sample of a small machine, shaped like the psutil collector's: 25 readings."""
assert len(READINGS) == 25, len(READINGS)


LISTED = {metric for metric, labels in READINGS if labels}
"""Metrics with labelled series: on the wire, a list of entries (unlabelled ones too)."""


def sample_json(at: float, rng: random.Random) -> dict[str, object]:
    metrics: dict[str, object] = {}
    for metric, labels in READINGS:
        value = round(rng.random() * 100, 2)
        if metric in LISTED:
            entries = metrics.setdefault(metric, [])
            assert isinstance(entries, list)
            entries.append({"labels": labels, "value": value} if labels else {"value": value})
        else:
            metrics[metric] = value
    return {"timestamp": at, "metrics": metrics}


def body(stamps: Sequence[float], rng: random.Random) -> bytes:
    """``{"samples": [...]}``, gzipped as the agent sends it."""
    raw = json.dumps({"samples": [sample_json(at, rng) for at in stamps]}).encode()
    return gzip.compress(raw, compresslevel=6, mtime=0)


PACE = 0.95
"""Below this share of the intended request rate, agents had to batch: the fleet was not
served at its pace."""
GRACE = 30.0
"""Seconds after the run's end that agents still try to deliver what is pending."""
RETRY_AFTER = 1.0
"""Seconds an agent waits after a failed request (the agent backs off similarly)."""


@attrs.frozen
class Plan:
    url: str
    agents: int
    """In the whole fleet (an agent's start offset depends on its number among them)."""
    interval: float
    duration: float
    connections: int
    """Shared keep-alive connections; 0: one per agent."""
    keepalive_expiry: float

    def offset(self, agent: int) -> float:
        return agent * self.interval / self.agents

    def intended(self) -> int:
        """Samples (and requests, at one sample each) due within the run, over all agents."""
        return sum(self.slots(agent) for agent in range(self.agents))

    def slots(self, agent: int) -> int:
        span = self.duration - self.offset(agent)
        return max(0, -int(-span // self.interval))  # ceil


@attrs.define
class Result:
    ok: int = 0
    delivered: int = 0
    """Samples acknowledged."""
    abandoned: int = 0
    """Samples still pending when the grace period ran out."""
    latencies: list[float] = attrs.Factory(list)
    freshness: list[float] = attrs.Factory(list)
    """Per sample: seconds from its due time to its acknowledgement."""
    sent_at: list[float] = attrs.Factory(list)
    """Seconds since the start, of every request."""
    errors: collections.Counter[str] = attrs.Factory(collections.Counter)
    cpu: float = 0.0
    waited: float = 0.0

    def merge(self, other: Result) -> None:
        self.ok += other.ok
        self.delivered += other.delivered
        self.abandoned += other.abandoned
        self.latencies += other.latencies
        self.freshness += other.freshness
        self.sent_at += other.sent_at
        self.errors += other.errors
        self.cpu += other.cpu
        self.waited += other.waited


class Fleet:
    """Agents of one load-generator process, sharing its clients."""

    def __init__(self, plan: Plan, agents: Sequence[tuple[int, str]], start: float) -> None:
        self.plan = plan
        self.agents = agents
        self.start = start
        self.result = Result()
        # One TLS context for all clients: httpx builds one per client otherwise.
        self._ssl = ssl.create_default_context()

    def client(self, connections: int) -> httpx.AsyncClient:
        limits = httpx.Limits(
            max_connections=connections,
            max_keepalive_connections=connections,
            keepalive_expiry=self.plan.keepalive_expiry,
        )
        return httpx.AsyncClient(
            base_url=self.plan.url, limits=limits, timeout=30, verify=self._ssl
        )

    async def run(self) -> Result:
        cpu, waited = time.process_time(), _server.RunQueue()
        if not self.plan.connections:
            await asyncio.gather(*(self._own_client(number, key) for number, key in self.agents))
        else:
            async with self.client(self.plan.connections) as client:
                await asyncio.gather(*(self.agent(client, n, key) for n, key in self.agents))
        self.result.cpu = time.process_time() - cpu
        self.result.waited = waited.seconds()
        return self.result

    async def _own_client(self, number: int, key: str) -> None:
        async with self.client(1) as client:
            await self.agent(client, number, key)

    async def agent(self, client: httpx.AsyncClient, number: int, key: str) -> None:
        plan, result = self.plan, self.result
        rng = random.Random(number)
        headers = {
            "authorization": f"Bearer {key}",
            "content-type": "application/json",
            "content-encoding": "gzip",
        }
        first = self.start + plan.offset(number)
        slots, pending = plan.slots(number), 0
        give_up = self.start + plan.duration + GRACE
        while pending < slots:
            delay = first + pending * plan.interval - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.time()
            if sent > give_up:
                result.abandoned += slots - pending
                return
            # Everything due by now goes in this request, as the spool would send it.
            # (At least the slot slept for: the clocks may disagree by a hair.)
            due = min(slots, max(pending + 1, int((sent - first) // plan.interval) + 1))
            stamps = [first + slot * plan.interval for slot in range(pending, due)]
            result.sent_at.append(sent - self.start)
            try:
                response = await client.post(
                    "/api/v1/ingest", content=body(stamps, rng), headers=headers
                )
            except httpx.HTTPError as error:
                result.errors[type(error).__name__] += 1
                await asyncio.sleep(RETRY_AFTER)
                continue
            acked = time.time()
            if response.status_code != 200:
                result.errors[str(response.status_code)] += 1
                await asyncio.sleep(RETRY_AFTER)
                continue
            result.ok += 1
            result.latencies.append(acked - sent)
            result.delivered += len(stamps)
            result.freshness += [acked - at for at in stamps]
            pending = due


def fleet_in_process(plan: Plan, agents: Sequence[tuple[int, str]], start: float) -> Result:
    _server.lighten_httpx()
    return asyncio.run(Fleet(plan, agents, start).run())


def run_fleet(plan: Plan, keys: Sequence[str], processes: int) -> tuple[Result, float]:
    """The whole fleet over ``processes`` load processes; returns the result and the start."""
    agents = list(enumerate(keys))
    start = time.time() + 1.0 + 1.0 * processes  # time for the processes to come up
    if processes <= 1:
        return fleet_in_process(plan, agents, start), start
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        parts = pool.starmap(
            fleet_in_process, [(plan, agents[i::processes], start) for i in range(processes)]
        )
    total = Result()
    for part in parts:
        total.merge(part)
    return total, start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, default=2000, help="simulated agents (default 2000)")
    parser.add_argument(
        "--interval", type=float, default=5.0, help="seconds between an agent's posts (default 5)"
    )
    parser.add_argument("--duration", type=float, default=120.0, help="seconds (default 120)")
    parser.add_argument(
        "--connections",
        type=int,
        default=0,
        help="keep-alive connections the agents share (default 0: one per agent)",
    )
    parser.add_argument(
        "--keepalive-expiry",
        type=float,
        default=60.0,
        help="seconds the client keeps an idle connection (default 60, as the agent)",
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="load-generator processes (default 1)"
    )
    parser.add_argument(
        "--register-concurrency",
        type=int,
        default=16,
        help="machine registrations in flight during setup (default 16)",
    )
    parser.add_argument(
        "--prelude", default="", help="Python run in the server before it starts (experiments)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 on any error or miss")
    args = parser.parse_args(argv)

    measured = measure(args)
    met = report(args, measured)
    return 1 if args.strict and not met else 0


@attrs.frozen
class Measured:
    plan: Plan
    result: Result
    setup: float
    elapsed: float
    server_cpu: float
    server_waited: float
    rss: int
    clean: bool
    log_errors: list[str]


def measure(args: argparse.Namespace) -> Measured:
    with _server.ServerProcess(prelude=args.prelude) as server:
        setup = time.perf_counter()
        names = [f"fleet-{i:05d}" for i in range(args.agents)]
        keys = server.register(names, concurrency=args.register_concurrency)
        setup = time.perf_counter() - setup
        plan = Plan(
            server.url,
            args.agents,
            args.interval,
            args.duration,
            args.connections,
            args.keepalive_expiry,
        )
        cpu, waited = server.cpu_seconds(), server.run_queue()
        result, started = run_fleet(plan, keys, args.processes)
        elapsed = time.time() - started
        cpu, server_waited = server.cpu_seconds() - cpu, waited.seconds()
        rss = server.rss_bytes()
        server.stop()
        return Measured(
            plan, result, setup, elapsed, cpu, server_waited, rss, server.clean, server.errors()
        )


def report(args: argparse.Namespace, m: Measured) -> bool:
    """Print the figures; returns whether the run met its target."""
    result, elapsed = m.result, m.elapsed
    intended = m.plan.intended()
    errors = sum(result.errors.values())
    # The steady state: once every agent has started, until the last interval begins.
    window = (args.interval, max(args.interval * 2, args.duration - args.interval))
    in_window = sum(window[0] <= at < window[1] for at in result.sent_at)
    achieved = in_window / (window[1] - window[0])
    wanted = args.agents / args.interval
    pct = _server.percentile
    p50, p99 = pct(result.latencies, 0.5), pct(result.latencies, 0.99)
    fresh50, fresh99 = pct(result.freshness, 0.5), pct(result.freshness, 0.99)
    connections = f"{args.connections} shared" if args.connections else "one per agent"

    print(
        f"benchmark: fleet, {args.agents:,} agents x {len(READINGS)} readings every "
        f"{args.interval:g} s for {args.duration:g} s ({args.processes} load process(es), "
        f"connections: {connections})"
    )
    for line in c.environment():
        print(f"  {line}")
    print(
        f"  httpx {httpx.__version__}; setup: {args.agents:,} machines registered through "
        f"the API in {m.setup:.1f} s ({args.agents / m.setup:,.0f}/s, "
        f"{args.register_concurrency} in flight)"
    )
    complete = result.delivered == intended and errors == 0
    detail = ", ".join(f"{n} x {kind}" for kind, n in result.errors.most_common()) or "none"
    abandoned = f" ({result.abandoned:,} abandoned)" if result.abandoned else ""
    print(
        f"samples: {result.delivered:,} delivered of {intended:,} due{abandoned}; "
        f"errors: {detail} (target: none) {_server.verdict(complete)}"
    )
    paced = achieved >= PACE * wanted
    print(
        f"request rate: {achieved:,.1f}/s achieved in the steady state, {wanted:,.1f}/s "
        f"intended ({achieved / wanted:.2f}; target >= {PACE:.2f}) {_server.verdict(paced)}; "
        f"{len(result.sent_at):,} requests, {result.ok:,} ok"
    )
    print(f"request latency: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    print(
        f"  a sample's delay from due to acknowledged: p50 {fresh50 * 1000:.0f} ms, "
        f"p99 {fresh99 * 1000:.0f} ms"
    )
    print(
        f"  CPU over {elapsed:.0f} s: server {m.server_cpu / elapsed:.0%} of a core "
        f"({m.server_cpu / max(1, result.ok) * 1e6:,.0f} us a request), load generator "
        f"{result.cpu / elapsed:.0%}; waiting for a CPU: server {m.server_waited / elapsed:.0%}, "
        f"load generator {result.waited / elapsed:.0%}"
    )
    print(
        f"  server RSS {m.rss / 2**20:.0f} MiB; errors in the server log: {len(m.log_errors)}; "
        f"stopped cleanly on SIGTERM: {'yes' if m.clean else 'NO'}"
    )
    for line in m.log_errors[:5]:
        print(f"    {line}")
    return complete and paced and not m.log_errors and m.clean


if __name__ == "__main__":
    sys.exit(main())
