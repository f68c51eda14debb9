"""Live fan-out: newly stored samples, to whoever watches their machine.

After each commit the hub fires ``lunasentri_samples_ingested``; a small
internal plugin (registered by :meth:`LiveFeed.attach`) hands those samples to
every subscription of that machine. Publishing never waits: each subscription
holds a bounded queue, and one that is read too slowly loses its oldest samples
(it is told how many), so a slow client neither grows memory nor slows ingest.

Samples stored through another process sharing the storage arrive through the
hub's :class:`~lunasentri_core.services.changes.ChangeFollower` (PostgreSQL's
``NOTIFY``), so a subscriber sees every machine's new samples whichever server
process received them; the storing process's own samples come only through
the ingest event, never twice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.from_thread
import anyio.lowlevel
import attrs

from lunasentri_core.hookspecs import hookimpl
from lunasentri_core.model import Machine, Sample

if TYPE_CHECKING:
    from lunasentri_core.hub import Sentri

log = logging.getLogger(__name__)

PLUGIN_NAME = "server-live"
DEFAULT_QUEUE_SIZE = 500
"""Samples a subscription holds before it drops its oldest."""


@attrs.frozen
class Delivery:
    """What a subscriber gets on each wake-up: new samples, and how many it missed."""

    samples: tuple[Sample, ...]
    dropped: int = 0


class Subscription:
    """One subscriber's view of one machine's new samples."""

    def __init__(self, machine_id: str, size: int) -> None:
        self.machine_id = machine_id
        self._queue: deque[Sample] = deque(maxlen=size)
        self._wake = anyio.Event()
        self._dropped = 0
        self.closed = False

    def put(self, samples: Sequence[Sample], missed: int = 0) -> None:
        """Queue ``samples``; ``missed`` earlier ones never reached this process."""
        overflow = len(self._queue) + len(samples) - (self._queue.maxlen or 0)
        self._dropped += max(overflow, 0) + missed
        self._queue.extend(samples)  # the deque's maxlen drops the oldest
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def receive(self, timeout: float) -> Delivery | None:
        """The samples queued so far, waiting up to ``timeout`` seconds for some.

        An empty delivery means the time ran out; ``None`` that the feed closed.
        """
        if not self._queue and not self.closed:
            with anyio.move_on_after(timeout):
                await self._wake.wait()
        if self._wake.is_set():
            self._wake = anyio.Event()
        if self.closed:
            return None
        samples, dropped = tuple(self._queue), self._dropped
        self._queue.clear()
        self._dropped = 0
        return Delivery(samples, dropped)


class Changes:
    """Which of several machines have had new samples since last asked (the
    dashboard's overview redraws those machines, whatever the samples were)."""

    def __init__(self) -> None:
        self._changed: set[str] = set()
        self._wake = anyio.Event()
        self.closed = False

    def mark(self, machine_id: str) -> None:
        self._changed.add(machine_id)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def receive(self, timeout: float) -> set[str] | None:
        """The machines changed so far, waiting up to ``timeout`` seconds for one.

        An empty set means the time ran out; ``None`` that the feed closed.
        """
        if not self._changed and not self.closed:
            with anyio.move_on_after(timeout):
                await self._wake.wait()
        if self._wake.is_set():
            self._wake = anyio.Event()
        if self.closed:
            return None
        changed, self._changed = self._changed, set()
        return changed


class _Subscriber(Protocol):
    def put(self, samples: Sequence[Sample], missed: int = 0) -> None: ...

    def close(self) -> None: ...


class _ChangeTap:
    """Stands in a machine's subscriber set for a :class:`Changes` of many machines."""

    def __init__(self, machine_id: str, changes: Changes) -> None:
        self._machine_id = machine_id
        self._changes = changes

    def put(self, samples: Sequence[Sample], missed: int = 0) -> None:
        self._changes.mark(self._machine_id)

    def close(self) -> None:
        self._changes.close()


class LiveFeed:
    """Subscriptions by machine, fed from the hub's ingest event."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self._subscriptions: dict[str, set[_Subscriber]] = {}
        self._closed = False
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._loop_thread: int | None = None
        self._hub: Sentri | None = None

    @property
    def subscribers(self) -> int:
        return sum(len(subs) for subs in self._subscriptions.values())

    def attach(self, hub: Sentri) -> bool:
        """Listen to ``hub``'s ingest event (call on the event loop, at start)."""
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()
        registered = hub.plugins.register(_FeedPlugin(self), PLUGIN_NAME)
        if registered:
            self._hub = hub
            hub.changes.sample_listeners.append(self.publish)
        else:
            log.warning("live streams are off: plugin %r could not be registered", PLUGIN_NAME)
        return registered

    def detach(self) -> None:
        if self._hub is not None:
            self._hub.plugins.unregister(PLUGIN_NAME)
            with contextlib.suppress(ValueError):
                self._hub.changes.sample_listeners.remove(self.publish)
            self._hub = None

    @contextlib.contextmanager
    def subscribe(self, machine_id: str) -> Iterator[Subscription]:
        subscription = Subscription(machine_id, self.queue_size)
        with self._subscribed(machine_id, subscription):
            yield subscription

    @contextlib.asynccontextmanager
    async def watch_changes(self, machine_ids: Collection[str]) -> AsyncIterator[Changes]:
        """Which of ``machine_ids`` get new samples (through any process), as one :class:`Changes`.

        Stored samples come through the hub's ingest event and, from other processes
        sharing the storage, through its change notices."""
        changes = Changes()
        with contextlib.ExitStack() as stack:
            for machine_id in machine_ids:
                stack.enter_context(self._subscribed(machine_id, _ChangeTap(machine_id, changes)))
            async with self._across_processes(machine_ids):
                yield changes

    @contextlib.contextmanager
    def _subscribed(self, machine_id: str, subscriber: _Subscriber) -> Iterator[None]:
        if self._closed:
            subscriber.close()
        subscribers = self._subscriptions.setdefault(machine_id, set())
        subscribers.add(subscriber)
        try:
            yield
        finally:
            subscribers.discard(subscriber)
            if not subscribers and self._subscriptions.get(machine_id) is subscribers:
                del self._subscriptions[machine_id]

    @contextlib.asynccontextmanager
    async def watch(self, machine_id: str) -> AsyncIterator[Subscription]:
        """:meth:`subscribe`, and samples stored through other processes too.

        Once entered, every sample of the machine committed afterwards through
        any process sharing the storage is delivered (where the storage can
        tell, see :meth:`ChangeFollower.watch`)."""
        with self.subscribe(machine_id) as subscription:
            async with self._across_processes([machine_id]):
                yield subscription

    @contextlib.asynccontextmanager
    async def _across_processes(self, machine_ids: Collection[str]) -> AsyncIterator[None]:
        hub = self._hub
        watched: list[str] = []
        try:
            if hub is not None:
                for machine_id in machine_ids:
                    await hub.changes.watch(machine_id)
                    watched.append(machine_id)
            yield
        finally:
            if hub is not None:
                with anyio.CancelScope(shield=True):
                    for machine_id in watched:
                        await hub.changes.unwatch(machine_id)

    def publish(self, machine_id: str, samples: Sequence[Sample], missed: int = 0) -> None:
        for subscription in self._subscriptions.get(machine_id, ()):
            subscription.put(samples, missed)

    def close(self) -> None:
        """End every subscription, now and to come. Safe to call from any thread."""
        if self._token is None or threading.get_ident() == self._loop_thread:
            self._close()
            return
        try:
            anyio.from_thread.run_sync(self._close, token=self._token)
        except RuntimeError:  # the loop has already stopped: nothing is listening
            self._close()

    def _close(self) -> None:
        self._closed = True
        for subscribers in self._subscriptions.values():
            for subscription in subscribers:
                subscription.close()


class _FeedPlugin:
    """The hook implementation that feeds a :class:`LiveFeed`."""

    def __init__(self, feed: LiveFeed) -> None:
        self._feed = feed

    @hookimpl
    def lunasentri_samples_ingested(self, machine: Machine, samples: Sequence[Sample]) -> None:
        self._feed.publish(machine.id, samples)
