"""Machines, their API keys and their agents' central configuration.

Every call takes the acting principal and is scoped by it: a user reaches only
their own machines (another user's machine is "not found", never "forbidden", so
ids do not leak), an administrator reaches all. API keys are shown once, when
made; only their hash is stored.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from lunasentri_core.components import Principal
from lunasentri_core.errors import FieldError, NotFoundError, ValidationError
from lunasentri_core.model import (
    LABEL_NAME,
    MAX_LABEL_VALUE,
    AgentConfig,
    ApiKey,
    Labels,
    Machine,
    MachineKind,
    MachineStatus,
    SeriesValue,
    StatusChange,
    new_id,
    to_labels,
)
from lunasentri_core.security import API_KEY_PREFIX, issue_token
from lunasentri_core.services import audit
from lunasentri_core.services.queries import DERIVED, derive_latest
from lunasentri_core.storage.protocols import MAX_MACHINE_PAGE, MachineQuery, StateStore

if TYPE_CHECKING:
    from lunasentri_core.config import Settings
    from lunasentri_core.hub import Sentri

MAX_NAME = 100
MAX_HOSTNAME = 253
MAX_LABELS = 32
MIN_INTERVAL = timedelta(seconds=1)
MAX_INTERVAL = timedelta(days=1)
MAX_COLLECTORS = 32
MAX_GRACE = timedelta(days=30)
MIN_OFFLINE_AFTER = timedelta(seconds=1)
MAX_OFFLINE_AFTER = timedelta(days=30)
MAX_STATUS_CHANGES = 1000
DEFAULT_PAGE = 100
MAX_PAGE = MAX_MACHINE_PAGE
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_COLLECTOR_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_UNCHANGED: Any = object()


def owner_scope(actor: Principal) -> str | None:
    """Whose machines ``actor`` reaches: ``None`` (all) for an administrator."""
    return None if actor.is_admin else actor.id


@attrs.frozen
class IssuedKey:
    """A new API key: ``secret`` is shown to the caller once and never stored."""

    secret: str
    key: ApiKey


@attrs.frozen
class Registered:
    machine: Machine
    issued: IssuedKey
    install_command: str


@attrs.frozen
class MachineSummary:
    """A machine and the newest value of each of its series (derived percentages
    included); ``latest`` is ``None`` when the values were not asked for."""

    machine: Machine
    latest: tuple[SeriesValue, ...] | None

    @property
    def timestamp(self) -> datetime | None:
        return max((value.timestamp for value in self.latest or ()), default=None)


@attrs.frozen
class MachineFilter:
    """Which machines a list shows: with this status (as reported), every one of
    these labels, and a name containing ``name`` (ASCII letters without case)."""

    status: MachineStatus | None = None
    labels: Labels = attrs.field(default=(), converter=to_labels)
    name: str | None = None


@attrs.frozen
class MachinePage:
    """One page of a machine list; ``next_after`` is the (name, id) the next page
    starts after (``None``: this is the last page)."""

    items: tuple[MachineSummary, ...]
    next_after: tuple[str, str] | None


@attrs.frozen
class SeriesFilter:
    """Which series a many-machine latest read returns: of this metric (stored or
    derived, ``None``: every one) and having every one of these labels."""

    metric: str | None = None
    labels: Labels = attrs.field(default=(), converter=to_labels)

    def matches(self, value: SeriesValue) -> bool:
        if self.metric is not None and value.series.metric != self.metric:
            return False
        return set(self.labels) <= set(value.series.labels)

    def metrics(self) -> list[str | None]:
        """The stored metrics to read: a derived one needs its used and total series."""
        if self.metric is not None and self.metric in DERIVED:
            return [self.metric, *DERIVED[self.metric]]
        return [self.metric]


@attrs.frozen
class MachineLatest:
    """A machine's newest values, and the percentages derived from them."""

    machine: Machine
    items: tuple[SeriesValue, ...]
    derived: tuple[SeriesValue, ...]


