"""Benchmark: PostgreSQL's bytes on disk against its live data through a compaction and
retention soak (issue 15 point 2, on PostgreSQL).

The same soak as ``bench_sqlite_soak.py`` (its fleet and short retention: a
realistic fleet written in time order as fast as it goes, maintenance every
``--interval`` seconds of data time), on the ``lunasentri-timescale`` store in a
scratch schema of ``LUNASENTRI_BENCH_POSTGRES_URL`` (without it: one line, and
nothing runs). After writes and after every pass it compares every relation of
the schema (tables, their TOAST, indexes) with the part of it holding live data,
read with the ``pgstattuple`` extension (created in the database when missing):
a table's or TOAST table's length less its free space and dead tuples; a
B-tree's size less its empty and deleted pages (its pages' own slack counts as
live, as a SQLite page in use does); other indexes (BRIN) whole. It prints the
largest ratio against the 1.2 limit, with the biggest relations at that moment,
the bytes per point at the end, and the maintenance time and CPU (this
process, and the PostgreSQL backends of its connections, during the passes).

Tables at ``fillfactor`` below 100 (``latest_values``: 50) keep that room on
purpose; it counts as overhead here.

PostgreSQL gives the space of deleted and updated rows back through VACUUM,
which autovacuum runs on a table once its dead rows pass 50 and a fifth of its
live ones, looking every minute. The soak goes through hours of data in
minutes, so it does the same in data time: every ``--autovacuum`` seconds of
data (60, autovacuum's ``naptime``), a plain ``VACUUM`` of each table of the
schema past that threshold (``pg_stat_user_tables``), with the real one
switched off on those tables.

    python benchmarks/bench_pg_soak.py [--machines 20] [--hours 2] [--interval 30]
        [--autovacuum 60] [--breakdown]

``--breakdown`` prints every relation at the worst moment: its bytes, its live
bytes, and what the rest is (a heap's free space and dead tuples, a B-tree's
empty and deleted pages).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import _common as c
import _dataset as d
import _postgres as pg
import bench_sqlite_soak as soak
import sqlalchemy as sa

from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.storage.sql.metrics import from_ms
from lunasentri_timescale import TimescaleStorageFactory

_RELATIONS = sa.text(
    """
    SELECT c.oid, c.relname, c.relkind, am.amname, pg_relation_size(c.oid)
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_am am ON am.oid = c.relam
    WHERE c.relkind IN ('r', 'm', 't', 'i')
      AND (n.nspname = :schema
           OR c.oid IN (SELECT reltoastrelid FROM pg_class t
                        JOIN pg_namespace tn ON tn.oid = t.relnamespace
                        WHERE tn.nspname = :schema AND t.reltoastrelid <> 0)
           OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid IN
                        (SELECT reltoastrelid FROM pg_class t
                         JOIN pg_namespace tn ON tn.oid = t.relnamespace
                         WHERE tn.nspname = :schema AND t.reltoastrelid <> 0)))
    """
)
_HEAP = "SELECT table_len, free_space, dead_tuple_len FROM {0}.pgstattuple(:oid)"
_BTREE = (
    "SELECT index_size, empty_pages, deleted_pages, "
    "current_setting('block_size')::int FROM {0}.pgstatindex(:oid)"
)


class Sizes:
    """The schema's bytes over its live bytes, sampled."""

    def __init__(self, engine: sa.Engine, schema: str, functions: str) -> None:
        self.engine, self.schema = engine, schema
        self._heap = sa.text(_HEAP.format(functions))
        self._btree = sa.text(_BTREE.format(functions))
        self.worst = 0.0
        self.worst_at = ""
        self.worst_top = ""
        self.samples = 0
        self.size = 0
        self.breakdown: list[tuple[str, int, int, str]] = []

    def _live(
        self, conn: sa.Connection, oid: int, kind: str, method: str | None
    ) -> tuple[int, str]:
        """Live bytes (-1: count it whole) and what the rest is, for the breakdown."""
        if kind in ("r", "m", "t") or method == "heap":
            length, free, dead = conn.execute(self._heap, {"oid": oid}).one()
            return int(length - free - dead), f"free {free / 2**20:.2f}, dead {dead / 2**20:.2f}"
        if method == "btree":
            size, empty, deleted, block = conn.execute(self._btree, {"oid": oid}).one()
            return int(size - (empty + deleted) * block), f"empty+deleted {empty + deleted} pages"
        return -1, "counted whole"

    def sample(self, moment: str) -> float:
        with self.engine.connect() as conn:
            rows = conn.execute(_RELATIONS, {"schema": self.schema}).all()
            sized = []
            notes = {}
            for oid, name, kind, method, size in rows:
                live, notes[name] = self._live(conn, oid, kind, method) if size else (0, "")
                sized.append((name, int(size), int(size) if live < 0 else live))
        size = sum(s for _, s, _ in sized)
        live = sum(v for _, _, v in sized)
        self.size = size
        ratio = size / live if live else 1.0
        self.samples += 1
        if ratio > self.worst:
            top = sorted(sized, key=lambda r: r[1] - r[2], reverse=True)[:3]
            self.worst, self.worst_at = ratio, f"{moment} ({size / 2**20:.1f} MiB)"
            self.worst_top = ", ".join(
                f"{name} {s / 2**20:.2f} MiB ({v / 2**20:.2f} live)" for name, s, v in top
            )
            self.breakdown = [
                (name, s, v, notes[name])
                for name, s, v in sorted(sized, key=lambda r: r[1] - r[2], reverse=True)
                if s - v >= 8192
            ]
        return ratio


