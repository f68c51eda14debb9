"""Benchmark: end-to-end ingest over HTTP against the raw SQLite limit.

A real ``lunasentri serve`` (uvicorn, one worker, SQLite in a temporary data
directory) runs in its own process on a loopback port. This process is the
load: ``--agents`` simulated agents, each a registered machine with its own
API key, post batches of ``--points`` readings (50-reading samples shaped like
the psutil collector's, fresh timestamps in every request) to
``POST /api/v1/ingest`` back to back for ``--duration`` seconds over keep-alive
connections (httpx). Only 200 answers count, with the ``accepted`` figure the
server returns. The server's per-machine rate limit is raised so that it does
not throttle the run, and storage maintenance is pushed out of the window (the
raw limit does not compact either).

In the same run, the limit: raw ``sqlite3`` ``executemany`` of ready
``(series_id, ts, value)`` tuples into an unindexed WAL table, measured exactly
as ``bench_storage_write.py`` measures it (best of ``--repeat``, before and
after the HTTP run).

    python benchmarks/bench_ingest_http.py [--agents 8] [--points 1000] [--duration 20]
        [--gzip] [--processes 1] [--profile] [--breakdown] [--strict]

Server and load generator share the machine; the CPU each used is printed (and
how long each waited for a core that other processes held), so a saturated
load generator, or a busy machine, shows. Where the server's time goes:
``--profile`` samples it with py-spy during the run; ``--breakdown`` then runs
the ingest path's stages alone on the same bodies and sets their CPU cost
against the server's per request.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import gzip
import json
import multiprocessing
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import _common as c
import _server
import attrs
import bench_storage_write as storage_bench
import httpx

TARGET_RATIO = 0.3
TARGET_P99 = 0.050
READINGS_PER_SAMPLE = len(c.SHAPES)
VARIANTS = 16
"""Different value sets per agent (so gzip sees realistic, not identical, samples)."""
SERVER_ENV = {
    # One agent here sends far more than a real machine: lift the per-machine limit.
    "LUNASENTRI_SERVER__INGEST_RATE": "0",
    "LUNASENTRI_SERVER__INGEST_BURST": "100000000",
    # Compaction every 30 s would land inside the window at random; keep it out.
    "LUNASENTRI_STORAGE__MAINTENANCE_INTERVAL": "3600",
}


# --------------------------------------------------------------------------- payloads


LISTED = {metric for metric, labels in c.SHAPES if labels}
"""Metrics with labelled series: on the wire, a list of entries (unlabelled ones too)."""


def metrics_json(rng: random.Random) -> bytes:
    """One sample's ``metrics`` object on the wire: 50 readings like the psutil collector's."""
    metrics: dict[str, object] = {}
    for metric, labels in c.SHAPES:
        value = round(rng.random() * 100, 3)
        if metric in LISTED:
            entries = metrics.setdefault(metric, [])
            assert isinstance(entries, list)
            entries.append({"labels": labels, "value": value} if labels else {"value": value})
        else:
            metrics[metric] = value
    return json.dumps(metrics, separators=(",", ":")).encode()


@attrs.frozen
class Plan:
    """What every agent sends: ``samples`` samples a request, 1 s apart, never repeated."""

    url: str
    samples: int
    gzip: bool
    base: float
    """Epoch seconds of every agent's first sample (far enough back for the whole run)."""

    def bodies(self, agent: int) -> BodyMaker:
        return BodyMaker(self, agent)


class BodyMaker:
    """Request bodies of one agent, built from pre-encoded samples (cheap for the client)."""

    def __init__(self, plan: Plan, agent: int) -> None:
        rng = random.Random(agent)
        self.plan = plan
        self.variants = [metrics_json(rng) for _ in range(VARIANTS)]
        self.sent = 0

    def next(self) -> bytes:
        plan, first, variants = self.plan, self.sent, self.variants
        self.sent += plan.samples
        parts = [
            b'{"timestamp":%d,"metrics":%s}' % (plan.base + n, variants[n % len(variants)])
            for n in range(first, first + plan.samples)
        ]
        body = b'{"samples":[' + b",".join(parts) + b"]}"
        return gzip.compress(body, compresslevel=6, mtime=0) if plan.gzip else body


# --------------------------------------------------------------------------- load


