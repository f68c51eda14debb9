"""Benchmark: LunaSentri side by side with VictoriaMetrics, on the same data, in the same run.

Both servers get the realistic day of ``_dataset.py`` (20 machines x 50
series, a point every 5 s: 17.28M points at ``--scale 1``; a smaller scale
keeps the 1,000 series and shortens the day) over HTTP on loopback, from the
same generator, in bodies of 1,000 points, ``--agents`` requests in flight:

* LunaSentri: a real ``lunasentri serve`` on SQLite (``_server.py``), one
  registered machine per generated machine, ``POST /api/v1/ingest`` with 20
  samples of 50 readings a body. Storage maintenance is kept out of the
  ingest window, then forced: the server is stopped, the compaction it runs
  every 30 s (``metrics.maintain``) runs once on its database, and it is
  started again for the queries. With ``--postgres`` the same server runs on
  PostgreSQL instead (``lunasentri-timescale``; ``LUNASENTRI_BENCH_POSTGRES_URL``,
  in a scratch schema dropped at the end): its CPU then includes that of the
  PostgreSQL backends serving it (VictoriaMetrics does all its work in its own
  process), and its bytes on disk are every relation of the schema (tables,
  indexes, TOAST), as compaction leaves them and after ``VACUUM FULL``, and
  where they go (``_postgres.bytes_breakdown``). The data's day partitions
  are made before the ingest, as a server running that day would have made
  them ahead;
* VictoriaMetrics (when its ``victoria-metrics`` binary is installed, the
  Debian package of that name; this script never installs it): the
  single-node server on a free loopback port with a temporary data
  directory, ``/api/v1/import`` with one JSON line of 20 points per series a
  body, then ``/internal/force_flush`` and ``/internal/force_merge`` (waiting
  for the merge to end). Its result cache is off (``-search.disableCache``):
  every query is answered from storage, as LunaSentri's are.

Rows: bytes per point on disk (LunaSentri: the SQLite file and its WAL as
compaction leaves them, and after ``VACUUM``; VictoriaMetrics: its data
directory), one series over the whole span at 500 steps and at 1-minute steps
(average per step: ``avg_over_time`` in VictoriaMetrics), the latest value of
all 1,000 series (LunaSentri: the machine list with latest values, one call,
and one ``/latest`` call per machine), ingest points/s and the server's CPU
time per point while ingesting (psutil), each with the ratio LunaSentri /
VictoriaMetrics. Figures are medians of ``--runs`` runs (each on fresh data
directories), queries the median of ``--repeat`` requests.

    python benchmarks/bench_vs_victoriametrics.py [--runs 3] [--scale 0.0417] [--agents 4]
        [--postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import _common as c
import _dataset as d
import _postgres as pg
import _server
import httpx
import psutil
import sqlalchemy as sa

from lunasentri_core import RetentionPolicy
from lunasentri_core.storage.sql import SqlStorage, partitions
from lunasentri_core.storage.sql.metrics import from_ms, to_ms
from lunasentri_sqlite import SQLiteStorageFactory
from lunasentri_timescale import TimescaleStorageFactory

VM_BINARY = "victoria-metrics"
SERIES_PER_MACHINE = len(c.SHAPES)
SAMPLES_PER_BODY = 1_000 // SERIES_PER_MACHINE
"""20 samples of 50 readings: 1,000 points a request."""
DEFAULT_SCALE = 1 / 24
"""One hour of the day (one full chunk a series): three runs in under 10 minutes on 2
shared cores, where one full-scale run takes LunaSentri's ingest alone about 25."""
TARGET_RATIO = 1.8
"""Bytes per point on disk, LunaSentri / VictoriaMetrics (issue 15)."""
SERVER_ENV = {
    # One simulated agent sends a day in minutes: lift the per-machine limit.
    "LUNASENTRI_SERVER__INGEST_RATE": "0",
    "LUNASENTRI_SERVER__INGEST_BURST": "100000000",
    # Compaction is forced once after the ingest, not inside its window.
    "LUNASENTRI_STORAGE__MAINTENANCE_INTERVAL": "86400",
}
SERIES_QUERIED = ("cpu.percent", {"cpu": "0"})
LISTED = {metric for metric, labels in c.SHAPES if labels}
"""Metrics with labelled series: on LunaSentri's wire, a list of entries."""
STORED = {metric for metric, _ in c.SHAPES}


