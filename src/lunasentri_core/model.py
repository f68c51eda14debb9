"""The domain model: plain attrs classes that know nothing about JSON or SQL.

Values that cross a boundary (samples, series, query results, state records) are
frozen; change a record with :func:`attrs.evolve`. Serialization lives in
:mod:`lunasentri_core.codec`, persistence behind :mod:`lunasentri_core.storage`.
"""

from __future__ import annotations

import enum
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import attrs

Labels: TypeAlias = tuple[tuple[str, str], ...]
"""A series' labels as sorted ``(name, value)`` pairs, so that equal label sets are equal."""

METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
LABEL_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
MAX_LABEL_VALUE = 256


def new_id() -> str:
    """A fresh random identifier for a stored record."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_labels(value: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> Labels:
    """Normalise a mapping or pairs into :data:`Labels` (sorted, string-valued)."""
    if value is None:
        return ()
    pairs = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((str(k), str(v)) for k, v in pairs))


def _to_optional_labels(
    value: Mapping[str, str] | Iterable[tuple[str, str]] | None,
) -> Labels | None:
    return None if value is None else to_labels(value)


def as_utc(value: datetime) -> datetime:
    """Reject naive datetimes (they are ambiguous) and normalise to UTC."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a timezone")
    return value.astimezone(UTC)


def _check_metric(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not METRIC_NAME.match(value):
        raise ValueError(
            f"{attribute.name} {value!r} is not a metric name "
            "(lowercase dotted words, e.g. 'cpu.percent')"
        )


def _check_labels(_: object, attribute: attrs.Attribute[Labels], value: Labels) -> None:
    for name, label_value in value:
        if not LABEL_NAME.match(name):
            raise ValueError(f"label name {name!r} must be lowercase letters, digits or '_'")
        if len(label_value) > MAX_LABEL_VALUE:
            raise ValueError(f"label {name!r} is longer than {MAX_LABEL_VALUE} characters")


def _check_finite(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be a finite number, not {value!r}")


def _check_positive(_: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValueError(f"{attribute.name} must be positive")


# --------------------------------------------------------------------------- metrics


@attrs.frozen
class Reading:
    """One measured value of one series at the sample's timestamp."""

    metric: str = attrs.field(validator=_check_metric)
    value: float = attrs.field(converter=float, validator=_check_finite)
    labels: Labels = attrs.field(default=(), converter=to_labels, validator=_check_labels)


def _readings(value: Iterable[Reading]) -> tuple[Reading, ...]:
    return tuple(value)


@attrs.frozen
class Sample:
    """Everything a collector measured about one target at one instant."""

    timestamp: datetime = attrs.field(converter=as_utc)
    readings: tuple[Reading, ...] = attrs.field(converter=_readings)

    @readings.validator
    def _one_reading_per_series(
        self, attribute: attrs.Attribute[tuple[Reading, ...]], value: tuple[Reading, ...]
    ) -> None:
        if len({(r.metric, r.labels) for r in value}) != len(value):
            seen: set[tuple[str, Labels]] = set()
            for r in value:
                if (r.metric, r.labels) in seen:
                    raise ValueError(f"two readings of the same series {r.metric} {dict(r.labels)}")
                seen.add((r.metric, r.labels))


def _samples(value: Iterable[Sample]) -> tuple[Sample, ...]:
    return tuple(value)


@attrs.frozen
class MachineSamples:
    """Samples that belong to one machine: the unit the ingest writer batches."""

    machine_id: str
    samples: tuple[Sample, ...] = attrs.field(converter=_samples)


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
    (the default) selects every series of the metric.
    """

    machine_id: str
    metric: str = attrs.field(validator=_check_metric)
    start: datetime = attrs.field(converter=as_utc)
    end: datetime = attrs.field(converter=as_utc)
    step: timedelta = attrs.field(validator=_check_positive)
    aggregation: Aggregation = Aggregation.AVG
    labels: Labels | None = attrs.field(default=None, converter=_to_optional_labels)

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


# --------------------------------------------------------------------------- collection


@attrs.frozen
class Target:
    """What a collector is asked to measure.

    ``host`` is ``None`` for the local machine. ``options`` carries collector-specific
    settings of this one target (e.g. a port); a collector's own settings class holds
    what applies to every target.
    """

    machine_id: str
    host: str | None = None
    labels: Labels = attrs.field(default=(), converter=to_labels)
    options: Mapping[str, Any] = attrs.field(factory=dict)


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


@attrs.frozen
class AgentConfig:
    """What an agent runs, set centrally; ``version`` changes on every update."""

    machine_id: str
    interval: timedelta = attrs.field(default=timedelta(seconds=5), validator=_check_positive)
    collectors: tuple[str, ...] = ("psutil",)
    labels: Labels = attrs.field(default=(), converter=to_labels, validator=_check_labels)
    version: int = 1
    updated_at: datetime = attrs.field(factory=utcnow)