@attrs.frozen
class LatestPage:
    """One page of :meth:`Machines.latest`; ``next_after`` as in :class:`MachinePage`."""

    items: tuple[MachineLatest, ...]
    next_after: tuple[str, str] | None


@attrs.frozen
class EffectiveConfig:
    """The configuration an agent runs: stored, or the server's defaults (``stored`` false)."""

    config: AgentConfig
    stored: bool

    @property
    def etag(self) -> str:
        if self.stored:
            return f'"{self.config.version}"'
        # Defaults have no version; their content tells one set of defaults from another.
        digest = hashlib.sha256(
            json.dumps(
                [self.config.interval.total_seconds(), self.config.collectors, self.config.labels]
            ).encode()
        ).hexdigest()
        return f'"0-{digest[:12]}"'


# --------------------------------------------------------------------------- validation


def check_name(name: str, field: str = "name") -> str:
    if not name.strip():
        raise ValidationError([FieldError(field, "must not be empty")], what="request body")
    if name != name.strip() or _CONTROL.search(name) or len(name) > MAX_NAME:
        raise ValidationError(
            [
                FieldError(
                    field,
                    f"must be at most {MAX_NAME} characters, without control characters "
                    "or surrounding spaces",
                )
            ],
            what="request body",
        )
    return name


def check_hostname(hostname: str | None, field: str = "hostname") -> str | None:
    if hostname is None:
        return None
    if not hostname or len(hostname) > MAX_HOSTNAME or re.search(r"[\s\x00-\x1f\x7f]", hostname):
        raise ValidationError(
            [FieldError(field, f"must be 1 to {MAX_HOSTNAME} characters without spaces")],
            what="request body",
        )
    return hostname


def check_labels(labels: Labels, field: str = "labels") -> Labels:
    errors = [
        # An empty name would make the path "labels.", which names nothing.
        FieldError(f"{field}.{name}" if name else field, problem)
        for name, value in labels
        if (problem := _label_problem(name, value))
    ]
    if len(labels) > MAX_LABELS:
        errors.append(FieldError(field, f"at most {MAX_LABELS} labels"))
    if errors:
        raise ValidationError(errors, what="request body")
    return labels


def _label_problem(name: str, value: str) -> str | None:
    if not name:
        return (
            "the label name '' is empty: a label name is lowercase letters, digits and '_', "
            "not starting with a digit"
        )
    if not LABEL_NAME.match(name):
        return "a label name is lowercase letters, digits and '_', not starting with a digit"
    if len(value) > MAX_LABEL_VALUE:
        return f"a label value is at most {MAX_LABEL_VALUE} characters"
    return None


def check_offline_after(value: timedelta | None, field: str = "offline_after") -> timedelta | None:
    if value is not None and not MIN_OFFLINE_AFTER <= value <= MAX_OFFLINE_AFTER:
        raise ValidationError(
            [
                FieldError(
                    field,
                    f"must be {MIN_OFFLINE_AFTER.total_seconds():g} to "
                    f"{MAX_OFFLINE_AFTER.total_seconds():g} seconds, or null for the "
                    "server's offline_threshold",
                )
            ],
            what="request body",
        )
    return value


def _check_owner_choice(actor: Principal, owner_id: str | None) -> str:
    if owner_id is None or owner_id == actor.id:
        return actor.id
    if not actor.is_admin:
        raise ValidationError(
            [FieldError("owner_id", "only an administrator may register for another user")],
            what="request body",
        )
    return owner_id


# --------------------------------------------------------------------------- storage steps


def store_with_key(state: StateStore, machine: Machine, key: ApiKey) -> Machine:
    """Add a machine and its first key; without the key the machine is not kept."""
    stored = state.add_machine(machine)
    try:
        state.add_api_key(key)
    except BaseException:
        state.delete_machine(stored.id)
        raise
    return stored