@attrs.define
class Result:
    """What a group of agents saw in the measured window."""

    accepted: int = 0
    ok: int = 0
    latencies: list[float] = attrs.Factory(list)
    """Seconds, of 200 answers."""
    errors: collections.Counter[str] = attrs.Factory(collections.Counter)
    first_start: float = float("inf")
    last_end: float = 0.0
    cpu: float = 0.0
    """CPU seconds the load generator spent in the window."""
    waited: float = 0.0
    """Seconds its threads waited for a CPU in the window."""

    def merge(self, other: Result) -> None:
        self.accepted += other.accepted
        self.ok += other.ok
        self.latencies += other.latencies
        self.errors += other.errors
        self.first_start = min(self.first_start, other.first_start)
        self.last_end = max(self.last_end, other.last_end)
        self.cpu += other.cpu
        self.waited += other.waited


async def post(
    client: httpx.AsyncClient, key: str, body: bytes, plan: Plan, result: Result | None
) -> None:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    if plan.gzip:
        headers["content-encoding"] = "gzip"
    started = time.time()
    try:
        response = await client.post("/api/v1/ingest", content=body, headers=headers)
    except httpx.HTTPError as error:
        if result is None:
            raise
        result.errors[type(error).__name__] += 1
        await asyncio.sleep(0.1)
        return
    ended = time.time()
    if result is None:
        if response.status_code != 200:
            raise _server.ServerError(f"warm-up: {response.status_code} {response.text}")
        return
    result.first_start = min(result.first_start, started)
    result.last_end = max(result.last_end, ended)
    if response.status_code == 200:
        result.ok += 1
        result.accepted += response.json()["accepted"]
        result.latencies.append(ended - started)
    else:
        result.errors[str(response.status_code)] += 1


async def agents(
    plan: Plan, keys: Sequence[str], first: int, start_at: float, duration: float
) -> Result:
    """Warm up (each machine's series get created), wait for ``start_at``, then load."""
    makers = [plan.bodies(first + i) for i in range(len(keys))]
    limits = httpx.Limits(max_connections=len(keys), max_keepalive_connections=len(keys))
    result = Result()
    async with httpx.AsyncClient(base_url=plan.url, limits=limits, timeout=60) as client:
        pairs = list(zip(keys, makers, strict=True))
        await asyncio.gather(*(post(client, key, maker.next(), plan, None) for key, maker in pairs))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        deadline = start_at + duration
        cpu, waited = time.process_time(), _server.RunQueue()

        async def agent(key: str, maker: BodyMaker) -> None:
            while time.time() < deadline:
                await post(client, key, maker.next(), plan, result)

        await asyncio.gather(*(agent(key, maker) for key, maker in pairs))
        result.cpu = time.process_time() - cpu
        result.waited = waited.seconds()
    return result


def agents_in_process(
    plan: Plan, keys: Sequence[str], first: int, start_at: float, duration: float
) -> Result:
    _server.lighten_httpx()
    return asyncio.run(agents(plan, keys, first, start_at, duration))


def run_load(
    plan: Plan, keys: Sequence[str], processes: int, duration: float, warmup: float
) -> Result:
    """All agents, split over ``processes`` load-generator processes (1: this one)."""
    start_at = time.time() + warmup
    if processes <= 1:
        return agents_in_process(plan, keys, 0, start_at, duration)
    # The first agent's number only seeds its values: keep the groups' apart.
    groups = [
        (plan, keys[i::processes], i * len(keys), start_at, duration) for i in range(processes)
    ]
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        parts = pool.starmap(agents_in_process, groups)
    total = Result()
    for part in parts:
        total.merge(part)
    return total


# --------------------------------------------------------------------------- limit


def raw_limit(tmp: Path, batches: int, samples: int, repeat: int) -> float:
    """Rows/s of raw ``executemany`` (bench_storage_write's RawSide), best of ``repeat``."""
    data = c.make_batches(batches, samples)
    rows = storage_bench.raw_rows(data)
    points = sum(len(batch) for batch in rows)
    best = float("inf")
    for _ in range(repeat):
        side = storage_bench.RawSide(tmp / "raw.db")
        spent = 0.0
        try:
            for batch in rows:
                with c.Timer() as timer:
                    side.write(batch)
                spent += timer.elapsed
        finally:
            side.close()
        best = min(best, spent)
    c.remove_db(tmp / "raw.db")
    return points / best


# --------------------------------------------------------------------------- breakdown


