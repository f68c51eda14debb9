"""Pooled connections checked before use, without a round trip while they are in use.

SQLAlchemy's ``pool_pre_ping`` sends ``SELECT 1`` at every checkout: a round trip
to the server before each storage call. A one-series history read over HTTP
makes a handful of them, and that ping was one of the largest (py-spy: about a
sixth of the worker thread's time in the read). Instead, a connection is pinged
at checkout only when

* it has not been returned to the pool within :data:`PING_AFTER` (idle ones may
  have been cut meanwhile, by a firewall or a server that went away silently), or
* its socket has something to read: an idle connection is sent nothing unless
  the server is ending it (restart, ``pg_terminate_backend``, failover: a fatal
  error message, then end of file), so a readable socket is pinged, and a dead
  one replaced before use, as ``pool_pre_ping`` would.

A server that vanished without a word within :data:`PING_AFTER` of the last use
fails that one call (``StorageUnavailable``, which callers may retry), and
SQLAlchemy then replaces the pool's other connections.
"""

from __future__ import annotations

import select
from time import monotonic
from typing import Any, Final

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

PING_AFTER: Final = 2.0
"""Seconds since a connection's last use after which it is pinged at checkout."""
_RETURNED: Final = "lunasentri_returned_at"
"""Where a pool entry keeps when it was opened or last returned (:func:`monotonic`)."""


def install(engine: Engine, ping_after: float = PING_AFTER) -> None:
    """Check ``engine``'s pooled connections as above (with ``pool_pre_ping`` off)."""

    def stamp(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_RETURNED] = monotonic()

    def check(
        dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
    ) -> None:
        returned = record.info.get(_RETURNED)
        if returned is not None and monotonic() - returned < ping_after and quiet(dbapi_connection):
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool drops this connection and checks out a new one (then pinged:
            # it has no stamp until it is returned once more).
            record.info.pop(_RETURNED, None)
            raise exc.DisconnectionError(f"a pooled connection was dead: {error}") from error

    event.listen(engine, "connect", stamp)
    event.listen(engine, "checkin", stamp)
    event.listen(engine, "checkout", check)


def quiet(dbapi_connection: Any) -> bool:
    """Whether a psycopg connection looks usable without asking the server: not
    closed or broken, and nothing waiting on its socket."""
    if dbapi_connection.closed or getattr(dbapi_connection, "broken", False):
        return False
    try:
        fd = dbapi_connection.pgconn.socket
        if hasattr(select, "poll"):  # any descriptor number, unlike select()
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return not poller.poll(0)
        readable, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError, AttributeError):
        return False
    return not readable
