"""Discovery: profiles of where to look for Windows hosts, and their runs.

A run scans exactly the profile's targets and ports (:mod:`.scan`); every host
with a port open becomes a device of the profile's owner, upserted by address
so that a re-run never duplicates one. A host with WS-Management open (5985 or
5986) is identified with the profile's credential through its ``collector``
plugin when that plugin implements :class:`~lunasentri_core.remote.Identifier`:
the device then records the host's name and OS, and whether the credential
works (and if not, why).

``start`` answers at once; the run goes on in the hub's background task group,
recording its progress (scanned/total, found, errors) in the store at most
every :data:`PROGRESS_EVERY` and at least every :data:`TOUCH_EVERY`, so any
server process sharing the store shows it. A run whose process stops is failed:
by that process when it shuts down, or by any other one once its progress is
:data:`STALE_AFTER` old (:func:`fail_stale_runs_forever`).
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from lunasentri_core.components import Principal
from lunasentri_core.errors import FieldError, NotFoundError, PluginError, ValidationError
from lunasentri_core.model import (
    DEFAULT_DISCOVERY_PORTS,
    Device,
    DiscoveryProfile,
    DiscoveryRun,
    RunState,
    new_id,
)
from lunasentri_core.remote import (
    HTTP_PORT,
    HTTPS_PORT,
    HostIdentity,
    Identifier,
    RemoteCredential,
    describe_failure,
)
from lunasentri_core.samples import Target
from lunasentri_core.services import audit, scan
from lunasentri_core.services.jobs import JOB_DISCOVERY_STALE
from lunasentri_core.services.machines import check_name, owner_scope
from lunasentri_core.storage.protocols import StateStore

if TYPE_CHECKING:
    from lunasentri_core.hub import Sentri

log = logging.getLogger(__name__)

WSMAN_PORTS = frozenset({HTTP_PORT, HTTPS_PORT})
MAX_PORTS = 32
MAX_CONCURRENCY = 4096
MIN_TIMEOUT = timedelta(milliseconds=50)
MAX_TIMEOUT = timedelta(seconds=60)
MAX_RUNS = 200
"""Runs listed at most per request."""
IDENTIFY_TIMEOUT = 30.0
"""Seconds one identification (log in, ask the name and OS) may take."""
IDENTIFY_CONCURRENCY = 16
"""Identifications at once per run: each is a WS-Management session, not a SYN."""
PROGRESS_EVERY = 0.5
"""Seconds between two records of a run's progress, at most."""
TOUCH_EVERY = 10.0
"""Seconds between two records of a run's progress, at least (its heartbeat)."""
STALE_AFTER = timedelta(seconds=60)
"""A running run whose progress is older than this has lost its process."""
STALE_CHECK = 30.0
"""Seconds between two looks for stale runs."""
STOPPED = "the server stopped during the run"
LOST = "the server process running it stopped"
_COLLECTOR_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_UNCHANGED: Any = object()


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError([FieldError(field, message)], what="request body")


def check_ports(ports: Sequence[int]) -> tuple[int, ...]:
    if not ports or len(ports) > MAX_PORTS:
        raise _invalid("ports", f"give 1 to {MAX_PORTS} ports")
    for index, port in enumerate(ports):
        if not 1 <= port <= 65535:
            raise _invalid(f"ports[{index}]", "must be 1 to 65535")
    if len(set(ports)) != len(ports):
        raise _invalid("ports", "must not repeat a port")
    return tuple(ports)


def check_concurrency(concurrency: int) -> int:
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise _invalid("concurrency", f"must be 1 to {MAX_CONCURRENCY}")
    return concurrency


def check_timeout(timeout: timedelta) -> timedelta:
    if not MIN_TIMEOUT <= timeout <= MAX_TIMEOUT:
        raise _invalid(
            "timeout",
            f"must be {MIN_TIMEOUT.total_seconds():g} to {MAX_TIMEOUT.total_seconds():g} s",
        )
    return timeout


def check_collector(name: str) -> str:
    if not _COLLECTOR_NAME.match(name):
        raise _invalid("collector", "must be a collector plugin's name, such as wmi")
    return name