def breakdown(
    plan: Plan, agents: int, per_transaction: int, tmp: Path, requests: int = 96
) -> list[tuple[str, float]]:
    """CPU seconds per request of the ingest path's stages, each run on its own here.

    The bodies are those the agents send; the stages are what the server does
    with them: gunzip, JSON parsing (orjson), decoding into model objects (the
    codec's fast path), the ingest checks, and the writer's storage work
    (``per_transaction`` requests per transaction, as the server coalesced them,
    with last_seen in the same transaction). The API-key lookup is left out:
    the authenticator remembers keys for 5 s, so it happens once per agent per
    5 s here. Whatever the server spends beyond their sum is HTTP, ASGI,
    middleware, logging, metrics and the hand-offs between tasks and threads.
    """
    import orjson

    from lunasentri_core import MachineSamples
    from lunasentri_core.codec import fast_samples
    from lunasentri_core.services.ingest import check_window, count_points
    from lunasentri_core.storage.sql import SqlStorage
    from lunasentri_sqlite import SQLiteStorageFactory

    makers = [plan.bodies(i) for i in range(agents)]
    bodies = [makers[i % agents].next() for i in range(agents + requests)]
    stages: list[tuple[str, float]] = []

    def timed(name: str, run: Callable[[], object], count: int = requests) -> Any:
        gc.collect()
        gc.disable()  # the stage's own cost, as in the other benchmarks
        try:
            start = time.process_time()
            out = run()
            stages.append((name, (time.process_time() - start) / count))
        finally:
            gc.enable()
        return out

    every = len(bodies)
    if plan.gzip:
        bodies = timed("gunzip", lambda: [gzip.decompress(b) for b in bodies], every)
    data = timed("orjson.loads", lambda: [orjson.loads(b) for b in bodies], every)
    decoded = timed("decode (codec fast path)", lambda: [fast_samples(d) for d in data], every)
    batches = [MachineSamples(f"m{i % agents}", b or ()) for i, b in enumerate(decoded)]
    warm, batches = batches[:agents], batches[agents:]
    now, skew, age = datetime.now(UTC), timedelta(minutes=10), timedelta(days=7)

    def check() -> None:
        for batch in batches:
            count_points(batch.samples)
            check_window(batch.samples, now, skew, age)

    timed("ingest checks", check)

    c.remove_db(tmp / "breakdown.db")
    store = SQLiteStorageFactory.open(f"sqlite:///{tmp / 'breakdown.db'}")
    assert isinstance(store, SqlStorage)
    try:
        store.migrate()
        store.metrics.write(warm)  # series are created once, not per request
        groups = [batches[i : i + per_transaction] for i in range(0, requests, per_transaction)]

        def write() -> None:
            for group in groups:
                store.metrics.write(group, seen=[(b.machine_id, now) for b in group])

        timed(f"storage write + last_seen ({per_transaction} requests a transaction)", write)
    finally:
        store.close()
    assert count_points([s for b in batches for s in b.samples]) == requests * plan.samples * (
        READINGS_PER_SAMPLE
    )
    return stages


# --------------------------------------------------------------------------- profile


class Profiler:
    """py-spy sampling every thread of the server (native SQLite time included).

    A worker thread waiting to take the GIL back after SQLite counts as busy
    there, so the storage and authentication shares are upper bounds.
    """

    def __init__(self, pid: int, duration: float, out: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists():
            raise SystemExit("--profile needs py-spy: pip install py-spy")
        self.out = out
        command = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(duration)))]
        command += ["--rate", "100", "--format", "raw", "--output", str(out)]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def report(self, top: int = 12) -> list[str]:
        _, stderr = self.proc.communicate(timeout=120)
        if not self.out.exists():
            return [f"py-spy failed: {stderr.decode(errors='replace').strip()}"]
        own: collections.Counter[str] = collections.Counter()
        packages: collections.Counter[str] = collections.Counter()
        ours: collections.Counter[str] = collections.Counter()
        total = idle = 0
        for line in self.out.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            frames = [frame for frame in stack.split(";") if frame]
            count = int(count_text)
            if not frames:
                continue
            if frames[-1].partition(" (")[0] in IDLE:
                idle += count
                continue
            total += count
            own[_function(frames[-1])] += count
            packages[_package(frames[-1])] += count
            for name in {_function(f) for f in frames if "lunasentri_core/" in f}:
                ours[name] += count
        if not total:
            return ["server profile: no busy samples"]

        def rows(counter: collections.Counter[str]) -> list[str]:
            return [f"    {n / total:6.1%}  {name}" for name, n in counter.most_common(top)]

        return [
            f"server profile (py-spy, all threads; {total:,} busy samples, {idle:,} idle "
            f"left out; raw stacks in {self.out}):",
            "  self time by package:",
            *rows(packages),
            "  self time by function:",
            *rows(own),
            "  inclusive, LunaSentri functions:",
            *rows(ours),
        ]