def new_key(machine_id: str, at: datetime) -> IssuedKey:
    token = issue_token(API_KEY_PREFIX)
    key = ApiKey(
        id=new_id(), machine_id=machine_id, prefix=token.visible, key_hash=token.hash, created_at=at
    )
    return IssuedKey(token.secret, key)


AGENT_PACKAGES = ("lunasentri-core", "lunasentri-psutil")


def install_command(base_url: str, api_key: str, packages: Sequence[str] = AGENT_PACKAGES) -> str:
    """``packages`` are what pip installs: names, or the URLs of the server's wheels."""
    # The key goes in the environment, not in the arguments: every user of the
    # machine can read a process's arguments, only its owner its environment.
    return (
        f"pip install {shlex.join(packages)} && "
        f"LUNASENTRI_AGENT__API_KEY={shlex.quote(api_key)} "
        f"lunasentri agent --server {shlex.quote(base_url)}"
    )


def _unknown_owner(owner_id: str) -> ValidationError:
    return ValidationError(
        [FieldError("owner_id", f"no user with id {owner_id!r}")], what="request body"
    )


# --------------------------------------------------------------------------- the service


class Machines:
    """Machine records, keys and agent configuration, as one principal may see them."""

    def __init__(self, hub: Sentri, settings: Settings | None = None) -> None:
        self.hub = hub
        self.settings = settings or hub.settings

    @property
    def _state(self) -> StateStore:
        return self.hub.storage.state

    # ------------------------------------------------------------ machines

    async def create(
        self,
        actor: Principal,
        name: str,
        *,
        hostname: str | None = None,
        labels: Labels = (),
        owner_id: str | None = None,
        client: str | None = None,
        install_from: Sequence[str] = AGENT_PACKAGES,
    ) -> Registered:
        """Register a machine owned by ``actor`` (or, for an admin, by ``owner_id``);
        the install command installs the agent from ``install_from``."""
        now = self.hub.clock()
        machine = Machine(
            id=new_id(),
            name=check_name(name),
            owner_id=_check_owner_choice(actor, owner_id),
            hostname=check_hostname(hostname),
            kind=MachineKind.AGENT,
            labels=check_labels(labels),
            created_at=now,
        )
        issued = new_key(machine.id, now)
        try:
            stored = await self.hub.run_sync(store_with_key, self._state, machine, issued.key)
        except NotFoundError:
            raise _unknown_owner(str(machine.owner_id)) from None
        await audit.record(
            self.hub,
            action="machine.create",
            actor=actor,
            target_type="machine",
            target_id=stored.id,
            client=client,
            detail={"name": stored.name, "owner_id": stored.owner_id, "key_id": issued.key.id},
        )
        command = install_command(self.settings.server.base_url, issued.secret, install_from)
        return Registered(self.present(stored), issued, command)

    async def page(
        self,
        actor: Principal,
        *,
        filters: MachineFilter = MachineFilter(),
        after: tuple[str, str] | None = None,
        limit: int = DEFAULT_PAGE,
        latest: bool = True,
    ) -> MachinePage:
        """One page of the machines ``actor`` sees, in (name, id) order after
        ``after``; with ``latest``, each with its newest values, read for the
        whole page in one query of the latest-values table."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationError([FieldError("limit", f"must be 1 to {MAX_PAGE}")], what="query")
        query = MachineQuery(
            owner_id=owner_scope(actor),
            status=filters.status,
            seen_since=self.hub.clock() - self._silence,
            labels=filters.labels,
            name=filters.name,
            after=after,
            limit=limit + 1,  # one more tells whether a next page exists
        )

        def read() -> tuple[list[Machine], list[SeriesValue]]:
            found = self._state.page_machines(query)
            shown = found[:limit]
            wanted = [m.id for m in shown] if latest else []
            return found, self.hub.storage.metrics.latest(wanted) if wanted else []

        found, values = await self.hub.run_sync(read)
        shown = found[:limit]
        more = len(found) > limit
        return MachinePage(
            tuple(self._summaries(shown, values if latest else None)),
            (shown[-1].name, shown[-1].id) if more else None,
        )

    async def latest(
        self,
        actor: Principal,
        *,
        filters: MachineFilter = MachineFilter(),
        ids: Sequence[str] = (),
        series: SeriesFilter = SeriesFilter(),
        after: tuple[str, str] | None = None,
        limit: int = DEFAULT_PAGE,
    ) -> LatestPage:
        """The newest values of the machines ``actor`` sees (only ``ids``, when given),
        a page in (name, id) order: one query for the page of machines, one of the
        latest-values table for all of them (three for a derived metric)."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationError([FieldError("limit", f"must be 1 to {MAX_PAGE}")], what="query")
        if len(ids) > MAX_PAGE:
            raise ValidationError(
                [FieldError("machine", f"at most {MAX_PAGE} machine ids")], what="query"
            )
        query = MachineQuery(
            owner_id=owner_scope(actor),
            status=filters.status,
            seen_since=self.hub.clock() - self._silence,
            labels=filters.labels,
            name=filters.name,
            ids=tuple(ids),
            after=after,
            limit=limit + 1,
        )

        def read() -> tuple[list[Machine], list[SeriesValue]]:
            found = self._state.page_machines(query)
            shown = [m.id for m in found[:limit]]
            values: list[SeriesValue] = []
            for metric in series.metrics() if shown else ():
                values.extend(self.hub.storage.metrics.latest(shown, metric))
            return found, values

        found, values = await self.hub.run_sync(read)
        shown = found[:limit]
        by_machine: dict[str, list[SeriesValue]] = {}
        for value in values:
            by_machine.setdefault(value.series.machine_id, []).append(value)
        items = []
        for machine in shown:
            stored = by_machine.get(machine.id, [])
            kept = _ordered(v for v in stored if series.matches(v))
            derived = _ordered(v for v in derive_latest(stored) if series.matches(v))
            items.append(MachineLatest(self.present(machine), kept, derived))
        more = len(found) > limit
        return LatestPage(tuple(items), (shown[-1].name, shown[-1].id) if more else None)

    def _summaries(
        self, found: Sequence[Machine], values: Sequence[SeriesValue] | None
    ) -> Iterable[MachineSummary]:
        if values is None:
            return (MachineSummary(self.present(m), None) for m in found)
        by_machine: dict[str, list[SeriesValue]] = {}
        for value in values:
            by_machine.setdefault(value.series.machine_id, []).append(value)
        return (
            MachineSummary(self.present(m), _with_derived(by_machine.get(m.id, []))) for m in found
        )

    async def get(self, actor: Principal, machine_id: str) -> Machine:
        machine = await self.hub.run_sync(self._state.get_machine, machine_id, owner_scope(actor))
        return self.present(machine)

    async def update(
        self,
        actor: Principal,
        machine_id: str,
        *,
        name: str = _UNCHANGED,
        hostname: str | None = _UNCHANGED,
        labels: Labels = _UNCHANGED,
        offline_after: timedelta | None = _UNCHANGED,
        client: str | None = None,
    ) -> Machine:
        """Rename a machine or change its hostname (``None`` clears it), labels or own
        offline threshold (``None``: the server's)."""
        changes: dict[str, Any] = {}
        if name is not _UNCHANGED:
            changes["name"] = check_name(name)
        if hostname is not _UNCHANGED:
            changes["hostname"] = check_hostname(hostname)
        if labels is not _UNCHANGED:
            changes["labels"] = check_labels(to_labels(labels))
        if offline_after is not _UNCHANGED:
            changes["offline_after"] = check_offline_after(offline_after)
        scope = owner_scope(actor)

        def change() -> tuple[Machine, Machine]:
            before = self._state.get_machine(machine_id, scope)
            return before, self._state.update_machine(attrs.evolve(before, **changes))

        if not changes:
            return await self.get(actor, machine_id)
        before, after = await self.hub.run_sync(change)
        await self.hub.get_machine(after.id)  # refreshes the hub's copy for ingest hooks
        await audit.record(
            self.hub,
            action="machine.rename" if after.name != before.name else "machine.update",
            actor=actor,
            target_type="machine",
            target_id=after.id,
            client=client,
            detail={
                field: {"from": _jsonable(getattr(before, field)), "to": _jsonable(value)}
                for field, value in changes.items()
                if getattr(before, field) != value
            },
        )
        return self.present(after)

    async def delete(self, actor: Principal, machine_id: str, *, client: str | None = None) -> None:
        """Delete a machine with its keys, series and agent configuration."""
        machine = await self.hub.run_sync(self._state.get_machine, machine_id, owner_scope(actor))
        await self.hub.remove_machine(machine.id)
        await audit.record(
            self.hub,
            action="machine.delete",
            actor=actor,
            target_type="machine",
            target_id=machine.id,
            client=client,
            detail={"name": machine.name, "owner_id": machine.owner_id},
        )

    @property
    def _silence(self) -> timedelta:
        """How long a machine nobody recorded a status for may be silent and still
        count as online: three missed reports at the default interval, but never
        under a minute."""
        return max(3 * self.settings.collect.interval, timedelta(minutes=1))

    def present(self, machine: Machine) -> Machine:
        """The machine as reported: a status nobody recorded follows from ``last_seen``."""
        if machine.status is not MachineStatus.UNKNOWN or machine.last_seen is None:
            return machine
        online = self.hub.clock() - machine.last_seen <= self._silence
        status = MachineStatus.ONLINE if online else MachineStatus.OFFLINE
        return attrs.evolve(machine, status=status)

    async def status_changes(
        self,
        actor: Principal,
        machine_id: str,
        *,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[StatusChange]:
        """The machine's recorded online/offline transitions, newest first."""
        scope = owner_scope(actor)

        def read() -> list[StatusChange]:
            self._state.get_machine(machine_id, scope)
            bounded = max(0, min(limit, MAX_STATUS_CHANGES))
            return self._state.list_status_changes(machine_id, since=since, limit=bounded)

        return await self.hub.run_sync(read)

    # ------------------------------------------------------------ API keys

    async def keys(self, actor: Principal, machine_id: str) -> list[ApiKey]:
        scope = owner_scope(actor)

        def read() -> list[ApiKey]:
            self._state.get_machine(machine_id, scope)
            return self._state.list_api_keys(machine_id)

        return await self.hub.run_sync(read)

    async def rotate(
        self,
        actor: Principal,
        machine_id: str,
        *,
        grace: timedelta | None = None,
        client: str | None = None,
    ) -> IssuedKey:
        """Issue a new key; the machine's other active keys keep working for ``grace``."""
        grace = self.settings.server.key_rotation_grace if grace is None else grace
        if grace < timedelta(0) or grace > MAX_GRACE:
            raise ValidationError(
                [FieldError("grace_seconds", f"must be 0 to {int(MAX_GRACE.total_seconds())}")],
                what="request body",
            )
        scope = owner_scope(actor)
        now = self.hub.clock()
        issued = new_key(machine_id, now)

        def rotate() -> list[str]:
            self._state.get_machine(machine_id, scope)
            previous = [k for k in self._state.list_api_keys(machine_id) if k.is_active(now)]
            self._state.add_api_key(issued.key)
            until = now + grace
            for key in previous:
                if key.expires_at is None or key.expires_at > until:
                    self._state.set_api_key_expiry(key.id, until)
            return [key.id for key in previous]

        previous = await self.hub.run_sync(rotate)
        await audit.record(
            self.hub,
            action="key.rotate",
            actor=actor,
            target_type="machine",
            target_id=machine_id,
            client=client,
            detail={
                "key_id": issued.key.id,
                "previous": previous,
                "grace_seconds": grace.total_seconds(),
            },
        )
        return issued

    async def revoke(
        self, actor: Principal, machine_id: str, key_id: str, *, client: str | None = None
    ) -> None:
        """Make a key unusable now (a key revoked earlier keeps its earlier time)."""
        scope = owner_scope(actor)
        now = self.hub.clock()

        def revoke() -> None:
            self._state.get_machine(machine_id, scope)
            if not any(k.id == key_id for k in self._state.list_api_keys(machine_id)):
                raise NotFoundError(f"API key {key_id!r} of machine {machine_id!r} not found")
            self._state.revoke_api_key(key_id, now)

        await self.hub.run_sync(revoke)
        await audit.record(
            self.hub,
            action="key.revoke",
            actor=actor,
            target_type="machine",
            target_id=machine_id,
            client=client,
            detail={"key_id": key_id},
        )

    # ------------------------------------------------------------ agent configuration

    async def agent_config(
        self, machine_id: str, actor: Principal | None = None
    ) -> EffectiveConfig:
        """A machine's agent configuration (``actor`` scopes it; ``None``: the machine's own)."""
        scope = owner_scope(actor) if actor is not None else None

        def read() -> AgentConfig | None:
            self._state.get_machine(machine_id, scope)
            return self._state.get_agent_config(machine_id)

        stored = await self.hub.run_sync(read)
        if stored is not None:
            return EffectiveConfig(stored, stored=True)
        collect = self.settings.collect
        default = AgentConfig(
            machine_id=machine_id,
            interval=collect.interval,
            collectors=collect.collectors,
            version=0,
        )
        return EffectiveConfig(default, stored=False)

    async def set_agent_config(
        self,
        actor: Principal,
        machine_id: str,
        *,
        interval: timedelta,
        collectors: Iterable[str],
        labels: Labels = (),
        client: str | None = None,
    ) -> EffectiveConfig:
        """Store a machine's agent configuration; its version goes up by one."""
        names = _check_collectors(collectors)
        if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
            raise ValidationError(
                [
                    FieldError(
                        "interval",
                        f"must be {MIN_INTERVAL.total_seconds():g} to "
                        f"{MAX_INTERVAL.total_seconds():g} seconds",
                    )
                ],
                what="request body",
            )
        config = AgentConfig(
            machine_id=machine_id,
            interval=interval,
            collectors=names,
            labels=check_labels(labels),
            updated_at=self.hub.clock(),
        )
        scope = owner_scope(actor)

        def write() -> AgentConfig:
            self._state.get_machine(machine_id, scope)
            return self._state.set_agent_config(config)

        stored = await self.hub.run_sync(write)
        await audit.record(
            self.hub,
            action="agent_config.update",
            actor=actor,
            target_type="machine",
            target_id=machine_id,
            client=client,
            detail={
                "version": stored.version,
                "interval": interval.total_seconds(),
                "collectors": list(names),
                "labels": dict(stored.labels),
            },
        )
        return EffectiveConfig(stored, stored=True)


def _check_collectors(collectors: Iterable[str]) -> tuple[str, ...]:
    names = tuple(collectors)
    errors = [
        FieldError(f"collectors[{i}]", "must be a plugin name (lowercase, digits, '_', '-', '.')")
        for i, name in enumerate(names)
        if not _COLLECTOR_NAME.match(name)
    ]
    if not names or len(names) > MAX_COLLECTORS:
        errors.append(FieldError("collectors", f"must name 1 to {MAX_COLLECTORS} collectors"))
    if len(set(names)) != len(names):
        errors.append(FieldError("collectors", "must not name a collector twice"))
    if errors:
        raise ValidationError(errors, what="request body")
    return names


def _ordered(values: Iterable[SeriesValue]) -> tuple[SeriesValue, ...]:
    return tuple(sorted(values, key=lambda v: (v.series.metric, v.series.labels)))


def _with_derived(values: Sequence[SeriesValue]) -> tuple[SeriesValue, ...]:
    return (*values, *derive_latest(values))


def _jsonable(value: object) -> object:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, tuple):
        return dict(value) if all(isinstance(v, tuple) for v in value) else list(value)
    return value
