"""The ingest writer: coalesces concurrent ingest calls into shared transactions.

Each :meth:`BatchWriter.write` call queues its samples and waits; a worker
takes everything queued (up to ``max_points``), stores it in one transaction in a
worker thread, and then wakes every caller with its own point count or error.
The queue is bounded, so a slow disk turns into backpressure on callers instead
of memory growth.

A metric store that takes concurrent write transactions says how many with a
``write_transactions`` attribute (PostgreSQL: 2; SQLite has one writer): the
writer then keeps that many transactions in flight, so the next group is
built and sent while the database commits the previous one. What follows a
commit (the callers' results, ``on_committed``, alert evaluation) still runs in
the order the groups were taken.

When the storage is unavailable (:class:`StorageUnavailable`: locked past its
busy timeout, full, unreachable), the whole transaction fails at once, and so
does every write that queued up while it was tried: each caller hears back
within about one attempt (the busy timeout), not after one attempt per write
queued before it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import anyio
import attrs
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from lunasentri_core.errors import LunaSentriError, StorageUnavailable
from lunasentri_core.model import MachineSamples
from lunasentri_core.storage.protocols import Capability, StorageBackend

log = logging.getLogger(__name__)


class WriterClosedError(LunaSentriError):
    """The writer is not running (the hub is not open, or is closing)."""


@attrs.define
class _Pending:
    batch: MachineSamples
    points: int
    done: anyio.Event = attrs.field(factory=anyio.Event)
    result: int = 0
    error: BaseException | None = None


@attrs.define
class WriterStats:
    batches: int = 0
    transactions: int = 0
    points: int = 0
    last_transaction_points: int = 0


class BatchWriter:
    def __init__(
        self,
        storage: StorageBackend,
        *,
        clock: Callable[[], datetime],
        max_points: int = 50_000,
        queue_size: int = 1_000,
        on_committed: Callable[[Sequence[MachineSamples]], Any] | None = None,
        max_series: int | None = None,
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._max_points = max_points
        self._queue_size = queue_size
        self._on_committed = on_committed
        # Only a store with the capability takes the limit (and enforces it atomically).
        self._limit: dict[str, int] = {}
        if max_series is not None and Capability.SERIES_LIMIT in storage.capabilities:
            self._limit = {"max_series": max_series}
        elif max_series is not None:
            log.warning(
                "storage %r cannot limit series per machine (no %r capability): "
                "storage.max_series_per_machine is not enforced",
                getattr(storage, "name", type(storage).__name__),
                Capability.SERIES_LIMIT.value,
            )
        self._send: MemoryObjectSendStream[_Pending] | None = None
        self._stopped = anyio.Event()
        self.stats = WriterStats()
        self.transaction_listeners: list[Callable[[int], object]] = []
        """Called with the points of each committed transaction (e.g. a metrics histogram)."""

    @property
    def queue_depth(self) -> int:
        if self._send is None:
            return 0
        return self._send.statistics().current_buffer_used

    async def write(self, batch: MachineSamples) -> int:
        """Store ``batch``; returns once it is durably committed (or raises)."""
        if self._send is None:
            raise WriterClosedError("the hub is not open: use 'async with Sentri(...)'")
        pending = _Pending(batch, sum(len(s.readings) for s in batch.samples))
        try:
            try:
                # Room in the queue (the usual case): no checkpoint, no extra loop turn.
                self._send.send_nowait(pending)
            except anyio.WouldBlock:
                await self._send.send(pending)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise WriterClosedError("the hub is closing") from None
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve writes until :meth:`close`; everything queued before close is written."""
        send, receive = anyio.create_memory_object_stream[_Pending](self._queue_size)
        self._send = send
        task_status.started()
        try:
            async with receive:
                await self._serve(receive)
        finally:
            self._stopped.set()

    async def aclose(self) -> None:
        """Stop accepting writes and wait until everything already queued is committed."""
        if self._send is not None:
            self._send.close()
            self._send = None
            await self._stopped.wait()

    @property
    def in_flight(self) -> int:
        """Write transactions kept in flight at most (the metric store's ``write_transactions``)."""
        return max(1, int(getattr(self._storage.metrics, "write_transactions", 1)))

    def _take(
        self, first: _Pending, receive: MemoryObjectReceiveStream[_Pending]
    ) -> list[_Pending]:
        group = [first]
        points = first.points
        while points < self._max_points:
            try:
                item = receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
            group.append(item)
            points += item.points
        return group

    async def _serve(self, receive: MemoryObjectReceiveStream[_Pending]) -> None:
        if self.in_flight > 1:
            await self._serve_overlapped(receive, self.in_flight)
            return
        async for first in receive:
            group = self._take(first, receive)
            # Shielded: a cancelled hub must still finish (and report) a commit in flight.
            with anyio.CancelScope(shield=True):
                unavailable = await self._commit(group)
            if unavailable is not None:
                self._fail_queued(receive, unavailable)

    async def _serve_overlapped(
        self, receive: MemoryObjectReceiveStream[_Pending], in_flight: int
    ) -> None:
        """Up to ``in_flight`` groups in flight; each completes after the one before it."""
        slots = anyio.Semaphore(in_flight)
        previous: anyio.Event | None = None
        async with anyio.create_task_group() as tasks:
            while True:
                # A free slot first: while every slot is busy, writes keep
                # queueing and the next group takes them all.
                await slots.acquire()
                try:
                    first = await receive.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    slots.release()
                    break
                except BaseException:
                    slots.release()
                    raise
                done = anyio.Event()
                tasks.start_soon(
                    self._commit_in_turn, receive, self._take(first, receive), previous, done, slots
                )
                previous = done

    async def _commit_in_turn(
        self,
        receive: MemoryObjectReceiveStream[_Pending],
        group: list[_Pending],
        previous: anyio.Event | None,
        done: anyio.Event,
        slots: anyio.Semaphore,
    ) -> None:
        # Shielded: a cancelled hub must still finish (and report) a commit in flight.
        with anyio.CancelScope(shield=True):
            try:
                unavailable = await self._commit(group, after=previous)
                if unavailable is not None:
                    self._fail_queued(receive, unavailable)
            finally:
                slots.release()
                done.set()

    @staticmethod
    def _fail_queued(receive: MemoryObjectReceiveStream[_Pending], error: BaseException) -> None:
        """Fail the writes that queued while the storage was found unavailable."""
        while True:
            try:
                pending = receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                return
            pending.error = error
            pending.done.set()

    async def _commit(
        self, group: list[_Pending], after: anyio.Event | None = None
    ) -> StorageUnavailable | None:
        """Store ``group`` in one transaction; the error if the storage was unavailable.

        ``after``: the group before it, whose completion this one waits for
        once its own transaction is over, so groups complete in order.
        """
        batches = [p.batch for p in group]
        failure: Exception | None = None
        try:
            await anyio.to_thread.run_sync(self._write_sync, batches)
        except Exception as error:
            failure = error
        if after is not None:
            await after.wait()
        if isinstance(failure, StorageUnavailable):
            # The storage, not a batch, is at fault: retrying each would wait again.
            for pending in group:
                pending.error = failure
                pending.done.set()
            return failure
        if failure is not None:
            if len(group) > 1:
                # One bad batch must not fail the others: retry them one by one.
                return await self._commit_each(group)
            group[0].error = failure
        else:
            for pending in group:
                pending.result = pending.points
            self._record(group)
            await self._committed(batches)
        for pending in group:
            pending.done.set()
        return None

    async def _commit_each(self, group: list[_Pending]) -> StorageUnavailable | None:
        for index, pending in enumerate(group):
            if (unavailable := await self._commit([pending])) is not None:
                for rest in group[index + 1 :]:
                    rest.error = unavailable
                    rest.done.set()
                return unavailable
        return None

    def _write_sync(self, batches: list[MachineSamples]) -> None:
        heard_from = {batch.machine_id for batch in batches if batch.samples and batch.heard}
        # last_seen is when we heard from the machine, not its (possibly skewed) clock.
        now = self._clock()
        seen = [(machine_id, now) for machine_id in heard_from]
        metrics = self._storage.metrics
        if getattr(metrics, "writes_last_seen", False):
            # One transaction (one commit) for the points and last_seen.
            metrics.write(batches, seen=seen, **self._limit)  # type: ignore[call-arg]
            return
        metrics.write(batches, **self._limit)
        if seen:
            self._storage.state.touch_machines(seen)

    def _record(self, group: list[_Pending]) -> None:
        points = sum(p.points for p in group)
        self.stats.batches += len(group)
        self.stats.transactions += 1
        self.stats.points += points
        self.stats.last_transaction_points = points
        for listener in self.transaction_listeners:
            try:
                listener(points)
            except Exception:
                log.exception("transaction listener failed")

    async def _committed(self, batches: list[MachineSamples]) -> None:
        if self._on_committed is None:
            return
        try:
            result = self._on_committed(batches)
            if result is not None:
                await result
        except Exception:
            log.exception("post-commit handler failed")
