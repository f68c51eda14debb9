"""Routes: alert rules, the current alerts, and alert events."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs
from starlette.responses import Response

from lunasentri_core.codec import decode
from lunasentri_core.errors import FieldError, ValidationError
from lunasentri_core.model import (
    METRIC_NAME,
    AlertEvent,
    AlertRule,
    AlertState,
    AlertStatus,
    Comparison,
    Labels,
    RuleScope,
    SeriesKey,
    Severity,
)
from lunasentri_core.server import params
from lunasentri_core.server.api import Api, Auth, Call, Schema, items_of
from lunasentri_core.server.routes.machines import NAME, json_object
from lunasentri_core.server.routes.users import object_schema
from lunasentri_core.services.machines import check_labels
from lunasentri_core.services.rules import DEFAULT_STATES, MAX_FOR_DURATION, Rules

api = Api("alerts")

TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
MAYBE_TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}
LABELS = params.LABELS
COMPARISON: Schema = params.enum_schema(list(Comparison))
SEVERITY: Schema = params.enum_schema(list(Severity))
_NAME: Schema = NAME
_FOR_DURATION: Schema = {
    "type": "number",
    "minimum": 0,
    "maximum": MAX_FOR_DURATION.total_seconds(),
    "description": "Seconds the condition must hold before the alert fires (0: at once).",
}
_METRIC: Schema = {
    "type": "string",
    "pattern": METRIC_NAME.pattern,
    "description": "A metric name, stored (cpu.percent) or derived (mem.percent, "
    "swap.percent, disk.percent).",
}

SCOPE = api.schema(
    "AlertRuleScope",
    {
        "type": "object",
        "description": "Which of the owner's machines the rule watches: one (machine_id), "
        "those carrying every given label, or (neither) all of them.",
        "required": ["machine_id", "labels"],
        "additionalProperties": False,
        "properties": {"machine_id": {"type": ["string", "null"]}, "labels": LABELS},
    },
)
RULE = api.schema(
    "AlertRule",
    object_schema(
        {
            "id": {"type": "string"},
            "owner_id": {"type": "string"},
            "name": {"type": "string"},
            "metric": {"type": "string"},
            "comparison": COMPARISON,
            "threshold": {"type": "number"},
            "for_duration": {"type": "number", "description": "seconds"},
            "scope": SCOPE,
            "severity": SEVERITY,
            "enabled": {"type": "boolean"},
            "created_at": TIMESTAMP,
        }
    ),
)
ALERT = api.schema(
    "Alert",
    object_schema(
        {
            "rule_id": {"type": "string"},
            "machine_id": {"type": "string"},
            "metric": {"type": "string"},
            "labels": LABELS,
            "state": params.enum_schema(list(AlertState)),
            "since": {**TIMESTAMP, "description": "When the series entered this state."},
            "value": {"type": "number", "description": "The value that moved it there."},
            "updated_at": TIMESTAMP,
        }
    ),
)
ALERT_EVENT = api.schema(
    "AlertEvent",
    object_schema(
        {
            "id": {"type": "string"},
            "rule_id": {"type": "string"},
            "machine_id": {"type": "string"},
            "metric": {"type": "string"},
            "labels": LABELS,
            "state": params.enum_schema([AlertState.FIRING, AlertState.RESOLVED]),
            "value": {"type": "number"},
            "at": TIMESTAMP,
            "acknowledged_at": MAYBE_TIMESTAMP,
            "acknowledged_by": {"type": ["string", "null"]},
        }
    ),
)
_SCOPE_REQUEST: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"machine_id": {"type": ["string", "null"]}, "labels": LABELS},
}
_RULE_FIELDS: dict[str, Schema] = {
    "name": _NAME,
    "metric": _METRIC,
    "comparison": COMPARISON,
    "threshold": {"type": "number"},
    "for_duration": _FOR_DURATION,
    "scope": {**_SCOPE_REQUEST, "description": "Default: all of the owner's machines."},
    "severity": {**SEVERITY, "description": "Default: warning."},
    "enabled": {"type": "boolean", "description": "Default: true."},
}
CREATE_REQUEST: Schema = {
    "type": "object",
    "required": ["name", "metric", "comparison", "threshold"],
    "properties": _RULE_FIELDS,
    "additionalProperties": False,
}
PATCH_REQUEST: Schema = {
    "type": "object",
    "required": [],
    "properties": _RULE_FIELDS,
    "additionalProperties": False,
}

# --------------------------------------------------------------------------- bodies


@attrs.frozen
class ScopeBody:
    machine_id: str | None = None
    labels: Labels = ()


@attrs.frozen
class RuleBody:
    name: str
    metric: str
    comparison: Comparison
    threshold: float
    for_duration: float = 0.0
    scope: ScopeBody = ScopeBody()
    severity: Severity = Severity.WARNING
    enabled: bool = True


@attrs.frozen
class RulePatch:
    name: str | None = None
    metric: str | None = None
    comparison: Comparison | None = None
    threshold: float | None = None
    for_duration: float | None = None
    scope: ScopeBody | None = None
    severity: Severity | None = None
    enabled: bool | None = None


def _scope_is_object(data: dict[str, Any]) -> None:
    # Else the decoder's message names Python internals ('str' has no 'keys').
    if "scope" in data and not isinstance(data["scope"], dict):
        raise ValidationError([FieldError("scope", "expected a JSON object")], "request body")


def _scope(body: ScopeBody) -> RuleScope:
    # Checked before RuleScope validates them, so that the error names the label.
    return RuleScope(machine_id=body.machine_id, labels=check_labels(body.labels, "scope.labels"))


def _duration(seconds: float) -> timedelta:
    if not 0 <= seconds <= MAX_FOR_DURATION.total_seconds():
        limit = int(MAX_FOR_DURATION.total_seconds())
        raise ValidationError(
            [FieldError("for_duration", f"must be 0 to {limit} seconds")], "request body"
        )
    return timedelta(seconds=seconds)


# --------------------------------------------------------------------------- JSON out


def rule_json(rule: AlertRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "owner_id": rule.owner_id,
        "name": rule.name,
        "metric": rule.metric,
        "comparison": rule.comparison.value,
        "threshold": rule.threshold,
        "for_duration": rule.for_duration.total_seconds(),
        "scope": {"machine_id": rule.scope.machine_id, "labels": dict(rule.scope.labels)},
        "severity": rule.severity.value,
        "enabled": rule.enabled,
        "created_at": rule.created_at.isoformat(),
    }


def _series(series: SeriesKey) -> dict[str, Any]:
    return {"machine_id": series.machine_id, "metric": series.metric, "labels": dict(series.labels)}


def alert_json(status: AlertStatus) -> dict[str, Any]:
    return {
        "rule_id": status.rule_id,
        **_series(status.series),
        "state": status.state.value,
        "since": status.since.isoformat(),
        "value": status.value,
        "updated_at": status.updated_at.isoformat(),
    }


def event_json(event: AlertEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "rule_id": event.rule_id,
        **_series(event.series),
        "state": event.state.value,
        "value": event.value,
        "at": event.at.isoformat(),
        "acknowledged_at": event.acknowledged_at.isoformat() if event.acknowledged_at else None,
        "acknowledged_by": event.acknowledged_by,
    }


# --------------------------------------------------------------------------- rules


@api.post(
    "/api/v1/alert-rules",
    auth=Auth.USER,
    summary="Create an alert rule",
    request=CREATE_REQUEST,
    responses={201: RULE},
    status=201,
)
async def create_alert_rule(call: Call) -> object:
    """The rule watches its owner's machines (one, those with given labels, or all) and
    fires when `metric comparison threshold` holds for `for_duration` seconds. A
    `scope.machine_id` must be one of the caller's machines."""
    data = await json_object(call)
    _scope_is_object(data)
    body = decode(data, RuleBody, what="request body")
    rule = await Rules(call.hub).create(
        call.user,
        name=body.name,
        metric=body.metric,
        comparison=body.comparison,
        threshold=body.threshold,
        for_duration=_duration(body.for_duration),
        scope=_scope(body.scope),
        severity=body.severity,
        enabled=body.enabled,
        client=call.client,
    )
    return rule_json(rule)


