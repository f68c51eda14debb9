"""The alerts page: what is firing and pending now (kept fresh by htmx polling),
acknowledging, and the history of alert events with filters.

Reads and the acknowledgement go through :class:`~lunasentri_core.services.rules.Rules`,
as the API's routes do, so a user sees and acknowledges their own machines' alerts
only (an administrator anyone's). The API pages events by ``limit`` alone (newest
first, no cursor), so the history shows more by asking for a larger limit.
"""

from __future__ import annotations

import urllib.parse
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from lunasentri_core.components import Principal
from lunasentri_core.errors import NotFoundError
from lunasentri_core.model import AlertEvent, AlertState, AlertStatus, SeriesKey
from lunasentri_core.server.dashboard.access import Section, signed_in
from lunasentri_core.server.dashboard.overview import ALERT_STATES
from lunasentri_core.server.dashboard.pages import (
    client_of,
    hub_of,
    redirect,
    render,
)
from lunasentri_core.services.machines import Machines
from lunasentri_core.services.rules import MAX_EVENTS, Rules

HISTORY_PAGE = 50
"""Events the history shows at first; *Show more* adds as many again."""
RANGES = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7)}
RANGES_SHOWN = {"1h": "last hour", "24h": "last 24 hours", "7d": "last 7 days", "all": "all"}
DEFAULT_RANGE = "24h"
POLL_SECONDS = 5
"""How often the open page asks for the current alerts again."""
FIRING_EVENTS = 200
"""The newest firing events read to offer *Acknowledge* on the current alerts (an
alert whose event is older than these shows neither the button nor "acknowledged")."""


async def names(request: Request, user: Principal) -> tuple[dict[str, str], dict[str, str]]:
    """The names of the machines and rules ``user`` sees, by id (for selects and tables)."""
    hub = hub_of(request)
    found = await Machines(hub, request.app.state.full_settings).page(
        user, limit=1000, latest=False
    )
    machines = {s.machine.id: s.machine.name for s in found.items}
    rules = {rule.id: rule.name for rule in await Rules(hub).all(user)}
    return machines, rules


class AlertsPage(Section):
    @signed_in
    async def page(self, request: Request, user: Principal) -> Response:
        """``GET /alerts``: the current alerts, then the filtered history."""
        machines, rules = await names(request, user)
        context = {
            "user": user,
            **await _current(request, user, machines, rules),
            **await _history(request, user, machines, rules),
        }
        return render(request, "alerts.html", context)

    @signed_in
    async def current(self, request: Request, user: Principal) -> Response:
        """``GET /alerts/current``: the current alerts' section alone (htmx polls it)."""
        machines, rules = await names(request, user)
        context = {"user": user, **await _current(request, user, machines, rules)}
        return render(request, "alerts_current.html", context)

    @signed_in
    async def acknowledge(self, request: Request, user: Principal) -> Response:
        """``POST /alerts/events/{event_id}/acknowledge``: as the API's, then back to the page
        (htmx: the current alerts' section, drawn again)."""
        event_id = request.path_params["event_id"]
        try:
            await Rules(hub_of(request)).acknowledge(user, event_id, client=client_of(request))
        except NotFoundError:
            context = {"user": user, "what": "alert event"}
            return render(request, "not_found.html", context, status=404)
        if request.headers.get("hx-request") == "true":
            return await self.current(request)
        return redirect(request, "/alerts")


async def _current(
    request: Request, user: Principal, machines: dict[str, str], rules: dict[str, str]
) -> dict[str, Any]:
    hub = hub_of(request)
    states = await Rules(hub).states(user)
    firing_events = await Rules(hub).events(user, state=AlertState.FIRING, limit=FIRING_EVENTS)
    order = {state: rank for rank, state in enumerate(ALERT_STATES)}
    rows = [
        _current_row(status, machines, rules, _event_of(status, firing_events))
        for status in sorted(states, key=lambda a: (order.get(a.state, 9), a.since))
    ]
    return {"current": rows, "poll": POLL_SECONDS}


def _event_of(status: AlertStatus, events: list[AlertEvent]) -> AlertEvent | None:
    """The event that made this series fire (events come newest first)."""
    if status.state is not AlertState.FIRING:
        return None
    for event in events:
        if event.rule_id == status.rule_id and event.series == status.series:
            return event if event.at >= status.since else None
    return None


def _current_row(
    status: AlertStatus,
    machines: dict[str, str],
    rules: dict[str, str],
    event: AlertEvent | None,
) -> dict[str, Any]:
    return {
        "status": status,
        **_where(status.series, status.rule_id, machines, rules),
        "event": event,
    }


def _where(
    series: SeriesKey, rule_id: str, machines: dict[str, str], rules: dict[str, str]
) -> dict[str, str]:
    return {
        "machine": machines.get(series.machine_id, series.machine_id),
        "rule": rules.get(rule_id, rule_id),
    }


async def _history(
    request: Request, user: Principal, machines: dict[str, str], rules: dict[str, str]
) -> dict[str, Any]:
    params = request.query_params
    machine_id = params.get("machine") if params.get("machine") in machines else None
    rule_id = params.get("rule") if params.get("rule") in rules else None
    state = {"firing": AlertState.FIRING, "resolved": AlertState.RESOLVED}.get(
        params.get("state", "")
    )
    chosen = params.get("range", DEFAULT_RANGE)
    chosen = chosen if chosen in RANGES_SHOWN else DEFAULT_RANGE
    limit = _limit(params.get("limit", ""))
    hub = hub_of(request)
    since = hub.clock() - RANGES[chosen] if chosen in RANGES else None
    events = await Rules(hub).events(
        user,
        machine_id=machine_id,
        rule_id=rule_id,
        state=state,
        since=since,
        limit=limit + 1,  # one more tells whether there is more to show
    )
    query = {
        "machine": machine_id or "",
        "rule": rule_id or "",
        "state": state.value if state else "",
        "range": chosen,
    }
    more = len(events) > limit and limit < MAX_EVENTS
    bigger = {**query, "limit": min(limit + HISTORY_PAGE, MAX_EVENTS)}
    return {
        "events": [
            {"event": e, **_where(e.series, e.rule_id, machines, rules)} for e in events[:limit]
        ],
        "filter": query,
        "machines": machines,
        "rules": rules,
        "ranges": RANGES_SHOWN,
        "more_query": urllib.parse.urlencode(bigger) if more else None,
    }


def _limit(text: str) -> int:
    if text.isascii() and text.isdigit() and len(text) <= 5:
        return max(1, min(int(text), MAX_EVENTS))
    return HISTORY_PAGE
