"""Small, obviously-correct implementations that prove the contract suites can be passed.

``MemoryStorage`` keeps points and state in dicts, with optional rollups and
retention, and can be given named ``flaws`` so tests can show that the storage
contract catches each of them. The collectors, notifier and authenticator come in a good version
and in broken ones.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import anyio
import attrs
from kit_agentless import MemoryAgentless

from lunasentri_core import (
    AlertEvent,
    AlertRule,
    ApiKey,
    ConflictError,
    Credentials,
    DeliveryResult,
    DeliveryStatus,
    HistoryPoint,
    HistoryQuery,
    Machine,
    MachineSamples,
    NotFoundError,
    Notification,
    Principal,
    Reading,
    Resolution,
    RetentionPolicy,
    SeriesHistory,
    SeriesKey,
    SeriesValue,
    Target,
    User,
)
from lunasentri_core.model import (  # not in the public API yet
    AgentClaim,
    AgentConfig,
    AlertState,
    AlertStatus,
    AuditEntry,
    Channel,
    ClaimStatus,
    Delivery,
    DeliveryState,
    EventState,
    MachineStatus,
    OutboxEvent,
    ResetToken,
    Role,
    Session,
    Silence,
    StatusChange,
    new_id,
    skipped_because,
)
from lunasentri_core.storage import (
    Capability,
    LoginFailure,
    MachineQuery,
    MaintenanceReport,
    PurgePolicy,
    PurgeReport,
    StateStore,
)
from lunasentri_core.storage.protocols import AlertTransition, StatusTransition
from lunasentri_core.testing import ReceivedMessage, hash_secret
from lunasentri_core.testing.reference import aggregate

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
GRAINS = {Resolution.MINUTE: timedelta(minutes=1), Resolution.HOUR: timedelta(hours=1)}
ALL_CAPABILITIES = frozenset({Capability.ROLLUPS, Capability.RETENTION})
_R = TypeVar("_R")

# ---------------------------------------------------------------------------- storage


@attrs.define
class _Bucket:
    total: float
    count: int
    low: float
    high: float
    last_at: datetime
    last: float

    def add(self, at: datetime, value: float) -> None:
        self.total += value
        self.count += 1
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        if at >= self.last_at:
            self.last_at, self.last = at, value


def _floor(at: datetime, grain: timedelta) -> datetime:
    return EPOCH + (at - EPOCH) // grain * grain


def _aligned(at: datetime, grain: timedelta) -> bool:
    return (at - EPOCH) % grain == timedelta(0)


class MemoryMetrics:
    def __init__(
        self, retention: RetentionPolicy, capabilities: frozenset[Capability], flaws: set[str]
    ) -> None:
        self._retention = retention
        self._capabilities = capabilities
        self._flaws = flaws
        self._lock = threading.RLock()
        self._raw: dict[SeriesKey, dict[datetime, float]] = {}
        self._rollups: dict[Resolution, dict[SeriesKey, dict[datetime, _Bucket]]] = {
            resolution: {} for resolution in GRAINS
        }
        self._latest: dict[SeriesKey, tuple[datetime, float]] = {}
        self._horizon: dict[Resolution, datetime] = {}

    # ------------------------------------------------------------ write

    def write(self, batch: Sequence[MachineSamples]) -> int:
        rows: list[tuple[SeriesKey, datetime, float]] = []
        with self._lock:
            for machine in batch:
                for sample in machine.samples:
                    for reading in sample.readings:
                        key = SeriesKey(machine.machine_id, reading.metric, reading.labels)
                        rows.append((key, sample.timestamp, reading.value))
                        if "partial-writes" in self._flaws:
                            self._store(key, sample.timestamp, reading.value)
            if "partial-writes" not in self._flaws:
                for row in rows:
                    self._store(*row)
        return len(rows)

    def _store(self, key: SeriesKey, at: datetime, value: float) -> None:
        points = self._raw.setdefault(key, {})
        if at in points and "last-wins" not in self._flaws:
            return
        points[at] = value
        if Capability.ROLLUPS in self._capabilities:
            for resolution, grain in GRAINS.items():
                buckets = self._rollups[resolution].setdefault(key, {})
                start = _floor(at, grain)
                if start in buckets:
                    buckets[start].add(at, value)
                else:
                    buckets[start] = _Bucket(value, 1, value, value, at, value)
        newest = self._latest.get(key)
        if newest is None or at >= newest[0]:
            self._latest[key] = (at, value)

    # ------------------------------------------------------------ read

    def latest(self, machine_ids: Sequence[str], metric: str | None = None) -> list[SeriesValue]:
        with self._lock:
            return [
                SeriesValue(key, at, value)
                for key, (at, value) in self._latest.items()
                if key.machine_id in machine_ids and metric in (None, key.metric)
            ]

    def list_series(self, machine_id: str) -> list[SeriesKey]:
        with self._lock:
            return [key for key in self._raw if key.machine_id == machine_id]

    def delete_machine(self, machine_id: str) -> int:
        with self._lock:
            doomed = [key for key in self._raw if key.machine_id == machine_id]
            for key in doomed:
                del self._raw[key]
                self._latest.pop(key, None)
                for rollup in self._rollups.values():
                    rollup.pop(key, None)
            return len(doomed)

    def history(self, query: HistoryQuery) -> list[SeriesHistory]:
        with self._lock:
            resolution = self._resolution_for(query)
            answer = []
            for key in self._raw:
                if not self._selected(key, query):
                    continue
                if resolution is Resolution.RAW:
                    points = self._from_raw(key, query)
                else:
                    points = self._from_rollup(key, query, resolution)
                if points:
                    reported = Resolution.RAW if "hide-resolution" in self._flaws else resolution
                    answer.append(SeriesHistory(key, reported, tuple(points)))
            return answer

    def _selected(self, key: SeriesKey, query: HistoryQuery) -> bool:
        if key.machine_id != query.machine_id or key.metric != query.metric:
            return False
        return query.labels is None or set(query.labels) <= set(key.labels)

    def _covers(self, resolution: Resolution, start: datetime) -> bool:
        horizon = self._horizon.get(resolution)
        return horizon is None or start >= horizon

    def _resolution_for(self, query: HistoryQuery) -> Resolution:
        if Capability.ROLLUPS not in self._capabilities:
            return Resolution.RAW
        for resolution in (Resolution.HOUR, Resolution.MINUTE):
            grain = GRAINS[resolution]
            if (
                query.step % grain == timedelta(0)
                and _aligned(query.start, grain)
                and _aligned(query.end, grain)
                and self._covers(resolution, query.start)
            ):
                return resolution
        return Resolution.RAW

    def _step_start(self, query: HistoryQuery, at: datetime) -> datetime:
        if "epoch-steps" in self._flaws:
            return _floor(at, query.step)
        return query.start + (at - query.start) // query.step * query.step

    def _in_range(self, query: HistoryQuery, at: datetime) -> bool:
        if "closed-range" in self._flaws:
            return query.start <= at <= query.end
        return query.start <= at < query.end

    def _from_raw(self, key: SeriesKey, query: HistoryQuery) -> list[HistoryPoint]:
        steps: dict[datetime, list[tuple[datetime, float]]] = {}
        for at, value in self._raw[key].items():
            if self._in_range(query, at):
                steps.setdefault(self._step_start(query, at), []).append((at, value))
        return [
            HistoryPoint(step, aggregate(values, query.aggregation))
            for step, values in sorted(steps.items())
        ]

    def _from_rollup(
        self, key: SeriesKey, query: HistoryQuery, resolution: Resolution
    ) -> list[HistoryPoint]:
        steps: dict[datetime, list[_Bucket]] = {}
        for start, bucket in self._rollups[resolution].get(key, {}).items():
            if query.start <= start < query.end:
                steps.setdefault(self._step_start(query, start), []).append(bucket)
        return [
            HistoryPoint(step, _combine(buckets, query)) for step, buckets in sorted(steps.items())
        ]

    # ------------------------------------------------------------ maintenance

    def maintain(self, now: datetime) -> MaintenanceReport:
        if Capability.RETENTION not in self._capabilities:
            return MaintenanceReport()
        expired = 0
        with self._lock:
            keep = {
                Resolution.RAW: self._retention.raw,
                Resolution.MINUTE: self._retention.minute,
                Resolution.HOUR: self._retention.hour,
            }
            for resolution, kept in keep.items():
                if kept is None:
                    continue
                horizon = now - kept
                self._horizon[resolution] = max(self._horizon.get(resolution, horizon), horizon)
                expired += self._expire(resolution, horizon)
        return MaintenanceReport(expired_rows=expired)

    def _expire(self, resolution: Resolution, horizon: datetime) -> int:
        tables: Mapping[SeriesKey, dict[datetime, Any]]
        tables = self._raw if resolution is Resolution.RAW else self._rollups[resolution]
        expired = 0
        for rows in tables.values():
            for at in [at for at in rows if at < horizon]:
                del rows[at]
                expired += 1
        return expired


def _combine(buckets: list[_Bucket], query: HistoryQuery) -> float:
    name = query.aggregation.value
    if name == "avg":
        return sum(b.total for b in buckets) / sum(b.count for b in buckets)
    if name == "min":
        return min(b.low for b in buckets)
    if name == "max":
        return max(b.high for b in buckets)
    return max(buckets, key=lambda b: b.last_at).last


def _no_series(machine_id: str) -> None:
    """A state store on its own has no series to delete."""


class MemoryState(MemoryAgentless):
    def __init__(self, flaws: set[str], drop_series: Callable[[str], object] = _no_series) -> None:
        self._flaws = flaws
        self._lock = threading.RLock()
        self._users: dict[str, User] = {}
        self._passwords: dict[str, str] = {}
        self._machines: dict[str, Machine] = {}
        self._keys: dict[str, ApiKey] = {}
        self._rules: dict[str, AlertRule] = {}
        self._events: list[AlertEvent] = []
        self._alert_states: dict[tuple[str, SeriesKey], AlertStatus] = {}
        self._status_changes: list[StatusChange] = []
        self._channels: dict[str, Channel] = {}
        self._outbox: dict[str, OutboxEvent] = {}  # in the order written
        self._deliveries: dict[str, Delivery] = {}
        self._leases: dict[str, datetime] = {}
        self._silences: dict[str, Silence] = {}
        self._sessions: dict[str, Session] = {}
        self._resets: dict[str, ResetToken] = {}
        self._failures: list[LoginFailure] = []
        self._claims: dict[str, AgentClaim] = {}
        self._audit: list[AuditEntry] = []
        self._configs: dict[str, AgentConfig] = {}
        self._epoch = 0
        self._init_agentless(drop_series)

    def config_epoch(self) -> int:
        return self._epoch

    def _changed(self) -> None:
        self._epoch += 1

    def add_user(self, user: User, password_hash: str) -> User:
        with self._lock:
            if any(u.username == user.username for u in self._users.values()):
                raise ConflictError(f"username {user.username!r} is taken")
            self._users[user.id] = user
            self._passwords[user.id] = password_hash
            return user

    def get_user(self, user_id: str) -> User:
        return _get(self._users, user_id, "user")

    def find_user(self, username: str) -> User | None:
        return next((u for u in self._users.values() if u.username == username), None)

    def list_users(self) -> list[User]:
        return list(self._users.values())

    def password_hash(self, user_id: str) -> str:
        return _get(self._passwords, user_id, "user")

    def set_password_hash(self, user_id: str, password_hash: str) -> None:
        _get(self._users, user_id, "user")
        self._passwords[user_id] = password_hash

    def set_user_role(self, user_id: str, role: Role) -> User:
        with self._lock:
            user = _get(self._users, user_id, "user")
            admins = [u for u in self._users.values() if u.is_admin and u.id != user_id]
            if user.is_admin and role != Role.ADMIN and not admins:
                raise ConflictError(f"{user.username!r} is the only administrator")
            self._users[user_id] = changed = attrs.evolve(user, role=role)
            return changed

    def delete_user(self, user_id: str) -> None:
        with self._lock:
            _get(self._users, user_id, "user")
            self._delete_agentless_of(user_id)
            for machine in self.list_machines(user_id):
                self.delete_machine(machine.id)
            for rule in self.list_alert_rules(user_id):
                self.delete_alert_rule(rule.id)
            for channel in self.list_channels(user_id):
                self.delete_channel(channel.id)
            self._silences = {k: s for k, s in self._silences.items() if s.owner_id != user_id}
            self._outbox = {k: e for k, e in self._outbox.items() if e.owner_id != user_id}
            del self._users[user_id], self._passwords[user_id]
            self._sessions = {k: s for k, s in self._sessions.items() if s.user_id != user_id}
            self._resets = {k: t for k, t in self._resets.items() if t.user_id != user_id}
            self._changed()

    def add_machine(self, machine: Machine) -> Machine:
        self._machines[machine.id] = machine
        return machine

    def get_machine(self, machine_id: str, owner_id: str | None = None) -> Machine:
        machine = _get(self._machines, machine_id, "machine")
        if "unscoped" in self._flaws:
            return machine
        if owner_id is not None and machine.owner_id != owner_id:
            raise NotFoundError(f"no machine {machine_id!r}")
        return machine

    def find_machine(self, name: str, owner_id: str | None = None) -> Machine | None:
        return next((m for m in self.list_machines(owner_id) if m.name == name), None)

    def list_machines(self, owner_id: str | None = None) -> list[Machine]:
        return [m for m in self._machines.values() if owner_id in (None, m.owner_id)]

    def page_machines(self, query: MachineQuery) -> list[Machine]:
        if "unscoped" in self._flaws:
            query = attrs.evolve(query, owner_id=None)
        found = sorted(
            (m for m in self._machines.values() if query.matches(m)), key=lambda m: (m.name, m.id)
        )
        if query.after is not None:
            # The flaw of an off-by-one keyset: the last machine comes again.
            inclusive = "inclusive-after" in self._flaws
            found = [
                m
                for m in found
                if (m.name, m.id) > query.after or (inclusive and (m.name, m.id) == query.after)
            ]
        return found[: query.limit]

    def update_machine(self, machine: Machine) -> Machine:
        current = _get(self._machines, machine.id, "machine")
        stored = attrs.evolve(machine, status=current.status)
        self._machines[machine.id] = stored
        if "unnoticed-edit" not in self._flaws:
            self._changed()
        return stored

    def delete_machine(self, machine_id: str) -> None:
        with self._lock:
            _get(self._machines, machine_id, "machine")
            self._refuse_monitored_machine(machine_id)
            self._remove_machine(machine_id)

    def _remove_machine(self, machine_id: str) -> None:
        self._unlink_machine(machine_id)
        self._drop_series(machine_id)
        del self._machines[machine_id]
        self._changed()
        self._configs.pop(machine_id, None)
        self._keys = {i: k for i, k in self._keys.items() if k.machine_id != machine_id}
        self._events = [e for e in self._events if e.machine_id != machine_id]
        self._alert_states = {
            k: s for k, s in self._alert_states.items() if s.machine_id != machine_id
        }
        self._status_changes = [c for c in self._status_changes if c.machine_id != machine_id]
        for claim in list(self._claims.values()):
            if claim.machine_id == machine_id:
                unlinked = attrs.evolve(claim, machine_id=None)
                if claim.status is ClaimStatus.CLAIMED:
                    unlinked = attrs.evolve(unlinked, status=ClaimStatus.EXPIRED, sealed_key=None)
                self._claims[claim.agent_id] = unlinked

    def touch_machines(self, seen: Sequence[tuple[str, datetime]]) -> None:
        with self._lock:
            for machine_id, at in seen:
                machine = self._machines.get(machine_id)
                if machine is None:
                    continue
                if (
                    "touch-backwards" in self._flaws
                    or machine.last_seen is None
                    or at > machine.last_seen
                ):
                    self._machines[machine_id] = attrs.evolve(machine, last_seen=at)

    def add_api_key(self, key: ApiKey) -> ApiKey:
        self._keys[key.id] = key
        return key

    def find_api_key(self, key_hash: str) -> ApiKey | None:
        return next((k for k in self._keys.values() if k.key_hash == key_hash), None)

    def list_api_keys(self, machine_id: str) -> list[ApiKey]:
        return [k for k in self._keys.values() if k.machine_id == machine_id]

    def revoke_api_key(self, key_id: str, at: datetime) -> None:
        key = _get(self._keys, key_id, "API key")
        self._keys[key_id] = attrs.evolve(key, revoked_at=at)

    def add_alert_rule(self, rule: AlertRule) -> AlertRule:
        self._rules[rule.id] = rule
        self._changed()
        return rule

    def get_alert_rule(self, rule_id: str, owner_id: str | None = None) -> AlertRule:
        rule = _get(self._rules, rule_id, "alert rule")
        if owner_id is not None and rule.owner_id != owner_id:
            raise NotFoundError(f"no alert rule {rule_id!r}")
        return rule

    def list_alert_rules(self, owner_id: str | None = None) -> list[AlertRule]:
        return [r for r in self._rules.values() if owner_id in (None, r.owner_id)]

    def delete_alert_rule(self, rule_id: str) -> None:
        with self._lock:
            _get(self._rules, rule_id, "alert rule")
            del self._rules[rule_id]
            self._changed()
            self._events = [e for e in self._events if e.rule_id != rule_id]
            self._forget_states(rule_id)

    def _forget_states(self, rule_id: str) -> None:
        self._alert_states = {k: s for k, s in self._alert_states.items() if k[0] != rule_id}

    def update_alert_rule(self, rule: AlertRule) -> AlertRule:
        with self._lock:
            current = _get(self._rules, rule.id, "alert rule")
            stored = attrs.evolve(rule, owner_id=current.owner_id, created_at=current.created_at)
            self._rules[rule.id] = stored
            self._changed()
            condition = ("metric", "comparison", "threshold", "for_duration", "scope", "enabled")
            if any(getattr(current, name) != getattr(stored, name) for name in condition):
                self._forget_states(rule.id)
            return stored

    def add_alert_event(self, event: AlertEvent) -> AlertEvent:
        with self._lock:
            _get(self._rules, event.rule_id, "alert rule")
            _get(self._machines, event.machine_id, "machine")
            if any(e.id == event.id for e in self._events):
                raise ConflictError(f"alert event {event.id!r} exists")
            self._events.append(event)
            return event

    def _machine_owned(self, machine_id: str, owner_id: str | None) -> bool:
        """Alert events and states belong to their machine's owner."""
        machine = self._machines.get(machine_id)
        return owner_id is None or (machine is not None and machine.owner_id == owner_id)

    def list_alert_events(
        self,
        owner_id: str | None = None,
        machine_id: str | None = None,
        limit: int = 100,
        *,
        rule_id: str | None = None,
        state: AlertState | None = None,
        acknowledged: bool | None = None,
        since: datetime | None = None,
    ) -> list[AlertEvent]:
        found = [
            e
            for e in self._events
            if self._machine_owned(e.machine_id, owner_id)
            and machine_id in (None, e.machine_id)
            and rule_id in (None, e.rule_id)
            and state in (None, e.state)
            and acknowledged in (None, e.acknowledged_at is not None)
            and (since is None or e.at >= since)
        ]
        return sorted(found, key=lambda e: e.at, reverse=True)[: max(0, limit)]

    def acknowledge_alert_event(
        self, event_id: str, by: str, at: datetime, owner_id: str | None = None
    ) -> AlertEvent:
        with self._lock:
            for index, event in enumerate(self._events):
                if event.id == event_id and self._machine_owned(event.machine_id, owner_id):
                    if event.acknowledged_at is None:
                        event = attrs.evolve(event, acknowledged_at=at, acknowledged_by=by)
                        self._events[index] = event
                    return event
            raise NotFoundError(f"no alert event {event_id!r}")

    def list_alert_states(
        self,
        owner_id: str | None = None,
        *,
        rule_id: str | None = None,
        machine_id: str | None = None,
        states: Sequence[AlertState] | None = None,
    ) -> list[AlertStatus]:
        return [
            s
            for s in self._alert_states.values()
            if self._machine_owned(s.machine_id, owner_id)
            and rule_id in (None, s.rule_id)
            and machine_id in (None, s.machine_id)
            and (states is None or s.state in states)
        ]

    def record_alert_transitions(
        self, transitions: Sequence[AlertTransition]
    ) -> list[AlertTransition]:
        with self._lock:
            applied = [t for t in transitions if self._move_series(t)]
            self._events.extend(t.event for t in applied if t.event is not None)
            self._write_outbox(t.outbox for t in applied if t.outbox is not None)
            return applied

    def _move_series(self, transition: AlertTransition) -> bool:
        status, previous = transition.status, transition.previous
        key = (status.rule_id, status.series)
        careless = "stale-alert" in self._flaws
        if previous is None:
            if key in self._alert_states and not careless:
                return False
            if status.rule_id not in self._rules or status.machine_id not in self._machines:
                return False
        else:
            current = self._alert_states.get(key)
            if current is None:
                return False
            if (current.state, current.since) != (previous.state, previous.since) and not careless:
                return False
        self._alert_states[key] = status
        return True

    # heartbeat

    def find_status_changes(
        self, now: datetime, threshold: timedelta, machine_ids: Sequence[str] | None = None
    ) -> list[tuple[Machine, MachineStatus]]:
        due = []
        for machine in sorted(self._machines.values(), key=lambda m: m.id):
            if machine.last_seen is None:
                continue  # never reported: keeps its status
            if machine_ids is not None and machine.id not in machine_ids:
                continue
            limit = machine.offline_after or threshold
            status = (
                MachineStatus.OFFLINE if machine.last_seen < now - limit else MachineStatus.ONLINE
            )
            if machine.status is not status:
                due.append((machine, status))
        return due

    def record_status_changes(self, transitions: Sequence[StatusTransition]) -> list[StatusChange]:
        with self._lock:
            applied = []
            for transition in transitions:
                change = transition.change
                machine = self._machines.get(change.machine_id)
                if machine is None:
                    continue
                if machine.status is not change.previous and "reapplied-status" not in self._flaws:
                    continue
                self._machines[machine.id] = attrs.evolve(machine, status=change.status)
                applied.append(transition)
            self._status_changes.extend(t.change for t in applied)
            self._write_outbox(t.event for t in applied if t.event is not None)
            return [t.change for t in applied]

    def list_status_changes(
        self, machine_id: str, *, since: datetime | None = None, limit: int = 100
    ) -> list[StatusChange]:
        found = [
            c
            for c in reversed(self._status_changes)
            if c.machine_id == machine_id and (since is None or c.at >= since)
        ]
        return found[: max(0, limit)]

    # notification channels

    def add_channel(self, channel: Channel) -> Channel:
        with self._lock:
            _get(self._users, channel.owner_id, "user")
            if channel.id in self._channels:
                raise ConflictError(f"channel {channel.id!r} exists")
            self._check_channel_name(channel)
            self._channels[channel.id] = channel
            return channel

    def _check_channel_name(self, channel: Channel) -> None:
        for other in self._channels.values():
            if (other.owner_id, other.name) == (channel.owner_id, channel.name) and (
                other.id != channel.id
            ):
                raise ConflictError(f"a channel named {channel.name!r} exists")

    def get_channel(self, channel_id: str, owner_id: str | None = None) -> Channel:
        channel = _get(self._channels, channel_id, "channel")
        if owner_id not in (None, channel.owner_id):
            raise NotFoundError(f"no channel {channel_id!r}")
        return channel

    def list_channels(self, owner_id: str | None = None) -> list[Channel]:
        found = [c for c in self._channels.values() if owner_id in (None, c.owner_id)]
        return sorted(found, key=lambda c: (c.name, c.id))

    def update_channel(self, channel: Channel) -> Channel:
        with self._lock:
            current = _get(self._channels, channel.id, "channel")
            stored = attrs.evolve(channel, owner_id=current.owner_id, created_at=current.created_at)
            self._check_channel_name(stored)
            self._channels[channel.id] = stored
            return stored

    def delete_channel(self, channel_id: str, owner_id: str | None = None) -> None:
        with self._lock:
            self.get_channel(channel_id, owner_id)
            del self._channels[channel_id]
            self._deliveries = {
                k: d for k, d in self._deliveries.items() if d.channel_id != channel_id
            }

    # the outbox

    def add_outbox_events(self, events: Sequence[OutboxEvent]) -> None:
        with self._lock:
            self._write_outbox(events)

    def _write_outbox(self, events: Iterable[OutboxEvent]) -> None:
        batch = list(events)
        taken = [e.id for e in batch if e.id in self._outbox]
        if taken or len({e.id for e in batch}) < len(batch):
            raise ConflictError(f"outbox events exist: {taken}")
        self._outbox.update((e.id, e) for e in batch)

    def list_outbox_events(
        self,
        owner_id: str | None = None,
        *,
        state: EventState | None = None,
        silence_id: str | None = None,
        ids: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[OutboxEvent]:
        found = [
            e
            for e in reversed(self._outbox.values())
            if owner_id in (None, e.owner_id)
            and state in (None, e.state)
            and silence_id in (None, e.silence_id)
            and (ids is None or e.id in ids)
        ]
        return found[: max(0, limit)]

    def fan_out(self, now: datetime, limit: int = 500) -> int:
        with self._lock:
            new = [e for e in self._outbox.values() if e.state is EventState.NEW][:limit]
            for event in new:
                silence = self._muting(event)
                if silence is not None:
                    self._outbox[event.id] = attrs.evolve(
                        event, state=EventState.SILENCED, silence_id=silence.id
                    )
                    continue
                for channel in self._receivers(event.owner_id):
                    skipped = not channel.enabled
                    delivery = Delivery(
                        id=new_id(),
                        event_id=event.id,
                        channel_id=channel.id,
                        owner_id=channel.owner_id,
                        state=DeliveryState.SKIPPED if skipped else DeliveryState.PENDING,
                        next_attempt_at=now,
                        last_error=skipped_because(channel.disabled_reason) if skipped else None,
                        created_at=now,
                    )
                    self._deliveries[delivery.id] = delivery
                self._outbox[event.id] = attrs.evolve(event, state=EventState.DISPATCHED)
            return len(new)

    def _muting(self, event: OutboxEvent) -> Silence | None:
        if "unsilenced" in self._flaws:
            return None
        machine = self._machines.get(event.machine_id or "")
        labels = () if machine is None else machine.labels
        for silence in self._silences.values():
            if (
                silence.owner_id == event.owner_id
                and silence.active(event.occurred_at)
                and silence.matches(event.machine_id, labels, event.rule_id)
            ):
                return silence
        return None

    def _receivers(self, owner_id: str | None) -> list[Channel]:
        """Channels of the owner; of every administrator for an unowned event."""
        if owner_id is None:
            owners = {u.id for u in self._users.values() if u.role is Role.ADMIN}
        else:
            owners = {owner_id}
        return [c for c in self._channels.values() if c.owner_id in owners]

    def claim_deliveries(
        self, now: datetime, lease: timedelta, limit: int = 50
    ) -> list[tuple[Delivery, OutboxEvent, Channel]]:
        with self._lock:
            due = sorted(
                (
                    d
                    for d in self._deliveries.values()
                    if d.state is DeliveryState.PENDING
                    and d.next_attempt_at <= now
                    and (self._leases.get(d.id, now) <= now or "no-leases" in self._flaws)
                ),
                key=lambda d: (d.next_attempt_at, d.created_at, d.id),
            )[:limit]
            for delivery in due:
                self._leases[delivery.id] = now + lease
            order = {event_id: index for index, event_id in enumerate(self._outbox)}
            due.sort(key=lambda d: (order[d.event_id], d.id))
            return [(d, self._outbox[d.event_id], self._channels[d.channel_id]) for d in due]

    def finish_delivery(self, delivery: Delivery, *, disable_channel: str | None = None) -> None:
        with self._lock:
            current = self._deliveries.get(delivery.id)
            if current is None:
                return
            self._deliveries[delivery.id] = attrs.evolve(
                current,
                state=delivery.state,
                attempts=delivery.attempts,
                next_attempt_at=delivery.next_attempt_at,
                last_error=delivery.last_error,
                delivered_at=delivery.delivered_at,
            )
            self._leases.pop(delivery.id, None)
            channel = self._channels.get(current.channel_id)
            if disable_channel is not None and channel is not None:
                self._channels[channel.id] = attrs.evolve(
                    channel, enabled=False, disabled_reason=disable_channel
                )
                self._skip_pending(channel.id, skipped_because(disable_channel))

    def _skip_pending(self, channel_id: str, reason: str) -> None:
        for other in list(self._deliveries.values()):
            if other.channel_id == channel_id and other.state is DeliveryState.PENDING:
                self._deliveries[other.id] = attrs.evolve(
                    other, state=DeliveryState.SKIPPED, last_error=reason
                )
                self._leases.pop(other.id, None)

    def list_deliveries(
        self,
        owner_id: str | None = None,
        *,
        state: DeliveryState | None = None,
        event_id: str | None = None,
        channel_id: str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        found = [
            d
            for d in reversed(self._deliveries.values())
            if owner_id in (None, d.owner_id)
            and state in (None, d.state)
            and event_id in (None, d.event_id)
            and channel_id in (None, d.channel_id)
        ]
        # sorted() is stable: deliveries of one instant stay newest-added first.
        return sorted(found, key=lambda d: d.created_at, reverse=True)[: max(0, limit)]

    def retry_delivery(
        self, delivery_id: str, now: datetime, owner_id: str | None = None
    ) -> Delivery:
        with self._lock:
            delivery = _get(self._deliveries, delivery_id, "delivery")
            if owner_id not in (None, delivery.owner_id):
                raise NotFoundError(f"no delivery {delivery_id!r}")
            if delivery.state not in (DeliveryState.DEAD, DeliveryState.SKIPPED):
                raise ConflictError(f"delivery {delivery_id!r} is {delivery.state}")
            retried = attrs.evolve(
                delivery, state=DeliveryState.PENDING, attempts=0, next_attempt_at=now
            )
            self._deliveries[delivery_id] = retried
            self._leases.pop(delivery_id, None)
            return retried

    def resend_skipped(self, channel_id: str, now: datetime, owner_id: str | None = None) -> int:
        with self._lock:
            channel = _get(self._channels, channel_id, "channel")
            if owner_id not in (None, channel.owner_id):
                raise NotFoundError(f"no channel {channel_id!r}")
            if not channel.enabled:
                raise ConflictError(f"channel {channel_id!r} is disabled")
            held = [
                d
                for d in self._deliveries.values()
                if d.channel_id == channel_id and d.state is DeliveryState.SKIPPED
            ]
            for delivery in held:
                self._deliveries[delivery.id] = attrs.evolve(
                    delivery, state=DeliveryState.PENDING, attempts=0, next_attempt_at=now
                )
            return len(held)

    # silences

    def add_silence(self, silence: Silence) -> Silence:
        with self._lock:
            _get(self._users, silence.owner_id, "user")
            if silence.id in self._silences:
                raise ConflictError(f"silence {silence.id!r} exists")
            self._silences[silence.id] = silence
            return silence

    def get_silence(self, silence_id: str, owner_id: str | None = None) -> Silence:
        silence = _get(self._silences, silence_id, "silence")
        if owner_id not in (None, silence.owner_id):
            raise NotFoundError(f"no silence {silence_id!r}")
        return silence

    def list_silences(
        self, owner_id: str | None = None, *, active_at: datetime | None = None
    ) -> list[Silence]:
        found = [
            s
            for s in self._silences.values()
            if owner_id in (None, s.owner_id) and (active_at is None or s.active(active_at))
        ]
        return sorted(found, key=lambda s: (s.starts_at, s.id))

    def end_silence(self, silence_id: str, at: datetime, owner_id: str | None = None) -> Silence:
        with self._lock:
            silence = self.get_silence(silence_id, owner_id)
            if silence.ends_at > at:
                silence = attrs.evolve(silence, ends_at=at, starts_at=min(silence.starts_at, at))
                self._silences[silence_id] = silence
            return silence

    def due_silences(self, now: datetime) -> list[Silence]:
        found = [s for s in self._silences.values() if s.ended_at is None and s.ends_at <= now]
        return sorted(found, key=lambda s: (s.ends_at, s.id))

    def close_silence(self, silence_id: str, at: datetime, events: Sequence[OutboxEvent]) -> bool:
        with self._lock:
            silence = self._silences.get(silence_id)
            if silence is None:
                return False
            if silence.ended_at is not None and "reopened-silence" not in self._flaws:
                return False
            self._write_outbox(events)
            self._silences[silence_id] = attrs.evolve(silence, ended_at=at)
            return True

    def set_api_key_expiry(self, key_id: str, expires_at: datetime | None) -> None:
        key = _get(self._keys, key_id, "API key")
        self._keys[key_id] = attrs.evolve(key, expires_at=expires_at)

    def add_session(self, session: Session) -> Session:
        with self._lock:
            _get(self._users, session.user_id, "user")
            if any(s.token_hash == session.token_hash for s in self._sessions.values()):
                raise ConflictError("token hash taken")
            self._sessions[session.id] = session
            return session

    def find_session(self, token_hash: str) -> Session | None:
        return next((s for s in self._sessions.values() if s.token_hash == token_hash), None)

    def revoke_session(self, session_id: str, at: datetime) -> None:
        session = _get(self._sessions, session_id, "session")
        if session.revoked_at is None:
            self._sessions[session_id] = attrs.evolve(session, revoked_at=at)

    def revoke_user_sessions(self, user_id: str, at: datetime) -> int:
        with self._lock:
            _get(self._users, user_id, "user")
            active = [
                s for s in self._sessions.values() if s.user_id == user_id and s.is_active(at)
            ]
            for session in active:
                self._sessions[session.id] = attrs.evolve(session, revoked_at=at)
            return len(active)

    def list_sessions(self, user_id: str) -> list[Session]:
        found = [s for s in self._sessions.values() if s.user_id == user_id]
        return sorted(found, key=lambda s: s.created_at, reverse=True)

    def add_reset_token(self, token: ResetToken) -> ResetToken:
        with self._lock:
            _get(self._users, token.user_id, "user")
            if any(t.token_hash == token.token_hash for t in self._resets.values()):
                raise ConflictError("token hash taken")
            self._resets[token.id] = token
            return token

    def find_reset_token(self, token_hash: str) -> ResetToken | None:
        return next((t for t in self._resets.values() if t.token_hash == token_hash), None)

    def use_reset_token(self, token_id: str, at: datetime) -> bool:
        with self._lock:
            token = _get(self._resets, token_id, "reset token")
            if token.expires_at <= at:
                return False
            if token.used_at is not None and "reusable-reset-token" not in self._flaws:
                return False
            self._resets[token_id] = attrs.evolve(token, used_at=at)
            return True

    def end_reset_tokens(self, user_id: str, at: datetime) -> int:
        with self._lock:
            live = [
                t
                for t in self._resets.values()
                if t.user_id == user_id and t.used_at is None and t.expires_at > at
            ]
            for token in live:
                self._resets[token.id] = attrs.evolve(token, expires_at=at)
            return len(live)

    def add_login_failure(self, username: str, at: datetime, client: str | None) -> None:
        with self._lock:
            self._failures.append(LoginFailure(username, at, client))

    def count_login_failures(self, username: str, since: datetime) -> int:
        return sum(1 for f in self._failures if f.username == username and f.at >= since)

    def login_failure_times(self, username: str, since: datetime) -> list[datetime]:
        return sorted(f.at for f in self._failures if f.username == username and f.at >= since)

    def recent_login_failures(
        self, username: str, client: str | None, since: datetime
    ) -> list[LoginFailure]:
        found = [
            f
            for f in self._failures
            if f.at >= since and (f.username == username or (client and f.client == client))
        ]
        return sorted(found, key=lambda f: f.at)

    def clear_login_failures(self, username: str) -> None:
        with self._lock:
            self._failures = [f for f in self._failures if f.username != username]

    def clear_login_failures_from(self, username: str, client: str | None) -> None:
        with self._lock:
            self._failures = [
                f for f in self._failures if (f.username, f.client) != (username, client)
            ]

    def add_claim(self, claim: AgentClaim) -> AgentClaim:
        with self._lock:
            current = self._claims.get(claim.agent_id)
            if current is not None and current.status in (ClaimStatus.PENDING, ClaimStatus.CLAIMED):
                raise ConflictError(f"agent {claim.agent_id!r} is registered")
            self._claims[claim.agent_id] = claim
            return claim

    def get_claim(self, agent_id: str) -> AgentClaim:
        return _get(self._claims, agent_id, "registration")

    def list_claims(self, status: ClaimStatus | None = None) -> list[AgentClaim]:
        found = [c for c in self._claims.values() if status in (None, c.status)]
        return sorted(found, key=lambda c: c.created_at)

    def update_claim(
        self, claim: AgentClaim, expected_status: ClaimStatus | None = None
    ) -> AgentClaim:
        with self._lock:
            current = _get(self._claims, claim.agent_id, "registration")
            if claim.machine_id is not None:
                _get(self._machines, claim.machine_id, "machine")
            if expected_status not in (None, current.status):
                raise ConflictError(f"registration is {current.status}")
            self._claims[claim.agent_id] = claim
            return claim

    def take_sealed_key(self, agent_id: str) -> bytes | None:
        with self._lock:
            claim = _get(self._claims, agent_id, "registration")
            if claim.status is not ClaimStatus.CLAIMED or claim.sealed_key is None:
                return None
            self._claims[agent_id] = attrs.evolve(
                claim, status=ClaimStatus.DELIVERED, sealed_key=None
            )
            return claim.sealed_key

    def expire_claims(self, now: datetime) -> int:
        with self._lock:
            due = [
                c
                for c in self._claims.values()
                if c.status is ClaimStatus.PENDING and c.expires_at <= now
            ]
            for claim in due:
                self._claims[claim.agent_id] = attrs.evolve(claim, status=ClaimStatus.EXPIRED)
            return len(due)

    def add_audit(self, entry: AuditEntry) -> None:
        with self._lock:
            if any(e.id == entry.id for e in self._audit):
                raise ConflictError(f"audit entry {entry.id!r} exists")
            self._audit.append(entry)

    def list_audit(
        self,
        *,
        action: str | None = None,
        actor_id: str | None = None,
        via: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        target_id: str | None = None,
        until: datetime | None = None,
        before: str | None = None,
    ) -> list[AuditEntry]:
        # sorted() is stable: entries of one instant stay newest-added first.
        newest_added_first = self._audit[::-1]
        everything = sorted(newest_added_first, key=lambda e: e.at, reverse=True)
        if before is not None:
            mark = next((i for i, e in enumerate(everything) if e.id == before), len(everything))
            everything = everything[mark + 1 :]
        found = [
            e
            for e in everything
            if action in (None, e.action)
            and actor_id in (None, e.actor_id)
            and via in (None, e.via)
            and target_id in (None, e.target_id)
            and (since is None or e.at >= since)
            and (until is None or e.at < until)
        ]
        return found[: max(0, limit)]

    # housekeeping

    def purge(self, now: datetime, policy: PurgePolicy) -> PurgeReport:
        ended = now - policy.grace
        with self._lock:
            sessions = _drop(self._sessions, lambda s: _before(ended, s.expires_at, s.revoked_at))
            resets = _drop(self._resets, lambda t: _before(ended, t.expires_at, t.used_at))
            failures = [f for f in self._failures if f.at >= ended - policy.login_window]
            failures_gone, self._failures = len(self._failures) - len(failures), failures
            claims = _drop(
                self._claims,
                lambda c: (
                    c.status is not ClaimStatus.CLAIMED and c.expires_at < now - policy.claims
                ),
            )
            events = _drop(self._outbox, lambda e: self._handled(e, now - policy.outbox))
            deliveries = _drop(self._deliveries, lambda d: d.event_id not in self._outbox)
            changes = [c for c in self._status_changes if c.at >= now - policy.history]
            changes_gone, self._status_changes = len(self._status_changes) - len(changes), changes
            alerts = [e for e in self._events if not self._closed(e, now - policy.history)]
            alerts_gone, self._events = len(self._events) - len(alerts), alerts
            return PurgeReport(
                sessions=sessions,
                reset_tokens=resets,
                login_failures=failures_gone,
                claims=claims,
                outbox_events=events,
                deliveries=deliveries,
                status_changes=changes_gone,
                alert_events=alerts_gone,
            )

    def _handled(self, event: OutboxEvent, before: datetime) -> bool:
        if event.occurred_at >= before or event.state is EventState.NEW:
            return False
        if "purge-unsent" in self._flaws:
            return True
        silence = self._silences.get(event.silence_id or "")
        if silence is not None and silence.ended_at is None:
            return False
        finished = (DeliveryState.DELIVERED, DeliveryState.DEAD, DeliveryState.SKIPPED)
        return all(d.state in finished for d in self._deliveries.values() if d.event_id == event.id)

    def _closed(self, event: AlertEvent, before: datetime) -> bool:
        if event.at >= before:
            return False
        current = self._alert_states.get((event.rule_id, event.series))
        still_open = (
            event.state is AlertState.FIRING
            and event.acknowledged_at is None
            and current is not None
            and current.state is AlertState.FIRING
            and current.since <= event.at
        )
        return not still_open

    def get_agent_config(self, machine_id: str) -> AgentConfig | None:
        return self._configs.get(machine_id)

    def set_agent_config(self, config: AgentConfig) -> AgentConfig:
        with self._lock:
            _get(self._machines, config.machine_id, "machine")
            current = self._configs.get(config.machine_id)
            version = 1 if current is None else current.version + 1
            if "given-config-version" in self._flaws:
                version = config.version
            stored = attrs.evolve(config, version=version)
            self._configs[config.machine_id] = stored
            return stored


def _before(limit: datetime, *times: datetime | None) -> bool:
    """Whether any of ``times`` (``None``: not happened) is before ``limit``."""
    return any(at is not None and at < limit for at in times)


def _drop(records: dict[str, _R], gone: Callable[[_R], bool]) -> int:
    """Delete the records ``gone`` says go; returns how many."""
    keys = [key for key, record in records.items() if gone(record)]
    for key in keys:
        del records[key]
    return len(keys)


def _get(records: Mapping[str, Any], record_id: str, what: str) -> Any:
    try:
        return records[record_id]
    except KeyError:
        raise NotFoundError(f"no {what} {record_id!r}") from None


class MemoryStorage:
    name = "memory"

    def __init__(
        self,
        retention: RetentionPolicy,
        capabilities: frozenset[Capability] = ALL_CAPABILITIES,
        flaws: Sequence[str] = (),
    ) -> None:
        self.capabilities = capabilities
        self.metrics = MemoryMetrics(retention, capabilities, set(flaws))
        self.state = MemoryState(set(flaws), drop_series=self.metrics.delete_machine)

    def migrate(self) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------- collectors


@attrs.frozen
class CountingSettings:
    count: int = 3


class CountingCollector:
    """Emits ``demo.value`` for ``count`` labelled series and ``demo.calls``."""

    name: ClassVar[str] = "counting"
    settings_class: ClassVar[type[Any] | None] = CountingSettings

    def __init__(self, settings: CountingSettings | None = None) -> None:
        self.settings = settings or CountingSettings()
        self._calls = 0
        self._lock = threading.Lock()

    def collect(self, target: Target) -> list[Reading]:
        with self._lock:
            self._calls += 1
            calls = self._calls
        readings = [Reading("demo.value", n, {"n": str(n)}) for n in range(self.settings.count)]
        return [*readings, Reading("demo.calls", calls)]


class AsyncCountingCollector(CountingCollector):
    name: ClassVar[str] = "async-counting"

    async def collect(self, target: Target) -> list[Reading]:  # type: ignore[override]
        await anyio.sleep(0)
        return super().collect(target)


class NamelessCollector(CountingCollector):
    name: ClassVar[str] = ""


@attrs.frozen
class StrictSettings:
    path: str


class SettingsWithoutDefaultsCollector(CountingCollector):
    name: ClassVar[str] = "strict"
    settings_class: ClassVar[type[Any]] = StrictSettings

    def __init__(self, settings: Any = None) -> None:
        super().__init__()


class DictCollector(CountingCollector):
    name: ClassVar[str] = "dicts"

    def collect(self, target: Target) -> list[Any]:  # type: ignore[override]
        return [{"metric": "demo.value", "value": 1.0}]


class GeneratorCollector(CountingCollector):
    name: ClassVar[str] = "generator"

    def collect(self, target: Target) -> Any:  # type: ignore[override]
        yield Reading("demo.value", 1)


class DuplicateSeriesCollector(CountingCollector):
    name: ClassVar[str] = "duplicates"

    def collect(self, target: Target) -> list[Reading]:
        return [Reading("demo.value", 1, {"n": "0"}), Reading("demo.value", 2, {"n": "0"})]


class OneShotCollector(CountingCollector):
    name: ClassVar[str] = "one-shot"

    def collect(self, target: Target) -> list[Reading]:
        readings = super().collect(target)
        if self._calls > 1:
            raise RuntimeError("a second collection fails")
        return readings


class NotReentrantCollector(CountingCollector):
    """Fails when a second call starts while the first one runs (and waits for one)."""

    name: ClassVar[str] = "not-reentrant"

    def __init__(self, settings: CountingSettings | None = None) -> None:
        super().__init__(settings)
        self._busy = threading.Event()
        self._second = threading.Event()

    def collect(self, target: Target) -> list[Reading]:
        if self._busy.is_set():
            self._second.set()
            raise RuntimeError("collect() is already running")
        self._busy.set()
        try:
            # Calls from worker threads wait for each other, so that two calls
            # started together really overlap.
            if threading.current_thread() is not threading.main_thread():
                self._second.wait(5.0)
            return super().collect(target)
        finally:
            self._busy.clear()


LOOP_BLOCK_SECONDS = 1.0
"""How long ``SleepyAsyncCollector`` holds the event loop: twice the suite's limit."""


class SleepyAsyncCollector(CountingCollector):
    """A coroutine that sleeps with ``time.sleep``: the whole event loop sleeps with it."""

    name: ClassVar[str] = "sleepy"

    async def collect(self, target: Target) -> list[Reading]:  # type: ignore[override]
        time.sleep(LOOP_BLOCK_SECONDS)
        return super().collect(target)


def _loopback_handshake() -> None:
    """Connect a blocking socket to a loopback listener of its own (quick, but blocking)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname(), timeout=5.0):
            pass


class BlockingSocketAsyncCollector(CountingCollector):
    """A coroutine that connects a blocking socket on the event loop's thread."""

    name: ClassVar[str] = "blocking-socket"

    async def collect(self, target: Target) -> list[Reading]:  # type: ignore[override]
        _loopback_handshake()
        return super().collect(target)


class ThreadedAsyncCollector(CountingCollector):
    """The same blocking connect, done right: in a worker thread, the loop stays free."""

    name: ClassVar[str] = "threaded"

    async def collect(self, target: Target) -> list[Reading]:  # type: ignore[override]
        await anyio.to_thread.run_sync(_loopback_handshake)
        return super().collect(target)


class FlagCollector(CountingCollector):
    """Reports whether something is up as a bool, which a reading refuses."""

    name: ClassVar[str] = "flag"

    def collect(self, target: Target) -> list[Reading]:
        return [Reading("demo.up", True)]


@attrs.frozen
class ProbeSettings:
    timeout: float = 5.0
    """Seconds to wait for the host to connect and to answer."""


class ProbeCollector:
    """Sends ``ping`` to ``target.host:options['port']`` and reads the answer.

    The local machine (no host) answers itself.
    """

    name: ClassVar[str] = "probe"
    settings_class: ClassVar[type[Any] | None] = ProbeSettings

    def __init__(self, settings: ProbeSettings | None = None) -> None:
        self.settings = settings or ProbeSettings()

    def collect(self, target: Target) -> list[Reading]:
        if target.host is None:
            return [Reading("probe.up", 1.0)]
        with self.connect((target.host, int(target.options["port"]))) as sock:
            sock.sendall(b"ping\n")
            answer = sock.recv(64)
        return [Reading("probe.up", 1.0 if answer else 0.0)]

    def connect(self, address: tuple[str, int]) -> socket.socket:
        return socket.create_connection(address, timeout=self.settings.timeout)


class DeafProbeCollector(ProbeCollector):
    """Ignores its timeout: waits for the answer as long as the host keeps the connection."""

    name: ClassVar[str] = "deaf-probe"

    def connect(self, address: tuple[str, int]) -> socket.socket:
        return socket.create_connection(address)


# ---------------------------------------------------------------------------- notifiers


class Inboxes:
    """The loopback receiver of ``MemoryNotifier``: messages by inbox name."""

    def __init__(self) -> None:
        self.messages: dict[str, list[ReceivedMessage]] = {}

    def deliver(self, inbox: str, message: ReceivedMessage) -> None:
        self.messages.setdefault(inbox, []).append(message)


@attrs.frozen
class MemoryChannel:
    """A ``MemoryNotifier`` channel: an inbox, and a token the inbox would need."""

    inbox: str
    token: str = attrs.field(default="", metadata={"secret": True})


class MemoryNotifier:
    name: ClassVar[str] = "memory"
    settings_class: ClassVar[type[Any] | None] = None
    channel_class: ClassVar[type[Any] | None] = MemoryChannel

    def __init__(self, inboxes: Inboxes | None = None) -> None:
        self.inboxes = inboxes or Inboxes()

    def message(self, notification: Notification) -> ReceivedMessage:
        body = f"{notification.title}\n\n{notification.text}"
        return ReceivedMessage(body, notification.id, raw=notification)

    def send(self, channel: Mapping[str, Any], notification: Notification) -> DeliveryResult:
        inbox = channel["inbox"]
        if inbox == "closed":
            return DeliveryResult(DeliveryStatus.RETRY, "inbox is closed", retry_after=1.0)
        self.inboxes.deliver(inbox, self.message(notification))
        return DeliveryResult(DeliveryStatus.DELIVERED)


class AsyncMemoryNotifier(MemoryNotifier):
    name: ClassVar[str] = "async-memory"

    async def send(  # type: ignore[override]
        self, channel: Mapping[str, Any], notification: Notification
    ) -> DeliveryResult:
        await anyio.sleep(0)
        return super().send(channel, notification)


class SleepyAsyncNotifier(MemoryNotifier):
    """A coroutine send that waits with ``time.sleep``: the event loop waits with it."""

    name: ClassVar[str] = "sleepy-notifier"

    async def send(  # type: ignore[override]
        self, channel: Mapping[str, Any], notification: Notification
    ) -> DeliveryResult:
        time.sleep(LOOP_BLOCK_SECONDS)
        return super().send(channel, notification)


class KeylessNotifier(MemoryNotifier):
    name: ClassVar[str] = "keyless"

    def message(self, notification: Notification) -> ReceivedMessage:
        return attrs.evolve(super().message(notification), idempotency_key=None)


class TitleOnlyNotifier(MemoryNotifier):
    name: ClassVar[str] = "title-only"

    def message(self, notification: Notification) -> ReceivedMessage:
        return ReceivedMessage(notification.title, notification.id)


class OptimisticNotifier(MemoryNotifier):
    """Reports every delivery as done, even to a closed inbox."""

    name: ClassVar[str] = "optimistic"

    def send(self, channel: Mapping[str, Any], notification: Notification) -> DeliveryResult:
        if channel["inbox"] != "closed":
            self.inboxes.deliver(channel["inbox"], self.message(notification))
        return DeliveryResult(DeliveryStatus.DELIVERED)


class ChannelUnawareNotifier(MemoryNotifier):
    """Declares no channel class, so the core cannot validate channel configs."""

    name: ClassVar[str] = "channel-unaware"
    channel_class: ClassVar[type[Any] | None] = None


@attrs.frozen
class CarelessChannel:
    inbox: str
    api_token: str = ""


class UnmarkedSecretNotifier(MemoryNotifier):
    """Its channel's ``api_token`` is not marked secret, so the API would show it."""

    name: ClassVar[str] = "unmarked-secret"
    channel_class: ClassVar[type[Any] | None] = CarelessChannel


class LeakyNotifier(MemoryNotifier):
    """Puts the channel's token in the detail and the log when an inbox is closed."""

    name: ClassVar[str] = "leaky"

    def send(self, channel: Mapping[str, Any], notification: Notification) -> DeliveryResult:
        if channel["inbox"] == "closed":
            detail = f"inbox closed for token {channel.get('token')}"
            log.warning("delivery failed: %s", detail)
            return DeliveryResult(DeliveryStatus.RETRY, detail)
        return super().send(channel, notification)


class MutatingNotifier(MemoryNotifier):
    """Writes what it learnt into the channel mapping it was given."""

    name: ClassVar[str] = "mutating"

    def send(self, channel: Mapping[str, Any], notification: Notification) -> DeliveryResult:
        channel["last_id"] = notification.id  # type: ignore[index]
        return super().send(channel, notification)


@attrs.frozen
class PathChannel:
    """A channel whose validator raises RuntimeError, not ValueError."""

    path: str = attrs.field()

    @path.validator
    def _absolute(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not value.startswith("/"):
            raise RuntimeError("path must be absolute")


class WrongErrorNotifier(MemoryNotifier):
    name: ClassVar[str] = "wrong-error"
    channel_class: ClassVar[type[Any] | None] = PathChannel


@attrs.frozen
class LaxChannel:
    """A channel whose validator checks the type only, so an empty inbox passes."""

    inbox: str = attrs.field(validator=attrs.validators.instance_of(str))


class LaxNotifier(MemoryNotifier):
    name: ClassVar[str] = "lax"
    channel_class: ClassVar[type[Any] | None] = LaxChannel


@attrs.frozen
class TokenSettings:
    token: str = ""


class NeedsTokenNotifier(MemoryNotifier):
    """Refuses to be built without a token, which its default settings lack."""

    name: ClassVar[str] = "needs-token"
    settings_class: ClassVar[type[Any] | None] = TokenSettings

    def __init__(self, settings: TokenSettings | None = None, inboxes: Inboxes | None = None):
        super().__init__(inboxes)
        if settings is None or not settings.token:
            raise ValueError("a token is required")


def _url(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{attribute.name} must be an http:// or https:// URL")


@attrs.frozen
class UrlChannel:
    url: str = attrs.field(validator=_url)


class UrlNotifier:
    """Delivers by connecting to the channel's URL; a refused connection is a RETRY."""

    name: ClassVar[str] = "url"
    settings_class: ClassVar[type[Any] | None] = None
    channel_class: ClassVar[type[Any] | None] = UrlChannel

    def send(self, channel: Mapping[str, Any], notification: Notification) -> DeliveryResult:
        parts = urlsplit(channel["url"])
        try:
            self.post(parts.hostname or "", parts.port or 80, notification)
        except OSError as error:
            return DeliveryResult(DeliveryStatus.RETRY, f"{parts.hostname}: {error.strerror}")
        return DeliveryResult(DeliveryStatus.DELIVERED)

    def post(self, host: str, port: int, notification: Notification) -> None:
        with socket.create_connection((host, port), timeout=5.0) as sock:
            sock.sendall(f"{notification.title}\n{notification.text}".encode())


class HopefulUrlNotifier(UrlNotifier):
    """Swallows connection errors and reports every send as delivered."""

    name: ClassVar[str] = "hopeful-url"

    def post(self, host: str, port: int, notification: Notification) -> None:
        try:
            super().post(host, port, notification)
        except OSError:
            log.debug("could not connect; never mind")


# ---------------------------------------------------------------------------- authenticators


class BearerKeyAuthenticator:
    """``authorization: Bearer <key>`` checked against the stored key hashes."""

    name: ClassVar[str] = "bearer-key"
    settings_class: ClassVar[type[Any] | None] = None

    def authenticate(self, credentials: Credentials, state: StateStore) -> Principal | None:
        scheme, _, secret = credentials.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret:
            return None
        key = state.find_api_key(hash_secret(secret))
        if key is None or not key.is_active(datetime.fromtimestamp(time.time(), UTC)):
            return None
        return Principal("machine", key.machine_id, machine_id=key.machine_id, via=self.name)


class AsyncBearerKeyAuthenticator(BearerKeyAuthenticator):
    name: ClassVar[str] = "async-bearer-key"

    async def authenticate(  # type: ignore[override]
        self, credentials: Credentials, state: StateStore
    ) -> Principal | None:
        await anyio.sleep(0)
        return super().authenticate(credentials, state)


class CarelessAuthenticator(BearerKeyAuthenticator):
    """Raises on credentials that are not its kind, and forgets to say who it is."""

    name: ClassVar[str] = "careless"

    def authenticate(self, credentials: Credentials, state: StateStore) -> Principal | None:
        secret = credentials.headers["authorization"].split(" ")[1]
        key = state.find_api_key(hash_secret(secret))
        return None if key is None else Principal("machine", key.machine_id)


class NeedsKeyAuthenticator(BearerKeyAuthenticator):
    """Refuses to be built without a key, which its default settings lack."""

    name: ClassVar[str] = "needs-key"
    settings_class: ClassVar[type[Any] | None] = TokenSettings

    def __init__(self, settings: TokenSettings | None = None) -> None:
        if settings is None or not settings.token:
            raise ValueError("a key is required")
