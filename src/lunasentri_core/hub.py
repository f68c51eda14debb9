"""``Sentri``: the hub an application embeds.

It composes the plugin manager, the storage backend and the services. Use it as
an async context manager inside an anyio (or asyncio) application::

    async with Sentri(data_dir="./data") as hub:
        machine = await hub.local_machine()
        async with anyio.create_task_group() as tg:
            hub.start_collecting(tg, machine)
            ...
            print(await hub.latest(machine.id))

Every storage call runs in a worker thread behind a capacity limiter, so the hub
never blocks the event loop.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ParamSpec, Self, TypeVar
from urllib.parse import urlsplit

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus

from lunasentri_core.components import (
    Authenticator,
    Collector,
    Credentials,
    Notifier,
    Principal,
)
from lunasentri_core.config import Settings
from lunasentri_core.model import (
    Aggregation,
    HistoryQuery,
    Machine,
    MachineKind,
    MachineSamples,
    Sample,
    SeriesHistory,
    SeriesKey,
    SeriesValue,
    StatusChange,
    Target,
    new_id,
    to_labels,
    utcnow,
)
from lunasentri_core.plugins import ComponentKind, PluginManager, create_plugin_manager
from lunasentri_core.services.alerts import AlertEvaluator
from lunasentri_core.services.changes import ChangeFollower
from lunasentri_core.services.collection import CollectionResult, collect
from lunasentri_core.services.credentials import CredentialVault
from lunasentri_core.services.discovery import fail_stale_runs_forever
from lunasentri_core.services.dispatch import Dispatcher
from lunasentri_core.services.heartbeat import Heartbeat
from lunasentri_core.services.jobs import JOB_MAINTENANCE
from lunasentri_core.services.poller import Poller
from lunasentri_core.services.writer import BatchWriter
from lunasentri_core.storage.protocols import (
    MaintenanceReport,
    PurgeReport,
    StorageBackend,
    hold_singleton,
    release_singleton,
    storage_mode,
)

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class Sentri:
    """The LunaSentri hub.

    :param settings: Full settings; by default :meth:`Settings.load` (file + environment).
    :param plugin_manager: Use this manager instead of loading entry points.
    :param plugins: Extra plugin objects by name, registered next to the entry points.
    :param storage: An already open backend (the hub will not close it).
    :param clock: Source of "now" (tests pass a controllable clock).
    :param overrides: Top-level settings to override (``data_dir=...``, ``storage={...}``).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        plugin_manager: PluginManager | None = None,
        plugins: Mapping[str, object] | None = None,
        storage: StorageBackend | None = None,
        clock: Callable[[], datetime] = utcnow,
        **overrides: Any,
    ) -> None:
        if settings is None:
            settings = Settings.load(**overrides)
        elif overrides:
            raise TypeError("pass either settings or keyword overrides, not both")
        self.settings = settings
        self.clock = clock
        self.plugins = plugin_manager or create_plugin_manager(settings, plugins=plugins)
        self._storage = storage
        self._collectors: dict[str, Collector] = {}
        self._notifiers: dict[str, Notifier] = {}
        self._authenticators: list[Authenticator] | None = None
        self._machines: dict[str, Machine] = {}
        self._reads = anyio.CapacityLimiter(8)
        self._collect_limiter = anyio.CapacityLimiter(8)
        self._writer: BatchWriter | None = None
        self._poller: Poller | None = None
        self._background: TaskGroup | None = None
        self._jobs: set[str] = set()
        """Once-only jobs this hub holds (see :meth:`singleton`)."""
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self.heartbeat = Heartbeat(
            self,
            interval=settings.heartbeat_interval,
            threshold=settings.offline_threshold,
            restart_grace=settings.restart_grace,
        )
        self.alerts = AlertEvaluator(self)
        self.dispatcher = Dispatcher(self, settings.notifications)
        self.changes = ChangeFollower(self, interval=settings.sync_interval)
        self.credentials = CredentialVault(self, ttl=settings.secrets.cache_ttl)
        self.heartbeat.listeners.append(self._statuses_changed)

    # ------------------------------------------------------------ lifecycle

    @property
    def storage(self) -> StorageBackend:
        if self._storage is None:
            raise RuntimeError("the hub is not open: use 'async with Sentri(...)'")
        return self._storage

    @property
    def writer(self) -> BatchWriter:
        if self._writer is None:
            raise RuntimeError("the hub is not open: use 'async with Sentri(...)'")
        return self._writer

    async def __aenter__(self) -> Self:
        self.plugins.check_settings_tables(strict=self.settings.strict_plugins)
        async with contextlib.AsyncExitStack() as stack:
            if self._storage is None:
                self._storage = await anyio.to_thread.run_sync(self._open_storage)
                stack.push_async_callback(self._close_storage)
            # Runs once the services below have stopped: none takes a job again.
            stack.push_async_callback(self._release_jobs)
            writer = BatchWriter(
                self._storage,
                clock=self.clock,
                on_committed=self._committed,
                max_series=self.settings.storage.max_series_per_machine,
            )
            services = await stack.enter_async_context(anyio.create_task_group())
            # Runs before the task group exits: flush pending writes, then stop the rest.
            stack.push_async_callback(self._stop_services, writer, services)
            await services.start(writer.run)
            services.start_soon(self._maintain_forever)
            services.start_soon(self.heartbeat.run)
            services.start_soon(self.alerts.run)
            services.start_soon(self.dispatcher.run)
            services.start_soon(self.changes.run)
            self._writer = writer
            self._start_poller(services)
            await self._start_background(stack)
            await self.plugins.startup(self)
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._exit_stack = self._exit_stack, None
        if stack is None:
            return
        try:
            await self.plugins.shutdown(self)
        finally:
            await stack.aclose()

    @property
    def background(self) -> TaskGroup:
        """Where work that outlives the request starting it runs (discovery runs).

        Cancelled first when the hub closes, while storage is still open, so such
        work can record that it was stopped.
        """
        if self._background is None:
            raise RuntimeError("the hub is not open: use 'async with Sentri(...)'")
        return self._background

    async def _start_background(self, stack: contextlib.AsyncExitStack) -> None:
        background = await stack.enter_async_context(anyio.create_task_group())

        def stop() -> None:
            self._background = None
            background.cancel_scope.cancel()

        stack.callback(stop)  # exits before the task group does: cancel, then wait
        self._background = background
        background.start_soon(fail_stale_runs_forever, self)

    async def _stop_services(self, writer: BatchWriter, services: TaskGroup) -> None:
        if self._poller is not None:  # first: its polls write through the writer
            await self._poller.stop()
        self._writer = None
        self._poller = None
        await writer.aclose()
        services.cancel_scope.cancel()

    async def _close_storage(self) -> None:
        storage, self._storage = self._storage, None
        if storage is not None:
            await anyio.to_thread.run_sync(storage.close)

    # ------------------------------------------------------------ agentless polling

    @property
    def poller(self) -> Poller:
        """The agentless poller (``poller.poll_now(monitor_id)``); it schedules polls
        only with ``[agentless] enabled``."""
        if self._poller is None:
            raise RuntimeError("the hub is not open: use 'async with Sentri(...)'")
        return self._poller

    def _start_poller(self, services: TaskGroup) -> None:
        self._poller = Poller(
            self.storage.state,
            settings=self.settings.agentless,
            credentials=self.credentials,
            collector=self.collector,
            ingest=self.ingest,
            run_sync=self.run_sync,
            clock=self.clock,
            release_leases_at_start=self._sole_user_of_storage(),
        )
        if self.settings.agentless.enabled:
            services.start_soon(self._poller.run)

    def _sole_user_of_storage(self) -> bool:
        """Whether no other process may use the store: a SQLite database not shared
        (``[server] shared_database``; ``lunasentri serve`` holds a lock on it)."""
        scheme = urlsplit(self.settings.storage_url).scheme
        return scheme.split("+")[0] == "sqlite" and not self.settings.server.shared_database

    def _open_storage(self) -> StorageBackend:
        return open_storage(self.settings, self.plugins)

    async def run_sync(self, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a blocking call (storage, a driver) in a worker thread behind the hub's limiter."""
        return await anyio.to_thread.run_sync(lambda: func(*args, **kwargs), limiter=self._reads)

    # ------------------------------------------------------------ machines

    async def add_machine(
        self,
        name: str,
        *,
        hostname: str | None = None,
        kind: MachineKind = MachineKind.AGENT,
        labels: Mapping[str, str] | None = None,
        owner_id: str | None = None,
    ) -> Machine:
        machine = Machine(
            id=new_id(),
            name=name,
            owner_id=owner_id,
            hostname=hostname,
            kind=kind,
            labels=to_labels(labels),
            created_at=self.clock(),
        )
        stored = await self.run_sync(self.storage.state.add_machine, machine)
        self._machines[stored.id] = stored
        return stored

    async def get_machine(self, machine_id: str, owner_id: str | None = None) -> Machine:
        machine = await self.run_sync(self.storage.state.get_machine, machine_id, owner_id)
        if self._machines.get(machine.id) != machine:
            self._machines[machine.id] = machine
            self.alerts.machine_changed()
        return machine

    async def reload_machines(self) -> None:
        """Read the hub's copies of machines afresh (another process changed some)."""
        stored = {m.id: m for m in await self.list_machines()}
        for machine_id in list(self._machines):
            if machine_id in stored:
                self._machines[machine_id] = stored[machine_id]
            else:
                self._machines.pop(machine_id, None)
        self.alerts.machine_changed()

    async def list_machines(self, owner_id: str | None = None) -> list[Machine]:
        return await self.run_sync(self.storage.state.list_machines, owner_id)

    async def remove_machine(self, machine_id: str) -> None:
        """Delete a machine and every series it had; one that agentless monitors
        write to is refused with :class:`~lunasentri_core.InUseError`."""

        def remove() -> None:
            self.storage.state.get_machine(machine_id)
            # The record first: a machine monitors write to is refused (InUseError)
            # before any of its series goes.
            self.storage.state.delete_machine(machine_id)
            self.storage.metrics.delete_machine(machine_id)

        await self.run_sync(remove)
        self._machines.pop(machine_id, None)

    def forget_machine(self, machine_id: str) -> None:
        """Drop the hub's copy of a machine (deleted, or changed, elsewhere); the
        next use reads it from storage again."""
        if self._machines.pop(machine_id, None) is not None:
            self.alerts.machine_changed()

    async def local_machine(self, name: str | None = None) -> Machine:
        """The machine record of the host this hub runs on, created on first use."""
        hostname = socket.gethostname()
        name = name or hostname
        existing = await self.run_sync(self.storage.state.find_machine, name, None)
        if existing is not None:
            self._machines[existing.id] = existing
            return existing
        return await self.add_machine(name, hostname=hostname, kind=MachineKind.LOCAL)

    # ------------------------------------------------------------ ingest

    async def ingest(
        self, machine_id: str, samples: Iterable[Sample], *, heard: bool = True
    ) -> int:
        """Store samples of a machine; returns the number of points once committed.

        Concurrent calls are coalesced into shared transactions. Idempotent: the
        same samples ingested twice are stored once. A batch that would give the
        machine more than ``storage.max_series_per_machine`` series raises
        :class:`~lunasentri_core.SeriesLimitError` and stores nothing. With
        ``heard=False`` the samples do not count as hearing from the machine
        (its ``last_seen`` stays, so the heartbeat may still find it offline).
        """
        batch = MachineSamples(machine_id, samples, heard)
        await self.cached_machine(machine_id)
        return await self.writer.write(batch)

    async def cached_machine(self, machine_id: str) -> Machine:
        """The hub's copy of a machine (read from storage the first time)."""
        machine = self._machines.get(machine_id)
        return machine if machine is not None else await self.get_machine(machine_id)

    async def _committed(self, batches: Sequence[MachineSamples]) -> None:
        self.heartbeat.seen(b.machine_id for b in batches if b.samples and b.heard)
        await self.alerts.submit(batches)
        if not self.plugins.has_samples_ingested_hooks:
            return
        for batch in batches:
            machine = self._machines.get(batch.machine_id)
            if machine is not None:
                await self.plugins.samples_ingested(self, machine, batch.samples)

    def _statuses_changed(self, changes: Sequence[StatusChange]) -> None:
        for change in changes:
            machine = self._machines.get(change.machine_id)
            if machine is not None:
                self._machines[change.machine_id] = attrs.evolve(machine, status=change.status)
        self.dispatcher.wake()

    # ------------------------------------------------------------ collection

    def collector(self, name: str) -> Collector:
        """The (shared) instance of collector plugin ``name``."""
        if name not in self._collectors:
            component = self.plugins.component(ComponentKind.COLLECTOR, name)
            self._collectors[name] = component.create()
        return self._collectors[name]

    async def collect_once(
        self, machine: Machine, collectors: Sequence[str] | None = None
    ) -> CollectionResult:
        """Run collectors against ``machine`` and return the sample, without storing it."""
        names = collectors if collectors is not None else self.settings.collect.collectors
        instances = {name: self.collector(name) for name in names}
        host = None if machine.kind is MachineKind.LOCAL else machine.hostname
        target = Target(machine.id, host, machine.labels)
        return await collect(
            instances,
            target,
            timeout=self.settings.collect.timeout,
            clock=self.clock,
            limiter=self._collect_limiter,
        )

    async def collect_and_ingest(
        self, machine: Machine, collectors: Sequence[str] | None = None
    ) -> CollectionResult:
        result = await self.collect_once(machine, collectors)
        await self.ingest(machine.id, [result.sample])
        return result

    async def run_collecting(
        self,
        machine: Machine,
        *,
        interval: timedelta | None = None,
        collectors: Sequence[str] | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Collect and ingest ``machine`` every ``interval`` until cancelled.

        Ticks keep to the schedule (a slow collection does not shift later ones);
        a failed collection is logged and the loop goes on.
        """
        period = (interval or self.settings.collect.interval).total_seconds()
        task_status.started()
        next_tick = anyio.current_time()
        while True:
            try:
                await self.collect_and_ingest(machine, collectors)
            except Exception:
                log.exception("collection of machine %s failed", machine.name)
            next_tick += period
            now = anyio.current_time()
            if next_tick < now:  # fell behind: skip missed ticks rather than burst
                next_tick = now + period - ((now - next_tick) % period)
            await anyio.sleep(next_tick - now)

    def start_collecting(
        self,
        task_group: TaskGroup,
        machine: Machine,
        *,
        interval: timedelta | None = None,
        collectors: Sequence[str] | None = None,
    ) -> None:
        """Run :meth:`run_collecting` in the caller's task group."""
        task_group.start_soon(
            lambda: self.run_collecting(machine, interval=interval, collectors=collectors)
        )

    def notifier(self, name: str) -> Notifier:
        """The (shared) instance of notifier plugin ``name``."""
        if name not in self._notifiers:
            component = self.plugins.component(ComponentKind.NOTIFIER, name)
            self._notifiers[name] = component.create()
        return self._notifiers[name]

    # ------------------------------------------------------------ queries

    async def latest(self, machine_id: str, metric: str | None = None) -> list[SeriesValue]:
        """The newest value of every series of a machine (optionally of one metric)."""
        return await self.run_sync(self.storage.metrics.latest, [machine_id], metric)

    async def history(
        self,
        machine_id: str,
        metric: str,
        *,
        start: datetime,
        end: datetime | None = None,
        step: timedelta,
        aggregation: Aggregation | str = Aggregation.AVG,
        labels: Mapping[str, str] | None = None,
    ) -> list[SeriesHistory]:
        """A metric's series over ``[start, end)``, downsampled to ``step``."""
        query = HistoryQuery(
            machine_id=machine_id,
            metric=metric,
            start=start,
            end=end or self.clock(),
            step=step,
            aggregation=Aggregation(aggregation),
            labels=labels,
        )
        return await self.run_sync(self.storage.metrics.history, query)

    async def series(self, machine_id: str) -> list[SeriesKey]:
        return await self.run_sync(self.storage.metrics.list_series, machine_id)

    # ------------------------------------------------------------ authentication

    def authenticators(self) -> list[Authenticator]:
        """The authenticator plugins' instances, in name order."""
        if self._authenticators is None:
            components = self.plugins.components(ComponentKind.AUTHENTICATOR)
            self._authenticators = [components[name].create() for name in sorted(components)]
        return self._authenticators

    async def authenticate(self, credentials: Credentials) -> Principal | None:
        """Ask each authenticator in turn; the first principal returned wins.

        Its ``via`` is set to that authenticator's name, whatever the plugin put there.
        """
        state = self.storage.state
        for authenticator in self.authenticators():
            result: Any
            if inspect.iscoroutinefunction(authenticator.authenticate):
                result = await authenticator.authenticate(credentials, state)
            else:
                result = await self.run_sync(authenticator.authenticate, credentials, state)
            if isinstance(result, Principal):
                # The audit log records ``via``: it must name who accepted the caller.
                principal: Principal = result
                if principal.via != authenticator.name:
                    principal = attrs.evolve(principal, via=authenticator.name)
                return principal
        return None

    # ------------------------------------------------------------ maintenance

    async def maintain(self) -> MaintenanceReport:
        """Compact, roll up and expire stored points now."""
        return await self.run_sync(self.storage.metrics.maintain, self.clock())

    async def purge(self) -> PurgeReport:
        """Delete server state past its retention (``[storage.purge]``) now."""
        policy = self.settings.storage.purge.policy(self.settings.server.login_lockout)
        report = await self.run_sync(self.storage.state.purge, self.clock(), policy)
        if report.total:
            log.info("purged old server state: %s", report)
        return report

    async def singleton(self, name: str) -> bool:
        """Whether this process runs the once-only periodic job ``name`` now.

        Processes sharing one database run such a job (heartbeat sweep,
        maintenance, ...) one at a time: the holder keeps it from pass to pass,
        another process takes it over at its next pass once the holder is gone
        (:func:`~lunasentri_core.storage.hold_singleton`).
        """
        held = await self.run_sync(hold_singleton, self.storage, name)
        if held:
            self._jobs.add(name)
        return held

    async def _release_jobs(self) -> None:
        """Hand every once-only job over (the storage may stay open after the hub)."""
        storage, jobs = self._storage, sorted(self._jobs)
        self._jobs.clear()
        if storage is None:
            return
        for name in jobs:
            try:
                await anyio.to_thread.run_sync(release_singleton, storage, name)
            except Exception:
                log.warning("could not hand the %r job over; it goes when the storage closes", name)

    async def _maintain_forever(self) -> None:
        period = self.settings.storage.maintenance_interval.total_seconds()
        purge = self.settings.storage.purge
        purged_at: float | None = None
        while True:
            await anyio.sleep(period)
            try:
                held = await self.singleton(JOB_MAINTENANCE)
            except Exception:
                log.exception("storage maintenance failed")
                continue
            if not held:
                continue  # another process maintains the shared database, and purges it
            try:
                await self.maintain()
            except Exception:
                log.exception("storage maintenance failed")
            since = None if purged_at is None else anyio.current_time() - purged_at
            if purge.enabled and (since is None or since >= purge.interval.total_seconds()):
                purged_at = anyio.current_time()
                try:
                    await self.purge()
                except Exception:
                    log.exception("purging old server state failed")


def open_storage(settings: Settings, plugins: PluginManager) -> StorageBackend:
    """Open and migrate the storage backend that ``settings.storage_url`` names."""
    url = settings.storage_url
    component = plugins.storage_for_scheme(urlsplit(url).scheme or "sqlite")
    if settings.storage.url is None:
        # Only the default location is ours to create; an explicit path whose
        # directory is missing is a mistake the storage plugin reports.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    backend: StorageBackend = component.cls.open(
        url, settings=component.settings, retention=settings.storage.retention
    )
    try:
        backend.migrate()
    except BaseException:
        backend.close()
        raise
    mode = storage_mode(backend)
    log.info(
        "storage %s opened%s: %s",
        backend.name,
        f" in {mode} mode" if mode else "",
        _redact_url(url),
    )
    return backend


def _redact_url(url: str) -> str:
    """``url`` without its password, for the logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()
