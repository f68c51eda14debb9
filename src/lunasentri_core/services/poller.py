"""The agentless poller: claims due monitors and polls their hosts with collector plugins.

Each tick the scheduler claims the monitors due by the next tick, as many as
there is room for (:meth:`~lunasentri_core.storage.AgentlessStore.claim_due_monitors`
leases them, so two processes sharing a database never poll one monitor at once),
and starts each poll at its due time. The store is the queue: a monitor not
claimed stays there, so a backlog costs no memory; ``workers`` bounds the polls
under way however slow the hosts are, and as many claimed polls may wait for a
worker or their due time. A hung host holds one worker until its timeout, never
the others or the scheduler.

A poll resolves its target (the device's address, the credential decrypted for
this call), runs the collector with a timeout, retries with exponential backoff
and jitter, then writes the sample through the hub's writer with ``poll.up`` = 1
and ``poll.duration``; when every attempt failed it writes ``poll.up`` = 0 alone,
which an alert rule can watch, without counting as hearing from the host.
Outcomes (``last_error``, the next due time) are recorded in shared transactions.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus

from lunasentri_core.components import Collector
from lunasentri_core.config import AgentlessSettings
from lunasentri_core.errors import LunaSentriError
from lunasentri_core.model import Monitor, PollOutcome, Reading, Sample, Target
from lunasentri_core.remote import RemoteCredential, describe_failure
from lunasentri_core.services.collection import _call_collect
from lunasentri_core.services.scheduling import next_due, retry_delay
from lunasentri_core.storage.agentless import AgentlessStore

log = logging.getLogger(__name__)

R = TypeVar("R")

CLAIM_BATCH_WAIT = 0.02
"""Seconds the scheduler waits after a worker came free (with monitors left due)
before claiming again, so that it claims for several workers in one transaction."""
LATE = timedelta(seconds=1)
"""A poll started later than this after its due time counts as late (``PollerStats``)."""
MAX_ADDRESSES = 100_000
"""Device addresses kept (device id -> address); past this many the cache starts over."""
UP = "poll.up"
DURATION = "poll.duration"


class CredentialSource(Protocol):
    """Where a poll gets its credential: decrypted now, for this one call."""

    async def remote_credential(
        self, profile_id: str, owner_id: str | None = None
    ) -> RemoteCredential: ...


class RunSync(Protocol):
    """Runs a blocking (storage) call in a worker thread: ``Sentri.run_sync``."""

    async def __call__(self, func: Callable[..., R], /, *args: Any) -> R: ...


class Ingest(Protocol):
    """Writes a machine's samples through the shared writer: ``Sentri.ingest``.

    ``heard=False``: the samples do not show the machine answered (its
    ``last_seen`` stays), as for a poll that found its host down.
    """

    def __call__(
        self, machine_id: str, samples: Iterable[Sample], *, heard: bool = True
    ) -> Awaitable[int]: ...


@attrs.define
class PollerStats:
    """What the poller has done since it started (for logs, metrics and benchmarks)."""

    started: int = 0
    """Scheduled polls started (``poll_now`` not counted)."""
    late: int = 0
    """Scheduled polls started more than :data:`LATE` after their due time."""
    max_lateness: float = 0.0
    """Seconds: the latest a scheduled poll started after its due time."""
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    running: int = 0
    """Polls under way now: collecting, writing or recording."""
    collecting: int = 0
    """Polls holding a worker now (at most ``workers``): polling their host, or
    waiting to hand their sample to the write stage."""


@attrs.define
class _Poll:
    """A poll under way; a second request for the same monitor waits for this one."""

    done: anyio.Event = attrs.field(factory=anyio.Event)
    outcome: PollOutcome | None = None


class Poller:
    """Polls due monitors, at most ``settings.workers`` at a time.

    :param store: The agentless state store.
    :param settings: ``[agentless]``.
    :param credentials: Decrypts a monitor's credential profile at use.
    :param collector: The shared instance of a collector plugin, by name.
    :param ingest: Writes a machine's samples (``Sentri.ingest``: the shared writer).
    :param run_sync: Runs a blocking storage call off the event loop.
    :param clock: Source of "now".
    :param release_leases_at_start: Free every monitor's lease when :meth:`run`
        starts: right when this is the only process using the store (after a
        crash each due monitor is then polled once, at once); wrong when others
        share it (their leases expire instead).
    """

    def __init__(
        self,
        store: AgentlessStore,
        *,
        settings: AgentlessSettings,
        credentials: CredentialSource,
        collector: Callable[[str], Collector],
        ingest: Ingest,
        run_sync: RunSync,
        clock: Callable[[], datetime],
        release_leases_at_start: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._credentials = credentials
        self._collector = collector
        self._ingest = ingest
        self._run_sync = run_sync
        self._clock = clock
        self._release_at_start = release_leases_at_start
        self._rng = rng or random.Random()
        self.stats = PollerStats()
        self._slots = anyio.CapacityLimiter(settings.workers)
        # Polls writing their sample and outcome; bounded too, so a stalled store
        # holds the workers (and stops the claims) instead of piling up samples.
        self._writing = anyio.Semaphore(settings.workers)
        # Blocking collectors get threads of their own, so polls never wait for the
        # hub's storage threads (nor these for a poll).
        self._threads = anyio.CapacityLimiter(settings.workers)
        self._polls: dict[str, _Poll] = {}
        self._addresses: dict[str, str] = {}
        self._group: TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        self._wake = anyio.Event()
        self._more_due = False
        self._reserved = 0
        """Workers taken: polls claimed or started and not yet holding their sample."""
        self._finishing = _OutcomeBatcher(store, run_sync)

    # ------------------------------------------------------------ scheduling

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Schedule and poll until cancelled."""
        if self._release_at_start:
            await self._release_leases()
        stopped = self._stopped = anyio.Event()
        try:
            with anyio.CancelScope() as self._scope:
                async with anyio.create_task_group() as group:
                    self._group = group
                    task_status.started()
                    while True:
                        await self.schedule()
                        await self._sleep(self._settings.tick.total_seconds())
        finally:
            self._group = self._scope = None
            stopped.set()

    async def stop(self) -> None:
        """Stop scheduling and cancel the polls under way; returns once they ended.

        Their monitors stay leased: a server alone on its database frees the
        leases when it starts again, others wait for them to expire.
        """
        if self._scope is not None:
            self._scope.cancel()
            await self._stopped.wait()

    async def _release_leases(self) -> None:
        try:
            released = await self._run_sync(self._store.release_monitor_leases)
        except Exception:  # the monitors are polled when their leases expire instead
            log.exception("freeing the monitor leases of a previous run failed")
            return
        if released:
            log.info("freed %d monitor leases left by a previous run", released)

    async def schedule(self) -> int:
        """Claim the monitors due by the next tick that there is room for, and start
        their polls, each at its due time.

        Claiming one tick ahead lets a poll start when it is due rather than at
        the tick after. Room: ``workers`` polls at once, and as many claimed
        polls waiting for a worker or their due time.
        """
        assert self._group is not None, "the poller is not running"
        free = 2 * self._settings.workers - self._reserved
        if free <= 0:
            self._more_due = True
            return 0
        horizon = self._clock() + self._settings.tick
        lease_until = horizon + self._settings.effective_lease
        try:
            claimed = await self._run_sync(
                self._store.claim_due_monitors, horizon, lease_until, free
            )
        except Exception:
            log.exception("claiming due monitors failed")
            return 0
        # No room for all that is due: look again as soon as a worker comes free.
        self._more_due = len(claimed) >= free
        self._reserved += len(claimed)  # before the polls start: the next claim counts them
        for monitor in claimed:
            self._group.start_soon(self._scheduled_poll, monitor)
        return len(claimed)

    async def _sleep(self, seconds: float) -> None:
        woken = False
        with anyio.move_on_after(seconds):
            await self._wake.wait()
            woken = True
        if woken:
            # Woken by a freed worker: let a few more come free, to claim them in one
            # transaction rather than one each.
            await anyio.sleep(min(CLAIM_BATCH_WAIT, seconds))
        self._wake = anyio.Event()

    async def _scheduled_poll(self, monitor: Monitor) -> None:
        poll = _Poll()
        # Under way from now: a "poll now" meanwhile waits for this poll.
        self._polls.setdefault(monitor.id, poll)
        try:
            # The address and the credential are read while the poll waits for its
            # due time (local work: it needs no worker, and then delays no start).
            target = await self._resolve(monitor)
            wait = (monitor.due_at - self._clock()).total_seconds()
            if wait > 0:
                await anyio.sleep(wait)
        except BaseException:
            self._done(monitor.id, poll)
            self._worker_freed()
            raise
        await self._poll_once(monitor, manual=False, poll=poll, reserved=True, target=target)

    async def _resolve(self, monitor: Monitor) -> Target | Exception:
        try:
            return await self._target(monitor)
        except Exception as error:  # the poll fails with it, as if the host had
            return error

    # ------------------------------------------------------------ polling

    async def poll_now(self, monitor_id: str, owner_id: str | None = None) -> PollOutcome:
        """Poll a monitor now, whether due or not, and return how the poll ended.

        Disabled monitors too (a test of the monitor). If a poll of it is under
        way in this process, waits for that one instead of polling twice. Its
        schedule stays: the next poll comes at its due time. ``NotFoundError``
        if the monitor is not the owner's.
        """
        monitor = await self._run_sync(self._store.get_monitor, monitor_id, owner_id)
        under_way = self._polls.get(monitor.id)
        if under_way is not None:
            return await _outcome_of(under_way, monitor.id)
        if self._group is None:  # not running: poll in the caller's task
            return await self._poll_once(monitor, manual=True)
        # In the poller's task group, so a caller that stops waiting (a closed
        # request) does not stop the poll half-way.
        poll = self._polls[monitor.id] = _Poll()
        self._group.start_soon(self._manual_poll, monitor, poll)
        return await _outcome_of(poll, monitor.id)

    async def _manual_poll(self, monitor: Monitor, poll: _Poll) -> None:
        try:
            await self._poll_once(monitor, manual=True, poll=poll)
        finally:
            self._done(monitor.id, poll)  # also when stopped before it began

    def _done(self, monitor_id: str, poll: _Poll) -> None:
        if self._polls.get(monitor_id) is poll:
            del self._polls[monitor_id]
        poll.done.set()

    async def _poll_once(
        self,
        monitor: Monitor,
        *,
        manual: bool,
        poll: _Poll | None = None,
        reserved: bool = False,
        target: Target | Exception | None = None,
    ) -> PollOutcome:
        """Poll ``monitor`` (once, with its retries), write the sample, record the outcome.

        A poll holds one of the ``workers`` from its claim (``reserved``: the
        scheduler counted it then) until its sample is in hand, then hands it to
        the write stage (bounded too): waiting for a commit must not keep hosts
        from being polled.
        """
        if not reserved:
            self._reserved += 1
        reservation = _Reservation(self)
        try:
            under_way = self._polls.get(monitor.id)
            if under_way is not None and under_way is not poll:
                # Claimed while a "poll now" of it runs: that poll's outcome frees the lease.
                return await _outcome_of(under_way, monitor.id)
            poll = self._polls[monitor.id] = poll or _Poll()
            self.stats.running += 1
            try:
                async with self._slots:
                    self.stats.collecting += 1
                    try:
                        if not manual:
                            self._count_start(monitor)
                        sample, error = await self._sample(monitor, target)
                        await self._writing.acquire()
                    finally:
                        self.stats.collecting -= 1
                reservation.release()
                try:
                    await self._write(monitor, sample, heard=error is None)
                    outcome = self._outcome(monitor, error, manual)
                    await self._finishing.record(outcome)
                finally:
                    self._writing.release()
                poll.outcome = outcome
                return outcome
            finally:
                self.stats.running -= 1
                self._done(monitor.id, poll)
        finally:
            reservation.release()

    def _worker_freed(self) -> None:
        self._reserved -= 1
        if self._more_due:
            self._more_due = False
            self._wake.set()

    def _count_start(self, monitor: Monitor) -> None:
        lateness = (self._clock() - monitor.due_at).total_seconds()
        self.stats.started += 1
        self.stats.max_lateness = max(self.stats.max_lateness, lateness)
        if lateness > LATE.total_seconds():
            self.stats.late += 1

    def _outcome(self, monitor: Monitor, error: str | None, manual: bool) -> PollOutcome:
        now = self._clock()
        if manual and monitor.due_at > now:
            due = monitor.due_at  # a poll on request keeps the schedule
        else:
            due = next_due(monitor.due_at, monitor.interval, now, self._rng)
        return PollOutcome(monitor_id=monitor.id, at=now, due_at=due, error=error)

    async def _sample(
        self, monitor: Monitor, target: Target | Exception | None
    ) -> tuple[Sample, str | None]:
        """The poll's sample, and ``None`` on success or else what went wrong."""
        try:
            sample = await self._collect(monitor, target)
        except Exception as failure:
            error = describe_failure(failure)
            self.stats.failed += 1
            log.info("poll of monitor %s failed: %s", monitor.id, error)
            return Sample(self._clock(), [Reading(UP, 0.0)]), error
        self.stats.succeeded += 1
        return sample, None

    async def _collect(self, monitor: Monitor, target: Target | Exception | None) -> Sample:
        if isinstance(target, Exception):
            raise target
        if target is None:
            target = await self._target(monitor)
        collector = self._collector(monitor.collector)
        timeout = self._settings.poll_timeout.total_seconds()
        retry = 0
        while True:
            started = self._clock()
            began = anyio.current_time()
            try:
                with anyio.fail_after(timeout):
                    readings = await _call_collect(collector, target, self._threads)
                duration = anyio.current_time() - began
                extra = [Reading(UP, 1.0), Reading(DURATION, duration)]
                return Sample(started, [*readings, *extra])
            except Exception as failure:
                if retry >= self._settings.retries:
                    raise
                retry += 1
                self.stats.retries += 1
                log.debug("poll of monitor %s failed, retrying: %s", monitor.id, failure)
            delay = retry_delay(retry, self._settings.retry_backoff, self._rng)
            await anyio.sleep(delay.total_seconds())

    async def _target(self, monitor: Monitor) -> Target:
        address = await self._address(monitor)
        credential = await self._credentials.remote_credential(
            monitor.credential_profile_id, monitor.owner_id
        )
        return Target(
            machine_id=monitor.machine_id,
            host=address,
            options=monitor.options,
            credential=credential,
        )

    async def _address(self, monitor: Monitor) -> str:
        # A device's address is what identifies it (devices are upserted by address,
        # never re-addressed), so it can be kept: one read fewer per poll.
        address = self._addresses.get(monitor.device_id)
        if address is None:
            device = await self._run_sync(
                self._store.get_device, monitor.device_id, monitor.owner_id
            )
            if len(self._addresses) >= MAX_ADDRESSES:
                self._addresses.clear()
            address = self._addresses[device.id] = device.address
        return address

    async def _write(self, monitor: Monitor, sample: Sample, *, heard: bool) -> None:
        try:
            await self._ingest(monitor.machine_id, [sample], heard=heard)
        except LunaSentriError as error:
            # E.g. the monitor (and its machine) was deleted while it was polled.
            log.info("sample of monitor %s not stored: %s", monitor.id, error)
        except Exception:
            log.exception("sample of monitor %s not stored", monitor.id)


