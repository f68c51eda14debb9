"""The machines overview: one card per machine, filtered, sorted, paged, kept live.

Cards are drawn on the server (figures and sparklines), so the page reads the
same without script. With script (htmx), the filter form swaps only the list,
and a stream of which machines got new samples (this module's ``/live``, fed
by the API stream's :class:`~lunasentri_core.services.live.LiveFeed`) makes the
page fetch those machines' cards again.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from lunasentri_core.components import Credentials, Principal
from lunasentri_core.errors import NotFoundError
from lunasentri_core.hub import Sentri
from lunasentri_core.model import (
    LABEL_NAME,
    AlertState,
    AlertStatus,
    HistoryQuery,
    Machine,
    MachineStatus,
    SeriesHistory,
    SeriesValue,
)
from lunasentri_core.server.dashboard.access import Section, signed_in
from lunasentri_core.server.dashboard.charts import HEIGHT, WIDTH, Sparkline, sparkline
from lunasentri_core.server.dashboard.pages import (
    SECURITY_HEADERS,
    ago,
    hub_of,
    render,
)
from lunasentri_core.server.params import make_cursor, parse_cursor
from lunasentri_core.services import queries
from lunasentri_core.services.live import LiveFeed
from lunasentri_core.services.machines import MachineFilter, Machines, owner_scope
from lunasentri_core.services.rules import Rules

PAGE_SIZE = 24
"""Cards a page shows: each draws three sparklines."""
SPARK_RANGE = timedelta(hours=1)
SPARK_POINTS = 60
SUMMARY_METRICS = ("cpu.percent", "mem.percent", "disk.percent")
ALERT_STATES = (AlertState.FIRING, AlertState.PENDING)
"""Shown, in this order: what a rule has decided and what it is about to."""
SORTS = {
    "name": "name",
    "status": "status (offline first)",
    "cpu": "CPU (highest first)",
    "mem": "memory (highest first)",
    "disk": "disk (fullest first)",
    "seen": "last seen (oldest first)",
}
STATUS_ORDER = {MachineStatus.OFFLINE: 0, MachineStatus.UNKNOWN: 1, MachineStatus.ONLINE: 2}
LIVE_MACHINES = 100
"""Machines one ``/live`` stream watches at most (more than a page shows)."""
LIVE_BATCH_SECONDS = 1.0
"""Changes are gathered this long before they are sent: one redraw per card per burst."""
KEEPALIVE_SECONDS = 15.0


class Overview(Section):
    @signed_in
    async def page(self, request: Request, user: Principal) -> Response:
        """``GET /``: the whole page, or only its list for htmx's filter requests."""
        params = request.query_params
        filters, problem = _filters(
            params.get("name", ""), params.get("status", ""), params.get("labels", "")
        )
        sort = params.get("sort", "name") if params.get("sort") in SORTS else "name"
        text = params.get("cursor")
        # A stale or mangled cursor (an old bookmark) starts again from the first page.
        after = parse_cursor(text) if text else None
        hub = hub_of(request)
        found = await Machines(hub, request.app.state.full_settings).page(
            user, filters=filters, after=after, limit=PAGE_SIZE
        )
        alerts = _alert_counts(await Rules(hub).states(user))
        cards = [
            _card(hub, s.machine, s.latest or (), alerts.get(s.machine.id, {})) for s in found.items
        ]
        shown = {k: v for k, v in params.items() if k in ("name", "status", "labels", "sort")}
        context = {
            "user": user,
            "cards": _sorted(cards, sort),
            "problem": problem,
            "query": shown,
            "sorts": SORTS,
            "statuses": [s.value for s in MachineStatus],
            "next_query": None
            if found.next_after is None
            else {**shown, "cursor": make_cursor(found.next_after)},
            "first_query": shown if after is not None else None,
            "here": {**shown, "cursor": text} if after is not None and text else shown,
            "filtered": bool(shown.get("name") or shown.get("status") or shown.get("labels")),
        }
        partial = request.headers.get("hx-target") == "machine-list"
        return render(request, "machine_list.html" if partial else "machines.html", context)

    @signed_in
    async def card(self, request: Request, user: Principal) -> Response:
        """``GET /machines/{id}/card``: one machine's card, as the list shows it."""
        hub = hub_of(request)
        machine_id = request.path_params["machine_id"]
        try:
            machine = await Machines(hub, request.app.state.full_settings).get(user, machine_id)
            latest = await queries.latest(hub, machine_id, owner_scope(user))
        except NotFoundError:
            return PlainTextResponse("no such machine", 404, headers=SECURITY_HEADERS)
        states = await Rules(hub).states(user, machine_id=machine_id)
        alerts = _alert_counts(states).get(machine_id, {})
        card = _card(hub, machine, (*latest.derived, *latest.items), alerts)
        return render(request, "machine_card.html", {"card": card, "user": user})

    @signed_in
    async def sparklines(self, request: Request, user: Principal) -> Response:
        """``GET /machines/{id}/sparklines``: a card's last hour of CPU, memory and disk.

        Fetched by each card after it is shown: each line is a history query
        (about 10 ms, two for a derived percentage), too many to wait for in
        the list itself.
        """
        hub = hub_of(request)
        machine_id = request.path_params["machine_id"]
        try:
            lines = await _sparks(hub, machine_id, owner_scope(user))
        except NotFoundError:
            return PlainTextResponse("no such machine", 404, headers=SECURITY_HEADERS)
        context = {"lines": lines, "width": WIDTH, "height": HEIGHT, "user": user}
        return render(request, "machine_sparklines.html", context)

    async def live(self, request: Request) -> Response:
        """``GET /live?machines=id,id``: an event stream naming machines with new samples.

        Only machines the caller sees are watched (others are dropped unnamed); the
        stream ends when the caller's credential does (checked every
        ``server.stream_recheck``).
        """
        user = await self.pages.user(request)
        if user is None:
            return PlainTextResponse("log in first", 401, headers=SECURITY_HEADERS)
        hub = hub_of(request)
        wanted = [i for i in request.query_params.get("machines", "").split(",") if i]
        visible = [m for m in dict.fromkeys(wanted[:LIVE_MACHINES]) if await _sees(hub, user, m)]
        feed: LiveFeed = request.app.state.live
        recheck = request.app.state.settings.stream_recheck.total_seconds()
        credentials = Credentials(
            headers={k.lower(): v for k, v in request.headers.items()},
            cookies=dict(request.cookies),
            client=request.client.host if request.client else None,
        )

        async def still_allowed() -> bool:
            principal = await hub.authenticate(credentials)
            return principal is not None and principal.id == user.id

        return StreamingResponse(
            _changes(feed, visible, still_allowed, recheck),
            media_type="text/event-stream",
            headers={**SECURITY_HEADERS, "x-accel-buffering": "no"},
        )


