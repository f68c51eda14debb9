"""Telling the other processes on one PostgreSQL database what changed, at once.

A writing transaction queues a small JSON notice with ``pg_notify``; the server
delivers it to every listening session when (and only if) the transaction
commits. Each process listens on one dedicated connection
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
        """Queue the samples of ``batch``: per machine its newest, up to
        :data:`SAMPLE_BUDGET` bytes (in notices under :data:`PAYLOAD_LIMIT`),
        and how many older ones were left out."""
        if not self.enabled:
            return
        payloads = [
            chunk
            for machine in batch
            if machine.samples
            for chunk in self._sample_chunks(machine.machine_id, machine.samples)
        ]
        if payloads:
            self._queue(conn, payloads)

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

    def close(self) -> None:
        self._drop()

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
        proxy = self._engine.raw_connection()
        proxy.detach()  # closed for good when we are done, never back in the pool
        try:
            connection: Any = proxy.dbapi_connection
            connection.rollback()
            connection.autocommit = True
            channel = connection.execute(str(_CHANNEL)).fetchone()[0]
            connection.execute(f'LISTEN "{channel}"')
        except BaseException:
            proxy.close()
            raise
        return proxy

    def _drop(self) -> None:
        proxy, self._proxy = self._proxy, None
        self._retry_at = 0.0
        if proxy is None:
            return
        connection = proxy.dbapi_connection
        proxy.invalidate()  # no reset (a rollback) on a connection that may be broken
        if connection is not None:
            try:
                connection.close()
            except Exception:  # already broken: nothing left to close
                log.debug("closing the listening connection failed", exc_info=True)
