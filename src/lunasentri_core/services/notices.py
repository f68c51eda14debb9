"""What a notification says: outbox events for status changes and alert transitions.

Titles and texts are plain text; each notifier escapes them for its medium.
``data`` carries the same facts as JSON for machines (webhook receivers).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from lunasentri_core.components import NotificationKind
from lunasentri_core.model import (
    AlertRule,
    AlertState,
    AlertStatus,
    Machine,
    MachineStatus,
    OutboxEvent,
    SeriesKey,
    StatusChange,
    new_id,
)


def machine_json(machine: Machine) -> dict[str, Any]:
    return {
        "id": machine.id,
        "name": machine.name,
        "hostname": machine.hostname,
        "labels": dict(machine.labels),
    }


def describe_duration(value: timedelta) -> str:
    """``2 h 5 min``, ``3 min 20 s``, ``45 s``: short and exact enough for a message."""
    seconds = max(0, int(value.total_seconds()))
    days, seconds = divmod(seconds, 86_400)
    hours, seconds = divmod(seconds, 3_600)
    minutes, seconds = divmod(seconds, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (seconds, "s")]
    shown = [f"{amount} {unit}" for amount, unit in parts if amount][:2]
    return " ".join(shown) or "0 s"


def _time(value: datetime | None) -> str:
    return "never" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def status_event(
    machine: Machine, change: StatusChange, *, offline_since: datetime | None = None
) -> OutboxEvent | None:
    """The notice for a status change, or ``None`` for one nobody needs to hear about.

    A machine's first report (unknown -> online) is not news; going offline is,
    and so is coming back from offline.
    """
    if change.status is MachineStatus.OFFLINE:
        kind = NotificationKind.MACHINE_OFFLINE
        silent_for = change.at - change.last_seen if change.last_seen else None
        title = f"Machine {machine.name} is offline"
        text = f"No report since {_time(change.last_seen)}" + (
            f" ({describe_duration(silent_for)} ago)." if silent_for is not None else "."
        )
    elif change.previous is MachineStatus.OFFLINE:
        kind = NotificationKind.MACHINE_ONLINE
        title = f"Machine {machine.name} is back online"
        text = f"Reporting again since {_time(change.last_seen)}" + (
            f", after {describe_duration(change.at - offline_since)} offline."
            if offline_since is not None
            else "."
        )
    else:
        return None
    data = {
        "machine": machine_json(machine),
        "status": change.status.value,
        "previous_status": change.previous.value,
        "last_seen": None if change.last_seen is None else change.last_seen.isoformat(),
        "since": change.at.isoformat(),
    }
    return OutboxEvent(
        id=new_id(),
        kind=kind.value,
        owner_id=machine.owner_id,
        title=title,
        text=text,
        occurred_at=change.at,
        data=data,
        machine_id=machine.id,
    )


def series_name(series: SeriesKey) -> str:
    if not series.labels:
        return series.metric
    labels = ",".join(f"{k}={v}" for k, v in series.labels)
    return f"{series.metric}{{{labels}}}"


def alert_event(rule: AlertRule, machine: Machine, status: AlertStatus) -> OutboxEvent:
    """The notice for a series that started firing or resolved."""
    condition = f"{rule.comparison.value} {rule.threshold:g}"
    name = series_name(status.series)
    if status.state is AlertState.FIRING:
        kind = NotificationKind.ALERT_FIRING
        title = f"[{rule.severity.value.upper()}] {rule.name} on {machine.name}"
        held = f" for {describe_duration(rule.for_duration)}" if rule.for_duration else ""
        text = f"{name} is {status.value:g} ({condition}{held})."
    else:
        kind = NotificationKind.ALERT_RESOLVED
        title = f"[RESOLVED] {rule.name} on {machine.name}"
        text = f"{name} is {status.value:g}, no longer {condition}."
    data = {
        "rule": {
            "id": rule.id,
            "name": rule.name,
            "metric": rule.metric,
            "comparison": rule.comparison.value,
            "threshold": rule.threshold,
            "for_duration": rule.for_duration.total_seconds(),
            "severity": rule.severity.value,
        },
        "machine": machine_json(machine),
        "series": {"metric": status.series.metric, "labels": dict(status.series.labels)},
        "value": status.value,
        "state": status.state.value,
    }
    return OutboxEvent(
        id=new_id(),
        kind=kind.value,
        owner_id=rule.owner_id,
        title=title,
        text=text,
        occurred_at=status.since,
        data=data,
        machine_id=machine.id,
        rule_id=rule.id,
    )


def still_wrong(event: OutboxEvent, at: datetime) -> OutboxEvent:
    """A copy of a silenced event, sent when its silence ends and the problem remains."""
    return OutboxEvent(
        id=new_id(),
        kind=event.kind,
        owner_id=event.owner_id,
        title=event.title,
        text=f"{event.text}\nStill the case when the silence ended at {_time(at)}.",
        occurred_at=at,
        data={**event.data, "silenced_at": event.occurred_at.isoformat()},
        machine_id=event.machine_id,
        rule_id=event.rule_id,
    )