class _Reservation:
    """One of the poller's workers, given back once (by whichever path ends first)."""

    def __init__(self, poller: Poller) -> None:
        self._poller: Poller | None = poller

    def release(self) -> None:
        if self._poller is not None:
            self._poller._worker_freed()
            self._poller = None


class PollError(LunaSentriError):
    """A requested poll did not finish (the poller stopped)."""


async def _outcome_of(poll: _Poll, monitor_id: str) -> PollOutcome:
    await poll.done.wait()
    if poll.outcome is None:
        raise PollError(f"the poll of monitor {monitor_id} was stopped")
    return poll.outcome


class _OutcomeBatcher:
    """Records poll outcomes in shared transactions.

    The first caller while none is recording records everything queued, then
    what queued meanwhile, and so on; the others wait for their batch. At 10,000
    monitors a minute that is a few transactions a second, not 170.
    """

    def __init__(self, store: AgentlessStore, run_sync: RunSync) -> None:
        self._store = store
        self._run_sync = run_sync
        self._queued: list[PollOutcome] = []
        self._recorded = anyio.Event()
        self._recording = False

    async def record(self, outcome: PollOutcome) -> None:
        self._queued.append(outcome)
        if self._recording:
            await self._recorded.wait()
            return
        self._recording = True
        try:
            # Shielded: a cancelled caller must not leave the others' outcomes unrecorded.
            with anyio.CancelScope(shield=True):
                while self._queued:
                    batch, self._queued = self._queued, []
                    recorded, self._recorded = self._recorded, anyio.Event()
                    try:
                        await self._run_sync(self._store.finish_polls, batch)
                    except Exception:
                        log.exception("recording %d poll outcomes failed", len(batch))
                    recorded.set()
        finally:
            self._recording = False
