"""The domain model: plain attrs classes that know nothing about JSON or SQL.

Values that cross a boundary (samples, series, query results, state records) are
frozen; change a record with :func:`attrs.evolve`. Serialization lives in
:mod:`lunasentri_core.codec`, persistence behind :mod:`lunasentri_core.storage`.
"""

from __future__ import annotations

import enum
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from itertools import accumulate, repeat
from operator import add, eq, sub
from typing import Any

import attrs

# Collectors' classes live in their own module (the push agent loads only them);
# re-exported here, where the rest of the code looks for every model type.
from lunasentri_core.errors import InvalidValue
from lunasentri_core.remote import RemoteCredential, Transport
from lunasentri_core.samples import LABEL_NAME as LABEL_NAME
from lunasentri_core.samples import MAX_LABEL_NAME as MAX_LABEL_NAME
from lunasentri_core.samples import MAX_LABEL_VALUE as MAX_LABEL_VALUE
from lunasentri_core.samples import MAX_LABELS as MAX_LABELS
from lunasentri_core.samples import MAX_METRIC_NAME as MAX_METRIC_NAME
from lunasentri_core.samples import METRIC_NAME as METRIC_NAME
from lunasentri_core.samples import Labels as Labels
from lunasentri_core.samples import Reading as Reading
from lunasentri_core.samples import ReadingColumns as ReadingColumns
from lunasentri_core.samples import Sample as Sample
from lunasentri_core.samples import Target as Target
from lunasentri_core.samples import _check_finite, _check_labels, _check_metric
from lunasentri_core.samples import as_utc as as_utc
from lunasentri_core.samples import new_id as new_id
from lunasentri_core.samples import reading_columns as reading_columns
from lunasentri_core.samples import to_labels as to_labels
from lunasentri_core.samples import utcnow as utcnow


def _to_optional_labels(
    value: Mapping[str, str] | Iterable[tuple[str, str]] | None,
) -> Labels | None:
    return None if value is None else to_labels(value)