@api.get(
    "/api/v1/alert-rules",
    auth=Auth.USER,
    summary="The caller's alert rules",
    responses={200: items_of(RULE)},
)
async def list_alert_rules(call: Call) -> object:
    """An administrator sees every rule."""
    return {"items": [rule_json(rule) for rule in await Rules(call.hub).all(call.user)]}


@api.get(
    "/api/v1/alert-rules/{rule_id}",
    auth=Auth.USER,
    summary="Get an alert rule",
    responses={200: RULE},
)
async def get_alert_rule(call: Call) -> object:
    return rule_json(await Rules(call.hub).get(call.user, call.path("rule_id")))


@api.patch(
    "/api/v1/alert-rules/{rule_id}",
    auth=Auth.USER,
    summary="Change an alert rule",
    request=PATCH_REQUEST,
    responses={200: RULE},
)
async def update_alert_rule(call: Call) -> object:
    """Only the fields given change. Changing the condition (metric, comparison,
    threshold, for_duration, scope or enabled) starts the rule's series over from ok."""
    data = await json_object(call)
    _scope_is_object(data)
    body = decode(data, RulePatch, what="request body")
    changes: dict[str, Any] = {}
    for field in attrs.fields(RulePatch):
        if field.name not in data:
            continue
        value = getattr(body, field.name)
        if value is None:
            raise ValidationError([FieldError(field.name, "must not be null")], "request body")
        changes[field.name] = value
    if "for_duration" in changes:
        changes["for_duration"] = _duration(changes["for_duration"])
    if "scope" in changes:
        changes["scope"] = _scope(changes["scope"])
    rule = await Rules(call.hub).update(
        call.user, call.path("rule_id"), client=call.client, **changes
    )
    return rule_json(rule)


