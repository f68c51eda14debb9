"""Benchmark: HTTP ingest with 1, 2 and 4 ``lunasentri serve`` processes on one PostgreSQL.

Needs a PostgreSQL server (``LUNASENTRI_BENCH_POSTGRES_URL`` or
``LUNASENTRI_TEST_POSTGRES_URL``; without one it skips, saying so). For each
process count, in the same run and with the same load: a fresh scratch
schema, that many real servers on it (``[server] shared_database = true``),
``--agents`` agents spread round-robin over them posting ``--points`` readings
back to back for ``--duration`` seconds (``bench_ingest_http.py``'s load).
Printed per count: points/s accepted, the scaling against one process, and
the CPU each part used (psutil): every server process, the PostgreSQL
backends serving them (by their ``application_name``), the load generator,
and the whole machine, which shows where the limit is when the cores are
shared by all of them.

Then the fleet: ``--fleet-agents`` agents at their real pace
(``bench_fleet.py``'s generator) against two processes, each agent talking to
one of them (round-robin).

    python benchmarks/bench_pg_processes.py [--counts 1,2,4] [--agents 16] [--points 1000]
        [--duration 10] [--fleet-agents 2000] [--fleet-duration 30] [--strict]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import timedelta

import _common as c
import _postgres as pg
import _server
import attrs
import bench_fleet as fleet_bench
import bench_ingest_http as http_bench
import httpx
import psutil

from lunasentri_core.model import Machine, new_id, utcnow
from lunasentri_core.services.machines import new_key, store_with_key
from lunasentri_core.storage import StorageBackend
from lunasentri_timescale import TimescaleStorageFactory

TARGET_SCALING = 1.5
"""Two processes against one: what the cores left over by PostgreSQL and the load allow."""


def server_env(url: str, **extra: str) -> dict[str, str]:
    return {"LUNASENTRI_STORAGE__URL": url, "LUNASENTRI_SERVER__SHARED_DATABASE": "true", **extra}


@contextmanager
def servers(
    url: str, count: int, env: dict[str, str], machines: Sequence[str] = ()
) -> Iterator[tuple[list[_server.ServerProcess], list[str]]]:
    """``count`` servers on ``url``'s schema, migrated first (once, not by each), and
    the API keys of ``machines``, stored before the servers start."""
    storage = TimescaleStorageFactory.open(url)
    try:
        storage.migrate()
        # Each machine is two commits: many at once, or minutes go by for a fleet.
        with ThreadPoolExecutor(12) as pool:
            keys = list(pool.map(lambda name: add_machine(storage, name), machines))
    finally:
        storage.close()
    with ExitStack() as stack:
        yield [stack.enter_context(_server.ServerProcess(env)) for _ in range(count)], keys


def add_machine(storage: StorageBackend, name: str) -> str:
    """What registering through the API stores (no audit record); the key's secret.

    Thousands of registrations through the API take minutes on a busy machine:
    the fleet's set-up is not what is measured.
    """
    now = utcnow()
    machine = Machine(id=new_id(), name=name, hostname=f"{name}.bench", created_at=now)
    issued = new_key(machine.id, now)
    store_with_key(storage.state, machine, issued.key)
    return issued.secret


# --------------------------------------------------------------------------- load


async def agents_over(
    plan: http_bench.Plan, urls: Sequence[str], keys: Sequence[str], duration: float
) -> http_bench.Result:
    """``bench_ingest_http``'s agents, agent ``i`` talking to ``urls[i % len(urls)]``."""
    makers = [plan.bodies(i) for i in range(len(keys))]
    result = http_bench.Result()
    per = -(-len(keys) // len(urls))
    limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
    clients = [httpx.AsyncClient(base_url=u, limits=limits, timeout=60) for u in urls]
    try:
        pairs = [(clients[i % len(urls)], key, makers[i]) for i, key in enumerate(keys)]
        await asyncio.gather(*(http_bench.post(cl, k, m.next(), plan, None) for cl, k, m in pairs))
        deadline = time.time() + duration
        cpu, waited = time.process_time(), _server.RunQueue()

        async def agent(client: httpx.AsyncClient, key: str, maker: http_bench.BodyMaker) -> None:
            while time.time() < deadline:
                await http_bench.post(client, key, maker.next(), plan, result)

        await asyncio.gather(*(agent(cl, k, m) for cl, k, m in pairs))
        result.cpu, result.waited = time.process_time() - cpu, waited.seconds()
    finally:
        for client in clients:
            await client.aclose()
    return result


@attrs.frozen
class Run:
    processes: int
    result: http_bench.Result
    server_cpu: list[float]
    server_waited: list[float]
    """Seconds each server's threads waited for a core that other processes held."""
    backend_cpu: float
    machine_busy: float
    machine_total: float

    @property
    def elapsed(self) -> float:
        return max(1e-9, self.result.last_end - self.result.first_start)

    @property
    def rate(self) -> float:
        return self.result.accepted / self.elapsed


def ingest_run(base: str, count: int, args: argparse.Namespace) -> Run:
    samples = max(1, args.points // http_bench.READINGS_PER_SAMPLE)
    with (
        pg.scratch_schema(base, f"lsbench_proc{count}") as (_, url, app),
        servers(url, count, server_env(url, **http_bench.SERVER_ENV)) as (running, _),
    ):
        keys = running[0].register([f"agent-{i:03d}" for i in range(args.agents)])
        stamp = float(int(time.time() - timedelta(days=3).total_seconds()))
        plan = http_bench.Plan(running[0].url, samples, False, stamp)
        urls = [server.url for server in running]
        before = [server.cpu_seconds() for server in running]
        waits = [server.run_queue() for server in running]
        backends, machine = pg.BackendCpu(url, app), pg.MachineCpu()
        try:
            _server.lighten_httpx()
            result = asyncio.run(agents_over(plan, urls, keys, args.duration))
            busy, total = machine.seconds()
            backend = backends.seconds()
        finally:
            backends.close()
        cpu = [server.cpu_seconds() - b for server, b in zip(running, before, strict=True)]
        waited = [wait.seconds() for wait in waits]
    return Run(count, result, cpu, waited, backend, busy, total)


# --------------------------------------------------------------------------- fleet


class SpreadFleet(fleet_bench.Fleet):
    """The fleet with each agent on its own connection to one of ``urls`` (round-robin)."""

    def __init__(
        self,
        plan: fleet_bench.Plan,
        agents: Sequence[tuple[int, str]],
        start: float,
        urls: Sequence[str],
    ) -> None:
        super().__init__(plan, agents, start)
        self.urls = list(urls)

    async def _own_client(self, number: int, key: str) -> None:
        plan = attrs.evolve(self.plan, url=self.urls[number % len(self.urls)])
        limits = httpx.Limits(
            max_connections=1, max_keepalive_connections=1, keepalive_expiry=plan.keepalive_expiry
        )
        # The fleet's one TLS context: building one per client costs the load
        # generator tens of milliseconds of CPU each.
        async with httpx.AsyncClient(
            base_url=plan.url, limits=limits, timeout=30, verify=self._ssl
        ) as client:
            await self.agent(client, number, key)


def fleet_run(
    base: str, args: argparse.Namespace
) -> tuple[argparse.Namespace, fleet_bench.Measured]:
    names = [f"fleet-{i:05d}" for i in range(args.fleet_agents)]
    setup = time.perf_counter()
    with (
        pg.scratch_schema(base, "lsbench_fleet") as (_, url, _app),
        servers(url, 2, server_env(url), names) as (running, keys),
    ):
        setup = time.perf_counter() - setup
        plan = fleet_bench.Plan(
            running[0].url, args.fleet_agents, args.interval, args.fleet_duration, 0, 60.0
        )
        cpu = [server.cpu_seconds() for server in running]
        waits = [server.run_queue() for server in running]
        start = time.time() + 2.0
        _server.lighten_httpx()
        fleet = SpreadFleet(plan, list(enumerate(keys)), start, [s.url for s in running])
        result = asyncio.run(fleet.run())
        elapsed = time.time() - start
        server_cpu = sum(s.cpu_seconds() - b for s, b in zip(running, cpu, strict=True))
        waited = sum(w.seconds() for w in waits)
        rss = sum(server.rss_bytes() for server in running)
        clean = True
        errors: list[str] = []
        for server in running:
            server.stop()
            clean = clean and server.clean
            errors += server.errors()
    measured = fleet_bench.Measured(
        plan, result, setup, elapsed, server_cpu, waited, rss, clean, errors
    )
    shown = argparse.Namespace(
        agents=args.fleet_agents,
        interval=args.interval,
        duration=args.fleet_duration,
        connections=0,
        processes=1,
        register_concurrency=16,
    )
    return shown, measured


# --------------------------------------------------------------------------- report


def report_runs(runs: list[Run], args: argparse.Namespace) -> bool:
    cores = psutil.cpu_count() or 1
    print(
        f"benchmark: HTTP ingest on PostgreSQL by 1..{runs[-1].processes} server processes, "
        f"{args.agents} agents x {args.points:,} points, {args.duration:g} s each, "
        f"one load-generator process, {cores} cores"
    )
    for line in c.environment():
        print(f"  {line}")
    first = runs[0].rate
    for run in runs:
        elapsed, errors = run.elapsed, sum(run.result.errors.values())
        servers_cpu = " + ".join(f"{cpu / elapsed:.0%}" for cpu in run.server_cpu)
        print(
            f"{run.processes} process(es): {run.rate:,.0f} points/s accepted, scaling "
            f"{run.rate / first:.2f} x one process; {errors} errors"
        )
        print(
            f"  CPU (of one core): servers {servers_cpu}, their PostgreSQL backends "
            f"{run.backend_cpu / elapsed:.0%}, load generator {run.result.cpu / elapsed:.0%}; "
            f"the whole machine {run.machine_busy / run.machine_total:.0%} busy "
            f"({run.machine_busy / run.machine_total * cores:.2f} of {cores} cores, other "
            "users included)"
        )
        waited = " + ".join(f"{seconds / elapsed:.0%}" for seconds in run.server_waited)
        print(
            f"  waiting for a core held by other processes: servers {waited}, load generator "
            f"{run.result.waited / elapsed:.0%}"
        )
    two = next((run for run in runs if run.processes == 2), None)
    if two is None:
        return True
    scaling = two.rate / first
    print(
        f"scaling from 1 to 2 processes: {scaling:.2f} (target >= {TARGET_SCALING:.2f}) "
        f"{_server.verdict(scaling >= TARGET_SCALING)}"
    )
    return scaling >= TARGET_SCALING


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--counts", default="1,2,4", help="server process counts (default 1,2,4)")
    parser.add_argument("--agents", type=int, default=16, help="HTTP agents (default 16)")
    parser.add_argument("--points", type=int, default=1000, help="readings a request (1000)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds a count (10)")
    parser.add_argument(
        "--fleet-agents", type=int, default=2000, help="fleet agents, 0: no fleet (2000)"
    )
    parser.add_argument("--fleet-duration", type=float, default=30.0, help="seconds (30)")
    parser.add_argument("--interval", type=float, default=5.0, help="fleet agents' interval (5)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    base = pg.postgres_url()
    if base is None:
        print(pg.skip_line("bench_pg_processes"))
        return 0
    counts = [int(n) for n in args.counts.split(",")]
    runs = [ingest_run(base, count, args) for count in counts]
    met = report_runs(runs, args)
    if args.fleet_agents:
        shown, measured = fleet_run(base, args)
        print(
            "fleet against two server processes (agents round-robin over both); its machines "
            "were stored directly in the database, not registered through the API: the set-up "
            "time below is that and the servers' start"
        )
        met = fleet_bench.report(shown, measured) and met
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