def _check_positive(_: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value <= timedelta(0):
        raise InvalidValue("must be positive", attribute)


# --------------------------------------------------------------------------- metrics


def _samples(value: Iterable[Sample]) -> tuple[Sample, ...]:
    return tuple(value)


@attrs.frozen
class MachineSamples:
    """Samples that belong to one machine: the unit the ingest writer batches."""

    machine_id: str
    samples: tuple[Sample, ...] = attrs.field(converter=_samples)
    heard: bool = True
    """Whether the samples show the machine answered: then its ``last_seen``
    advances. A poll that found its host down writes ``poll.up = 0`` unheard."""


@attrs.frozen
class SeriesKey:
    """Identity of a series: which machine, which metric, which labels."""

    machine_id: str
    metric: str = attrs.field(validator=_check_metric)
    labels: Labels = attrs.field(default=(), converter=to_labels, validator=_check_labels)

    def label(self, name: str) -> str | None:
        return dict(self.labels).get(name)


@attrs.frozen
class SeriesValue:
    """The value of a series at one timestamp (the answer to "latest")."""

    series: SeriesKey
    timestamp: datetime
    value: float


class Aggregation(enum.StrEnum):
    """How the points inside one step of a history query are combined."""

    AVG = "avg"
    MIN = "min"
    MAX = "max"
    LAST = "last"


class Resolution(enum.StrEnum):
    """Where a history answer came from: raw points or a rollup table."""

    RAW = "raw"
    MINUTE = "1m"
    HOUR = "1h"


@attrs.frozen
class HistoryQuery:
    """A range of one metric of one machine, downsampled to ``step``.

    ``labels`` selects series whose labels include every given pair; ``None``
    (the default) selects every series of the metric. With ``exact``, only the
    series whose labels are exactly ``labels`` (no labels for ``None``: the
    metric's unlabelled series, such as the CPU as a whole beside its per-core
    series). A storage backend that ignores ``exact`` answers more series than
    asked for; :func:`lunasentri_core.services.queries.history` leaves those out.

    .. versionchanged:: 0.1.0 ``exact``.
    """

    machine_id: str
    metric: str = attrs.field(validator=_check_metric)
    start: datetime = attrs.field(converter=as_utc)
    end: datetime = attrs.field(converter=as_utc)
    step: timedelta = attrs.field(validator=_check_positive)
    aggregation: Aggregation = Aggregation.AVG
    labels: Labels | None = attrs.field(default=None, converter=_to_optional_labels)
    exact: bool = False

    def selects(self, labels: Labels) -> bool:
        """Whether a series of this metric with ``labels`` is among those asked for."""
        if self.exact:
            return tuple(sorted(labels)) == tuple(sorted(self.labels or ()))
        return self.labels is None or set(self.labels) <= set(labels)

    @end.validator
    def _end_after_start(self, attribute: attrs.Attribute[datetime], value: datetime) -> None:
        if value <= self.start:
            raise ValueError("end must be after start")


@attrs.frozen
class HistoryPoint:
    """One downsampled step: ``timestamp`` is the start of the step."""

    timestamp: datetime
    value: float


@attrs.frozen
class SeriesHistory:
    series: SeriesKey
    resolution: Resolution
    points: tuple[HistoryPoint, ...]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _same_length(instance: HistoryColumns, attribute: attrs.Attribute[Any], value: Any) -> None:
    if len(value) != len(instance.timestamps):
        raise ValueError("timestamps and values must be as long as each other")


@attrs.frozen
class HistoryColumns:
    """A :class:`SeriesHistory` as two columns: what the HTTP API answers from.

    ``timestamps`` holds each step's start in microseconds since the Unix
    epoch (UTC), ascending; ``values`` the step's value at the same index.
    Building a :class:`HistoryPoint` per step costs more than reading the
    steps, so a store that can answer in columns offers ``history_columns``
    beside ``history`` (the SQL store does); :meth:`to_history` gives the points.
    """

    series: SeriesKey
    resolution: Resolution
    timestamps: array[int]
    values: array[float] = attrs.field(validator=_same_length)

    def datetimes(self) -> Iterator[datetime]:
        """The step starts as UTC datetimes.

        Evenly spaced starts (every step has data, the usual case) are made by
        adding the step to the previous start (``accumulate``: one object a
        step), others from their microseconds (two: a timedelta, then the sum).
        """
        stamps = self.timestamps
        if len(stamps) > 2:
            width = stamps[1] - stamps[0]
            if stamps[-1] - stamps[0] == width * (len(stamps) - 1) and all(
                map(eq, map(sub, stamps[1:], stamps[:-1]), repeat(width))
            ):
                first = _EPOCH + _MICROSECOND * stamps[0]
                return accumulate(
                    repeat(timedelta(microseconds=width), len(stamps) - 1), add, initial=first
                )
        return map(_EPOCH.__add__, map(_MICROSECOND.__mul__, stamps))

    def to_history(self) -> SeriesHistory:
        points = tuple(map(HistoryPoint, self.datetimes(), self.values))
        return SeriesHistory(self.series, self.resolution, points)

    @classmethod
    def from_history(cls, history: SeriesHistory) -> HistoryColumns:
        return cls(
            history.series,
            history.resolution,
            array("q", [(p.timestamp - _EPOCH) // _MICROSECOND for p in history.points]),
            array("d", [p.value for p in history.points]),
        )


@attrs.frozen
class RetentionPolicy:
    """How long each resolution is kept; ``None`` keeps it forever."""

    raw: timedelta | None = timedelta(days=7)
    minute: timedelta | None = timedelta(days=90)
    hour: timedelta | None = None


# --------------------------------------------------------------------------- state


class Role(enum.StrEnum):
    ADMIN = "admin"
    USER = "user"


@attrs.frozen
class User:
    id: str
    username: str
    role: Role = Role.USER
    created_at: datetime = attrs.field(factory=utcnow)

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


class MachineKind(enum.StrEnum):
    AGENT = "agent"
    """Pushes its own samples (the push agent)."""
    AGENTLESS = "agentless"
    """Polled by the server (WinRM, WMI, ...)."""
    LOCAL = "local"
    """The host the hub itself runs on, collected in-process."""


class MachineStatus(enum.StrEnum):
    UNKNOWN = "unknown"
    ONLINE = "online"
    OFFLINE = "offline"


@attrs.frozen
class Machine:
    id: str
    name: str
    owner_id: str | None = None
    hostname: str | None = None
    kind: MachineKind = MachineKind.AGENT
    labels: Labels = attrs.field(default=(), converter=to_labels, validator=_check_labels)
    status: MachineStatus = MachineStatus.UNKNOWN
    last_seen: datetime | None = None
    created_at: datetime = attrs.field(factory=utcnow)
    offline_after: timedelta | None = None
    """This machine's own offline threshold (``None``: the server's ``offline_threshold``)."""


@attrs.frozen
class StatusChange:
    """A machine's recorded move from one status to another (by the heartbeat)."""

    id: str
    machine_id: str
    previous: MachineStatus
    status: MachineStatus
    at: datetime
    last_seen: datetime | None = None


@attrs.frozen
class ApiKey:
    """A stored API key: only its SHA-256 hash and visible prefix are kept."""

    id: str
    machine_id: str
    prefix: str
    key_hash: str
    created_at: datetime = attrs.field(factory=utcnow)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def is_active(self, now: datetime) -> bool:
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        return self.expires_at is None or self.expires_at > now


class Comparison(enum.StrEnum):
    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="
    EQ = "=="
    NE = "!="

    def holds(self, value: float, threshold: float) -> bool:
        return _COMPARE[self](value, threshold)


_COMPARE: dict[Comparison, Callable[[float, float], bool]] = {
    Comparison.GT: lambda a, b: a > b,
    Comparison.GE: lambda a, b: a >= b,
    Comparison.LT: lambda a, b: a < b,
    Comparison.LE: lambda a, b: a <= b,
    Comparison.EQ: lambda a, b: a == b,
    Comparison.NE: lambda a, b: a != b,
}


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertState(enum.StrEnum):
    OK = "ok"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


@attrs.frozen
class RuleScope:
    """Which machines a rule watches: one machine, a label selector, or all of the owner's."""

    machine_id: str | None = None
    labels: Labels = attrs.field(default=(), converter=to_labels, validator=_check_labels)

    def matches(self, machine: Machine) -> bool:
        if self.machine_id is not None and machine.id != self.machine_id:
            return False
        return set(self.labels) <= set(machine.labels)


@attrs.frozen
class AlertRule:
    id: str
    owner_id: str
    name: str
    metric: str = attrs.field(validator=_check_metric)
    comparison: Comparison
    threshold: float = attrs.field(converter=float, validator=_check_finite)
    for_duration: timedelta = timedelta(0)
    scope: RuleScope = RuleScope()
    severity: Severity = Severity.WARNING
    enabled: bool = True
    created_at: datetime = attrs.field(factory=utcnow)


@attrs.frozen
class AlertEvent:
    """A rule's state change for one series of one machine."""

    id: str
    rule_id: str
    machine_id: str
    series: SeriesKey
    state: AlertState
    value: float
    at: datetime
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None


@attrs.frozen
class AlertStatus:
    """Where one (rule, machine, series) stands now; ``since`` is when it got there."""

    rule_id: str
    series: SeriesKey
    state: AlertState
    since: datetime
    value: float
    updated_at: datetime

    @property
    def machine_id(self) -> str:
        return self.series.machine_id


# --------------------------------------------------------------------------- notifications


@attrs.frozen
class Channel:
    """Where a user's notifications go: a notifier plugin (``type``) and its config."""

    id: str
    owner_id: str
    name: str
    type: str
    config: Mapping[str, Any] = attrs.field(factory=dict)
    enabled: bool = True
    disabled_reason: str | None = None
    created_at: datetime = attrs.field(factory=utcnow)


class EventState(enum.StrEnum):
    NEW = "new"
    """Written with its state change; not yet handed to channels."""
    DISPATCHED = "dispatched"
    """A delivery was queued for each of the owner's active channels."""
    SILENCED = "silenced"
    """Recorded during a silence; not sent."""


@attrs.frozen
class OutboxEvent:
    """A notifiable event, written in the same transaction as the state change it reports.

    ``owner_id`` is whose channels receive it (``None``: every administrator's).
    """

    id: str
    kind: str
    owner_id: str | None
    title: str
    text: str
    occurred_at: datetime
    data: Mapping[str, Any] = attrs.field(factory=dict)
    machine_id: str | None = None
    rule_id: str | None = None
    state: EventState = EventState.NEW
    silence_id: str | None = None


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    """Given up: attempts exhausted, a permanent failure, or the channel gone."""
    SKIPPED = "skipped"
    """Not sent because its channel was disabled (``last_error`` says why); resent
    by hand once the channel is enabled again."""


def skipped_because(disabled_reason: str | None) -> str:
    """The ``last_error`` of a delivery skipped for a channel disabled for ``disabled_reason``."""
    return "channel disabled" if not disabled_reason else f"channel disabled: {disabled_reason}"


@attrs.frozen
class Delivery:
    """One event to one channel; its ``id`` is the idempotency key receivers see."""

    id: str
    event_id: str
    channel_id: str
    owner_id: str
    state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0
    next_attempt_at: datetime = attrs.field(factory=utcnow)
    last_error: str | None = None
    delivered_at: datetime | None = None
    created_at: datetime = attrs.field(factory=utcnow)


@attrs.frozen
class Silence:
    """Mutes notifications matching a machine, a label selector and/or a rule for a window.

    Every given condition must hold for an event to be silenced.
    """

    id: str
    owner_id: str
    starts_at: datetime
    ends_at: datetime
    machine_id: str | None = None
    labels: Labels = attrs.field(default=(), converter=to_labels, validator=_check_labels)
    rule_id: str | None = None
    comment: str = ""
    created_by: str | None = None
    created_at: datetime = attrs.field(factory=utcnow)
    ended_at: datetime | None = None
    """When what was still wrong at the end was re-notified (``None``: not yet)."""

    def active(self, at: datetime) -> bool:
        return self.starts_at <= at < self.ends_at

    def matches(self, machine_id: str | None, machine_labels: Labels, rule_id: str | None) -> bool:
        if self.machine_id is not None and machine_id != self.machine_id:
            return False
        if self.rule_id is not None and rule_id != self.rule_id:
            return False
        return set(self.labels) <= set(machine_labels)


# --------------------------------------------------------------------------- server state


@attrs.frozen
class Session:
    """A logged-in user's session; only the token's hash is stored."""

    id: str
    user_id: str
    token_hash: str
    created_at: datetime
    expires_at: datetime
    client: str | None = None
    revoked_at: datetime | None = None

    def is_active(self, now: datetime) -> bool:
        return self.revoked_at is None and self.expires_at > now


@attrs.frozen
class ResetToken:
    """A one-time password reset token issued by an admin."""

    id: str
    user_id: str
    token_hash: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None


class ClaimStatus(enum.StrEnum):
    PENDING = "pending"
    """Registered by an agent, waiting for an admin."""
    CLAIMED = "claimed"
    """Claimed by an admin; the key waits for the agent's next poll."""
    DELIVERED = "delivered"
    """The agent received its key (once); nothing more to deliver."""
    EXPIRED = "expired"


@attrs.frozen
class AgentClaim:
    """An agent's self-registration, waiting to be claimed.

    ``sealed_key`` holds the machine's API key between the claim and the agent's
    next poll, encrypted under a key derived from the claim token (which the
    server never stores), so the database never holds a usable key.
    """

    agent_id: str
    claim_token_hash: str
    hostname: str
    version: str
    created_at: datetime
    expires_at: datetime
    status: ClaimStatus = ClaimStatus.PENDING
    machine_id: str | None = None
    sealed_key: bytes | None = None
    client: str | None = None


@attrs.frozen
class AuditEntry:
    """Who did what, to what, when and from where."""

    id: str
    at: datetime
    action: str
    """Dotted verb, e.g. ``machine.create``, ``key.rotate``, ``claim.approve``, ``user.login``."""
    actor_kind: str
    """``user``, ``machine``, ``agent`` or ``system``."""
    actor_id: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    client: str | None = None
    detail: Mapping[str, Any] = attrs.field(factory=dict)
    via: str | None = None
    """The authenticator that accepted the request (``session``, ``api-key``, a
    plugin's), or ``cli`` for the command line; ``None`` when nobody authenticated."""


@attrs.frozen
class AgentConfig:
    """What an agent runs, set centrally; ``version`` changes on every update."""

    machine_id: str
    interval: timedelta = attrs.field(default=timedelta(seconds=5), validator=_check_positive)
    collectors: tuple[str, ...] = ("psutil",)
    labels: Labels = attrs.field(default=(), converter=to_labels, validator=_check_labels)
    version: int = 1
    updated_at: datetime = attrs.field(factory=utcnow)


# --------------------------------------------------------------------------- agentless

DEFAULT_DISCOVERY_PORTS = (135, 5985, 5986)
"""RPC endpoint mapper (DCOM/WMI), WS-Management over HTTP and over HTTPS."""


@attrs.frozen
class CredentialProfile:
    """How the server logs in to Windows hosts; the password is kept sealed.

    ``secret`` is the password's secret-box envelope (see
    :mod:`lunasentri_core.secretbox`), sealed for the context
    :meth:`secret_context`; it never leaves the server. ``version`` grows with
    every change, so a decrypted copy cached anywhere can tell it is stale.
    """

    id: str
    owner_id: str
    name: str
    transport: Transport = attrs.field(default=Transport.NTLM, converter=Transport)
    username: str | None = None
    domain: str | None = None
    https: bool = True
    port: int | None = None
    verify_tls: bool = True
    ca_path: str | None = None
    cert_path: str | None = None
    key_path: str | None = None
    secret: str | None = attrs.field(default=None, repr=False)
    version: int = 1
    created_at: datetime = attrs.field(factory=utcnow)
    updated_at: datetime = attrs.field(factory=utcnow)

    @property
    def has_password(self) -> bool:
        return self.secret is not None

    def secret_context(self) -> str:
        return f"credential_profiles/{self.id}/password"

    def credential(self, password: str | None) -> RemoteCredential:
        """The profile as a collector receives it, with the decrypted password."""
        return RemoteCredential(
            transport=self.transport,
            username=self.username,
            password=password,
            domain=self.domain,
            https=self.https,
            port=self.port,
            verify_tls=self.verify_tls,
            ca_path=self.ca_path,
            cert_path=self.cert_path,
            key_path=self.key_path,
        )


@attrs.frozen
class DiscoveryProfile:
    """Where to look for Windows hosts and which credential to try on them."""

    id: str
    owner_id: str
    name: str
    targets: tuple[str, ...]
    """CIDR blocks (``10.0.0.0/24``), ranges (``10.0.0.5-10.0.0.40``) and host names."""
    credential_profile_id: str | None = None
    ports: tuple[int, ...] = DEFAULT_DISCOVERY_PORTS
    concurrency: int = 256
    """Connections tried at once."""
    timeout: timedelta = attrs.field(default=timedelta(seconds=1), validator=_check_positive)
    """Per host and port: how long a connection attempt may take."""
    collector: str = "wmi"
    """The collector plugin that identifies hosts (hostname, OS) with the credential."""
    created_at: datetime = attrs.field(factory=utcnow)


class RunState(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    """Stopped early: ``error`` says why (e.g. the server stopped)."""


@attrs.frozen
class DiscoveryRun:
    """One run of a discovery profile, with its progress."""

    id: str
    profile_id: str
    owner_id: str
    started_at: datetime
    state: RunState = RunState.RUNNING
    total: int = 0
    """Hosts to scan."""
    scanned: int = 0
    found: int = 0
    """Hosts with any of the profile's ports open."""
    errors: int = 0
    """Hosts found whose identification failed (bad credential, timeout, ...)."""
    finished_at: datetime | None = None
    error: str | None = None


@attrs.frozen
class Device:
    """A host found by discovery (or added by address), unique per owner by address."""

    id: str
    owner_id: str
    address: str
    hostname: str | None = None
    os: str | None = None
    os_version: str | None = None
    open_ports: tuple[int, ...] = ()
    credential_ok: bool | None = None
    """Whether the last credential tried on it worked (``None``: not tried)."""
    credential_error: str | None = None
    credential_profile_id: str | None = None
    """The credential profile last tried on it."""
    discovery_profile_id: str | None = None
    """The discovery profile that last found it (kept ``None`` once that is deleted)."""
    machine_id: str | None = None
    """The machine its monitors' samples go to, made by its first monitor."""
    first_seen: datetime = attrs.field(factory=utcnow)
    last_seen: datetime | None = None
    """When a scan last found a port of it open."""
    created_at: datetime = attrs.field(factory=utcnow)


@attrs.frozen
class Monitor:
    """Poll a device with a collector plugin every ``interval``.

    The scheduler runs it when ``due_at`` has come and no poll of it is under
    way (``lease_until`` unset or past); a finished poll moves ``due_at`` one
    interval on.
    """

    id: str
    owner_id: str
    device_id: str
    credential_profile_id: str
    collector: str
    machine_id: str
    interval: timedelta = attrs.field(default=timedelta(seconds=60), validator=_check_positive)
    enabled: bool = True
    options: Mapping[str, Any] = attrs.field(factory=dict)
    """Collector options of this monitor (``Target.options``)."""
    due_at: datetime = attrs.field(factory=utcnow)
    lease_until: datetime | None = None
    last_attempted: datetime | None = None
    last_polled: datetime | None = None
    """When a poll last succeeded."""
    last_error: str | None = None
    last_error_at: datetime | None = None
    failures: int = 0
    """Polls failed in a row since the last success."""
    created_at: datetime = attrs.field(factory=utcnow)


@attrs.frozen
class PollOutcome:
    """How one poll of a monitor ended, as the poller records it."""

    monitor_id: str
    at: datetime
    due_at: datetime
    """When the monitor is due next."""
    error: str | None = None
