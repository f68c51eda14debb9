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