IDLE = frozenset({"Condition.wait", "EpollSelector.select", "Event.wait", "Queue.get"})
"""Leaf frames of threads that wait (py-spy's own idle detection misses them here)."""


def _function(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (path/to/file.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rstrip(')').rpartition(':')[0]})"


def _package(frame: str) -> str:
    """The top-level package (or stdlib module) of a frame's file."""
    path = frame.partition(" (")[2].rstrip(")").rpartition(":")[0]
    first = path.split("/")[0]
    return first.removesuffix(".py") or "?"


# --------------------------------------------------------------------------- report


TRANSACTIONS = "lunasentri_write_transaction_points"


def _delta(after: dict[str, float], before: dict[str, float], histogram: str) -> tuple[int, float]:
    """Observations and their sum added to a histogram between two scrapes."""
    count = after.get(f"{histogram}_count", 0.0) - before.get(f"{histogram}_count", 0.0)
    total = after.get(f"{histogram}_sum", 0.0) - before.get(f"{histogram}_sum", 0.0)
    return int(count), total


@attrs.frozen
class Measured:
    result: Result
    raw_before: float
    raw_after: float
    setup: float
    server_cpu: float
    server_waited: float
    transactions: tuple[int, float]
    rss: int
    clean: bool
    log_errors: list[str]
    stages: list[tuple[str, float]]
    profile: list[str]

    @property
    def raw_rate(self) -> float:
        return max(self.raw_before, self.raw_after)

    @property
    def elapsed(self) -> float:
        return self.result.last_end - self.result.first_start


def measure(args: argparse.Namespace, samples: int, tmp: Path) -> Measured:
    raw_before = raw_limit(tmp, 40, 10, args.repeat)
    with _server.ServerProcess(SERVER_ENV, prelude=args.prelude) as server:
        setup = time.perf_counter()
        keys = server.register([f"agent-{i:03d}" for i in range(args.agents)])
        setup = time.perf_counter() - setup
        # Far enough back that a whole run's samples, 1 s apart, stay in the past.
        base = float(int(time.time() - timedelta(days=3).total_seconds()))
        plan = Plan(server.url, samples, args.gzip, base)
        profiler = None
        if args.profile:
            out = Path(tempfile.gettempdir(), "lunasentri-ingest-profile.txt")
            profiler = Profiler(server.pid, args.duration, out)
        cpu, waited, before = server.cpu_seconds(), server.run_queue(), server.scrape()
        result = run_load(plan, keys, args.processes, args.duration, 3.0 + 0.5 * args.processes)
        cpu, server_waited = server.cpu_seconds() - cpu, waited.seconds()
        transactions = _delta(server.scrape(), before, TRANSACTIONS)
        rss = server.rss_bytes()
        profile = profiler.report() if profiler is not None else []
        server.stop()
        clean, log_errors = server.clean, server.errors()
    raw_after = raw_limit(tmp, 40, 10, args.repeat)
    stages = []
    if args.breakdown:
        per_transaction = max(1, round(result.ok / max(1, transactions[0])))
        stages = breakdown(plan, args.agents, per_transaction, tmp)
    return Measured(
        result,
        raw_before,
        raw_after,
        setup,
        cpu,
        server_waited,
        transactions,
        rss,
        clean,
        log_errors,
        stages,
        profile,
    )


