"""The dashboard's pages: log in, the machine list, one machine.

Rendered on the server with Jinja2 (escaped by default) and no JavaScript:
pages refresh themselves, the content security policy allows no script, and
the session cookie is the API's own (HttpOnly, SameSite=Lax), so a page can
do nothing that the API would not let the same user do. Reads go through the
same services and owner scoping as the API routes.
"""

from __future__ import annotations

import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.templating import Jinja2Templates

from lunasentri_core.components import Principal
from lunasentri_core.errors import NotFoundError
from lunasentri_core.hub import Sentri
from lunasentri_core.model import (
    AlertState,
    AlertStatus,
    HistoryQuery,
    SeriesHistory,
    SeriesValue,
)
from lunasentri_core.server.context import ROUTE_KEY
from lunasentri_core.server.dashboard.charts import HEIGHT, WIDTH, sparkline
from lunasentri_core.server.params import make_cursor, parse_cursor
from lunasentri_core.server.routes.auth import (
    clear_session_cookie,
    session_token,
    set_session_cookie,
)
from lunasentri_core.server.routes.users import accounts_of_app
from lunasentri_core.services import queries
from lunasentri_core.services.accounts import InvalidCredentials, LoginThrottled
from lunasentri_core.services.machines import Machines, owner_scope
from lunasentri_core.services.rules import Rules

Authenticate = Callable[[Request], Awaitable[Principal | None]]
Page = Callable[[Request], Awaitable[Response]]

PAGE = "dashboard."
"""Prefix of the pages' route names (they are HTML, not part of the API document)."""
REFRESH_SECONDS = 15
CHART_RANGE = timedelta(hours=1)
CHART_POINTS = 120
"""Points at most in a sparkline (30 s steps over the hour)."""
CHARTS = ("cpu.percent", "mem.percent", "swap.percent", "disk.percent", "load.1", "net.rx_rate")
"""Drawn on a machine's page where it has them, in this order."""
SUMMARY_METRICS = ("cpu.percent", "mem.percent", "disk.percent")
ALERT_STATES = (AlertState.FIRING, AlertState.PENDING)
"""Shown, in this order: what a rule has decided and what it is about to."""
FORM_LIMIT = 4096
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}

templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))