async def _sees(hub: Sentri, user: Principal, machine_id: str) -> bool:
    try:
        await hub.get_machine(machine_id, owner_scope(user))
    except NotFoundError:
        return False
    return True


async def _changes(
    feed: LiveFeed,
    machine_ids: Sequence[str],
    still_allowed: Callable[[], Awaitable[bool]],
    recheck: float,
) -> AsyncIterator[str]:
    async with feed.watch_changes(machine_ids) as changes:
        yield "retry: 3000\n: subscribed\n\n"
        next_check = anyio.current_time() + recheck
        quiet_since = anyio.current_time()
        while True:
            changed = await changes.receive(max(0.0, next_check - anyio.current_time()))
            if changed is None:
                return
            if anyio.current_time() >= next_check:
                if not await still_allowed():
                    return
                next_check = anyio.current_time() + recheck
            if changed:
                await anyio.sleep(LIVE_BATCH_SECONDS)
                more = await changes.receive(0)
                changed |= more or set()
                quiet_since = anyio.current_time()
                yield f"event: changed\ndata: {json.dumps(sorted(changed))}\n\n"
            elif anyio.current_time() - quiet_since >= KEEPALIVE_SECONDS:
                quiet_since = anyio.current_time()
                yield ": keepalive\n\n"


def _filters(name: str, status: str, labels: str) -> tuple[MachineFilter, str | None]:
    """The list's filters from the form's fields, and what is wrong with them (if anything)."""
    problem = None
    pairs: dict[str, str] = {}
    for item in (part.strip() for part in labels.split(",")):
        if not item:
            continue
        label, sep, value = item.partition(":")
        label = label.strip()
        if not sep or not LABEL_NAME.match(label):
            problem = f"{item!r} is not a label as name:value (e.g. env:prod)"
            continue
        pairs[label] = value.strip()
    chosen = MachineStatus(status) if status in MachineStatus.__members__.values() else None
    contains = name.strip()[:200] or None
    filters = MachineFilter(status=chosen, labels=tuple(sorted(pairs.items())), name=contains)
    return filters, problem


