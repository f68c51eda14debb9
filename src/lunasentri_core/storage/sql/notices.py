"""Telling the other processes on one PostgreSQL database what changed, at once.

A writing transaction queues a small JSON notice with ``pg_notify``; the server
delivers it to every listening session when (and only if) the transaction
commits. Stored samples are announced just after their commit, and only for
machines some process watches (:class:`Watches`). Each process listens on one dedicated connection
(:class:`PgChangeListener`), so a change made through one server process is
seen by the others within milliseconds instead of at their next
``sync_interval`` poll, which stays as the fallback.

Notices carry ids and kinds, never secrets: ``{"o": origin, "k": kind}``, and
for stored samples the machine id, the newest samples (up to
:data:`SAMPLE_BUDGET` bytes, in notices under PostgreSQL's payload limit) and
how many older ones were left out (``n``). ``origin`` names the
:class:`Notices` of the process that wrote, so a listener skips its own.

The channel is named after the schema (``lunasentri_`` and the MD5 of
``current_schema()``), so deployments in two schemas of one database do not
hear each other. SQLite has one process: it sends and hears nothing.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from lunasentri_core.codec import decode, encode
from lunasentri_core.errors import ValidationError
from lunasentri_core.model import MachineSamples
from lunasentri_core.samples import Sample
from lunasentri_core.storage.protocols import Change, ChangeKind

if TYPE_CHECKING:
    from sqlalchemy.pool import PoolProxiedConnection

log = logging.getLogger(__name__)

PAYLOAD_LIMIT: Final = 7900
"""Bytes of one notice at most (PostgreSQL refuses 8000 and more)."""
SAMPLE_BUDGET: Final = 16_000
"""Bytes of samples one transaction sends per machine at most (the newest ones).

PostgreSQL's ``NOTIFY`` costs about a third of a microsecond a byte, in the
writing transaction: a live view needs the newest samples of a machine, not a
backfill of thousands. Those left out are counted, and other processes' live
streams say so (``event: dropped``)."""

CHANNEL_SQL: Final = "'lunasentri_' || md5(current_schema())"
_NOTIFY = sa.text(f"SELECT pg_notify({CHANNEL_SQL}, p) FROM unnest(CAST(:payloads AS text[])) AS p")
_CHANNEL = sa.text(f"SELECT {CHANNEL_SQL}")

LIVE_CLASS: Final = 0x4C54
"""First key of the shared advisory locks that say "a process watches this machine's
samples" ("LT"); the second is ``hashtext(schema:machine_id)``."""
_WATCHED_SQL: Final = (
    "WITH held AS MATERIALIZED (SELECT objid FROM pg_locks WHERE locktype = 'advisory'"
    " AND classid = {c} AND objsubid = 2 AND granted)"
    " SELECT m FROM unnest(CAST({ids} AS text[])) AS m"
    " WHERE CAST(hashtext(current_schema() || ':' || m) AS oid) IN (SELECT objid FROM held)"
)
_WATCHED = sa.text(_WATCHED_SQL.format(c=":c", ids=":ids"))
WATCHED_DRIVER_SQL: Final = _WATCHED_SQL.format(c="%s", ids="%s")
"""The look-up of watched machines for the driver (psycopg): ``(LIVE_CLASS, ids)``."""

RETRY_FIRST: Final = 0.5
RETRY_MAX: Final = 30.0
"""Seconds between attempts to reconnect the listener, doubling from the first to this."""


