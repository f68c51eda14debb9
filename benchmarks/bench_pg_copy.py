"""Benchmark: PostgreSQL writes against ``psql \\copy`` of the same rows.

Needs a PostgreSQL server (``LUNASENTRI_BENCH_POSTGRES_URL`` or
``LUNASENTRI_TEST_POSTGRES_URL``; without one it skips, saying so). Everything
happens in a scratch schema of its own, dropped at the end. In the same run:

* the store: ``MetricStore.write`` of the PostgreSQL backend
  (``lunasentri-timescale``), batch by batch as the ingest writer calls it
  (model objects in, one transaction per batch, series ids, head rows through
  ``COPY``, latest values upserted);
* the limit: the very ``samples_head`` rows the store wrote, exported per batch
  to files (binary ``COPY`` format) and loaded with ``psql \\copy`` into an
  identical scratch table (``LIKE samples_head INCLUDING ALL``: same columns,
  defaults and indexes), one transaction per batch as the store has. psql's
  start-up and connection, timed alone, are taken off;
* end to end: a real ``lunasentri serve`` on the same database, loaded over
  HTTP as ``bench_ingest_http.py`` loads it, against the raw ``COPY`` rate:
  the same points as one row each (``series_id, ts, value``: integer, bigint,
  double precision) in binary ``COPY`` files loaded with ``psql \\copy`` into
  an unindexed table, one transaction per batch, as ``bench_ingest_http.py``
  holds SQLite's HTTP ingest against raw ``sqlite3`` inserts of such rows. The
  ratio to the ``\\copy`` of the head rows (50 points a row) is printed too.

Every write side counts points and keeps its best of ``--repeat`` runs,
taking turns.

    python benchmarks/bench_pg_copy.py [--batches 30] [--samples 10] [--repeat 3]
        [--agents 8] [--points 1000] [--duration 15] [--strict]
"""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import _common as c
import _postgres as pg
import _server
import attrs
import bench_ingest_http as http_bench
import bench_storage_write as storage_bench
import sqlalchemy as sa

from lunasentri_core import MachineSamples, RetentionPolicy
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_timescale import TimescaleStorageFactory

TARGET_STORE = 0.5
TARGET_HTTP = 0.3
POINTS_PER_ROW = len(c.SHAPES)


def open_store(url: str) -> SqlStorage:
    store = TimescaleStorageFactory.open(url, retention=RetentionPolicy())
    assert isinstance(store, SqlStorage)
    store.migrate()
    return store


def empty_head(store: SqlStorage) -> None:
    with store.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE samples_head, series_latest")
        # A row per machine since migration 0013 (absent when measuring older code).
        if conn.exec_driver_sql("SELECT to_regclass('latest_values')").scalar() is not None:
            conn.exec_driver_sql("TRUNCATE latest_values")


def store_run(store: SqlStorage, batches: list[list[MachineSamples]], latest: bool = True) -> float:
    """Seconds the store took to write every batch (from an empty head)."""
    empty_head(store)
    sql = store.metrics._sql
    upsert, finish = sql.upsert_latest, sql.finish
    if not latest:
        sql.upsert_latest = storage_bench._Skip()  # type: ignore[assignment]
        sql.finish = None  # the latest values' statement (with last_seen)
    spent = 0.0
    try:
        for batch in batches:
            with c.Timer() as timer:
                store.metrics.write(batch)
            spent += timer.elapsed
    finally:
        sql.upsert_latest, sql.finish = upsert, finish
    return spent


