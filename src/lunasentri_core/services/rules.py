"""Alert rules, their series' current states and their events, as one principal sees them.

A user reaches only their own rules, and the states and events of their own
machines; another user's rule or event is "not found", never "forbidden". An
administrator reaches all. Every rule change is audited and makes the
evaluator reload its rules before it evaluates the next batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from lunasentri_core.components import Principal
from lunasentri_core.errors import FieldError, NotFoundError, ValidationError
from lunasentri_core.model import (
    METRIC_NAME,
    AlertEvent,
    AlertRule,
    AlertState,
    AlertStatus,
    Comparison,
    RuleScope,
    Severity,
    new_id,
)
from lunasentri_core.services import audit
from lunasentri_core.services.machines import check_labels, check_name, owner_scope
from lunasentri_core.storage.protocols import StateStore

if TYPE_CHECKING:
    from lunasentri_core.hub import Sentri

MAX_FOR_DURATION = timedelta(days=7)
"""Longer than this, a condition is a trend, not an alert."""
MAX_EVENTS = 1000
DEFAULT_STATES = (AlertState.PENDING, AlertState.FIRING)
"""What "the current alerts" are: series that are not quiet."""
_CHANGEABLE = frozenset(
    ("name", "metric", "comparison", "threshold", "for_duration", "scope", "severity", "enabled")
)


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError([FieldError(field, message)], what="request body")


def check_metric(metric: str) -> str:
    if not METRIC_NAME.match(metric):
        raise _invalid(
            "metric",
            f"{metric!r} is not a metric name (e.g. cpu.percent, or a derived "
            "percentage such as mem.percent, swap.percent or disk.percent)",
        )
    return metric


def check_threshold(threshold: float) -> float:
    if not math.isfinite(threshold):
        raise _invalid("threshold", "must be a finite number")
    return float(threshold)


def check_for_duration(value: timedelta) -> timedelta:
    if not timedelta(0) <= value <= MAX_FOR_DURATION:
        limit = int(MAX_FOR_DURATION.total_seconds())
        raise _invalid("for_duration", f"must be 0 to {limit} seconds")
    return value


def check_scope(scope: RuleScope) -> RuleScope:
    check_labels(scope.labels, "scope.labels")
    return scope


def _check_scope_machine(
    state: StateStore, scope: RuleScope, rule_owner: str, actor: Principal
) -> None:
    """A rule may name only a machine its owner has (or an unowned one, for an admin's)."""
    if scope.machine_id is None:
        return
    try:
        machine = state.get_machine(scope.machine_id, owner_scope(actor))
    except NotFoundError:
        raise _invalid("scope.machine_id", f"no machine with id {scope.machine_id!r}") from None
    if machine.owner_id not in (rule_owner, None):
        # The evaluator applies a rule to its owner's machines only: it would never fire.
        raise _invalid(
            "scope.machine_id",
            "a rule watches only machines of its owner; this one belongs to another user",
        )


def describe(rule: AlertRule) -> dict[str, Any]:
    """A rule's fields as JSON (for the audit log)."""
    return {
        "name": rule.name,
        "metric": rule.metric,
        "comparison": rule.comparison.value,
        "threshold": rule.threshold,
        "for_duration": rule.for_duration.total_seconds(),
        "scope": {"machine_id": rule.scope.machine_id, "labels": dict(rule.scope.labels)},
        "severity": rule.severity.value,
        "enabled": rule.enabled,
    }


class Rules:
    """Alert rules, alert states and alert events, scoped by the acting principal."""

    def __init__(self, hub: Sentri) -> None:
        self.hub = hub

    @property
    def _state(self) -> StateStore:
        return self.hub.storage.state

    # ------------------------------------------------------------ rules

    async def create(
        self,
        actor: Principal,
        *,
        name: str,
        metric: str,
        comparison: Comparison,
        threshold: float,
        for_duration: timedelta = timedelta(0),
        scope: RuleScope | None = None,
        severity: Severity = Severity.WARNING,
        enabled: bool = True,
        client: str | None = None,
    ) -> AlertRule:
        """Add a rule owned by ``actor``; it applies from the next ingested batch."""
        rule = AlertRule(
            id=new_id(),
            owner_id=actor.id,
            name=check_name(name),
            metric=check_metric(metric),
            comparison=Comparison(comparison),
            threshold=check_threshold(threshold),
            for_duration=check_for_duration(for_duration),
            scope=check_scope(scope or RuleScope()),
            severity=Severity(severity),
            enabled=enabled,
            created_at=self.hub.clock(),
        )

        def store() -> AlertRule:
            _check_scope_machine(self._state, rule.scope, rule.owner_id, actor)
            return self._state.add_alert_rule(rule)

        stored = await self.hub.run_sync(store)
        self.hub.alerts.invalidate()
        await self._audit("alert_rule.create", actor, stored, client, describe(stored))
        return stored

    async def all(self, actor: Principal) -> list[AlertRule]:
        return await self.hub.run_sync(self._state.list_alert_rules, owner_scope(actor))

    async def get(self, actor: Principal, rule_id: str) -> AlertRule:
        return await self.hub.run_sync(self._state.get_alert_rule, rule_id, owner_scope(actor))

    async def update(
        self, actor: Principal, rule_id: str, *, client: str | None = None, **changes: Any
    ) -> AlertRule:
        """Change the given fields; the rule's series start over if its condition changed."""
        unknown = set(changes) - _CHANGEABLE
        if unknown:
            raise TypeError(f"unknown rule fields: {sorted(unknown)}")
        checked = _checked(changes)
        scope = owner_scope(actor)

        def change() -> tuple[AlertRule, AlertRule]:
            before = self._state.get_alert_rule(rule_id, scope)
            after = attrs.evolve(before, **checked)
            if "scope" in checked:
                _check_scope_machine(self._state, after.scope, before.owner_id, actor)
            if after == before:
                return before, before
            return before, self._state.update_alert_rule(after)

        before, after = await self.hub.run_sync(change)
        if after == before:
            return after
        self.hub.alerts.invalidate()
        old, new = describe(before), describe(after)
        detail = {k: {"from": old[k], "to": new[k]} for k in new if old[k] != new[k]}
        await self._audit("alert_rule.update", actor, after, client, detail)
        return after

    async def delete(self, actor: Principal, rule_id: str, *, client: str | None = None) -> None:
        """Delete a rule with its series states and events."""
        scope = owner_scope(actor)

        def delete() -> AlertRule:
            rule = self._state.get_alert_rule(rule_id, scope)
            self._state.delete_alert_rule(rule.id)
            return rule

        rule = await self.hub.run_sync(delete)
        self.hub.alerts.invalidate()
        await self._audit("alert_rule.delete", actor, rule, client, {"name": rule.name})

    async def _audit(
        self,
        action: str,
        actor: Principal,
        rule: AlertRule,
        client: str | None,
        detail: dict[str, Any],
    ) -> None:
        await audit.record(
            self.hub,
            action=action,
            actor=actor,
            target_type="alert_rule",
            target_id=rule.id,
            client=client,
            detail={"owner_id": rule.owner_id, **detail},
        )

    # ------------------------------------------------------------ states and events

    async def states(
        self,
        actor: Principal,
        *,
        rule_id: str | None = None,
        machine_id: str | None = None,
        states: Sequence[AlertState] | None = None,
    ) -> list[AlertStatus]:
        """Where each watched series stands (by default: the pending and firing ones)."""
        return await self.hub.run_sync(
            lambda: self._state.list_alert_states(
                owner_scope(actor),
                rule_id=rule_id,
                machine_id=machine_id,
                states=list(states or DEFAULT_STATES),
            )
        )

    async def events(
        self,
        actor: Principal,
        *,
        machine_id: str | None = None,
        rule_id: str | None = None,
        state: AlertState | None = None,
        acknowledged: bool | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[AlertEvent]:
        """Events of the actor's machines, newest first."""
        return await self.hub.run_sync(
            lambda: self._state.list_alert_events(
                owner_scope(actor),
                machine_id,
                max(0, min(limit, MAX_EVENTS)),
                rule_id=rule_id,
                state=state,
                acknowledged=acknowledged,
                since=since,
            )
        )

    async def acknowledge(
        self, actor: Principal, event_id: str, *, client: str | None = None
    ) -> AlertEvent:
        """Mark an event seen; acknowledging it again keeps the first acknowledgement."""
        now = self.hub.clock()
        event = await self.hub.run_sync(
            lambda: self._state.acknowledge_alert_event(event_id, actor.id, now, owner_scope(actor))
        )
        if event.acknowledged_at == now and event.acknowledged_by == actor.id:
            await audit.record(
                self.hub,
                action="alert_event.acknowledge",
                actor=actor,
                target_type="alert_event",
                target_id=event.id,
                client=client,
                detail={"rule_id": event.rule_id, "machine_id": event.machine_id},
            )
        return event


def _checked(changes: dict[str, Any]) -> dict[str, Any]:
    checks: dict[str, Callable[[Any], Any]] = {
        "name": check_name,
        "metric": check_metric,
        "comparison": Comparison,
        "threshold": check_threshold,
        "for_duration": check_for_duration,
        "scope": check_scope,
        "severity": Severity,
        "enabled": bool,
    }
    return {field: checks[field](value) for field, value in changes.items()}