class Notices:
    """The sending side: queues notices in the caller's transaction (PostgreSQL only)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.origin = uuid.uuid4().hex[:16]

    def send(self, conn: Connection, kind: ChangeKind) -> None:
        if self.enabled:
            self._queue(conn, [self._payload(kind)])

    def samples(self, conn: Connection, batch: Sequence[MachineSamples]) -> None:
        """Send the samples ``batch`` committed, of the machines some process watches
        (:class:`Watches`): per machine its newest, up to :data:`SAMPLE_BUDGET` bytes
        (in notices under :data:`PAYLOAD_LIMIT`), and how many were left out.

        After the commit, so a watch taken before it is always seen; never raises
        (the samples are stored: a stream missing them is the lesser harm).
        ``conn`` is outside any transaction (the writer's own, just committed):
        the look-up runs in autocommit, one round trip where a connection of
        its own took four (pool ping, ``BEGIN``, query, ``COMMIT``)."""
        ids = self.sample_machines(batch)
        if not self.enabled or not ids:
            return
        try:
            # The pool restores the connection's isolation level when it gets it back.
            conn.execution_options(isolation_level="AUTOCOMMIT")
            watched = set(conn.execute(_WATCHED, {"ids": ids, "c": LIVE_CLASS}).scalars())
            self._send_samples(conn, batch, watched)
        except Exception as error:  # the driver's or the pool's
            log.warning("could not tell other processes of stored samples: %s", error)

    @staticmethod
    def sample_machines(batch: Sequence[MachineSamples]) -> list[str]:
        """The machines ``batch`` has samples of: those :meth:`samples` looks up."""
        return list({machine.machine_id for machine in batch if machine.samples})

    def watched_samples(
        self, conn: Connection, batch: Sequence[MachineSamples], watched: set[str]
    ) -> None:
        """:meth:`samples`, the watched machines already looked up after the commit
        (:class:`~.pgwrite.FinishWrite` does it in the commit's round trip): no
        round trip at all when none is watched. Never raises either."""
        if not self.enabled or not watched:
            return
        try:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            self._send_samples(conn, batch, watched)
        except Exception as error:  # the driver's or the pool's
            log.warning("could not tell other processes of stored samples: %s", error)

    def _send_samples(
        self, conn: Connection, batch: Sequence[MachineSamples], watched: set[str]
    ) -> None:
        payloads = [
            chunk
            for machine in batch
            if machine.machine_id in watched and machine.samples
            for chunk in self._sample_chunks(machine.machine_id, machine.samples)
        ]
        if payloads:
            self._queue(conn, payloads)
        conn.commit()

    def _payload(self, kind: ChangeKind, **extra: Any) -> str:
        return json.dumps({"o": self.origin, "k": kind.value, **extra}, separators=(",", ":"))

    def _sample_chunks(self, machine_id: str, samples: Sequence[Sample]) -> list[str]:
        # Room beside the other fields (ASCII: json.dumps escapes the rest), with
        # the count of missed samples at its widest.
        room = PAYLOAD_LIMIT - len(
            self._payload(ChangeKind.SAMPLES, m=machine_id, n=len(samples), s=[])
        )
        texts = _newest(samples, SAMPLE_BUDGET, room)
        missed = len(samples) - len(texts)
        chunks: list[list[str]] = [[]]
        used = 0
        for text in texts:
            size = len(text) + 1
            if used + size > room and chunks[-1]:
                chunks.append([])
                used = 0
            chunks[-1].append(text)
            used += size
        return [
            self._payload(ChangeKind.SAMPLES, m=machine_id, n=missed if i == 0 else 0, s=[])[:-3]
            + f"[{','.join(chunk)}]}}"
            for i, chunk in enumerate(chunks)
        ]

    @staticmethod
    def _queue(conn: Connection, payloads: list[str]) -> None:
        conn.execute(_NOTIFY, {"payloads": payloads})


def parse(payload: str, own_origin: str) -> Change | None:
    """The change a notice describes, or ``None`` for this process's own or a foreign one."""
    try:
        data = json.loads(payload)
        if data["o"] == own_origin:
            return None
        kind = ChangeKind(data["k"])
        if kind is not ChangeKind.SAMPLES:
            return Change(kind)
        samples = decode(data["s"], tuple[Sample, ...], what="notice")
        missed = int(data.get("n", 0))
        return Change(kind, machine_id=str(data["m"]), samples=samples, missed=missed)
    except (ValueError, KeyError, TypeError, ValidationError):
        log.warning("ignoring a malformed change notice: %.200r", payload)
        return None


def _newest(samples: Sequence[Sample], budget: int, largest: int) -> list[str]:
    """The JSON of the newest samples (the last given) that fit ``budget`` bytes, in
    order; a sample larger than ``largest`` (one notice's room) is left out."""
    texts: list[str] = []
    for sample in reversed(samples):
        text = json.dumps(encode(sample), separators=(",", ":"))
        if len(text) + 1 > largest:
            continue
        budget -= len(text) + 1
        if budget < 0:
            break
        texts.append(text)
    texts.reverse()
    return texts


def dedicated(engine: Engine) -> PoolProxiedConnection:
    """A connection with the pool's settings, detached from the pool, in autocommit."""
    proxy = engine.raw_connection()
    proxy.detach()  # closed for good when done, never back in the pool
    try:
        connection: Any = proxy.dbapi_connection
        connection.rollback()
        connection.autocommit = True
    except BaseException:
        proxy.close()
        raise
    return proxy


def close_dedicated(proxy: PoolProxiedConnection) -> None:
    connection = proxy.dbapi_connection
    proxy.invalidate()  # no reset (a rollback) on a connection that may be broken
    if connection is not None:
        try:
            connection.close()
        except Exception:  # already broken: nothing left to close
            log.debug("closing a dedicated connection failed", exc_info=True)


class Watches:
    """The machines this process watches, as shared advisory locks other processes see.

    A writer sends sample notices only for machines some process watches
    (:meth:`Notices.samples` looks at ``pg_locks``). Each watch is one shared
    lock (they count), held on a dedicated connection; when that connection is
    lost, the next call reconnects and takes every lock again.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._mutex = threading.Lock()
        self._proxy: PoolProxiedConnection | None = None
        self._counts: dict[str, int] = {}

    def watch(self, machine_id: str) -> None:
        with self._mutex:
            cursor = self._cursor()  # before counting: a new connection takes the counted
            self._counts[machine_id] = self._counts.get(machine_id, 0) + 1
            self._run(cursor, f"SELECT pg_advisory_lock_shared(%s, {_KEY})", machine_id)

    def unwatch(self, machine_id: str) -> None:
        with self._mutex:
            count = self._counts.get(machine_id, 0)
            if count <= 0:
                return
            cursor = self._cursor()
            if count == 1:
                del self._counts[machine_id]
            else:
                self._counts[machine_id] = count - 1
            self._run(cursor, f"SELECT pg_advisory_unlock_shared(%s, {_KEY})", machine_id)

    def close(self) -> None:
        with self._mutex:
            self._counts.clear()
            proxy, self._proxy = self._proxy, None
            if proxy is not None:
                close_dedicated(proxy)  # the session's locks end with it

    def _run(self, cursor: Any, sql: str, machine_id: str) -> None:
        try:
            cursor.execute(sql, (LIVE_CLASS, machine_id))
        except Exception as error:  # the connection is gone, and its locks with it
            log.warning("lost the connection holding live watches (%s); reconnecting", error)
            self._reconnect()  # takes the locks as now counted

    def _cursor(self) -> Any:
        if self._proxy is None:
            self._reconnect()
        assert self._proxy is not None
        return self._proxy.dbapi_connection

    def _reconnect(self) -> None:
        if self._proxy is not None:
            close_dedicated(self._proxy)
            self._proxy = None
        proxy = dedicated(self._engine)
        try:
            for machine_id, count in self._counts.items():
                for _ in range(count):
                    proxy.dbapi_connection.execute(  # type: ignore[union-attr]
                        f"SELECT pg_advisory_lock_shared(%s, {_KEY})", (LIVE_CLASS, machine_id)
                    )
        except BaseException:
            close_dedicated(proxy)
            raise
        self._proxy = proxy


_KEY: Final = "hashtext(current_schema() || ':' || %s)"


class PgChangeListener:
    """A :class:`~lunasentri_core.storage.ChangeListener` on one dedicated connection.

    The connection is drawn once from the engine (same settings as the pool's)
    and detached from the pool, so it neither takes a pool slot nor returns to
    it. When it breaks, the listener reconnects with doubling waits; every
    (re)connection first reports a :attr:`ChangeKind.CONFIG` and a
    :attr:`ChangeKind.KEYS` change, since notices sent while no one listened
    are lost.
    """

    def __init__(self, engine: Engine, origin: str, on_keys: Callable[[], None]) -> None:
        self._engine = engine
        self._origin = origin
        self._on_keys = on_keys
        self._watches = Watches(engine)
        self._proxy: PoolProxiedConnection | None = None
        self._retry_at = 0.0
        self._retry_wait = RETRY_FIRST

    @property
    def connected(self) -> bool:
        return self._proxy is not None

    def receive(self, timeout: float) -> list[Change]:
        if self._proxy is None:
            return self._connect(timeout)
        connection = self._proxy.dbapi_connection
        try:
            notices = list(connection.notifies(timeout=timeout, stop_after=1))  # type: ignore[union-attr]
            notices += connection.notifies(timeout=0)  # type: ignore[union-attr]
        except Exception as error:  # the driver's errors: the connection is gone
            log.warning("lost the connection listening for changes (%s); reconnecting", error)
            self._drop()
            return []
        changes = [c for c in (parse(n.payload, self._origin) for n in notices) if c]
        if any(c.kind in (ChangeKind.KEYS, ChangeKind.CONFIG) for c in changes):
            self._on_keys()  # a deleted machine or user ends its keys too
        return changes

    def watch(self, machine_id: str) -> None:
        self._watches.watch(machine_id)

    def unwatch(self, machine_id: str) -> None:
        self._watches.unwatch(machine_id)

    def close(self) -> None:
        self._drop()
        self._watches.close()

    def _connect(self, timeout: float) -> list[Change]:
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, timeout))
            return []
        try:
            self._proxy = self._listen()
        except Exception as error:  # the pool's or the driver's: the server is out of reach
            self._retry_at = time.monotonic() + self._retry_wait * random.uniform(0.8, 1.2)
            log.warning(
                "cannot listen for changes (%s); trying again in %.1f s", error, self._retry_wait
            )
            self._retry_wait = min(self._retry_wait * 2, RETRY_MAX)
            return []
        self._retry_wait = RETRY_FIRST
        log.debug("listening for changes made by other processes")
        self._on_keys()
        return [Change(ChangeKind.CONFIG), Change(ChangeKind.KEYS)]

    def _listen(self) -> PoolProxiedConnection:
        proxy = dedicated(self._engine)
        try:
            connection: Any = proxy.dbapi_connection
            channel = connection.execute(str(_CHANNEL)).fetchone()[0]
            connection.execute(f'LISTEN "{channel}"')
        except BaseException:
            close_dedicated(proxy)
            raise
        return proxy

    def _drop(self) -> None:
        proxy, self._proxy = self._proxy, None
        self._retry_at = 0.0
        if proxy is not None:
            close_dedicated(proxy)
