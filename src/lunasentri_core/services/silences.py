"""Silences: maintenance windows during which matching events are recorded, not sent.

When a silence ends, what it muted and is still wrong (a machine still offline,
an alert still firing) is notified then; what went wrong and recovered within
the window is not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lunasentri_core.components import NotificationKind
from lunasentri_core.model import (
    AlertState,
    EventState,
    MachineStatus,
    OutboxEvent,
    Silence,
)
from lunasentri_core.services.notices import still_wrong
from lunasentri_core.storage.protocols import StateStore

if TYPE_CHECKING:
    from lunasentri_core.hub import Sentri

MAX_MUTED = 10_000
"""Muted events looked at per silence when it ends."""

_PROBLEMS = {NotificationKind.MACHINE_OFFLINE.value, NotificationKind.ALERT_FIRING.value}


async def close_due(hub: Sentri) -> int:
    """Re-notify the leftovers of every silence that has ended; returns how many closed."""
    now = hub.clock()
    state = hub.storage.state
    due = await hub.run_sync(state.due_silences, now)
    for silence in due:
        leftovers = await hub.run_sync(_leftovers, state, silence)
        notices = [still_wrong(event, silence.ends_at) for event in leftovers]
        await hub.run_sync(state.close_silence, silence.id, now, notices)
    return len(due)


def _leftovers(state: StateStore, silence: Silence) -> list[OutboxEvent]:
    """The newest muted event per subject, where that event's problem persists."""
    muted = state.list_outbox_events(
        silence.owner_id, state=EventState.SILENCED, silence_id=silence.id, limit=MAX_MUTED
    )
    newest: dict[tuple[str, ...], OutboxEvent] = {}
    for event in muted:  # newest first
        newest.setdefault(_subject(event), event)
    return [event for event in newest.values() if _persists(state, event)]


def _subject(event: OutboxEvent) -> tuple[str, ...]:
    if event.kind.startswith("machine."):
        return ("machine", event.machine_id or "")
    series = event.data.get("series", {})
    labels = ",".join(f"{k}={v}" for k, v in sorted(series.get("labels", {}).items()))
    return ("alert", event.rule_id or "", event.machine_id or "", series.get("metric", ""), labels)


def _persists(state: StateStore, event: OutboxEvent) -> bool:
    if event.kind not in _PROBLEMS or event.machine_id is None:
        return False
    if event.kind == NotificationKind.MACHINE_OFFLINE.value:
        try:
            machine = state.get_machine(event.machine_id)
        except LookupError:
            return False
        return machine.status is MachineStatus.OFFLINE
    series = event.data.get("series", {})
    states = state.list_alert_states(
        rule_id=event.rule_id, machine_id=event.machine_id, states=[AlertState.FIRING]
    )
    labels = series.get("labels", {})
    return any(
        s.series.metric == series.get("metric") and dict(s.series.labels) == labels for s in states
    )