@api.delete(
    "/api/v1/alert-rules/{rule_id}",
    auth=Auth.USER,
    summary="Delete an alert rule with its alerts and events",
    responses={204: None},
    status=204,
)
async def delete_alert_rule(call: Call) -> object:
    await Rules(call.hub).delete(call.user, call.path("rule_id"), client=call.client)
    return Response(status_code=204)


# --------------------------------------------------------------------------- alerts


_ID_FILTER = params.ID_FILTER


@api.get(
    "/api/v1/alerts",
    auth=Auth.USER,
    summary="The current alerts: series pending or firing, per rule and machine",
    query={
        "rule_id": {**_ID_FILTER, "description": "Only this rule's."},
        "machine_id": {**_ID_FILTER, "description": "Only this machine's."},
        "state": params.enum_schema(
            list(AlertState), "Only series in this state (default: pending and firing)."
        ),
    },
    responses={200: items_of(ALERT)},
)
async def list_alerts(call: Call) -> object:
    """Where each watched series of the caller's machines stands. A series is
    `pending` while its condition holds for less than the rule's `for_duration`,
    then `firing`; `resolved` once it stops holding, and `ok` when it never fired."""
    params.only(call, {"rule_id", "machine_id", "state"})
    state = params.choice(call, "state", AlertState)
    found = await Rules(call.hub).states(
        call.user,
        rule_id=params.identifier(call, "rule_id"),
        machine_id=params.identifier(call, "machine_id"),
        states=[state] if state is not None else DEFAULT_STATES,
    )
    return {"items": [alert_json(status) for status in found]}


# --------------------------------------------------------------------------- events


@api.get(
    "/api/v1/alert-events",
    auth=Auth.USER,
    summary="Alert events (firing and resolved) of the caller's machines, newest first",
    query={
        "machine_id": _ID_FILTER,
        "rule_id": _ID_FILTER,
        "state": params.enum_schema([AlertState.FIRING, AlertState.RESOLVED]),
        "acknowledged": params.BOOLEAN,
        "since": params.SINCE,
        "limit": params.LIMIT,
    },
    responses={200: items_of(ALERT_EVENT)},
)
async def list_alert_events(call: Call) -> object:
    params.only(call, {"machine_id", "rule_id", "state", "acknowledged", "since", "limit"})
    found = await Rules(call.hub).events(
        call.user,
        machine_id=params.identifier(call, "machine_id"),
        rule_id=params.identifier(call, "rule_id"),
        state=params.choice(call, "state", AlertState, [AlertState.FIRING, AlertState.RESOLVED]),
        acknowledged=params.boolean(call, "acknowledged"),
        since=params.since(call),
        limit=params.limit(call),
    )
    return {"items": [event_json(event) for event in found]}


@api.post(
    "/api/v1/alert-events/{event_id}/acknowledge",
    auth=Auth.USER,
    summary="Acknowledge an alert event",
    responses={200: ALERT_EVENT},
)
async def acknowledge_alert_event(call: Call) -> object:
    """Records who saw it and when; acknowledging again keeps the first acknowledgement."""
    event = await Rules(call.hub).acknowledge(call.user, call.path("event_id"), client=call.client)
    return event_json(event)
