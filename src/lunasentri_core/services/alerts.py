"""Alert evaluation: each stored sample moves its series' rule states.

Per (rule, machine, series) the state goes ok -> pending -> firing -> resolved
(see :func:`step`); firing and resolved are events, each written with its
outbox entry in the transaction that moves the state. Evaluation runs after a
batch is committed, in its own task, so an agent's acknowledgement never waits
for it; rules and states are held in memory and only transitions touch storage.
When several processes share the storage (``[server] shared_database``), a
machine's stored states are read before its samples are evaluated, since
another process may have moved them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeAlias

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from lunasentri_core.errors import NotFoundError
from lunasentri_core.model import (
    AlertEvent,
    AlertRule,
    AlertState,
    AlertStatus,
    Labels,
    Machine,
    MachineSamples,
    Role,
    Sample,
    SeriesKey,
    new_id,
    reading_columns,
)
from lunasentri_core.services.notices import alert_event
from lunasentri_core.services.queries import DERIVED
from lunasentri_core.services.rule_plan import MachinePlan, MetricPlan
from lunasentri_core.storage.protocols import AlertTransition

if TYPE_CHECKING:
    from lunasentri_core.hub import Sentri

log = logging.getLogger(__name__)

StateKey: TypeAlias = tuple[str, str, str, Labels]
"""(rule id, machine id, metric, labels) of one evaluated series."""

_QUIET = (AlertState.OK, AlertState.RESOLVED)
_HELD = (AlertState.PENDING, AlertState.FIRING)


def step(
    rule: AlertRule, current: AlertStatus | None, series: SeriesKey, value: float, at: datetime
) -> AlertStatus | None:
    """The state ``series`` moves to when it reads ``value`` at ``at``; ``None``: it stays.

    A value older than the current state's start (a late, replayed sample) is ignored.
    """
    if current is not None and at < current.since:
        return None
    state = current.state if current is not None else AlertState.OK
    breached = rule.comparison.holds(value, rule.threshold)
    if breached and state in _QUIET:
        new = AlertState.FIRING if rule.for_duration <= timedelta(0) else AlertState.PENDING
    elif breached and state is AlertState.PENDING:
        assert current is not None
        if at - current.since < rule.for_duration:
            return None
        new = AlertState.FIRING
    elif not breached and state is AlertState.FIRING:
        new = AlertState.RESOLVED
    elif not breached and state is AlertState.PENDING:
        new = AlertState.OK
    else:
        return None
    return AlertStatus(rule.id, series, new, since=at, value=value, updated_at=at)


class AlertEvaluator:
    """Holds the enabled rules and series states; evaluates committed batches."""

    def __init__(self, hub: Sentri, *, queue_size: int = 100) -> None:
        self._hub = hub
        self._rules: dict[str, list[AlertRule]] = {}
        self._rule_by_id: dict[str, AlertRule] = {}
        self._watched: frozenset[str] = frozenset()
        self._inputs: frozenset[str] = frozenset()
        self._states: dict[StateKey, AlertStatus] = {}
        self._keys: dict[str, set[StateKey]] = {}
        """Per machine, its keys in ``_states``."""
        self._shared = hub.settings.server.shared_database
        """Other processes may move states: read a machine's before evaluating it."""
        self._plans: dict[str, MachinePlan] = {}
        self._admins: frozenset[str] = frozenset()
        self._active: dict[str, set[tuple[str, Labels]]] = {}
        """Per machine, the series some rule holds pending or firing."""
        self._stale = True
        self._queue_size = queue_size
        self._send: MemoryObjectSendStream[Sequence[MachineSamples]] | None = None
        self._idle = anyio.Event()
        self._idle.set()
        self._pending = 0

    # ------------------------------------------------------------ rules and states

    def invalidate(self) -> None:
        """Reload rules and states before the next evaluation (after a rule changed)."""
        self._stale = True

    async def load(self) -> None:
        # Cleared first: a rule changed while this reads sets it again, so the
        # next evaluation reads once more instead of keeping what was read before.
        self._stale = False
        state = self._hub.storage.state
        try:
            rules = await self._hub.run_sync(state.list_alert_rules, None)
            states = await self._hub.run_sync(state.list_alert_states, None)
            users = await self._hub.run_sync(state.list_users)
        except BaseException:
            self._stale = True
            raise
        self._admins = frozenset(user.id for user in users if user.role is Role.ADMIN)
        self._set_rules([rule for rule in rules if rule.enabled])
        self._states = {_key(s): s for s in states}
        self._keys = {}
        for key in self._states:
            self._keys.setdefault(key[1], set()).add(key)
        self._active = {}
        for status in states:
            if status.state in _HELD:
                series = status.series
                self._active.setdefault(series.machine_id, set()).add(
                    (series.metric, series.labels)
                )

    def _set_rules(self, rules: Iterable[AlertRule]) -> None:
        by_metric: dict[str, list[AlertRule]] = {}
        for rule in rules:
            by_metric.setdefault(rule.metric, []).append(rule)
        self._rules = by_metric
        self._rule_by_id = {rule.id: rule for group in by_metric.values() for rule in group}
        self._watched = frozenset(by_metric)
        inputs = set(self._watched)
        for name in self._watched & DERIVED.keys():
            inputs.update(DERIVED[name])
        self._inputs = frozenset(inputs)
        self._plans = {}

    def machine_changed(self) -> None:
        """A machine's owner or labels may have changed: match scopes afresh."""
        self._plans = {}

    @property
    def active_rules(self) -> int:
        return len(self._rule_by_id)

    # ------------------------------------------------------------ evaluation

    async def evaluate(self, batches: Sequence[MachineSamples]) -> list[AlertTransition]:
        """Evaluate stored batches now; returns the transitions recorded."""
        if self._stale:
            await self.load()
        if not self._rules:
            return []
        transitions = []
        for batch in batches:
            machine = await self._machine(batch.machine_id)
            if machine is not None:
                if self._shared:
                    await self._refresh(machine.id)
                transitions.extend(self._evaluate_batch(machine, batch))
        if not transitions:
            return []
        return await self._record(transitions)

    async def _refresh(self, machine_id: str) -> None:
        """Replace a machine's series states with the stored ones.

        With several processes sharing the database, a machine's samples may
        reach any of them, and each moves the states it evaluates: what this
        process remembers may be behind (a series another process moved to
        pending, or back to ok). Evaluating from the stored states, one read per
        machine and batch, keeps the rules' for-durations and resolutions right
        wherever the samples arrive; a state moved meanwhile is still caught by
        the conditional write (:meth:`_record`).
        """
        state = self._hub.storage.state
        stored = await self._hub.run_sync(
            lambda: state.list_alert_states(None, machine_id=machine_id)
        )
        for key in self._keys.pop(machine_id, set()):
            self._states.pop(key, None)
        keys: set[StateKey] = set()
        active: set[tuple[str, Labels]] = set()
        for status in stored:
            key = _key(status)
            self._states[key] = status
            keys.add(key)
            if status.state in _HELD:
                active.add((status.series.metric, status.series.labels))
        self._keys[machine_id] = keys
        self._active[machine_id] = active

    async def _machine(self, machine_id: str) -> Machine | None:
        try:
            return await self._hub.cached_machine(machine_id)
        except NotFoundError:
            return None  # deleted since its samples were stored

    def _evaluate_batch(self, machine: Machine, batch: MachineSamples) -> list[AlertTransition]:
        plan = self._plan(machine)
        if not plan.metrics:
            return []
        active = self._active.setdefault(machine.id, set())
        transitions: list[AlertTransition] = []
        for sample in sorted(batch.samples, key=lambda s: s.timestamp):
            self._evaluate_sample(machine, plan, active, sample, transitions)
        return transitions

    def _evaluate_sample(
        self,
        machine: Machine,
        plan: MachinePlan,
        active: set[tuple[str, Labels]],
        sample: Sample,
        transitions: list[AlertTransition],
    ) -> None:
        # The hot path of ingest with rules. Usually no watched value is out of
        # its bounds and no series is held pending or firing: one check of all
        # the sample's watched values at once, in C, settles it.
        at = sample.timestamp
        keys, values = reading_columns(sample.readings)
        layout = plan.layout(keys)
        if active or not layout.quiet(values):
            for position, key, metric_plan in layout.picks:
                value = values[position]
                if metric_plan.low < value < metric_plan.high and key not in active:
                    continue
                self._check(machine, metric_plan, key[0], key[1], value, at, transitions)
        for metric, labels, used, total, metric_plan in layout.derivations:
            if not values[total]:
                continue
            value = values[used] / values[total] * 100
            if metric_plan.low < value < metric_plan.high and (
                not active or (metric, labels) not in active
            ):
                continue
            self._check(machine, metric_plan, metric, labels, value, at, transitions)

    def _check(
        self,
        machine: Machine,
        plan: MetricPlan,
        metric: str,
        labels: Labels,
        value: float,
        at: datetime,
        transitions: list[AlertTransition],
    ) -> None:
        active = self._active[machine.id]
        if plan.quiet(value) and (metric, labels) not in active:
            return  # breaches nothing, and nothing is pending or firing
        for rule in plan.rules:
            moved = self._move(rule, machine, metric, labels, value, at)
            if moved is not None:
                transitions.append(moved)
        self._track(machine.id, metric, labels, plan, active)

    def _plan(self, machine: Machine) -> MachinePlan:
        plan = self._plans.get(machine.id)
        if plan is None:
            rules = self._rule_by_id.values()
            plan = self._plans[machine.id] = MachinePlan.of(rules, machine, self._admins)
        return plan

    def _track(
        self,
        machine_id: str,
        metric: str,
        labels: Labels,
        plan: MetricPlan,
        active: set[tuple[str, Labels]],
    ) -> None:
        held = any(
            (found := self._states.get((rule.id, machine_id, metric, labels))) is not None
            and found.state in _HELD
            for rule in plan.rules
        )
        if held:
            active.add((metric, labels))
        else:
            active.discard((metric, labels))

    def _move(
        self,
        rule: AlertRule,
        machine: Machine,
        metric: str,
        labels: Labels,
        value: float,
        at: datetime,
    ) -> AlertTransition | None:
        key = (rule.id, machine.id, metric, labels)
        current = self._states.get(key)
        series = current.series if current is not None else SeriesKey(machine.id, metric, labels)
        new = step(rule, current, series, value, at)
        if new is None:
            return None
        self._states[key] = new  # later samples of this batch continue from here
        self._keys.setdefault(machine.id, set()).add(key)
        if new.state not in (AlertState.FIRING, AlertState.RESOLVED):
            return AlertTransition(current, new)
        event = AlertEvent(
            id=new_id(), rule_id=rule.id, machine_id=machine.id, series=series,
            state=new.state, value=value, at=at,
        )  # fmt: skip
        return AlertTransition(current, new, event, alert_event(rule, machine, new))

    async def _record(self, transitions: list[AlertTransition]) -> list[AlertTransition]:
        state = self._hub.storage.state
        applied = await self._hub.run_sync(state.record_alert_transitions, transitions)
        if len(applied) != len(transitions):
            # Another process moved some of these series first: take its view.
            log.info("%d alert transitions lost to another writer", len(transitions) - len(applied))
            self.invalidate()
        if any(t.outbox is not None for t in applied):
            self._hub.dispatcher.wake()
        for transition in applied:
            if transition.event is not None:
                await self._hub.plugins.alert_changed(self._hub, transition.event)
        for transition in applied:
            if transition.event is not None:
                log.info(
                    "alert %s %s on machine %s (%s = %g)",
                    transition.event.rule_id,
                    transition.event.state.value,
                    transition.event.machine_id,
                    transition.status.series.metric,
                    transition.status.value,
                )
        return applied

    # ------------------------------------------------------------ the task

    async def submit(self, batches: Sequence[MachineSamples]) -> None:
        """Queue committed batches for evaluation (the hub calls it after each commit).

        When evaluation falls a whole queue behind, this waits: ingest slows down
        rather than rules going unevaluated.
        """
        if self._send is None or not (self._rules or self._stale):
            return
        if not any(_watches(batch, self._inputs) for batch in batches) and not self._stale:
            return
        self._pending += 1
        if self._idle.is_set():
            self._idle = anyio.Event()
        try:
            await self._send.send(batches)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._done_one()  # the hub is closing

    async def drain(self) -> None:
        """Wait until everything submitted so far is evaluated (tests, shutdown)."""
        await self._idle.wait()

    async def run(self) -> None:
        send, receive = anyio.create_memory_object_stream[Sequence[MachineSamples]](
            self._queue_size
        )
        self._send = send
        try:
            async with send:
                await self._serve(receive)
        finally:
            self._send = None
            self._idle.set()

    async def _serve(self, receive: MemoryObjectReceiveStream[Sequence[MachineSamples]]) -> None:
        async with receive:
            async for batches in receive:
                try:
                    await self.evaluate(batches)
                except Exception:
                    log.exception("alert evaluation failed")
                self._done_one()

    def _done_one(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()


def _key(status: AlertStatus) -> StateKey:
    return (status.rule_id, status.series.machine_id, status.series.metric, status.series.labels)


def _watches(batch: MachineSamples, inputs: frozenset[str]) -> bool:
    return any(
        metric in inputs for s in batch.samples for metric, _ in reading_columns(s.readings)[0]
    )
