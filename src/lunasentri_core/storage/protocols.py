"""What a storage backend provides.

Storage is synchronous on purpose: SQL drivers block, and the hub runs every
storage call in a worker thread behind a capacity limiter. A backend therefore
must be safe to call from several threads at once.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol, runtime_checkable

import attrs

from lunasentri_core.model import (
    AgentClaim,
    AgentConfig,
    AlertEvent,
    AlertRule,
    AlertState,
    AlertStatus,
    ApiKey,
    AuditEntry,
    Channel,
    ClaimStatus,
    Delivery,
    DeliveryState,
    EventState,
    HistoryQuery,
    Labels,
    Machine,
    MachineSamples,
    MachineStatus,
    OutboxEvent,
    ResetToken,
    RetentionPolicy,
    Role,
    SeriesHistory,
    SeriesKey,
    SeriesValue,
    Session,
    Silence,
    StatusChange,
    User,
    to_labels,
)
from lunasentri_core.samples import Sample
from lunasentri_core.storage.agentless import AgentlessStore


class Capability(enum.StrEnum):
    """Optional features; contract tests for a missing capability are skipped, by name."""

    ROLLUPS = "rollups"
    """Long ranges are answered from 1-minute and 1-hour rollups."""
    RETENTION = "retention"
    """:meth:`MetricStore.maintain` drops data older than the retention policy."""
    CONCURRENT_WRITERS = "concurrent-writers"
    """Several processes may write to the same store at once."""
    SERIES_LIMIT = "series-limit"
    """:meth:`MetricStore.write` takes ``max_series``: a batch that would give a machine
    more series than that raises :class:`~lunasentri_core.errors.SeriesLimitError` and
    stores nothing. The store checks it atomically (concurrent batches and processes
    together never pass it), at a cost that grows with the batch's new series, not
    with the machine's. Without the capability the hub cannot enforce
    ``storage.max_series_per_machine``.
    """
    TIMESCALEDB = "timescaledb"
    """The store runs in TimescaleDB mode: the ``timescaledb`` extension is installed
    in (or available to) its PostgreSQL database. Informational for now: both
    modes store data the same way, and no contract test depends on it.
    """


@attrs.frozen
class MaintenanceReport:
    """What one :meth:`MetricStore.maintain` pass did."""

    compacted_points: int = 0
    rollup_rows: int = 0
    expired_rows: int = 0
    freed_pages: int = 0
    """Pages given back to the file system (SQLite's incremental vacuum; PostgreSQL:
    the head table's emptied tail, see :func:`~.sql.vacuum.vacuum_head`)."""


def _positive(_: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValueError(f"{attribute.name} must be positive")


@attrs.frozen
class PurgePolicy:
    """How long :meth:`StateStore.purge` keeps server state that has served its purpose.

    Every age is counted back from the ``now`` given to ``purge``; a record
    exactly at its limit is kept.
    """

    grace: timedelta = attrs.field(default=timedelta(days=1), validator=_positive)
    """Sessions and reset tokens are kept this long after they expired, were revoked
    or were used; login failures this long past ``login_window``."""
    login_window: timedelta = attrs.field(default=timedelta(minutes=15), validator=_positive)
    """The login lockout window (failures in it count): failures are kept for it plus ``grace``."""
    claims: timedelta = attrs.field(default=timedelta(days=7), validator=_positive)
    """Agent registrations that ended (delivered, or expired: a pending one past its
    ``expires_at`` included) are kept this long past their ``expires_at``. A claimed
    one whose key was not delivered yet is kept."""
    outbox: timedelta = attrs.field(default=timedelta(days=30), validator=_positive)
    """Outbox events are kept this long after they occurred, and then only deleted
    (with their deliveries) once handled: dispatched with every delivery delivered,
    dead or skipped (or with none), or silenced by a silence that has been closed."""
    history: timedelta = attrs.field(default=timedelta(days=90), validator=_positive)
    """Machines' status changes and alert events are kept this long. An alert event
    still open (firing, not acknowledged, its series still firing since that event)
    is kept until it is acknowledged or its series resolves."""
    batch_size: int = attrs.field(default=500, validator=attrs.validators.ge(1))
    """Records deleted per transaction (a backend may take fewer), so a large backlog
    never holds a write lock for long."""


@attrs.frozen
class PurgeReport:
    """How many records of each kind one :meth:`StateStore.purge` deleted."""

    sessions: int = 0
    reset_tokens: int = 0
    login_failures: int = 0
    claims: int = 0
    outbox_events: int = 0
    deliveries: int = 0
    status_changes: int = 0
    alert_events: int = 0

    @property
    def total(self) -> int:
        return sum(attrs.astuple(self))


@attrs.frozen
class LoginFailure:
    """A failed login: the name tried, when, and from which client address."""

    username: str
    at: datetime
    client: str | None = None


MAX_MACHINE_PAGE = 1000
"""The largest page :meth:`StateStore.page_machines` must answer in one call."""


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class MachineQuery:
    """One page of machines in (name, id) order: who asks, the filters and the position.

    Pages are keyset pages: ``after`` is the (name, id) of the last machine of the
    previous page, so a machine added or deleted between pages moves no other
    machine to another page (each is seen once, or never if deleted first).
    """

    owner_id: str | None = None
    """Only this owner's machines (``None``: everyone's, for an admin)."""
    status: MachineStatus | None = None
    """Only machines with this status, as reported (see ``seen_since``)."""
    seen_since: datetime | None = None
    """How a machine whose recorded status is ``unknown`` but that has reported
    counts for ``status``: online if last seen at or after this time, offline if
    before (``None``: by its recorded status alone). ``unknown`` then means never seen."""
    labels: Labels = attrs.field(default=(), converter=to_labels)
    """Only machines having every one of these labels with exactly this value."""
    name: str | None = None
    """Only machines whose name contains this text, ASCII letters compared without case."""
    ids: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    """Only the machines with these ids (empty: no such filter); at most
    :data:`MAX_MACHINE_PAGE`."""
    after: tuple[str, str] | None = None
    """The (name, id) after which the page starts (``None``: from the first)."""
    limit: int = attrs.field(default=100)

    @ids.validator
    def _check_ids(
        self, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
    ) -> None:
        if len(value) > MAX_MACHINE_PAGE:
            raise ValueError(f"at most {MAX_MACHINE_PAGE} ids, not {len(value)}")

    @limit.validator
    def _check_limit(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not 1 <= value <= MAX_MACHINE_PAGE + 1:
            raise ValueError(f"limit must be 1 to {MAX_MACHINE_PAGE + 1}, not {value}")

    def matches(self, machine: Machine) -> bool:
        """Whether ``machine`` passes the filters (not the position): the reference
        semantics a store implements in its query."""
        if self.owner_id is not None and machine.owner_id != self.owner_id:
            return False
        if self.status is not None and reported_status(machine, self.seen_since) != self.status:
            return False
        if self.name is not None and fold_ascii(self.name) not in fold_ascii(machine.name):
            return False
        if self.ids and machine.id not in self.ids:
            return False
        return set(self.labels) <= set(machine.labels)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_ascii(text: str) -> str:
    """``text`` with ASCII capitals in lowercase and every other character kept (the
    name filter folds exactly this on every backend, whatever its locale)."""
    return text.translate(_ASCII_LOWER)


def reported_status(machine: Machine, seen_since: datetime | None) -> MachineStatus:
    """The status :attr:`MachineQuery.status` compares against."""
    if machine.status is not MachineStatus.UNKNOWN or machine.last_seen is None:
        return machine.status
    if seen_since is None:
        return machine.status
    return MachineStatus.ONLINE if machine.last_seen >= seen_since else MachineStatus.OFFLINE


@runtime_checkable
class MetricStore(Protocol):
    """Series and their points."""

    def write(self, batch: Sequence[MachineSamples]) -> int:
        """Store every reading of every sample in one transaction; return the number of points.

        Idempotent: a (series, timestamp) already stored keeps its first value, so
        a retried batch changes nothing. All or nothing: if it raises, nothing of
        the batch is stored.

        A store with :attr:`Capability.SERIES_LIMIT` also takes a keyword
        ``max_series: int | None`` (the hub passes it only to such stores).
        """
        ...

    def latest(self, machine_ids: Sequence[str], metric: str | None = None) -> list[SeriesValue]:
        """The newest point of every series of the given machines (optionally one metric)."""
        ...

    def history(self, query: HistoryQuery) -> list[SeriesHistory]:
        """Points of the matching series in ``[start, end)``, one per non-empty step."""
        ...

    def list_series(self, machine_id: str) -> list[SeriesKey]: ...

    def delete_machine(self, machine_id: str) -> int:
        """Remove every series and point of a machine; return the number of series removed."""
        ...

    def maintain(self, now: datetime) -> MaintenanceReport:
        """Compact, roll up and expire data as of ``now``. Safe to call at any time."""
        ...


@runtime_checkable
class StateStore(AgentlessStore, Protocol):
    """Users, machines, API keys, alerts, and the server's sessions, claims, audit and configs."""

    # users
    def add_user(self, user: User, password_hash: str) -> User: ...
    def get_user(self, user_id: str) -> User: ...
    def find_user(self, username: str) -> User | None: ...
    def list_users(self) -> list[User]: ...
    def password_hash(self, user_id: str) -> str: ...
    def set_password_hash(self, user_id: str, password_hash: str) -> None: ...
    def set_user_role(self, user_id: str, role: Role) -> User:
        """Give a user another role and return them as stored now.

        :class:`ConflictError` when that would leave no administrator (checked in the
        same transaction, so two administrators demoting each other at once cannot
        both succeed); :class:`NotFoundError` for an unknown user.
        """
        ...

    def delete_user(self, user_id: str) -> None:
        """Delete a user with their machines (as :meth:`delete_machine`), alert rules,
        sessions and reset tokens; their audit entries and login failures stay."""
        ...

    # machines
    def add_machine(self, machine: Machine) -> Machine: ...
    def get_machine(self, machine_id: str, owner_id: str | None = None) -> Machine: ...
    def find_machine(self, name: str, owner_id: str | None = None) -> Machine | None: ...
    def list_machines(self, owner_id: str | None = None) -> list[Machine]: ...
    def page_machines(self, query: MachineQuery) -> list[Machine]:
        """At most ``query.limit`` machines passing its filters (as
        :meth:`MachineQuery.matches`), in (name, id) order, after ``query.after``.
        One query, not a read of every machine: the list scales with the page."""
        ...

    def update_machine(self, machine: Machine) -> Machine:
        """Replace a machine's fields except its status (the heartbeat's); returns it stored."""
        ...

    def delete_machine(self, machine_id: str) -> None:
        """Delete a machine with its API keys, alert events, series and agent config.

        Registrations that named it keep their history without ``machine_id``; a
        claimed one not yet delivered becomes ``expired`` and loses its sealed
        key (it sealed a key of the deleted machine), so its agent registers anew.
        """
        ...

    def config_epoch(self) -> int:
        """A number that changes with every change to an alert rule, to a machine's
        fields (not its ``last_seen`` or status), with every deleted user or machine and
        every API key revoked or given an expiry, whichever process made it; reads leave
        it alone.

        Processes sharing the store compare it with what they read last to know
        when the rules and machines they hold in memory are out of date.
        """
        ...

    def touch_machines(self, seen: Sequence[tuple[str, datetime]]) -> None:
        """Advance ``last_seen`` (never backwards) for each ``(machine_id, at)``."""
        ...

    # API keys
    def add_api_key(self, key: ApiKey) -> ApiKey: ...
    def find_api_key(self, key_hash: str) -> ApiKey | None: ...
    def list_api_keys(self, machine_id: str) -> list[ApiKey]: ...
    def revoke_api_key(self, key_id: str, at: datetime) -> None: ...

    # alerts
    def add_alert_rule(self, rule: AlertRule) -> AlertRule: ...
    def get_alert_rule(self, rule_id: str, owner_id: str | None = None) -> AlertRule: ...
    def list_alert_rules(self, owner_id: str | None = None) -> list[AlertRule]: ...
    def delete_alert_rule(self, rule_id: str) -> None: ...
    def update_alert_rule(self, rule: AlertRule) -> AlertRule:
        """Replace a rule (not its owner); its series states start over if the rule changed."""
        ...

    def add_alert_event(self, event: AlertEvent) -> AlertEvent: ...
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
        """Newest first; an owner sees the events of their own machines."""
        ...

    def acknowledge_alert_event(
        self, event_id: str, by: str, at: datetime, owner_id: str | None = None
    ) -> AlertEvent:
        """Mark an event acknowledged (the first acknowledgement stays)."""
        ...

    def list_alert_states(
        self,
        owner_id: str | None = None,
        *,
        rule_id: str | None = None,
        machine_id: str | None = None,
        states: Sequence[AlertState] | None = None,
    ) -> list[AlertStatus]: ...

    def record_alert_transitions(
        self, transitions: Sequence[AlertTransition]
    ) -> list[AlertTransition]:
        """Apply each transition whose series is still where it expects, in one transaction.

        A transition's event and outbox entry are written with it or not at all;
        returns those applied (another process may have won the others).
        """
        ...

    # heartbeat
    def find_status_changes(
        self,
        now: datetime,
        threshold: timedelta,
        machine_ids: Sequence[str] | None = None,
    ) -> list[tuple[Machine, MachineStatus]]:
        """Machines whose status is due to change, and the status each should get.

        A machine is offline once silent past its own ``offline_after`` (or
        ``threshold``), online when it reported within it; one that never
        reported keeps its status.
        """
        ...

    def record_status_changes(self, transitions: Sequence[StatusTransition]) -> list[StatusChange]:
        """Apply each change whose machine still has the previous status, in one transaction.

        The change is recorded and its outbox entry written with it; returns those applied.
        """
        ...

    def list_status_changes(
        self, machine_id: str, *, since: datetime | None = None, limit: int = 100
    ) -> list[StatusChange]:
        """Newest first."""
        ...

    # notification channels (a channel's ``config`` may hold secrets: never log it)
    def add_channel(self, channel: Channel) -> Channel: ...
    def get_channel(self, channel_id: str, owner_id: str | None = None) -> Channel: ...
    def list_channels(self, owner_id: str | None = None) -> list[Channel]: ...
    def update_channel(self, channel: Channel) -> Channel: ...
    def delete_channel(self, channel_id: str, owner_id: str | None = None) -> None: ...

    # the outbox
    def add_outbox_events(self, events: Sequence[OutboxEvent]) -> None: ...
    def fan_out(self, now: datetime, limit: int = 500) -> int:
        """Hand new events to channels: silenced ones are marked so, the rest get one
        delivery per channel of their owner (``None``: every admin): pending for an
        enabled channel; for a disabled one ``skipped``, its ``last_error`` being
        :func:`~lunasentri_core.model.skipped_because` of the channel's reason.
        Returns how many events were handled."""
        ...

    def claim_deliveries(
        self, now: datetime, lease: timedelta, limit: int = 50
    ) -> list[tuple[Delivery, OutboxEvent, Channel]]:
        """Take due pending deliveries until ``now + lease``; others skip them meanwhile."""
        ...

    def finish_delivery(self, delivery: Delivery, *, disable_channel: str | None = None) -> None:
        """Store a delivery's outcome and release it; ``disable_channel`` gives the reason
        to disable its channel, whose other pending deliveries become ``skipped`` (all
        in the same transaction)."""
        ...

    def list_deliveries(
        self,
        owner_id: str | None = None,
        *,
        state: DeliveryState | None = None,
        event_id: str | None = None,
        channel_id: str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """Newest first."""
        ...

    def retry_delivery(
        self, delivery_id: str, now: datetime, owner_id: str | None = None
    ) -> Delivery:
        """Queue a dead or skipped delivery again, with its attempts reset."""
        ...

    def resend_skipped(self, channel_id: str, now: datetime, owner_id: str | None = None) -> int:
        """Queue every skipped delivery of an enabled channel again, due at ``now``, with
        attempts reset; returns how many. :class:`~lunasentri_core.errors.NotFoundError`
        for a channel not found (or not ``owner_id``'s), ``ConflictError`` if disabled."""
        ...

    def list_outbox_events(
        self,
        owner_id: str | None = None,
        *,
        state: EventState | None = None,
        silence_id: str | None = None,
        ids: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[OutboxEvent]:
        """Newest first; ``ids`` keeps only those events."""
        ...

    # silences
    def add_silence(self, silence: Silence) -> Silence: ...
    def get_silence(self, silence_id: str, owner_id: str | None = None) -> Silence: ...
    def list_silences(
        self, owner_id: str | None = None, *, active_at: datetime | None = None
    ) -> list[Silence]: ...
    def end_silence(self, silence_id: str, at: datetime, owner_id: str | None = None) -> Silence:
        """Make the silence end at ``at`` (if it ends later); it is then due for re-notification."""
        ...

    def due_silences(self, now: datetime) -> list[Silence]:
        """Silences that have ended and whose leftovers were not re-notified yet."""
        ...

    def close_silence(self, silence_id: str, at: datetime, events: Sequence[OutboxEvent]) -> bool:
        """Mark a due silence handled and write its re-notifications, in one transaction;
        ``False`` if another process did it first."""
        ...

    # API key lifetime (rotation grace)
    def set_api_key_expiry(self, key_id: str, expires_at: datetime | None) -> None:
        """Set (or with ``None`` clear) when a key stops working; :class:`NotFoundError` if none."""
        ...

    # sessions and password resets
    def add_session(self, session: Session) -> Session:
        """:class:`NotFoundError` for an unknown user; :class:`ConflictError` for a taken hash."""
        ...

    def find_session(self, token_hash: str) -> Session | None:
        """The session with this token hash, revoked and expired ones included."""
        ...

    def revoke_session(self, session_id: str, at: datetime) -> None:
        """Revoke as of ``at``; a session revoked earlier keeps its earlier time."""
        ...

    def revoke_user_sessions(self, user_id: str, at: datetime) -> int:
        """Revoke the user's sessions still active at ``at``; return how many.

        :class:`NotFoundError` for an unknown user.
        """
        ...

    def list_sessions(self, user_id: str) -> list[Session]:
        """The user's sessions, newest first, revoked and expired ones included."""
        ...

    def add_reset_token(self, token: ResetToken) -> ResetToken: ...
    def find_reset_token(self, token_hash: str) -> ResetToken | None: ...
    def use_reset_token(self, token_id: str, at: datetime) -> bool:
        """Mark a reset token used as of ``at``.

        ``False`` if it was already used or has expired by ``at``: of concurrent
        callers exactly one gets ``True``. :class:`NotFoundError` for an unknown id.
        """
        ...

    def end_reset_tokens(self, user_id: str, at: datetime) -> int:
        """End the user's reset tokens still usable at ``at`` (their ``expires_at``
        becomes ``at``); return how many. Used and ended tokens keep their times.

        A new reset token, a redeemed one and a changed password end the earlier ones.
        """
        ...

    # login throttling (by username, so that unknown names are throttled too, and by
    # client address)
    def add_login_failure(self, username: str, at: datetime, client: str | None) -> None: ...
    def count_login_failures(self, username: str, since: datetime) -> int:
        """Failures of ``username`` at or after ``since``."""
        ...

    def login_failure_times(self, username: str, since: datetime) -> list[datetime]:
        """When the failures of ``username`` at or after ``since`` happened, oldest first."""
        ...

    def recent_login_failures(
        self, username: str, client: str | None, since: datetime
    ) -> list[LoginFailure]:
        """The failures at or after ``since`` of ``username`` (from any client) and,
        unless ``client`` is ``None``, those from ``client`` (for any name): each once,
        oldest first. The login throttle counts them by name, by client and by both."""
        ...

    def clear_login_failures(self, username: str) -> None: ...
    def clear_login_failures_from(self, username: str, client: str | None) -> None:
        """Delete the failures of ``username`` from ``client`` (``None``: those without one),
        as a successful login there does; the name's failures from elsewhere stay."""
        ...

    # agent claims
    def add_claim(self, claim: AgentClaim) -> AgentClaim:
        """Store a new registration; :class:`ConflictError` if ``agent_id`` is pending or claimed.

        An expired or delivered registration of the same agent is replaced.
        """
        ...

    def get_claim(self, agent_id: str) -> AgentClaim:
        """:class:`NotFoundError` for an unknown agent."""
        ...

    def list_claims(self, status: ClaimStatus | None = None) -> list[AgentClaim]:
        """Oldest first."""
        ...

    def update_claim(
        self, claim: AgentClaim, expected_status: ClaimStatus | None = None
    ) -> AgentClaim:
        """Replace a registration's fields.

        With ``expected_status`` the change applies only if the stored status is
        still that one, else :class:`ConflictError` (two admins claiming the same
        agent at once: exactly one wins). :class:`NotFoundError` for an unknown
        agent or machine.
        """
        ...

    def take_sealed_key(self, agent_id: str) -> bytes | None:
        """Atomically clear and return the sealed key of a claimed registration, once.

        The registration becomes ``delivered`` in the same step. ``None`` when there
        is no key to deliver (of concurrent callers only one gets it);
        :class:`NotFoundError` for an unknown agent.
        """
        ...

    def expire_claims(self, now: datetime) -> int:
        """Mark pending registrations past ``expires_at`` expired; return how many."""
        ...

    # audit log (kept when the users and machines it names are deleted)
    def add_audit(self, entry: AuditEntry) -> None: ...
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
        """Newest first; entries at or after ``since`` and before ``until`` with exactly
        this action, actor, target and authenticator (``via``).

        ``before`` is the id of an entry: only entries listed after it (older, or of
        the same instant and added earlier) are returned, so the id of a page's last
        entry asks for the next page. An unknown id returns none.
        """
        ...

    # housekeeping
    def purge(self, now: datetime, policy: PurgePolicy) -> PurgeReport:
        """Delete the server state that ``policy`` no longer keeps as of ``now``.

        Safe to call at any time and from several processes at once (each record is
        counted by the call that deleted it). Runs in several short transactions, so
        a large backlog does not block writers; if it fails half-way, what it
        deleted stays deleted and the next call carries on.
        """
        ...

    # central agent configuration (deleted with its machine)
    def get_agent_config(self, machine_id: str) -> AgentConfig | None: ...
    def set_agent_config(self, config: AgentConfig) -> AgentConfig:
        """Store ``config`` with ``version`` one above the stored one (1 for the first).

        Atomic: concurrent updates get distinct versions. Returns what was stored;
        :class:`NotFoundError` for an unknown machine.
        """
        ...


@attrs.frozen
class StatusTransition:
    """A machine's status change, with the notification it causes (if any)."""

    change: StatusChange
    event: OutboxEvent | None = None


@attrs.frozen
class AlertTransition:
    """A series' move from ``previous`` (``None``: never evaluated) to ``status``."""

    previous: AlertStatus | None
    status: AlertStatus
    event: AlertEvent | None = None
    outbox: OutboxEvent | None = None


@runtime_checkable
class StorageBackend(Protocol):
    """An open store: the object a storage factory's ``open`` returns."""

    name: str
    capabilities: frozenset[Capability]

    # Read-only members, so that a backend may expose its own store types
    # (a plain attribute satisfies them as well).
    @property
    def metrics(self) -> MetricStore: ...

    @property
    def state(self) -> StateStore: ...

    def migrate(self) -> None:
        """Bring the schema up to date (idempotent)."""
        ...

    def close(self) -> None: ...


def storage_mode(backend: object) -> str | None:
    """The mode a backend says it runs in, or ``None`` when it does not say.

    A backend may have a ``mode`` attribute: a short lower-case word naming how it
    stores data (the timescale plugin: ``"timescale"`` or ``"postgres"``). The
    server logs it when the storage opens, ``/healthz/ready`` reports it and
    ``lunasentri plugins --storage`` prints it. Backends without one (SQLite) have
    a single way of working and need not say anything.
    """
    mode = getattr(backend, "mode", None)
    return mode if isinstance(mode, str) and mode else None


def storage_partitioning(backend: object) -> dict[str, object] | None:
    """How a backend splits its metric data by time, or ``None`` when it does not say.

    A backend may have ``partitioning() -> dict | None`` (blocking: it may ask
    the database). The shared SQL store on PostgreSQL answers with the kind
    (``native`` partitions or a TimescaleDB ``hypertable``), the table and
    column, the partition width in hours, how many partitions are kept ahead
    and how many exist. ``/healthz/ready`` and ``lunasentri plugins --storage``
    report it next to :func:`storage_mode`.
    """
    describe = getattr(backend, "partitioning", None)
    if describe is None:
        return None
    facts = describe()
    return dict(facts) if isinstance(facts, dict) and facts else None


def hold_singleton(backend: object, name: str) -> bool:
    """Whether this process may run the once-only job ``name`` now (blocking).

    Several server processes may share one database. Periodic work that must not
    run twice at once (the heartbeat sweep, maintenance and purges, ...) asks
    before each pass and skips the pass on ``False``. A backend that several
    processes can share has ``hold_singleton(name) -> bool``: it takes a lock
    for ``name`` or confirms this process still holds it, refuses while another
    process holds it, and lets the lock go when its holder dies, so another
    process takes the job over at its next pass. The shared SQL store uses a
    PostgreSQL advisory lock (a file lock beside a SQLite file). A backend
    without the method is used by one process: the answer is always ``True``.
    """
    hold = getattr(backend, "hold_singleton", None)
    return True if hold is None else bool(hold(name))


def release_singleton(backend: object, name: str) -> None:
    """Hand job ``name`` over now (blocking): a hub that stops but leaves its storage
    open (an embedding application's) must not keep its jobs, nor their lock's
    connection, until the storage closes."""
    release = getattr(backend, "release_singleton", None)
    if release is not None:
        release(name)


class ChangeKind(enum.StrEnum):
    """What another process sharing the storage changed."""

    CONFIG = "config"
    """Machines, alert rules, credentials or users: reload what is held of them."""
    KEYS = "keys"
    """API keys may have ended (the store has dropped what it remembered of them)."""
    SAMPLES = "samples"
    """Samples of :attr:`Change.machine_id` were stored (live streams)."""


@attrs.frozen
class Change:
    """One change another process committed (see :func:`listen_for_changes`)."""

    kind: ChangeKind
    machine_id: str | None = None
    samples: tuple[Sample, ...] = ()
    missed: int = 0
    """Samples of the machine stored before these that the notice left out (a
    backend may send only the newest of a large batch)."""


class ChangeListener(Protocol):
    """Hears what other processes commit to a shared storage, as it commits."""

    def receive(self, timeout: float) -> list[Change]:
        """The changes heard since the last call, waiting up to ``timeout`` seconds
        for the first (blocking; an empty list when none came).

        Never raises for a lost connection: the listener reconnects by itself on
        later calls (with growing waits) and then reports a
        :attr:`ChangeKind.CONFIG` and a :attr:`ChangeKind.KEYS` change, since
        what was committed while it was away went unheard.
        """
        ...

    def watch(self, machine_id: str) -> None:
        """Ask for :attr:`ChangeKind.SAMPLES` changes of ``machine_id`` (blocking).

        Watches count: each is ended by one :meth:`unwatch`. Samples another
        process commits after this returns are reported; a backend may leave out
        the samples of machines no process watches, to spare its writers.
        """
        ...

    def unwatch(self, machine_id: str) -> None: ...

    def close(self) -> None: ...


def listen_for_changes(backend: object) -> ChangeListener | None:
    """A listener for changes other processes make to ``backend``, or ``None``.

    Optional, for backends several processes share: one with a
    ``listen_for_changes() -> ChangeListener | None`` method tells each process
    at once what another committed, so caches and live streams follow within
    moments (the shared SQL store on PostgreSQL: ``LISTEN``/``NOTIFY``).
    Without it (SQLite, a single process) the hub still notices configuration
    changes by polling :meth:`StateStore.config_epoch` every ``sync_interval``,
    which stays on as the fallback either way.
    """
    listen = getattr(backend, "listen_for_changes", None)
    if listen is None:
        return None
    listener: ChangeListener | None = listen()
    return listener


class StorageFactory(Protocol):
    """What ``lunasentri_register_storage`` returns: a class keyed by URL scheme."""

    name: ClassVar[str]
    schemes: ClassVar[tuple[str, ...]]
    settings_class: ClassVar[type[Any] | None]

    @classmethod
    def open(cls, url: str, *, settings: Any, retention: RetentionPolicy) -> StorageBackend: ...
