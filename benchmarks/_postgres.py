"""PostgreSQL for the benchmarks: the server's URL, a scratch schema, CPU of its backends.

The server comes from ``LUNASENTRI_BENCH_POSTGRES_URL`` or, failing that,
``LUNASENTRI_TEST_POSTGRES_URL``; without either the PostgreSQL benchmarks say
so in one line and skip. Each run works in a schema of its own, dropped at the
end, and tags its connections with an ``application_name`` of its own, so the
CPU its backends use can be told from other clients' (``BackendCpu``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import psutil
import sqlalchemy as sa
from sqlalchemy.engine import make_url

URL_VARIABLES = ("LUNASENTRI_BENCH_POSTGRES_URL", "LUNASENTRI_TEST_POSTGRES_URL")


def postgres_url() -> str | None:
    for name in URL_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return None


def skip_line(benchmark: str) -> str:
    return f"{benchmark}: skipped, no PostgreSQL: set {' or '.join(URL_VARIABLES)}"


def libpq_args(url: str) -> list[str]:
    """``psql`` arguments reaching the server of a SQLAlchemy URL."""
    parsed = make_url(url)
    args = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", parsed.database or "postgres"]
    if parsed.host:
        args += ["-h", parsed.host]
    if parsed.port:
        args += ["-p", str(parsed.port)]
    if parsed.username:
        args += ["-U", parsed.username]
    return args


def psql_env(url: str, schema: str) -> dict[str, str]:
    env = {**os.environ, "PGOPTIONS": f"-c search_path={schema}"}
    password = make_url(url).password
    if password:
        env["PGPASSWORD"] = str(password)
    return env


@contextmanager
def scratch_schema(url: str, prefix: str) -> Iterator[tuple[str, str, str]]:
    """``(schema, its URL, application_name)``; the schema is dropped on the way out."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        options = quote(f"-csearch_path={name}", safe="")
        separator = "&" if "?" in url else "?"
        scoped = f"{url}{separator}options={options}&application_name={name}"
        yield name, scoped, name
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


class BackendCpu:
    """CPU seconds of the PostgreSQL backends serving ``application_name``, since made.

    Backends are looked up again on each reading (pools open more under load);
    one that appears later counts from its start. Backends that ended in
    between take their share with them (an undercount). PostgreSQL's own
    background processes (WAL writer, checkpointer) are not in it.
    """

    def __init__(self, url: str, application_name: str) -> None:
        self._engine = sa.create_engine(url)
        self._name = application_name
        self._start = self._read()

    def _pids(self) -> list[int]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
                {"name": self._name},
            )
            return [int(pid) for (pid,) in rows]

    def _read(self) -> dict[int, float]:
        out = {}
        for pid in self._pids():
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue  # ended meanwhile, or another host's
            out[pid] = float(times.user + times.system)
        return out

    def seconds(self) -> float:
        now = self._read()
        return sum(max(0.0, t - self._start.get(pid, 0.0)) for pid, t in now.items())

    def close(self) -> None:
        self._engine.dispose()


class MachineCpu:
    """Busy CPU seconds of the whole machine (all cores, every process) since made."""

    def __init__(self) -> None:
        self._start = psutil.cpu_times()

    def seconds(self) -> tuple[float, float]:
        """``(busy, total)`` CPU seconds over all cores."""
        now = psutil.cpu_times()
        idle = (now.idle + getattr(now, "iowait", 0.0)) - (
            self._start.idle + getattr(self._start, "iowait", 0.0)
        )
        total = sum(now) - sum(self._start)
        return total - idle, total