def report(args: argparse.Namespace, points: int, m: Measured) -> bool:
    """Print the figures; returns whether every target was met."""
    result, elapsed = m.result, m.elapsed
    rate = result.accepted / elapsed if elapsed > 0 else 0.0
    ratio = rate / m.raw_rate
    p50, p99 = (_server.percentile(result.latencies, q) for q in (0.50, 0.99))
    mean = statistics.fmean(result.latencies) if result.latencies else float("nan")
    errors = sum(result.errors.values())
    print(
        f"benchmark: ingest over HTTP, {args.agents} agents x {points:,} points per request "
        f"({'gzip' if args.gzip else 'json'}), {elapsed:.1f} s, "
        f"{args.processes} load process(es)"
    )
    for line in c.environment():
        print(f"  {line}")
    print(f"  httpx {httpx.__version__}; setup (login, {args.agents} machines): {m.setup:.1f} s")
    ok = ratio >= TARGET_RATIO
    print(
        f"ingest throughput: {rate:,.0f} points/s accepted; raw sqlite3 executemany: "
        f"{m.raw_rate:,.0f} rows/s; ratio {ratio:.2f} (target >= {TARGET_RATIO:.2f}) "
        f"{_server.verdict(ok)}"
    )
    fast = p99 < TARGET_P99
    print(
        f"request latency: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, mean "
        f"{mean * 1000:.1f} ms (target p99 < {TARGET_P99 * 1000:.0f} ms) {_server.verdict(fast)}"
    )
    detail = ", ".join(f"{n} x {kind}" for kind, n in result.errors.most_common()) or "none"
    print(f"  requests: {result.ok:,} ok ({result.ok / elapsed:,.0f}/s); errors: {detail}")
    count, committed = m.transactions
    if count:
        print(
            f"  storage transactions: {count:,} ({count / elapsed:,.0f}/s), "
            f"{committed / count:,.0f} points each on average ({result.ok / count:.1f} requests)"
        )
    print(
        f"  CPU over the run: server {m.server_cpu / elapsed:.0%} of a core, load generator "
        f"{result.cpu / elapsed:.0%}; waiting for a CPU (other processes on the cores): "
        f"server {m.server_waited / elapsed:.0%}, load generator {result.waited / elapsed:.0%}"
    )
    if result.accepted:
        print(
            f"  server CPU per accepted point: {m.server_cpu / result.accepted * 1e6:.1f} us "
            f"(raw limit: {1e6 / m.raw_rate:.1f} us per row, wall clock)"
        )
    print(
        f"  raw limit before/after the run: {m.raw_before:,.0f} / {m.raw_after:,.0f} rows/s; "
        f"server RSS {m.rss / 2**20:.0f} MiB; errors in its log: {len(m.log_errors)}; "
        f"stopped cleanly on SIGTERM: {'yes' if m.clean else 'NO'}"
    )
    for line in m.log_errors[:5]:
        print(f"    {line}")
    if m.stages and result.ok:
        report_stages(m.stages, m.server_cpu / result.ok, points)
    for line in m.profile:
        print(line)
    return ok and fast and errors == 0 and m.clean and not m.log_errors


def report_stages(stages: list[tuple[str, float]], server_per_request: float, points: int) -> None:
    print(f"ingest path stages run alone in this process, CPU per request of {points:,} points:")
    for name, seconds in stages:
        print(f"  {seconds * 1e6:8,.0f} us ({seconds / points * 1e6:5.2f} us a point)  {name}")
    rest = server_per_request - sum(seconds for _, seconds in stages)
    print(
        f"  {rest * 1e6:8,.0f} us ({rest / points * 1e6:5.2f} us a point)  the rest of the "
        f"server's {server_per_request * 1e6:,.0f} us: HTTP, ASGI, middleware, logging, "
        "metrics, GC, task and thread hand-offs"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, default=8, help="simulated agents (default 8)")
    parser.add_argument(
        "--points",
        type=int,
        default=1000,
        help=f"readings per request, a multiple of {READINGS_PER_SAMPLE} (default 1000)",
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds (default 20)")
    parser.add_argument("--gzip", action="store_true", help="gzip the bodies as agents do")
    parser.add_argument(
        "--processes", type=int, default=1, help="load-generator processes (default 1)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="raw-limit runs (default 3)")
    parser.add_argument("--profile", action="store_true", help="sample the server with py-spy")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="then time the ingest path's stages in this process (CPU per request)",
    )
    parser.add_argument(
        "--prelude", default="", help="Python run in the server before it starts (experiments)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    samples = max(1, args.points // READINGS_PER_SAMPLE)
    with tempfile.TemporaryDirectory(prefix="lunasentri-bench-") as tmp:
        measured = measure(args, samples, Path(tmp))
    met = report(args, samples * READINGS_PER_SAMPLE, measured)
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