class Discovery:
    """Discovery profiles and runs, scoped by the acting principal."""

    def __init__(self, hub: Sentri) -> None:
        self.hub = hub

    @property
    def _state(self) -> StateStore:
        return self.hub.storage.state

    # ------------------------------------------------------------ profiles

    async def create(
        self,
        actor: Principal,
        *,
        name: str,
        targets: Sequence[str],
        credential_profile_id: str | None = None,
        ports: Sequence[int] = DEFAULT_DISCOVERY_PORTS,
        concurrency: int = 256,
        timeout: timedelta = timedelta(seconds=1),
        collector: str = "wmi",
        client: str | None = None,
    ) -> DiscoveryProfile:
        """Add a profile owned by ``actor``; every field is checked first."""
        profile = DiscoveryProfile(
            id=new_id(),
            owner_id=actor.id,
            name=check_name(name),
            targets=scan.check_targets(targets),
            credential_profile_id=credential_profile_id,
            ports=check_ports(ports),
            concurrency=check_concurrency(concurrency),
            timeout=check_timeout(timeout),
            collector=check_collector(collector),
            created_at=self.hub.clock(),
        )
        stored = await self._store(self._state.add_discovery_profile, profile)
        await self._audit("discovery_profile.create", actor, stored, client)
        return stored

    async def all(self, actor: Principal) -> list[DiscoveryProfile]:
        """The actor's profiles (an admin: all)."""
        return await self.hub.run_sync(self._state.list_discovery_profiles, owner_scope(actor))

    async def get(self, actor: Principal, profile_id: str) -> DiscoveryProfile:
        return await self.hub.run_sync(
            self._state.get_discovery_profile, profile_id, owner_scope(actor)
        )

    async def update(
        self,
        actor: Principal,
        profile_id: str,
        *,
        name: str = _UNCHANGED,
        targets: Sequence[str] = _UNCHANGED,
        credential_profile_id: str | None = _UNCHANGED,
        ports: Sequence[int] = _UNCHANGED,
        concurrency: int = _UNCHANGED,
        timeout: timedelta = _UNCHANGED,
        collector: str = _UNCHANGED,
        client: str | None = None,
    ) -> DiscoveryProfile:
        """Change the given fields; the others stay."""
        changes: dict[str, Any] = {}
        if name is not _UNCHANGED:
            changes["name"] = check_name(name)
        if targets is not _UNCHANGED:
            changes["targets"] = scan.check_targets(targets)
        if credential_profile_id is not _UNCHANGED:
            changes["credential_profile_id"] = credential_profile_id
        if ports is not _UNCHANGED:
            changes["ports"] = check_ports(ports)
        if concurrency is not _UNCHANGED:
            changes["concurrency"] = check_concurrency(concurrency)
        if timeout is not _UNCHANGED:
            changes["timeout"] = check_timeout(timeout)
        if collector is not _UNCHANGED:
            changes["collector"] = check_collector(collector)
        current = await self.get(actor, profile_id)
        stored = await self._store(
            self._state.update_discovery_profile, attrs.evolve(current, **changes)
        )
        await self._audit("discovery_profile.update", actor, stored, client)
        return stored

    async def delete(self, actor: Principal, profile_id: str, *, client: str | None = None) -> None:
        """Delete a profile and its runs; the devices it found stay."""
        profile = await self.get(actor, profile_id)
        await self.hub.run_sync(
            self._state.delete_discovery_profile, profile.id, owner_scope(actor)
        )
        await self._audit("discovery_profile.delete", actor, profile, client)

    async def _store(self, write: Any, profile: DiscoveryProfile) -> DiscoveryProfile:
        try:
            stored: DiscoveryProfile = await self.hub.run_sync(write, profile)
        except NotFoundError as error:
            if profile.credential_profile_id is not None and "credential" in str(error).lower():
                raise _invalid(
                    "credential_profile_id",
                    f"no credential profile with id {profile.credential_profile_id!r}",
                ) from None
            raise
        return stored

    async def _audit(
        self, action: str, actor: Principal, profile: DiscoveryProfile, client: str | None
    ) -> None:
        await audit.record(
            self.hub,
            action=action,
            actor=actor,
            target_type="discovery_profile",
            target_id=profile.id,
            client=client,
            detail={
                "owner_id": profile.owner_id,
                "name": profile.name,
                "targets": list(profile.targets),
                "ports": list(profile.ports),
                "credential_profile_id": profile.credential_profile_id,
            },
        )

    # ------------------------------------------------------------ runs

    async def start(
        self,
        actor: Principal,
        profile_id: str,
        *,
        confirm_large: bool = False,
        client: str | None = None,
    ) -> DiscoveryRun:
        """Start a run of a profile and return it at once (``running``).

        More than a /20 of hosts needs ``confirm_large``; a profile runs once at
        a time (``ConflictError``); a profile with a credential needs an
        installed collector that can identify hosts.
        """
        profile = await self.get(actor, profile_id)
        scan.check_size(scan.count_hosts(profile.targets), confirm_large)
        identifier = self._identifier(profile)
        background = self.hub.background  # before the run is recorded: the hub must be open
        run = DiscoveryRun(
            id=new_id(),
            profile_id=profile.id,
            owner_id=profile.owner_id,
            started_at=self.hub.clock(),
            total=scan.count_hosts(profile.targets),
        )
        stored = await self.hub.run_sync(self._state.add_discovery_run, run)
        job = RunJob(self.hub, profile, stored, identifier)
        background.start_soon(job.run, name=f"discovery run {stored.id}")
        await audit.record(
            self.hub,
            action="discovery.run",
            actor=actor,
            target_type="discovery_run",
            target_id=stored.id,
            client=client,
            detail={"profile_id": profile.id, "owner_id": profile.owner_id, "total": run.total},
        )
        return stored

    def _identifier(self, profile: DiscoveryProfile) -> Identifier | None:
        if profile.credential_profile_id is None:
            return None
        try:
            collector = self.hub.collector(profile.collector)
        except PluginError as error:
            raise _invalid("collector", str(error)) from None
        if not isinstance(collector, Identifier):
            raise _invalid(
                "collector",
                f"collector {profile.collector!r} cannot identify hosts (no identify())",
            )
        return collector

    async def runs(
        self, actor: Principal, profile_id: str, *, limit: int = 50
    ) -> list[DiscoveryRun]:
        """A profile's runs, newest first."""
        scope = owner_scope(actor)
        limit = max(0, min(limit, MAX_RUNS))
        return await self.hub.run_sync(
            lambda: self._state.list_discovery_runs(profile_id, scope, limit)
        )

    async def get_run(self, actor: Principal, run_id: str) -> DiscoveryRun:
        return await self.hub.run_sync(self._state.get_discovery_run, run_id, owner_scope(actor))

    async def found(self, actor: Principal, run: DiscoveryRun) -> list[Device]:
        """The devices a run has found so far: its profile's, seen since it started."""
        devices = await self.hub.run_sync(self._state.list_devices, owner_scope(actor))
        return found_by(run, devices)