def ensure_pgstattuple(url: str) -> str:
    """The schema of the ``pgstattuple`` functions, created in ``public`` when missing."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pgstattuple SCHEMA public"))
            found = conn.execute(
                sa.text(
                    "SELECT n.nspname FROM pg_extension e "
                    "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pgstattuple'"
                )
            ).scalar_one()
            return f'"{found}"'
    finally:
        engine.dispose()


_UPDATES = sa.text(
    "SELECT relname, n_tup_upd, n_tup_hot_upd, n_tup_del, vacuum_count "
    "FROM pg_stat_user_tables WHERE schemaname = :schema AND n_tup_upd + n_tup_del > 0 "
    "ORDER BY relname"
)
_REAL = sa.text(
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = :schema AND c.relkind = 'r' "
    "AND NOT coalesce('autovacuum_enabled=false' = ANY (c.reloptions), false)"
)
_DUE = sa.text(
    "SELECT relname FROM pg_stat_user_tables WHERE schemaname = :schema "
    "AND n_dead_tup > 50 + 0.2 * n_live_tup"
)


def autovacuum(engine: sa.Engine, schema: str) -> int:
    """What autovacuum would do now: VACUUM the tables past its default threshold.

    The real one is switched off on the schema's tables first (those made since
    too): a minute of real time is hours of the soak's data, so its visits
    would fall at moments that depend on the machine's speed.
    """
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in list(conn.execute(_REAL, {"schema": schema}).scalars()):
            conn.execute(
                sa.text(
                    f'ALTER TABLE "{table}" SET '
                    "(autovacuum_enabled = false, toast.autovacuum_enabled = false)"
                )
            )
        due = list(conn.execute(_DUE, {"schema": schema}).scalars())
        for table in due:
            conn.execute(sa.text(f'VACUUM "{table}"'))
    return len(due)


def run(
    fleet: soak.Fleet, urls: tuple[str, str], schema: str, functions: str, args: argparse.Namespace
) -> dict[str, Any]:
    url, app = urls
    store = TimescaleStorageFactory.open(url, retention=soak.RETENTION)
    assert isinstance(store, SqlStorage)
    backends = pg.BackendCpu(url, app)
    out: dict[str, Any] = {"write_s": 0.0, "maintain": [], "vacuumed": 0, "vacuum_s": 0.0}
    out["cpu"] = [0.0, 0.0]  # maintenance: this process, the PostgreSQL backends
    interval_ms, vacuum_ms = int(args.interval * 1000), int(args.autovacuum * 1000)
    try:
        store.migrate()
        sizes = Sizes(store.engine, schema, functions)
        next_pass = fleet.ts[0] + interval_ms
        next_vacuum = fleet.ts[0] + vacuum_ms
        for i in range(len(fleet.ts)):
            with c.Timer() as timer:
                store.metrics.write(fleet.batch(i))
            out["write_s"] += timer.elapsed
            if vacuum_ms and fleet.ts[i] >= next_vacuum:
                with c.Timer() as timer:
                    out["vacuumed"] += autovacuum(store.engine, schema)
                out["vacuum_s"] += timer.elapsed
                next_vacuum += vacuum_ms
            if fleet.ts[i] + d.STEP_MS < next_pass:
                continue
            sizes.sample("after writes")
            client, server = time.process_time(), backends.seconds()
            with c.Timer() as timer:
                store.metrics.maintain(from_ms(next_pass))
            out["maintain"].append(timer.elapsed)
            out["cpu"][0] += time.process_time() - client
            out["cpu"][1] += backends.seconds() - server
            sizes.sample(f"after pass {len(out['maintain'])}")
            next_pass += interval_ms
        with store.engine.connect() as conn:
            updates = conn.execute(_UPDATES, {"schema": schema}).all()
    finally:
        store.close()
        backends.close()
    out["sizes"] = sizes
    out["updates"] = updates
    return out


def main(argv: list[str] | None = None) -> int:
    parser = soak.soak_arguments(
        argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    )
    parser.add_argument(
        "--autovacuum",
        type=float,
        default=60.0,
        help="autovacuum's look every N s of data (default 60; 0: leave it to the real one)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="print every relation of the schema at the worst moment",
    )
    args = parser.parse_args(argv)
    base = pg.postgres_url()
    if base is None:
        print(pg.skip_line("bench_pg_soak"))
        return 0
    points = soak.soak_points(parser, args)
    with c.Timer() as generating:
        fleet = soak.Fleet(args.machines, points)
    functions = ensure_pgstattuple(base)
    with pg.scratch_schema(base, "lsbench_soak") as (schema, url, app):
        result = run(fleet, (url, app), schema, functions, args)
    sizes: Sizes = result["sizes"]
    passes: list[float] = result["maintain"]
    print(
        f"benchmark: PostgreSQL soak, {args.machines} machines x 50 series at 5 s for "
        f"{args.hours:g} h = {fleet.points:,} points, maintenance every {args.interval:g} s "
        f"({len(passes)} passes), retention raw {soak.RETENTION.raw}, minute "
        f"{soak.RETENTION.minute}, hour {soak.RETENTION.hour} "
        f"(generated in {generating.elapsed:.0f} s)"
    )
    for line in c.environment():
        print(f"  {line}")
    print(
        f"  writes {result['write_s']:.1f} s ({fleet.points / result['write_s'] / 1000:.0f}k "
        f"points/s), maintenance {sum(passes):.1f} s (median pass "
        f"{statistics.median(passes) * 1000:.1f} ms, longest {max(passes) * 1000:.0f} ms); "
        f"autovacuum's part: {result['vacuumed']} tables vacuumed in {result['vacuum_s']:.1f} s"
    )
    series_hours = sum(len(k) for k in fleet.keys.values()) * args.hours
    client, server = result["cpu"]
    print(
        f"  maintenance CPU: {client:.1f} s here, {server:.1f} s in PostgreSQL's backends: "
        f"{(client + server) / series_hours * 1000:.2f} ms per series and hour of data"
    )
    print(
        f"  schema: {sizes.size / 2**20:.1f} MiB at the end, {sizes.size / fleet.points:.3f} "
        f"B/point of the data written; {sizes.samples} samples, worst {sizes.worst:.3f} "
        f"{sizes.worst_at}: {sizes.worst_top}"
    )
    if args.breakdown:
        print("  at the worst moment (MiB; relations by bytes over live):")
        for name, size, live, note in sizes.breakdown:
            print(f"    {name:40} {size / 2**20:8.2f} {live / 2**20:8.2f} live  {note}")
        print("  updated tables at the end: updates (HOT), deletes, vacuums")
        for name, upd, hot, deleted, vacuums in result["updates"]:
            print(f"    {name:40} {upd:,} ({hot:,}), {deleted:,}, {vacuums}")
    ok = soak.limit_line("schema size", sizes.worst)
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