def _card(
    hub: Sentri, machine: Machine, latest: Sequence[SeriesValue], alerts: dict[str, int]
) -> dict[str, Any]:
    return {
        "machine": machine,
        "seen": ago(machine.last_seen, hub.clock()),
        "values": _summary_values(latest),
        "alerts": alerts,
    }


async def _sparks(hub: Sentri, machine_id: str, scope: str | None) -> dict[str, Sparkline | None]:
    """The last hour of each summary metric, in one read: the CPU's whole-machine
    series only (``exact``: not the per-core ones, which the card does not draw)
    where there is one, else its core ending highest; the fullest disk."""
    end = hub.clock()
    step = queries.auto_step(end - SPARK_RANGE, end, SPARK_POINTS)
    start = queries.align(end - SPARK_RANGE, step)

    def query(metric: str, *, exact: bool = False) -> HistoryQuery:
        return HistoryQuery(machine_id, metric, start, end, step, exact=exact)

    asked = [query(metric, exact=metric == "cpu.percent") for metric in SUMMARY_METRICS]
    found: dict[str, list[SeriesHistory]] = {metric: [] for metric in SUMMARY_METRICS}
    for history in await queries.histories(hub, asked, scope):
        found.setdefault(history.series.metric, []).append(history)
    if not found["cpu.percent"]:  # no whole-machine CPU in the last hour: its cores
        found["cpu.percent"] = await queries.history(hub, query("cpu.percent"), scope)
    return {
        metric: _spark(lines, start.timestamp(), end.timestamp()) for metric, lines in found.items()
    }


def _spark(found: Sequence[SeriesHistory], start: float, end: float) -> Sparkline | None:
    """The whole machine's series where there is one, else the one ending highest."""
    found = [s for s in found if s.points]
    if not found:
        return None
    whole = [s for s in found if not s.series.labels]
    chosen = whole[0] if whole else max(found, key=lambda s: s.points[-1].value)
    return sparkline(chosen.points, start, end, floor=0.0, ceiling=100.0)


def _summary_values(latest: Sequence[SeriesValue]) -> dict[str, float]:
    """One figure per summary metric: the whole machine's CPU, the fullest disk."""
    found: dict[str, float] = {}
    for value in latest:
        metric = value.series.metric
        if metric not in SUMMARY_METRICS:
            continue
        if metric == "cpu.percent" and value.series.labels:
            continue  # one core's figure is not the machine's
        found[metric] = max(found.get(metric, value.value), value.value)
    return found


def _alert_counts(alerts: Sequence[AlertStatus]) -> dict[str, dict[str, int]]:
    """Per machine, how many series are in each shown state, in ``ALERT_STATES`` order."""
    counts = Counter((a.machine_id, a.state) for a in alerts)
    per_machine: dict[str, dict[str, int]] = {}
    for state in ALERT_STATES:
        for (machine_id, counted), count in counts.items():
            if counted is state:
                per_machine.setdefault(machine_id, {})[state.value] = count
    return per_machine


def _sorted(cards: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    """The page's cards in the chosen order (pages themselves come in name order)."""
    if sort == "status":
        return sorted(cards, key=lambda c: STATUS_ORDER[c["machine"].status])
    if sort == "seen":
        return sorted(
            cards, key=lambda c: c["machine"].last_seen or datetime.min.replace(tzinfo=UTC)
        )
    metric = {"cpu": "cpu.percent", "mem": "mem.percent", "disk": "disk.percent"}.get(sort)
    if metric is not None:
        return sorted(cards, key=lambda c: -c["values"].get(metric, -1.0))
    return cards