def found_by(run: DiscoveryRun, devices: Sequence[Device]) -> list[Device]:
    return [
        d
        for d in devices
        if d.owner_id == run.owner_id
        and d.discovery_profile_id == run.profile_id
        and d.last_seen is not None
        and d.last_seen >= run.started_at
    ]


# --------------------------------------------------------------------------- a run


@attrs.define
class _Progress:
    total: int
    scanned: int = 0
    found: int = 0
    errors: int = 0


class RunJob:
    """One run, from its scan to its final record."""

    def __init__(
        self,
        hub: Sentri,
        profile: DiscoveryProfile,
        run: DiscoveryRun,
        identifier: Identifier | None,
    ) -> None:
        self.hub = hub
        self.profile = profile
        self.record = run
        self.identifier = identifier
        self.progress = _Progress(total=run.total)
        self._devices: list[Device] = []
        self._known: dict[str, Device] = {}
        self._credential: RemoteCredential | BaseException | None = None
        self._limiter = anyio.CapacityLimiter(IDENTIFY_CONCURRENCY)
        self._written: _Progress | None = None
        self._written_at = 0.0

    @property
    def _state(self) -> StateStore:
        return self.hub.storage.state

    async def run(self) -> None:
        """Scan, identify, record; failed if anything goes wrong or it is cancelled."""
        try:
            await self._run()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._finish(RunState.FAILED, STOPPED)
            raise
        except Exception as error:
            causes = _leaves(error)
            if any(isinstance(cause, NotFoundError) for cause in causes):
                # Its profile was deleted meanwhile, and the run with it: nothing to record.
                log.info("discovery run %s stopped: its profile was deleted", self.record.id)
                return
            log.exception("discovery run %s failed", self.record.id)
            with anyio.CancelScope(shield=True):
                await self._finish(RunState.FAILED, describe_failure(causes[0]))
        else:
            await self._finish(RunState.DONE, None)

    async def _run(self) -> None:
        existing = await self.hub.run_sync(self._state.list_devices, self.profile.owner_id)
        self._known = {device.address: device for device in existing}
        resolved = await scan.resolve(self.profile.targets)
        self.progress.total = len(resolved.addresses) + len(resolved.unresolved)
        self.progress.scanned = self.progress.errors = len(resolved.unresolved)
        for name, reason in resolved.unresolved:
            log.info("discovery run %s: %s does not resolve: %s", self.record.id, name, reason)
        if self.identifier is not None:
            self._credential = await self._fetch_credential()
        async with anyio.create_task_group() as reporting:
            reporting.start_soon(self._report_forever)
            async with anyio.create_task_group() as identifying:

                async def on_host(result: scan.HostResult) -> None:
                    await self._host(result, identifying)

                await scan.scan(
                    resolved.addresses,
                    self.profile.ports,
                    concurrency=self.profile.concurrency,
                    timeout=self.profile.timeout.total_seconds(),
                    on_host=on_host,
                )
            reporting.cancel_scope.cancel()

    async def _fetch_credential(self) -> RemoteCredential | BaseException:
        assert self.profile.credential_profile_id is not None
        try:
            credential: RemoteCredential = await self.hub.credentials.remote_credential(
                self.profile.credential_profile_id, self.profile.owner_id
            )
        except Exception as error:  # every host will say why it was not identified
            return error
        return credential

    async def _host(self, result: scan.HostResult, identifying: Any) -> None:
        self.progress.scanned += 1
        if not result.open_ports:
            return
        self.progress.found += 1
        if self.identifier is not None and WSMAN_PORTS & set(result.open_ports):
            identifying.start_soon(self._identify, result)
        else:
            self._devices.append(self._device(result))

    async def _identify(self, result: scan.HostResult) -> None:
        async with self._limiter:
            try:
                identity = await self._call_identify(result.address)
            except Exception as error:
                self.progress.errors += 1
                self._devices.append(self._device(result, error=describe_failure(error)))
            else:
                self._devices.append(self._device(result, identity=identity))

    async def _call_identify(self, address: str) -> HostIdentity:
        credential = self._credential
        if isinstance(credential, BaseException):
            raise credential
        assert self.identifier is not None
        assert credential is not None
        target = Target(machine_id="", host=address, credential=credential)
        identify = self.identifier.identify
        with anyio.fail_after(IDENTIFY_TIMEOUT):
            if inspect.iscoroutinefunction(identify):
                found: Any = await identify(target)
            else:
                # abandon_on_cancel: a hung plugin call must not hang the timeout with it.
                found = await anyio.to_thread.run_sync(identify, target, abandon_on_cancel=True)
            if inspect.isawaitable(found):
                found = await found
        if not isinstance(found, HostIdentity):
            raise TypeError("identify() must return a lunasentri_core.remote.HostIdentity")
        return found

    def _device(
        self,
        result: scan.HostResult,
        *,
        identity: HostIdentity | None = None,
        error: str | None = None,
    ) -> Device:
        """The device as this run saw it; what it did not learn is kept from before."""
        now = self.hub.clock()
        known = self._known.get(result.address)
        device = known or Device(
            id=new_id(), owner_id=self.profile.owner_id, address=result.address, first_seen=now
        )
        changes: dict[str, Any] = {
            "open_ports": result.open_ports,
            "discovery_profile_id": self.profile.id,
            "last_seen": now,
        }
        if identity is not None:
            changes.update(
                hostname=identity.hostname,
                os=identity.os,
                os_version=identity.os_version,
                credential_ok=True,
                credential_error=None,
            )
        elif error is not None:
            changes.update(credential_ok=False, credential_error=error)
        if identity is not None or error is not None:
            changes["credential_profile_id"] = self.profile.credential_profile_id
        return attrs.evolve(device, **changes)

    # ------------------------------------------------------------ recording

    async def _report_forever(self) -> None:
        while True:
            await anyio.sleep(PROGRESS_EVERY)
            idle = anyio.current_time() - self._written_at
            if self._devices or self.progress != self._written or idle >= TOUCH_EVERY:
                await self._write()

    async def _write(self, **final: Any) -> None:
        devices, self._devices = self._devices, []
        snapshot = attrs.evolve(self.progress)
        run = attrs.evolve(
            self.record,
            total=snapshot.total,
            scanned=snapshot.scanned,
            found=snapshot.found,
            errors=snapshot.errors,
            **final,
        )

        def write() -> DiscoveryRun:
            if devices:
                self._state.upsert_devices(devices)
            return self._state.update_discovery_run(run)

        try:
            self.record = await self.hub.run_sync(write)
        except Exception:
            self._devices[:0] = devices  # try them again with the next record
            raise
        self._written, self._written_at = snapshot, anyio.current_time()

    async def _finish(self, state: RunState, error: str | None) -> None:
        try:
            await self._write(state=state, finished_at=self.hub.clock(), error=error)
        except NotFoundError:
            log.info("discovery run %s ended after its profile was deleted", self.record.id)
        except Exception:
            log.exception("discovery run %s: its end could not be recorded", self.record.id)


def _leaves(error: BaseException) -> list[BaseException]:
    """The errors inside (nested) exception groups, or the error itself."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


async def fail_stale_runs(hub: Sentri) -> int:
    """Fail the runs whose process is gone (no progress for :data:`STALE_AFTER`)."""
    now = hub.clock()
    return await hub.run_sync(hub.storage.state.fail_discovery_runs, now - STALE_AFTER, now, LOST)


async def fail_stale_runs_forever(hub: Sentri) -> None:
    """:func:`fail_stale_runs` now and every :data:`STALE_CHECK` seconds."""
    while True:
        try:
            # Another process sharing the database may run it: one at a time.
            failed = await fail_stale_runs(hub) if await hub.singleton(JOB_DISCOVERY_STALE) else 0
        except Exception:
            log.exception("failing stale discovery runs failed")
        else:
            if failed:
                log.warning("%d discovery run(s) of stopped processes marked failed", failed)
        await anyio.sleep(STALE_CHECK)
