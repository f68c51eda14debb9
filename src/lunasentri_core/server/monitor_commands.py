"""``lunasentri monitors``: see and switch agentless monitors in the configured storage.

Like ``lunasentri users``, these work on the storage directly, with or without a
server running; an operator at the console sees every owner's monitors.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from lunasentri_core.model import Monitor, utcnow
from lunasentri_core.server.commands import _friendly_errors, _Settings, _state
from lunasentri_core.services import audit
from lunasentri_core.services.monitors import outcome, switched
from lunasentri_core.storage.protocols import StateStore

_COLUMNS = ("id", "address", "collector", "interval", "state", "last_polled", "last_error")


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def _row(monitor: Monitor, address: str) -> dict[str, Any]:
    return {
        "id": monitor.id,
        "owner_id": monitor.owner_id,
        "device_id": monitor.device_id,
        "address": address,
        "collector": monitor.collector,
        "interval": monitor.interval.total_seconds(),
        "enabled": monitor.enabled,
        "state": outcome(monitor),
        "due_at": monitor.due_at.isoformat(),
        "last_polled": _when(monitor.last_polled),
        "last_error": monitor.last_error or "-",
        "failures": monitor.failures,
    }


@click.group()
def monitors() -> None:
    """See and switch agentless monitors (every owner's)."""


@monitors.command("list")
@click.option("--failing", is_flag=True, help="Only monitors whose last poll failed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
@_friendly_errors
def list_monitors(obj: _Settings, failing: bool, as_json: bool) -> None:
    """List monitors with how their polling goes."""
    with _state(obj) as state:
        found = state.list_monitors()
        addresses = {d.id: d.address for d in state.list_devices()}
    rows = [_row(m, addresses.get(m.device_id, "?")) for m in found]
    if failing:
        rows = [r for r in rows if r["state"] == "failing"]
    if as_json:
        click.echo(json.dumps({"items": rows}, indent=2))
        return
    cells = [[str(r[c]) if c != "interval" else f"{r[c]:g}s" for c in _COLUMNS] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(_COLUMNS)]
    for line in [list(_COLUMNS), *cells]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


@monitors.command("enable")
@click.argument("monitor_id")
@click.pass_obj
@_friendly_errors
def enable(obj: _Settings, monitor_id: str) -> None:
    """Enable a monitor: it polls within ten seconds."""
    with _state(obj) as state:
        _switch(state, monitor_id, True)
    click.echo(f"monitor {monitor_id} enabled")


@monitors.command("disable")
@click.argument("monitor_id")
@click.pass_obj
@_friendly_errors
def disable(obj: _Settings, monitor_id: str) -> None:
    """Disable a monitor: it stays, with its metrics, and polls no more."""
    with _state(obj) as state:
        _switch(state, monitor_id, False)
    click.echo(f"monitor {monitor_id} disabled")


def _switch(state: StateStore, monitor_id: str, enabled: bool) -> None:
    monitor = state.get_monitor(monitor_id)
    if monitor.enabled != enabled:
        state.update_monitor(switched(monitor, enabled, utcnow()))
    entry = audit.entry(
        action="monitor.update",
        actor=None,
        at=utcnow(),
        target_type="monitor",
        target_id=monitor.id,
        detail={"device_id": monitor.device_id, "fields": ["enabled"], "via": "cli"},
    )
    state.add_audit(entry)