# --------------------------------------------------------------------------- data


class DataSet:
    """The generated series, machine by machine, moved to end a day before now.

    Both servers keep them (VictoriaMetrics' default retention is a month,
    LunaSentri's raw points a week).
    """

    def __init__(self, scale: float) -> None:
        bodies = max(1, round(d.POINTS_PER_DAY * scale / SAMPLES_PER_BODY))
        self.points_per_series = bodies * SAMPLES_PER_BODY
        series = list(d.day(points=self.points_per_series))
        self.machines = [
            series[i : i + SERIES_PER_MACHINE] for i in range(0, len(series), SERIES_PER_MACHINE)
        ]
        self.names = [m[0].machine for m in self.machines]
        day_start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        self.start_ms = to_ms(day_start - timedelta(days=2))
        self.offset = self.start_ms - self.machines[0][0].ts[0]
        self.end_ms = self.start_ms + self.points_per_series * d.STEP_MS
        self.points = len(series) * self.points_per_series

    def windows(self) -> Iterator[tuple[int, range]]:
        """(machine index, sample indexes) of every body, in time order."""
        for first in range(0, self.points_per_series, SAMPLES_PER_BODY):
            for m in range(len(self.machines)):
                yield m, range(first, first + SAMPLES_PER_BODY)

    def lunasentri_body(self, m: int, samples: range) -> bytes:
        series = self.machines[m]
        out = []
        for i in samples:
            metrics: dict[str, Any] = {}
            for s in series:
                value = s.values[i]
                if s.metric in LISTED:
                    labels = dict(s.labels)
                    entry = {"labels": labels, "value": value} if labels else {"value": value}
                    metrics.setdefault(s.metric, []).append(entry)
                else:
                    metrics[s.metric] = value
            out.append({"timestamp": (series[0].ts[i] + self.offset) / 1000, "metrics": metrics})
        return json.dumps({"samples": out}, separators=(",", ":")).encode()

    def lunasentri_requests(self, keys: Sequence[str]) -> Iterator[tuple[bytes, dict[str, str]]]:
        """Every body in time order, with the headers of its machine's API key (``keys``
        in the order of :attr:`names`)."""
        for m, samples in self.windows():
            headers = {"authorization": f"Bearer {keys[m]}", "content-type": "application/json"}
            yield self.lunasentri_body(m, samples), headers

    def vm_body(self, m: int, samples: range) -> bytes:
        lines = []
        for s in self.machines[m]:
            name = {"__name__": vm_name(s.metric), "machine": s.machine, **dict(s.labels)}
            line = {
                "metric": name,
                "values": s.values[samples.start : samples.stop].tolist(),
                "timestamps": [t + self.offset for t in s.ts[samples.start : samples.stop]],
            }
            lines.append(json.dumps(line, separators=(",", ":")))
        return "\n".join(lines).encode()


def vm_name(metric: str) -> str:
    return metric.replace(".", "_")


# --------------------------------------------------------------------------- ingest


class Ingested:
    def __init__(self, points: int, seconds: float, cpu: float) -> None:
        self.points_per_second = points / seconds
        self.cpu_us_per_point = cpu / points * 1e6


async def _post_all(
    url: str,
    bodies: Iterator[tuple[bytes, dict[str, str]]],
    path: str,
    agents: int,
) -> None:
    limits = httpx.Limits(max_connections=agents, max_keepalive_connections=agents)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def agent() -> None:
            # One shared iterator: each agent posts the next body until none are left.
            for body, headers in bodies:
                response = await client.post(path, content=body, headers=headers)
                if response.status_code not in (200, 204):
                    raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")

        await asyncio.gather(*(agent() for _ in range(agents)))


def ingest(
    url: str,
    bodies: Iterator[tuple[bytes, dict[str, str]]],
    path: str,
    agents: int,
    cpu: Callable[[], float],
    points: int,
) -> Ingested:
    """Post every body; ``cpu`` reads the CPU seconds of whatever serves them."""
    _server.lighten_httpx()
    before = cpu()
    started = time.perf_counter()
    asyncio.run(_post_all(url, bodies, path, agents))
    seconds = time.perf_counter() - started
    return Ingested(points, seconds, cpu() - before)


def process_cpu(pid: int) -> Callable[[], float]:
    process = psutil.Process(pid)
    return lambda: sum(process.cpu_times()[:2])


