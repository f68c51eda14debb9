"""One machine's page: its alerts, charts over a chosen range, and latest values.

The server draws the frame and the latest values (with their raw numbers in
``data-`` attributes); ``machine.js`` draws the charts from the history API,
appends the live stream's samples to them for short ranges, and writes every
figure, in the charts and the table alike, with one formatting function.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import attrs
from starlette.requests import Request
from starlette.responses import Response

from lunasentri_core.components import Principal
from lunasentri_core.errors import NotFoundError
from lunasentri_core.hub import Sentri
from lunasentri_core.model import SeriesValue
from lunasentri_core.server.dashboard.access import Section, signed_in
from lunasentri_core.server.dashboard.overview import ALERT_STATES
from lunasentri_core.server.dashboard.pages import ago, hub_of, render
from lunasentri_core.services import queries
from lunasentri_core.services.machines import Machines, owner_scope
from lunasentri_core.services.rules import Rules

RANGES = ("15m", "1h", "6h", "24h", "7d", "30d")
DEFAULT_RANGE = "1h"
CUSTOM_FORMAT = "%Y-%m-%dT%H:%M"
"""How a ``datetime-local`` field spells a minute (read and shown as UTC)."""


@attrs.frozen
class CustomRange:
    """A range the user typed (or dragged across a chart): ``[start, end)`` in UTC."""

    start: datetime
    end: datetime

    @property
    def fields(self) -> dict[str, str]:
        """The form's field values."""
        return {"from": self.start.strftime(CUSTOM_FORMAT), "to": self.end.strftime(CUSTOM_FORMAT)}


def custom_range(params: Any) -> tuple[CustomRange | None, str | None]:
    """The custom range in ``params`` (``from`` and ``to``), or the problem with them;
    ``(None, None)`` when neither is given."""
    given = {name: (params.get(name) or "").strip() for name in ("from", "to")}
    if not any(given.values()):
        return None, None
    times = {}
    for name, shown in (("from", "From"), ("to", "To")):
        try:
            when = datetime.fromisoformat(given[name])
        except ValueError:
            return None, f"{shown}: give a date and time such as 2026-12-07T08:30 (UTC)."
        times[name] = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if times["to"] <= times["from"]:
        return None, "To must be after From."
    return CustomRange(times["from"], times["to"]), None


@attrs.frozen
class Chart:
    """One chart: the metrics drawn in it (each of their series a line)."""

    key: str
    title: str
    metrics: tuple[str, ...]


CHARTS = (
    Chart("cpu", "CPU", ("cpu.percent",)),
    Chart("mem", "Memory", ("mem.percent", "swap.percent")),
    Chart("disk", "Disk space", ("disk.percent",)),
    Chart("load", "Load average", ("load.1", "load.5", "load.15")),
    Chart("net", "Network", ("net.rx_rate", "net.tx_rate")),
    Chart("proc", "Processes", ("proc.count",)),
)


class MachinePage(Section):
    @signed_in
    async def page(self, request: Request, user: Principal) -> Response:
        """``GET /machines/{id}``: the machine's page."""
        hub = hub_of(request)
        machine_id = request.path_params["machine_id"]
        try:
            machine = await Machines(hub, request.app.state.full_settings).get(user, machine_id)
            latest = await queries.latest(hub, machine_id, owner_scope(user))
            alerts = await _alerts(hub, user, machine_id)
        except NotFoundError:
            context = {"user": user, "what": "machine"}
            return render(request, "not_found.html", context, status=404)
        chosen = request.query_params.get("range", DEFAULT_RANGE)
        custom, range_problem = custom_range(request.query_params)
        present = {v.series.metric for v in (*latest.derived, *latest.items)}
        context = {
            "user": user,
            "machine": machine,
            "seen": ago(machine.last_seen, hub.clock()),
            "values": [_row(v) for v in sorted((*latest.derived, *latest.items), key=_order)],
            "charts": [c for c in CHARTS if present.intersection(c.metrics)],
            "alerts": alerts,
            "ranges": RANGES,
            "range": chosen if chosen in RANGES else DEFAULT_RANGE,
            "custom": custom,
            "range_problem": range_problem,
        }
        return render(request, "machine.html", context)


def _order(value: SeriesValue) -> tuple[str, tuple[tuple[str, str], ...]]:
    return value.series.metric, value.series.labels


def _row(value: SeriesValue) -> dict[str, Any]:
    return {
        "metric": value.series.metric,
        "labels": dict(value.series.labels),
        # As machine.js writes a series key: JSON.stringify of the labels in name order.
        "labels_json": json.dumps(
            dict(value.series.labels), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ),
        "value": value.value,
        "value_json": json.dumps(value.value),
        "timestamp": value.timestamp,
    }


async def _alerts(hub: Sentri, user: Principal, machine_id: str) -> list[dict[str, Any]]:
    """The machine's pending and firing series, firing first, with their rules' names."""
    rules = Rules(hub)
    states = await rules.states(user, machine_id=machine_id)
    names = {rule.id: rule.name for rule in await rules.all(user)}
    order = {state: rank for rank, state in enumerate(ALERT_STATES)}
    return [
        {"status": status, "rule": names.get(status.rule_id, status.rule_id)}
        for status in sorted(states, key=lambda a: (order.get(a.state, 9), a.since))
    ]
