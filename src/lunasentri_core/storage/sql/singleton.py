"""Once-only jobs across server processes: named locks held for as long as a process runs.

Several server processes may share one database; periodic jobs that must not
run in two of them at once (the heartbeat sweep, maintenance, purges, ...) run
only in the process that holds the job's lock. A job's loop asks for the lock
before each pass (:meth:`Singletons.hold`): the holder keeps it from pass to
pass, the others are refused at once, and when the holder dies its lock goes
with it, so another process takes the job over at its next pass (within one
interval).

* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on one
  dedicated connection. The session ending (process killed, connection lost)
  releases it on the server; each ``hold`` first checks that the session is
  still alive, so a holder that lost its connection knows it lost its locks.
* SQLite file: an exclusive ``flock`` on a file beside the database, held
  open; the kernel releases it when the process ends.
* SQLite in memory: one process by nature; always held.
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from pathlib import Path
from typing import Final

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine

from lunasentri_core.filelock import try_lock

log = logging.getLogger(__name__)

LOCK_CLASS: Final = 0x4C53
"""First key of the two-key advisory locks of named jobs ("LS"); the second is
the CRC-32 of the schema and the name (advisory locks are per database, and
deployments in two schemas of one database each run their jobs). Two-key locks
never collide with the one-key ``LOCK_MAINTAIN``/``LOCK_MIGRATE``."""

FILE_SUFFIX: Final = ".singleton-"


def lock_key(name: str, schema: str) -> tuple[int, int]:
    """The advisory lock keys of job ``name`` in ``schema`` (the second a signed int4)."""
    crc = zlib.crc32(f"{schema}:{name}".encode())
    return LOCK_CLASS, crc - (1 << 32) if crc >= 1 << 31 else crc


class Singletons:
    """The named job locks of one database, as held by this process."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._mutex = threading.Lock()
        self._held: set[str] = set()
        self._conn: Connection | None = None
        self._schema = ""
        self._files: dict[str, int] = {}
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        self._path = Path(database) if database not in (None, "", ":memory:") else None

    def hold(self, name: str) -> bool:
        """Take job ``name``'s lock, or confirm this process still holds it.

        ``False`` while another process holds it. Raises ``SQLAlchemyError``
        when the database cannot be reached (the caller's pass fails as it
        would have anyway).
        """
        with self._mutex:
            if self._engine.dialect.name == "postgresql":
                return self._hold_postgres(name)
            if self._path is None:
                return True
            return self._hold_file(name)

    def held(self) -> frozenset[str]:
        """The names this process holds (as of the last :meth:`hold`)."""
        with self._mutex:
            return frozenset(self._held)

    def release(self, name: str) -> None:
        """Let go of ``name`` (another process may take it at its next pass)."""
        with self._mutex:
            if name not in self._held:
                return
            self._held.discard(name)
            if self._conn is not None:
                try:
                    key = lock_key(name, self._schema)
                    self._conn.execute(sa.select(sa.func.pg_advisory_unlock(*key)))
                except exc.SQLAlchemyError:
                    self._drop_connection()  # the session is gone, and its locks with it
                    return
                if not self._held:
                    self._drop_connection()
            fd = self._files.pop(name, None)
            if fd is not None:
                os.close(fd)

    def close(self) -> None:
        """Release every lock (before the engine is disposed of)."""
        with self._mutex:
            self._held.clear()
            self._drop_connection()  # ending the session releases its locks
            for fd in self._files.values():
                os.close(fd)
            self._files.clear()

    # ------------------------------------------------------------ PostgreSQL

    def _hold_postgres(self, name: str) -> bool:
        conn = self._session()
        if name in self._held:
            return True
        key = lock_key(name, self._schema)
        taken = conn.execute(sa.select(sa.func.pg_try_advisory_lock(*key))).scalar()
        if taken:
            self._held.add(name)
            log.info("this process now runs the %r job", name)
        return bool(taken)

    def _session(self) -> Connection:
        """The live dedicated connection, opened anew when the last one died."""
        if self._conn is not None:
            try:
                self._conn.execute(sa.text("SELECT 1"))
                return self._conn
            except exc.SQLAlchemyError:
                if self._held:
                    log.warning("lost the database session holding jobs %s", sorted(self._held))
                self._drop_connection()
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._conn = conn
        self._schema = str(conn.execute(sa.select(sa.func.current_schema())).scalar() or "")
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if self._engine.dialect.name == "postgresql":
            self._held.clear()  # a session's locks end with it
        if conn is not None:
            try:
                conn.invalidate()  # never back to the pool: it may hold locks
                conn.close()
            except exc.SQLAlchemyError:
                pass

    # ------------------------------------------------------------ SQLite file

    def _hold_file(self, name: str) -> bool:
        if name in self._held:
            return True
        assert self._path is not None
        path = self._path.with_name(f"{self._path.name}{FILE_SUFFIX}{name}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if not try_lock(fd):
            os.close(fd)
            return False
        self._files[name] = fd
        self._held.add(name)
        return True