def bytes_breakdown(conn: sa.Connection, schema: str, points: int) -> list[str]:
    """Where a schema's bytes go, per point: the chunk partitions' heap, TOAST and
    indexes, the other tables; the chunk rows, their blobs and how the pages are
    filled (``pgstattuple``, created in ``public`` when missing)."""
    conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pgstattuple SCHEMA public")
    ext = conn.exec_driver_sql(
        "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pgstattuple'"
    ).scalar_one()
    rels = conn.exec_driver_sql(
        "SELECT c.oid, c.relname, c.relkind, pg_relation_size(c.oid), "
        "pg_table_size(c.oid) - pg_relation_size(c.oid) "
        "  - coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0), "
        "coalesce(pg_relation_size(nullif(c.reltoastrelid, 0)), 0), "
        "coalesce(pg_indexes_size(nullif(c.reltoastrelid, 0)), 0), "
        "c.reltoastrelid::regclass::text "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'm')",
        {"schema": schema},
    ).all()
    groups: dict[str, list[float]] = {}
    chunk_tables = []
    for oid, name, _kind, heap, maps, toast, toast_index, toast_name in rels:
        group = "metric_chunks" if name.startswith("metric_chunks") else name
        if group == "metric_chunks":
            chunk_tables.append((oid, name, toast_name))
        g = groups.setdefault(group, [0.0] * 6)
        g[0] += heap
        g[1] += maps
        g[2] += toast + toast_index
        for index_name, size in conn.exec_driver_sql(
            "SELECT i.indexrelid::regclass::text, pg_relation_size(i.indexrelid) "
            "FROM pg_index i WHERE i.indrelid = %(oid)s",
            {"oid": oid},
        ):
            g[3 if ("pkey" in index_name or index_name.startswith("pk_")) else 4] += size
    lines = [
        "bytes per point by table: heap / FSM+VM / TOAST (with its index) / pkey / other indexes"
    ]
    total = 0.0
    for group, g in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
        total += sum(g)
        if sum(g) / points >= 0.0005:
            cells = " / ".join(f"{v / points:.4f}" for v in g[:5])
            lines.append(f"  {group:28} {sum(g) / points:.4f}  ({cells})")
    lines.append(f"  {'all':28} {total / points:.4f}")
    lines += _chunk_rows(conn, chunk_tables, ext, points)
    return lines


def _chunk_rows(
    conn: sa.Connection, tables: list[tuple[int, str, str | None]], ext: str, points: int
) -> list[str]:
    rows = blobs = stored = inline_compressed = 0
    tuple_len = dead_len = free = table_len = pages = toast_rows = 0
    for _oid, name, toast_name in tables:
        r = conn.exec_driver_sql(
            "SELECT count(*), coalesce(sum(coalesce(octet_length(raw), 0) "
            "  + coalesce(octet_length(minutes), 0)), 0), "
            "coalesce(sum(coalesce(pg_column_size(raw), 0) "
            "  + coalesce(pg_column_size(minutes), 0)), 0), "
            "count(*) FILTER (WHERE pg_column_size(raw) < octet_length(raw) "
            "  OR pg_column_size(minutes) < octet_length(minutes)) "
            f'FROM "{name}"'
        ).one()
        rows += r[0]
        blobs += r[1]
        stored += r[2]
        inline_compressed += r[3]
        s = conn.exec_driver_sql(
            "SELECT table_len, tuple_len, dead_tuple_len, free_space "
            f"FROM {ext}.pgstattuple(%(n)s)",
            {"n": name},
        ).one()
        table_len += s[0]
        tuple_len += s[1]
        dead_len += s[2]
        free += s[3]
        pages += s[0] // 8192
        if toast_name:
            toast_rows += int(
                conn.exec_driver_sql(
                    f"SELECT count(DISTINCT chunk_id) FROM {toast_name}"
                ).scalar_one()
            )
    if not rows:
        return ["  no chunk rows"]
    other = tuple_len - stored
    pointers = table_len - tuple_len - dead_len - free
    return [
        f"chunk rows {rows:,} ({points / rows:.0f} points a row), {pages:,} heap pages "
        f"({rows / max(pages, 1):.2f} rows a page); values moved to TOAST {toast_rows:,}, "
        f"compressed {inline_compressed:,}",
        f"  blobs (octet_length) {blobs / points:.4f} B/pt, as stored {stored / points:.4f}; "
        f"{(blobs) / rows:.0f} B a row",
        f"  heap {table_len / points:.4f} B/pt = live tuples {tuple_len / points:.4f} "
        f"(of which not blobs {other / points:.4f}, {other / rows:.0f} B a row)"
        f" + dead {dead_len / points:.4f} + free {free / points:.4f} "
        f"+ page headers and line pointers {pointers / points:.4f}",
    ]