def number(value: float) -> str:
    """A reading for people: whole numbers with separators from 1,000 up (byte counts
    stay exact), four significant digits below."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


templates.env.filters["number"] = number


def dashboard_routes(authenticate: Authenticate) -> list[BaseRoute]:
    """The pages, which find the caller with ``authenticate`` (the API's auth hook)."""
    pages = _Pages(authenticate)
    return [
        _route("/", pages.machines, "GET", "machines"),
        _route("/machines/{machine_id}", pages.machine, "GET", "machine"),
        _route("/login", pages.login_form, "GET", "login_form"),
        _route("/login", pages.login, "POST", "login"),
        _route("/logout", pages.logout, "POST", "logout"),
    ]


def _route(path: str, page: Page, method: str, name: str) -> Route:
    async def endpoint(request: Request) -> Response:
        # The request metrics count pages by their path template, as API routes.
        request.scope[ROUTE_KEY] = path
        return await page(request)

    return Route(path, endpoint, methods=[method], name=f"{PAGE}{name}")


class _Pages:
    def __init__(self, authenticate: Authenticate) -> None:
        self._authenticate = authenticate

    async def machines(self, request: Request) -> Response:
        user = await self._user(request)
        if user is None:
            return _to_login(request)
        hub = _hub(request)
        text = request.query_params.get("cursor")
        # A stale or mangled cursor (an old bookmark) starts again from the first page.
        after = parse_cursor(text) if text else None
        found = await Machines(hub, request.app.state.full_settings).page(user, after=after)
        summaries = found.items
        alerts = _alert_counts(await Rules(hub).states(user))
        now = hub.clock()
        rows = [
            {
                "machine": s.machine,
                "seen": _ago(s.machine.last_seen, now),
                "values": _summary_values(s.latest or ()),
                "alerts": alerts.get(s.machine.id, {}),
            }
            for s in summaries
        ]
        context = {
            "user": user,
            "rows": rows,
            "metrics": SUMMARY_METRICS,
            "next_cursor": None if found.next_after is None else make_cursor(found.next_after),
            "paged": after is not None,
        }
        return _render(request, "machines.html", context, refresh=True)

    async def machine(self, request: Request) -> Response:
        user = await self._user(request)
        if user is None:
            return _to_login(request)
        hub = _hub(request)
        machine_id = request.path_params["machine_id"]
        try:
            machine = await Machines(hub, request.app.state.full_settings).get(user, machine_id)
            latest = await queries.latest(hub, machine_id, owner_scope(user))
            charts = await _charts(hub, machine_id, owner_scope(user))
            alerts = await _alerts(hub, user, machine_id)
        except NotFoundError:
            context = {"user": user, "what": "machine"}
            return _render(request, "not_found.html", context, status=404)
        context = {
            "user": user,
            "machine": machine,
            "seen": _ago(machine.last_seen, hub.clock()),
            "values": [*latest.derived, *latest.items],
            "charts": charts,
            "alerts": alerts,
            "width": WIDTH,
            "height": HEIGHT,
        }
        return _render(request, "machine.html", context, refresh=True)

    async def login_form(self, request: Request) -> Response:
        if await self._user(request) is not None:
            return RedirectResponse(_next(request.query_params.get("next")), 303)
        return _login_page(request, "", request.query_params.get("next"))

    async def login(self, request: Request) -> Response:
        form = await _form(request)
        username, password = form.get("username", ""), form.get("password", "")
        target = form.get("next")
        accounts = accounts_of_app(request.app)
        client = request.client.host if request.client else None
        try:
            result = await accounts.login(username, password, client)
        except InvalidCredentials as error:
            return _login_page(request, str(error), target, username, status=401)
        except LoginThrottled as error:
            response = _login_page(request, str(error), target, username, status=429)
            response.headers["retry-after"] = str(error.retry_after)
            return response
        response = RedirectResponse(_next(target), 303)
        set_session_cookie(response, request.app.state.settings, result.token)
        return response

    async def logout(self, request: Request) -> Response:
        client = request.client.host if request.client else None
        await accounts_of_app(request.app).logout(session_token(request), client)
        response = RedirectResponse("/login", 303)
        clear_session_cookie(response, request.app.state.settings)
        return response

    async def _user(self, request: Request) -> Principal | None:
        principal = await self._authenticate(request)
        return principal if principal is not None and principal.kind == "user" else None


def _hub(request: Request) -> Sentri:
    hub: Sentri = request.app.state.hub
    return hub


async def _charts(hub: Sentri, machine_id: str, scope: str | None) -> list[dict[str, Any]]:
    end = hub.clock()
    step = queries.auto_step(end - CHART_RANGE, end, CHART_POINTS)
    start = queries.align(end - CHART_RANGE, step)
    charts = []
    for metric in CHARTS:
        query = HistoryQuery(machine_id, metric, start, end, step)
        for series in await queries.history(hub, query, scope):
            chart = _chart(series, start, end)
            if chart is not None:
                charts.append(chart)
    return charts


def _chart(series: SeriesHistory, start: datetime, end: datetime) -> dict[str, Any] | None:
    percent = series.series.metric.endswith(".percent")
    line = sparkline(
        series.points,
        start.timestamp(),
        end.timestamp(),
        floor=0.0 if percent else None,
        ceiling=100.0 if percent else None,
    )
    if line is None:
        return None
    return {"metric": series.series.metric, "labels": dict(series.series.labels), "line": line}


def _alert_counts(alerts: Sequence[AlertStatus]) -> dict[str, dict[str, int]]:
    """Per machine, how many series are in each shown state, in ``ALERT_STATES`` order."""
    counts = Counter((a.machine_id, a.state) for a in alerts)
    per_machine: dict[str, dict[str, int]] = {}
    for state in ALERT_STATES:
        for (machine_id, counted), count in counts.items():
            if counted is state:
                per_machine.setdefault(machine_id, {})[state.value] = count
    return per_machine


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


def _summary_values(latest: tuple[SeriesValue, ...]) -> dict[str, float]:
    """One figure per summary metric: the fullest disk stands for all of them."""
    found: dict[str, float] = {}
    for value in latest:
        metric = value.series.metric
        if metric in SUMMARY_METRICS:
            found[metric] = max(found.get(metric, value.value), value.value)
    return found


def _ago(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "never"
    seconds = max(0, int((now - at).total_seconds()))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form (the login form's two fields); anything else reads as empty."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_LIMIT:
            return {}
    fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
    return {name: values[0] for name, values in fields.items()}


def _next(target: str | None) -> str:
    """Where to go after logging in: a path on this server only (no open redirect)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


def _to_login(request: Request) -> Response:
    query = urllib.parse.urlencode({"next": request.url.path})
    return RedirectResponse(f"/login?{query}", 303)


def _login_page(
    request: Request,
    error: str,
    target: str | None,
    username: str = "",
    *,
    status: int = 200,
) -> Response:
    context = {"error": error, "next": _next(target), "username": username, "user": None}
    return _render(request, "login.html", context, status=status)


def _render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    status: int = 200,
    refresh: bool = False,
) -> Response:
    context = {**context, "refresh": REFRESH_SECONDS if refresh else None}
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response