# --------------------------------------------------------------------------- queries


def timed_queries(
    repeat: int, cpu: Callable[[], float], requests: dict[str, Callable[[], None]]
) -> dict[str, float]:
    """Each request's median ms over ``repeat``, and the server's CPU ms per request.

    The CPU time (psutil) holds on a loaded machine, where the wall time is
    mostly waiting for a core.
    """
    out = {}
    for key, request in requests.items():
        request()  # warm: connections, caches of the server's own
        times = []
        before = cpu()
        for _ in range(repeat):
            started = time.perf_counter()
            request()
            times.append((time.perf_counter() - started) * 1000)
        out[key] = statistics.median(times)
        out[f"{key}_cpu"] = (cpu() - before) / repeat * 1000
    return out


def get_json(client: httpx.Client, path: str, **params: object) -> Any:
    response = client.get(path, params=params)
    if response.status_code != 200:
        raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")
    return response.json()


def expect(what: str, got: int, wanted: int) -> None:
    if got != wanted:
        raise RuntimeError(f"{what}: {got}, expected {wanted}")


# --------------------------------------------------------------------------- LunaSentri


def lunasentri_run(data: DataSet, args: argparse.Namespace) -> dict[str, float]:
    if args.postgres_url is None:
        return lunasentri_serve(data, args, {}, process_cpu, compact_sqlite)
    with pg.scratch_schema(args.postgres_url, "lsbench_vm") as (schema, url, app):
        backends = pg.BackendCpu(url, app)
        try:

            def cpu(pid: int) -> Callable[[], float]:
                # The server's own CPU and its backends', as VictoriaMetrics' is all its own.
                own = process_cpu(pid)
                return lambda: own() + backends.seconds()

            def compact(_process: _server.ServerProcess, points: int) -> dict[str, float]:
                return compact_postgres(url, schema, points, backends)

            def partitions() -> None:
                make_partitions(url, data)

            env = {"LUNASENTRI_STORAGE__URL": url}
            return lunasentri_serve(data, args, env, cpu, compact, partitions)
        finally:
            backends.close()