class Psql:
    """``psql`` on the scratch schema; ``run`` sums the times its ``\\timing`` reports."""

    def __init__(self, url: str, schema: str) -> None:
        self.args = ["psql", *pg.libpq_args(url)]
        self.env = pg.psql_env(url, schema)

    def run(self, script: Path) -> float:
        # psql's own timing of each \copy (sent, loaded, committed): its start-up
        # and connection are not part of the limit.
        output = subprocess.run(
            [*self.args, "-f", str(script)],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        times = [float(line.split()[1]) for line in output.splitlines() if line.startswith("Time:")]
        if not times:
            raise RuntimeError(f"psql reported no timing:\n{output}")
        return sum(times) / 1000


def export_batches(store: SqlStorage, psql: Psql, tmp: Path, sizes: list[int]) -> Path:
    """The head's rows, in write order, to one binary COPY file per batch; the load script."""
    script = tmp / "load.sql"
    lines = []
    done = 0
    for i, size in enumerate(sizes):
        path = tmp / f"batch-{i:03d}.copy"
        select = (
            "SELECT machine_id, ts, series_ids, series_values FROM samples_head "
            f"ORDER BY seq OFFSET {done} LIMIT {size}"
        )
        subprocess.run(
            [*psql.args, "-c", f"\\copy ({select}) TO '{path}' WITH (FORMAT binary)"],
            env=psql.env,
            check=True,
        )
        lines.append(
            f"\\copy head_copy (machine_id, ts, series_ids, series_values) "
            f"FROM '{path}' WITH (FORMAT binary)"
        )
        done += size
    script.write_text("\\timing on\n" + "\n".join(lines) + "\n")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS head_copy")
        conn.exec_driver_sql("CREATE TABLE head_copy (LIKE samples_head INCLUDING ALL)")
    return script


_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_POINT_TUPLE = struct.Struct("!hiiiqiq")
"""Three fields: an int4, an int8 and a float8 (its bits as an int8), each with its length."""


def point_copy_file(path: Path, rows: list[tuple[int, int, float]]) -> None:
    """``rows`` in PostgreSQL's binary ``COPY`` format."""
    bits = struct.Struct("!d")
    with path.open("wb") as out:
        out.write(_COPY_SIGNATURE)
        for sid, ts, value in rows:
            (raw,) = struct.unpack("!q", bits.pack(value))
            out.write(_POINT_TUPLE.pack(3, 4, sid, 8, ts, 8, raw))
        out.write(struct.pack("!h", -1))


def point_copy_script(
    store: SqlStorage, tmp: Path, batches: list[list[MachineSamples]]
) -> tuple[Path, int]:
    """One binary COPY file of one row per point per batch, the script loading them
    into an unindexed table; and the number of points."""
    lines = []
    points = 0
    for i, rows in enumerate(storage_bench.raw_rows(batches)):
        path = tmp / f"points-{i:03d}.copy"
        point_copy_file(path, rows)
        lines.append(f"\\copy point_copy (series_id, ts, value) FROM '{path}' WITH (FORMAT binary)")
        points += len(rows)
    script = tmp / "points.sql"
    script.write_text("\\timing on\n" + "\n".join(lines) + "\n")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS point_copy")
        conn.exec_driver_sql(
            "CREATE TABLE point_copy (series_id integer, ts bigint, value double precision)"
        )
    return script, points


def point_copy_run(store: SqlStorage, psql: Psql, script: Path) -> float:
    with store.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE point_copy")
    return psql.run(script)


def copy_run(store: SqlStorage, psql: Psql, script: Path) -> float:
    with store.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE head_copy")
    return psql.run(script)


def measure_store(url: str, args: argparse.Namespace, tmp: Path) -> Rates:
    """Best of ``--repeat`` of each side, taking turns."""
    all_batches = c.make_batches(args.batches + 1, args.samples)
    warmup, batches = all_batches[0], all_batches[1:]
    points = sum(len(s.readings) for batch in batches for ms in batch for s in ms.samples)
    sizes = [sum(len(ms.samples) for ms in batch) for batch in batches]
    store = open_store(url)
    try:
        store.metrics.write(warmup)  # series are created once; not the steady state
        psql = Psql(url, store_schema(store))
        store_best = store_run(store, batches)
        script = export_batches(store, psql, tmp, sizes)
        points_script, point_rows = point_copy_script(store, tmp, batches)
        copy_best = nolatest_best = points_best = float("inf")
        for _ in range(args.repeat):
            copy_best = min(copy_best, copy_run(store, psql, script))
            points_best = min(points_best, point_copy_run(store, psql, points_script))
            nolatest_best = min(nolatest_best, store_run(store, batches, latest=False))
            store_best = min(store_best, store_run(store, batches))
        with store.engine.connect() as conn:
            copied = conn.exec_driver_sql("SELECT count(*) FROM head_copy").scalar_one()
            loaded = conn.exec_driver_sql("SELECT count(*) FROM point_copy").scalar_one()
        assert copied == sum(sizes), f"psql loaded {copied} rows of {sum(sizes)}"
        assert loaded == point_rows == points, f"psql loaded {loaded} points of {points}"
    finally:
        store.close()
    return Rates(
        points,
        points / store_best,
        points / nolatest_best,
        points / copy_best,
        points / points_best,
    )


@attrs.frozen
class Rates:
    points: int
    store: float
    no_latest: float
    """The store without its latest-value upkeep (its share of the write)."""
    copy: float
    point_copy: float
    """``\\copy`` of the same points as one row each: the raw rate HTTP ingest is held to."""


def store_schema(store: SqlStorage) -> str:
    with store.engine.connect() as conn:
        return str(conn.exec_driver_sql("SELECT current_schema()").scalar_one())


def measure_http(
    url: str, args: argparse.Namespace
) -> tuple[http_bench.Result, float, float, float]:
    """The HTTP ingest result over ``--duration``; the server's CPU, the time it waited
    for a core, and its backends' CPU (s)."""
    store = open_store(url)
    app = str(sa.engine.make_url(url).query["application_name"])
    store.close()
    env = {**http_bench.SERVER_ENV, "LUNASENTRI_STORAGE__URL": url}
    samples = max(1, args.points // http_bench.READINGS_PER_SAMPLE)
    with _server.ServerProcess(env) as server:
        keys = server.register([f"agent-{i:03d}" for i in range(args.agents)])
        base = float(int(time.time() - timedelta(days=3).total_seconds()))
        plan = http_bench.Plan(server.url, samples, False, base)
        cpu, backends = server.cpu_seconds(), pg.BackendCpu(url, app)
        waits = server.run_queue()
        try:
            result = http_bench.run_load(plan, keys, 1, args.duration, 3.0)
            cpu, backend_cpu = server.cpu_seconds() - cpu, backends.seconds()
            waited = waits.seconds()
        finally:
            backends.close()
        server.stop()
        if server.errors():
            print(f"  errors in the server log: {server.errors()[:3]}")
    return result, cpu, waited, backend_cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batches", type=int, default=30, help="batches per run (default 30)")
    parser.add_argument(
        "--samples", type=int, default=10, help="samples per machine per batch (default 10)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per side (default 3)")
    parser.add_argument("--agents", type=int, default=8, help="HTTP agents (default 8)")
    parser.add_argument(
        "--points", type=int, default=1000, help="readings per HTTP request (default 1000)"
    )
    parser.add_argument("--duration", type=float, default=15.0, help="HTTP seconds (default 15)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    base = pg.postgres_url()
    if base is None:
        print(pg.skip_line("bench_pg_copy"))
        return 0

    with tempfile.TemporaryDirectory(prefix="lunasentri-bench-") as tmp:
        with pg.scratch_schema(base, "lsbench_copy") as (_, url, _app):
            rates = measure_store(url, args, Path(tmp))
        with pg.scratch_schema(base, "lsbench_http") as (_, url, _app):
            result, server_cpu, server_waited, backend_cpu = measure_http(url, args)

    per_batch = rates.points // args.batches
    print(
        f"benchmark: PostgreSQL writes, {c.SERIES:,} series, {args.batches} batches of "
        f"{per_batch:,} points ({per_batch // POINTS_PER_ROW} head rows)"
    )
    for line in c.environment():
        print(f"  {line}")
    ratio = rates.store / rates.copy
    print(
        f"store write: {rates.store:,.0f} points/s; psql \\copy of the same head rows: "
        f"{rates.copy:,.0f} points/s ({rates.copy / POINTS_PER_ROW:,.0f} rows/s); "
        f"ratio {ratio:.2f} (target >= {TARGET_STORE:.2f}) {_server.verdict(ratio >= TARGET_STORE)}"
    )
    print(
        f"  of which keeping latest values (of {c.SERIES:,} series a batch, which "
        f"psql does not write): {1 - rates.store / rates.no_latest:.0%} of write time; "
        f"without it {rates.no_latest:,.0f} points/s, ratio {rates.no_latest / rates.copy:.2f}"
    )
    elapsed = result.last_end - result.first_start
    rate = result.accepted / elapsed if elapsed > 0 else 0.0
    http_ratio = rate / rates.point_copy
    errors = sum(result.errors.values())
    print(
        f"HTTP ingest on PostgreSQL: {rate:,.0f} points/s accepted ({args.agents} agents x "
        f"{args.points:,} points, {elapsed:.1f} s, {errors} errors); raw COPY, psql \\copy "
        f"of the same number of points as one row each into an unindexed table: "
        f"{rates.point_copy:,.0f} points/s; ratio {http_ratio:.2f} "
        f"(target >= {TARGET_HTTP:.2f}) {_server.verdict(http_ratio >= TARGET_HTTP)}"
    )
    print(f"  against psql \\copy of the store's head rows: ratio {rate / rates.copy:.2f}")
    if elapsed > 0:
        print(
            f"  CPU over the run: server {server_cpu / elapsed:.0%} of a core, its PostgreSQL "
            f"backends {backend_cpu / elapsed:.0%}, load generator {result.cpu / elapsed:.0%}; "
            f"waiting for a core other processes held: server {server_waited / elapsed:.0%}, "
            f"load generator {result.waited / elapsed:.0%}"
        )
    met = ratio >= TARGET_STORE and http_ratio >= TARGET_HTTP and errors == 0
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
