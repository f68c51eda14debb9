"""Benchmark: the server's CPU per agent-sized ingest request.

A real ``lunasentri serve`` (uvicorn, one worker, SQLite, default settings)
runs in its own process on a loopback port. ``--machines`` machines are
registered through the API, each with its own API key; then ``--requests``
requests of one agent sample (25 readings, shaped like the fleet benchmark's,
gzipped as the agent sends it) go round-robin over the machines with at most
``--concurrency`` in flight, each machine on its own keep-alive connection,
each machine once every ``--pace`` seconds, spread evenly over it as a
fleet's requests are (an agent's interval: what the server remembers between
two requests of a machine, such as its API key, must last that long to help;
requests that arrive one at a time share no transaction or wake-up).
The bodies are built before the clock starts, so the load generator spends
its CPU on HTTP only.

``--reads N`` then also times N authenticated reads of one machine's latest
values (``GET /api/v1/machines/{id}/latest``, the 25 readings it sent), one
at a time on one keep-alive connection, with the admin's session token as a
bearer token and then as the dashboard's cookie: the fixed cost of a user's
request (authentication, ownership check, thread hand-offs) beside an agent's.

Reported: the server's CPU time (user + system, all threads, psutil) per
request over the run, and how long its threads waited for a core (other
processes on a shared machine). This is the small, quick form of
``bench_fleet.py`` for iterating on the request path; ``--prelude`` runs
Python in the server before it starts (a cProfile hook, say). ``--floor`` then
sends the same requests, paced the same way, to a bare Starlette endpoint on
uvicorn (``_floor_app.py``: gunzip, parse, a worker-thread hop, an answer) and
prints its CPU per request: what the framework and the kernel cost a request
arriving alone, before any of LunaSentri's work.

    python benchmarks/bench_agent_request.py [--machines 500] [--requests 4000] [--pace 5]
        [--concurrency 64] [--warmup 500] [--reads 0] [--prelude CODE] [--py-spy OUT]
        [--floor]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import _common as c
import _server
import bench_fleet
import httpx
import psutil

TARGET_US = 700.0
"""Server CPU per agent request of 25 readings (issue 15)."""


def bodies(machines: int, rounds: int, start: float, step: float) -> list[list[bytes]]:
    """Per round, one gzipped body per machine; timestamps ``step`` seconds apart."""
    rng = random.Random(15)
    return [
        [bench_fleet.body([start + r * step], rng) for _ in range(machines)] for r in range(rounds)
    ]


async def send(
    url: str, keys: list[str], work: list[list[bytes]], concurrency: int, pace: float
) -> tuple[int, list[str]]:
    clients = [
        httpx.AsyncClient(
            base_url=url,
            timeout=60,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            headers={
                "authorization": f"Bearer {key}",
                "content-type": "application/json",
                "content-encoding": "gzip",
            },
        )
        for key in keys
    ]
    began = time.monotonic()
    jobs = iter(
        (began + pace * (r + machine / len(row)), machine, body)
        for r, row in enumerate(work)
        for machine, body in enumerate(row)
    )
    ok, errors = 0, []

    async def worker() -> None:
        nonlocal ok
        for due, machine, body in jobs:
            if (delay := due - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            response = await clients[machine].post("/api/v1/ingest", content=body)
            if response.status_code == 200 and response.json() == {"accepted": 25}:
                ok += 1
            else:
                errors.append(f"{response.status_code} {response.text[:200]}")

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    return ok, errors


async def read_latest(
    server: _server.ServerProcess, machine_id: str, token: str, reads: int
) -> dict[str, float]:
    """Server CPU per ``GET .../latest`` (µs), by bearer session token and by cookie."""
    out = {}
    for how, headers, cookies in (
        ("bearer", {"authorization": f"Bearer {token}"}, None),
        ("cookie", {}, {"lunasentri_session": token}),
    ):
        async with httpx.AsyncClient(
            base_url=server.url, timeout=60, headers=headers, cookies=cookies
        ) as client:
            path = f"/api/v1/machines/{machine_id}/latest"
            for _ in range(max(20, reads // 10)):  # warm: connection, caches
                (await client.get(path)).raise_for_status()
            cpu = server.cpu_seconds()
            for _ in range(reads):
                (await client.get(path)).raise_for_status()
            out[how] = (server.cpu_seconds() - cpu) / reads * 1e6
    return out


def floor_cpu(args: argparse.Namespace, warm: list[list[bytes]], work: list[list[bytes]]) -> float:
    """Server CPU per request (µs) of the bare endpoint in ``_floor_app.py``, same load."""
    port = _server.free_port()
    url = f"http://127.0.0.1:{port}"
    script = Path(__file__).with_name("_floor_app.py")
    proc = subprocess.Popen([sys.executable, str(script), str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the floor's server did not start") from None
                time.sleep(0.1)
        keys = [f"floor-{i}" for i in range(args.machines)]
        asyncio.run(send(url, keys, warm, args.concurrency, args.pace))
        server = psutil.Process(proc.pid)
        before = sum(server.cpu_times()[:2])
        ok, errors = asyncio.run(send(url, keys, work, args.concurrency, args.pace))
        spent = sum(server.cpu_times()[:2]) - before
        if errors:
            raise RuntimeError(f"the floor's server failed: {errors[:3]}")
        return spent / max(1, ok) * 1e6
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--machines", type=int, default=500)
    parser.add_argument("--requests", type=int, default=4000, help="measured requests")
    parser.add_argument("--warmup", type=int, default=500, help="requests before measuring")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument(
        "--pace",
        type=float,
        default=5.0,
        help="seconds between a machine's requests, as the agent's interval (0: flat out)",
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=10.0,
        help="seconds to measure the idle server's CPU for, after the warm-up (0: skip)",
    )
    parser.add_argument(
        "--reads", type=int, default=0, help="authenticated GETs of latest values to time"
    )
    parser.add_argument("--prelude", default="", help="Python run in the server first")
    parser.add_argument(
        "--py-spy", default="", metavar="OUT", help="sample the server with py-spy into OUT"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time a bare Starlette endpoint under the same load (the framework's floor)",
    )
    args = parser.parse_args(argv)
    _server.lighten_httpx()

    rounds_warm = -(-args.warmup // args.machines)
    rounds = -(-args.requests // args.machines)
    step = max(1.0, args.pace)
    start = time.time() - (rounds_warm + rounds) * step - 5.0
    warm = bodies(args.machines, rounds_warm, start, step)
    work = bodies(args.machines, rounds, start + rounds_warm * step, step)
    with _server.ServerProcess(prelude=args.prelude) as server:
        keys = server.register([f"agent-{i:05d}" for i in range(args.machines)])
        ok, errors = asyncio.run(send(server.url, keys, warm, args.concurrency, args.pace))
        if errors:
            print("warm-up errors:", *errors[:5], sep="\n  ")
            return 1
        idle = 0.0
        if args.idle > 0:
            idle = server.cpu_seconds()
            time.sleep(args.idle)
            idle = (server.cpu_seconds() - idle) / args.idle
        load = os.getloadavg()
        times = psutil.Process(server.pid).cpu_times()
        cpu, waited, wall = server.cpu_seconds(), server.run_queue(), time.perf_counter()
        client_cpu = time.process_time()
        spy = None
        if args.py_spy:
            spy = subprocess.Popen(
                [
                    *(shutil.which("py-spy") or "py-spy", "record", "-p", str(server.pid)),
                    *("-r", "250", "-f", "raw", "-o", args.py_spy, "--nonblocking"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
        ok, errors = asyncio.run(send(server.url, keys, work, args.concurrency, args.pace))
        wall = time.perf_counter() - wall
        cpu, waited = server.cpu_seconds() - cpu, waited.seconds()
        system = psutil.Process(server.pid).cpu_times().system - times.system
        client_cpu = time.process_time() - client_cpu
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        reads = {}
        if args.reads > 0:
            token = server.login()
            with httpx.Client(base_url=server.url, timeout=60) as client:
                listed = client.get(
                    "/api/v1/machines", headers={"authorization": f"Bearer {token}"}
                ).json()["items"]
            reads = asyncio.run(read_latest(server, listed[0]["id"], token, args.reads))
        server.stop()
        log_errors = server.errors()
    floor = floor_cpu(args, warm, work) if args.floor else None
    per = cpu / max(1, ok) * 1e6
    print(
        f"benchmark: agent request, {ok:,} requests of 25 readings over {args.machines} "
        f"machines, {args.concurrency} in flight, in {wall:.1f} s ({ok / wall:,.0f}/s)"
    )
    for line in c.environment():
        print(f"  {line}")
    print(f"  load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(
        f"server CPU per request: {per:,.0f} us (target <= {TARGET_US:,.0f} us) "
        f"{_server.verdict(per <= TARGET_US)}"
    )
    print(
        f"  server {cpu / wall:.0%} of a core ({system / max(cpu, 1e-9):.0%} of it in the "
        f"kernel), waited for a core {waited / wall:.0%}; "
        f"load generator {client_cpu / wall:.0%}; errors: {len(errors)}; "
        f"errors in the server log: {len(log_errors)}"
    )
    if args.idle > 0:
        busy = max(0.0, cpu - idle * wall) / max(1, ok) * 1e6
        print(
            f"  idle server: {idle * 1000:.1f} ms of CPU a second (background tasks); "
            f"without it, {busy:,.0f} us a request"
        )
    if reads:
        print(
            f"  GET /api/v1/machines/{{id}}/latest, {args.reads:,} one at a time: "
            f"{reads['bearer']:,.0f} us of server CPU a request with a bearer session "
            f"token, {reads['cookie']:,.0f} us with the session cookie"
        )
    if floor is not None:
        print(
            f"  the framework's floor (_floor_app.py: a bare Starlette endpoint on uvicorn that "
            f"gunzips and parses the body in a worker thread, same requests and pace): "
            f"{floor:,.0f} us a request; LunaSentri {per / floor:.2f} x it; the target is "
            f"{TARGET_US / floor:.2f} x it"
        )
    for line in itertools.chain(errors[:5], log_errors[:5]):
        print(f"    {line}")
    return 0 if not errors and not log_errors else 1


if __name__ == "__main__":
    sys.exit(main())