def lunasentri_serve(
    data: DataSet,
    args: argparse.Namespace,
    env: dict[str, str],
    cpu_of: Callable[[int], Callable[[], float]],
    compact: Callable[[_server.ServerProcess, int], dict[str, float]],
    before_ingest: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    out: dict[str, float] = {}
    settings = {**SERVER_ENV, **env}
    with _server.ServerProcess(settings) as server:
        keys = server.register(data.names)
        before_ingest()
        bodies = data.lunasentri_requests(keys)
        done = ingest(
            server.url, bodies, "/api/v1/ingest", args.agents, cpu_of(server.pid), data.points
        )
        out["ingest"], out["cpu"] = done.points_per_second, done.cpu_us_per_point
        server.restart(settings, between=lambda: out.update(compact(server, data.points)))
        out.update(lunasentri_queries(server, data, args.repeat, cpu_of(server.pid)))
        server.stop()
    return out


def compact_sqlite(server: _server.ServerProcess, points: int) -> dict[str, float]:
    """What the server's maintenance does, once, on its stopped database; file sizes."""
    path = server.database()
    store = SQLiteStorageFactory.open(f"sqlite:///{path}", retention=RetentionPolicy())
    cpu = time.process_time()
    store.metrics.maintain(datetime.now(UTC))
    cpu = time.process_time() - cpu
    store.close()
    compacted = sum(f.stat().st_size for f in path.parent.glob(f"{path.name}*"))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("VACUUM")
    conn.close()
    vacuumed = sum(f.stat().st_size for f in path.parent.glob(f"{path.name}*"))
    return {
        "disk": compacted / points,
        "disk_vacuum": vacuumed / points,
        "compact_cpu": cpu / points * 1e6,
    }


def make_partitions(url: str, data: DataSet) -> None:
    """The partitions of the data's days, as a server running then would have made them
    ahead: else its rows land in the DEFAULT partition until the next pass moves them."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            lo = partitions.window(data.start_ms)
            while lo < data.end_ms:
                if (
                    conn.execute(
                        sa.text("SELECT to_regclass(:n)"), {"n": partitions.partition_name(lo)}
                    ).scalar()
                    is None
                ):
                    partitions.create_partition(conn, lo, wait=True)
                lo += partitions.WIDTH_MS
    finally:
        engine.dispose()


def compact_postgres(
    url: str, schema: str, points: int, backends: pg.BackendCpu
) -> dict[str, float]:
    """The same on PostgreSQL: compaction's CPU here and in its backend; the schema's
    relations as compaction leaves them and after ``VACUUM FULL``."""
    store = TimescaleStorageFactory.open(url, retention=RetentionPolicy())
    assert isinstance(store, SqlStorage)
    try:
        cpu = time.process_time() + backends.seconds()
        store.metrics.maintain(datetime.now(UTC))
        cpu = time.process_time() + backends.seconds() - cpu
        compacted = schema_bytes(store.engine, schema)
        with store.engine.connect() as conn:
            for line in pg.bytes_breakdown(conn, schema, points):
                print(f"  {line}", flush=True)
            conn.commit()
        with store.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            # The schema's tables only: a bare VACUUM FULL rewrites the whole database.
            tables = conn.exec_driver_sql(
                "SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'm')",
                {"schema": schema},
            ).scalars()
            for table in list(tables):
                conn.exec_driver_sql(f"VACUUM FULL {table}")
        vacuumed = schema_bytes(store.engine, schema)
    finally:
        store.close()
    return {
        "disk": compacted / points,
        "disk_vacuum": vacuumed / points,
        "compact_cpu": cpu / points * 1e6,
    }


def schema_bytes(engine: Any, schema: str) -> int:
    """Every table of ``schema`` with its indexes and TOAST (partitions are tables)."""
    with engine.connect() as conn:
        found = conn.exec_driver_sql(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'm')",
            {"schema": schema},
        ).scalar_one()
    return int(found)


def lunasentri_queries(
    server: _server.ServerProcess, data: DataSet, repeat: int, cpu: Callable[[], float]
) -> dict[str, float]:
    token = server.login()
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        page = get_json(client, "/api/v1/machines", limit=1000, latest="false")
        ids = {item["name"]: item["id"] for item in page["items"]}
        metric, labels = SERIES_QUERIED
        start, end = data.start_ms / 1000, data.end_ms / 1000
        span = end - start
        label_param = ",".join(f"{k}:{v}" for k, v in labels.items())
        path = f"/api/v1/machines/{ids[data.names[0]]}/history"

        def history(step: float, wanted: int) -> Callable[[], None]:
            def run() -> None:
                found = get_json(
                    client, path, metric=metric, labels=label_param, start=start, end=end, step=step
                )
                expect(f"history steps at {step} s", len(found["series"][0]["points"]), wanted)

            return run

        def machine_list() -> None:
            found = get_json(client, "/api/v1/machines", limit=1000)
            # The list adds derived percentages (mem.percent...): count the stored series.
            values = [v for item in found["items"] for v in item["latest"]["values"]]
            stored = sum(v["metric"] in STORED for v in values)
            expect(
                "latest values in the machine list", stored, data.points // data.points_per_series
            )

        def per_machine() -> None:
            stored = 0
            for name in data.names:
                stored += len(get_json(client, f"/api/v1/machines/{ids[name]}/latest")["items"])
            expect(
                "latest values, machine by machine", stored, data.points // data.points_per_series
            )

        return timed_queries(
            repeat,
            cpu,
            {
                "history_500": history(span / 500, min(500, data.points_per_series)),
                "history_1m": history(60, round(span / 60)),
                "latest": machine_list,
                "latest_each": per_machine,
            },
        )


# --------------------------------------------------------------------------- VictoriaMetrics


class VictoriaMetrics:
    """The single-node server on a free loopback port and a temporary data directory."""

    def __init__(self) -> None:
        self.port = _server.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = Path(tempfile.mkdtemp(prefix="lunasentri-bench-vm-"))
        self.data_dir = self.tmp / "data"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> VictoriaMetrics:
        log = (self.tmp / "vm.log").open("wb")
        with log:
            self.proc = subprocess.Popen(
                [
                    VM_BINARY,
                    f"-storageDataPath={self.data_dir}",
                    f"-httpListenAddr=127.0.0.1:{self.port}",
                    "-search.disableCache",
                    "-retentionPeriod=1y",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _server.READY_TIMEOUT
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"victoria-metrics exited: {self.log_tail()}")
                try:
                    if client.get("/health").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"victoria-metrics was not ready: {self.log_tail()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=_server.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def log_tail(self) -> str:
        return (self.tmp / "vm.log").read_text(errors="replace")[-3000:]

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.data_dir.rglob("*") if f.is_file())

    def flush_and_merge(self) -> None:
        with httpx.Client(base_url=self.url, timeout=600) as client:
            for path in ("/internal/force_flush", "/internal/force_merge"):
                if client.get(path).status_code != 200:
                    raise RuntimeError(f"{path} failed: {self.log_tail()}")
            # The merge runs in the background: wait until none is active and the
            # directory stops changing (a merge may start after the call returns).
            size, stable_since = -1, time.monotonic()
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                time.sleep(0.5)
                now = self.disk_bytes()
                if now != size or self._metric(client, "vm_active_force_merges"):
                    size, stable_since = now, time.monotonic()
                elif time.monotonic() - stable_since >= 5:
                    return

    @staticmethod
    def _metric(client: httpx.Client, name: str) -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0


def postgres_version(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SHOW server_version").scalar_one())
    finally:
        engine.dispose()


def vm_version() -> str:
    """The Debian package's version: its build reports none (``-version`` prints nothing)."""
    if shutil.which("dpkg-query") is None:
        return "(version unknown)"
    found = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", VM_BINARY],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or "(version unknown)"


def vm_run(data: DataSet, args: argparse.Namespace) -> dict[str, float]:
    out: dict[str, float] = {}
    with VictoriaMetrics() as vm:
        bodies = ((data.vm_body(m, samples), {}) for m, samples in data.windows())
        done = ingest(
            vm.url, bodies, "/api/v1/import", args.agents, process_cpu(vm.pid), data.points
        )
        out["ingest"], out["cpu"] = done.points_per_second, done.cpu_us_per_point
        process = psutil.Process(vm.pid)
        cpu = sum(process.cpu_times()[:2])
        vm.flush_and_merge()
        out["compact_cpu"] = (sum(process.cpu_times()[:2]) - cpu) / data.points * 1e6
        out["disk"] = out["disk_vacuum"] = vm.disk_bytes() / data.points
        out.update(vm_queries(vm, data, args.repeat))
    return out


def vm_queries(vm: VictoriaMetrics, data: DataSet, repeat: int) -> dict[str, float]:
    metric, labels = SERIES_QUERIED
    matchers = ",".join([f'machine="{data.names[0]}"', *(f'{k}="{v}"' for k, v in labels.items())])
    selector = f"{vm_name(metric)}{{{matchers}}}"
    start, end = data.start_ms / 1000, data.end_ms / 1000
    span = end - start
    series = data.points // data.points_per_series
    with httpx.Client(base_url=vm.url, timeout=60) as client:

        def history(step: float, wanted: int) -> Callable[[], None]:
            # Steps are labelled by their end in PromQL, by their start in LunaSentri.
            query = f"avg_over_time({selector}[{step:g}s])"

            def run() -> None:
                found = get_json(
                    client,
                    "/api/v1/query_range",
                    query=query,
                    start=start + step,
                    end=end,
                    step=f"{step:g}s",
                )
                got = len(found["data"]["result"][0]["values"])
                if abs(got - wanted) > 1:
                    expect(f"VictoriaMetrics steps at {step} s", got, wanted)

            return run

        def latest() -> None:
            found = get_json(client, "/api/v1/query", query='{machine=~".+"}', time=end)
            expect("VictoriaMetrics latest values", len(found["data"]["result"]), series)

        return timed_queries(
            repeat,
            process_cpu(vm.pid),
            {
                "history_500": history(span / 500, min(500, data.points_per_series)),
                "history_1m": history(60, round(span / 60)),
                "latest": latest,
            },
        )


# --------------------------------------------------------------------------- report


ROWS: Sequence[tuple[str, str, str]] = (
    # key, label, unit
    ("disk", "bytes per point on disk (LunaSentri: after compaction)", "B"),
    ("disk_vacuum", "bytes per point on disk (LunaSentri: after VACUUM)", "B"),
    ("history_500", "one series over the span, 500 steps", "ms"),
    ("history_500_cpu", "  the same, server CPU per request", "ms"),
    ("history_1m", "one series over the span, 1-minute steps", "ms"),
    ("history_1m_cpu", "  the same, server CPU per request", "ms"),
    ("latest", "latest value of all 1,000 series (LunaSentri: machine list)", "ms"),
    ("latest_cpu", "  the same, server CPU per request", "ms"),
    ("latest_each", "latest value of all 1,000 series (LunaSentri: a call a machine)", "ms"),
    ("latest_each_cpu", "  the same, server CPU", "ms"),
    ("ingest", "HTTP ingest, points/s (bodies of 1,000 points)", "/s"),
    ("cpu", "server CPU per point at ingest", "us"),
    ("compact_cpu", "CPU per point to compact (VM: flush and merge)", "us"),
)


def summary(values: list[float]) -> str:
    median = statistics.median(values)
    text = f"{median:,.0f}" if median >= 1000 else f"{median:.3g}"
    if len(values) > 1:
        text += f" ({min(values):.3g}-{max(values):.3g})"
    return text


def report(luna: list[dict[str, float]], vm: list[dict[str, float]]) -> None:
    print(f"  {'measure':68} {'LunaSentri':>22} {'VictoriaMetrics':>22} {'ratio':>6}")
    for key, label, unit in ROWS:
        ours = [run[key] for run in luna]
        # VictoriaMetrics answers every machine's latest values in one query.
        theirs = [run[key.replace("latest_each", "latest")] for run in vm]
        # CPU times come in clock ticks (10 ms): a fast answer can measure 0.
        base = statistics.median(theirs) if theirs else 0
        ratio = f"{statistics.median(ours) / base:.2f}" if base else "-"
        print(
            f"  {label + ' (' + unit + ')':68} {summary(ours):>22} "
            f"{summary(theirs) if theirs else '-':>22} {ratio:>6}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    parser.add_argument(
        "--scale",
        type=float,
        default=DEFAULT_SCALE,
        help=f"fraction of the day of 17.28M points (default {DEFAULT_SCALE:.4g}: an hour)",
    )
    parser.add_argument("--agents", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--repeat", type=int, default=20, help="timed queries (default 20)")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="run LunaSentri on PostgreSQL (LUNASENTRI_BENCH_POSTGRES_URL) instead of SQLite",
    )
    args = parser.parse_args(argv)
    args.postgres_url = pg.postgres_url() if args.postgres else None
    if args.postgres and args.postgres_url is None:
        print(pg.skip_line("bench_vs_victoriametrics --postgres"))
        return 0
    if not 0 < args.scale <= 1:
        parser.error("--scale must be in (0, 1]")

    have_vm = shutil.which(VM_BINARY) is not None
    with c.Timer() as generating:
        data = DataSet(args.scale)
    print(
        f"benchmark: LunaSentri vs VictoriaMetrics, scale {args.scale:g}: "
        f"{len(data.machines) * SERIES_PER_MACHINE:,} series x {data.points_per_series:,} points "
        f"at 5 s = {data.points:,} points from {from_ms(data.start_ms):%Y-%m-%d %H:%M} UTC, "
        f"{args.runs} runs, {args.agents} requests in flight "
        f"(generated in {generating.elapsed:.0f} s)"
    )
    for line in c.environment():
        print(f"  {line}")
    print(f"  cpus {psutil.cpu_count()}, load average {psutil.getloadavg()[0]:.1f}")
    if args.postgres_url is not None:
        print(
            f"  LunaSentri on PostgreSQL {postgres_version(args.postgres_url)} (its CPU includes "
            "its backends'; bytes: the schema's relations; VACUUM: VACUUM FULL)"
        )
    if have_vm:
        print(f"  {VM_BINARY} {vm_version()}")
    else:
        print(
            f"  {VM_BINARY} is not installed (Debian package {VM_BINARY}; this benchmark does "
            "not install it): measuring LunaSentri only"
        )
    luna: list[dict[str, float]] = []
    vm: list[dict[str, float]] = []
    for run in range(args.runs):
        with c.Timer() as timer:
            luna.append(lunasentri_run(data, args))
            if have_vm:
                vm.append(vm_run(data, args))
        print(f"  run {run + 1} in {timer.elapsed:.0f} s", flush=True)
    report(luna, vm)
    if vm:
        ratio = statistics.median(r["disk_vacuum"] for r in luna) / statistics.median(
            r["disk"] for r in vm
        )
        print(
            f"bytes per point on disk, LunaSentri / VictoriaMetrics: {ratio:.2f} "
            f"(target at most {TARGET_RATIO}) {c.verdict(ratio <= TARGET_RATIO)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
