"""The dashboard's pages: log in, the machines overview, one machine.

Rendered on the server with Jinja2 (escaped by default); small scripts served by
this server (no inline script, no eval, no CDN) add live updates and charts. The
session cookie is the API's own (HttpOnly, SameSite=Lax), and the scripts read
through the API, so a page can do nothing the API would not let the same user
do. Reads go through the same services and owner scoping as the API routes.

Behind a reverse proxy under a path prefix, every link, redirect and asset URL
starts with the prefix the proxy names in ``X-Forwarded-Prefix`` (or the ASGI
``root_path``): see :func:`prefix_of`.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.templating import Jinja2Templates

from lunasentri_core.components import Principal
from lunasentri_core.hub import Sentri
from lunasentri_core.server.context import ROUTE_KEY
from lunasentri_core.server.dashboard.assets import asset_path, serve_asset
from lunasentri_core.server.routes.auth import (
    clear_session_cookie,
    session_token,
    set_session_cookie,
)
from lunasentri_core.server.routes.users import accounts_of_app
from lunasentri_core.services.accounts import InvalidCredentials, LoginThrottled

Authenticate = Callable[[Request], Awaitable[Principal | None]]
Page = Callable[[Request], Awaitable[Response]]

PAGE = "dashboard."
"""Prefix of the pages' route names (they are HTML, not part of the API document)."""
FORM_LIMIT = 4096
CONTENT_SECURITY_POLICY = (
    # Scripts and styles from this server's files only: no inline script or
    # <style>, no eval. uPlot and htmx set element styles through the CSSOM,
    # which style-src does not restrict, so no 'unsafe-inline' is needed.
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")

templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))


def number(value: float) -> str:
    """A reading for people: whole numbers with separators from 1,000 up (byte counts
    stay exact), four significant digits below."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


templates.env.filters["number"] = number


def prefix_of(request: Request) -> str:
    """The path prefix the dashboard is reached under (``""`` at the root).

    A reverse proxy that strips a prefix says which in ``X-Forwarded-Prefix``;
    otherwise the ASGI ``root_path`` (uvicorn's ``--root-path``) is used. The
    header is taken from any client: it only changes the links of the answer to
    that client (which no cache keeps), and only to a plain path on this origin.
    """
    offered = request.headers.get("x-forwarded-prefix", "").rstrip("/")
    if offered and _PREFIX.match(offered):
        return offered
    root: str = request.scope.get("root_path", "")
    root = root.rstrip("/")
    return root if _PREFIX.match(root) else ""


def app_path(request: Request) -> str:
    """The request's path without the ASGI root path (what the routes match)."""
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def dashboard_routes(authenticate: Authenticate) -> list[BaseRoute]:
    """The pages, which find the caller with ``authenticate`` (the API's auth hook)."""
    # Imported here: those modules build on this one's helpers.
    from lunasentri_core.server.dashboard.admin_page import AdminPages
    from lunasentri_core.server.dashboard.agentless import agentless_routes
    from lunasentri_core.server.dashboard.alerts_page import AlertsPage
    from lunasentri_core.server.dashboard.channels_page import ChannelsPage
    from lunasentri_core.server.dashboard.machine_page import MachinePage
    from lunasentri_core.server.dashboard.manage import Manage
    from lunasentri_core.server.dashboard.overview import Overview
    from lunasentri_core.server.dashboard.rules_page import RulesPage
    from lunasentri_core.server.dashboard.silences_page import SilencesPage

    pages = Pages(authenticate)
    overview = Overview(pages)
    manage = Manage(pages)
    alerts = AlertsPage(pages)
    silences = SilencesPage(pages)
    rules = RulesPage(pages)
    channels = ChannelsPage(pages)
    admin = AdminPages(pages)
    return [
        page_route("/", overview.page, "GET", "machines"),
        # Before /machines/{machine_id}, which would take "new" for an id.
        page_route("/machines/new", manage.new_form, "GET", "machine_new_form"),
        page_route("/machines/new", manage.create, "POST", "machine_create"),
        page_route("/agents/pending", manage.pending, "GET", "agents_pending"),
        page_route("/agents/{agent_id}/claim", manage.claim, "POST", "agent_claim"),
        page_route("/machines/{machine_id}/settings", manage.settings, "GET", "machine_settings"),
        page_route("/machines/{machine_id}/labels", manage.labels, "POST", "machine_labels"),
        page_route(
            "/machines/{machine_id}/agent-config", manage.agent_config, "POST", "agent_config"
        ),
        page_route("/machines/{machine_id}/keys/rotate", manage.rotate, "POST", "key_rotate"),
        page_route(
            "/machines/{machine_id}/keys/{key_id}/revoke", manage.revoke, "POST", "key_revoke"
        ),
        page_route(
            "/machines/{machine_id}/delete", manage.delete_form, "GET", "machine_delete_form"
        ),
        page_route("/machines/{machine_id}/delete", manage.delete, "POST", "machine_delete"),
        page_route("/machines/{machine_id}", MachinePage(pages).page, "GET", "machine"),
        page_route("/machines/{machine_id}/card", overview.card, "GET", "machine_card"),
        page_route(
            "/machines/{machine_id}/sparklines", overview.sparklines, "GET", "machine_sparklines"
        ),
        page_route("/live", overview.live, "GET", "live"),
        page_route("/alerts", alerts.page, "GET", "alerts"),
        page_route("/alerts/current", alerts.current, "GET", "alerts_current"),
        page_route(
            "/alerts/events/{event_id}/acknowledge", alerts.acknowledge, "POST", "alert_acknowledge"
        ),
        page_route("/rules", rules.page, "GET", "rules"),
        page_route("/rules", rules.create, "POST", "rule_create"),
        page_route("/rules/{rule_id}", rules.edit, "GET", "rule_edit"),
        page_route("/rules/{rule_id}", rules.update, "POST", "rule_update"),
        page_route("/rules/{rule_id}/enabled", rules.enable, "POST", "rule_enable"),
        page_route("/rules/{rule_id}/delete", rules.delete_form, "GET", "rule_delete_form"),
        page_route("/rules/{rule_id}/delete", rules.delete, "POST", "rule_delete"),
        page_route("/channels", channels.page, "GET", "channels"),
        page_route("/channels/new", channels.new_form, "GET", "channel_new_form"),
        page_route("/channels/new", channels.create, "POST", "channel_create"),
        page_route("/channels/{channel_id}/test", channels.test, "POST", "channel_test"),
        page_route("/channels/{channel_id}", channels.edit, "GET", "channel_edit"),
        page_route("/channels/{channel_id}", channels.update, "POST", "channel_update"),
        page_route("/channels/{channel_id}/enabled", channels.enable, "POST", "channel_enable"),
        page_route(
            "/channels/{channel_id}/delete", channels.delete_form, "GET", "channel_delete_form"
        ),
        page_route("/channels/{channel_id}/delete", channels.delete, "POST", "channel_delete"),
        page_route("/notifications/{delivery_id}/retry", channels.retry, "POST", "delivery_retry"),
        page_route("/silences", silences.page, "GET", "silences"),
        page_route("/silences", silences.create, "POST", "silence_create"),
        page_route("/silences/{silence_id}/end", silences.end, "POST", "silence_end"),
        *agentless_routes(pages),
        page_route("/users", admin.users, "GET", "users"),
        page_route("/users", admin.create_user, "POST", "user_create"),
        page_route("/users/{user_id}/role", admin.set_role, "POST", "user_role"),
        page_route("/users/{user_id}/reset-token", admin.reset_token, "POST", "user_reset"),
        page_route("/users/{user_id}/delete", admin.delete_form, "GET", "user_delete_form"),
        page_route("/users/{user_id}/delete", admin.delete, "POST", "user_delete"),
        page_route("/audit", admin.audit, "GET", "audit"),
        page_route("/plugins", admin.plugins, "GET", "plugins"),
        page_route("/login", pages.login_form, "GET", "login_form"),
        page_route("/login", pages.login, "POST", "login"),
        page_route("/logout", pages.logout, "POST", "logout"),
        page_route("/static/{digest}/{name:path}", serve_asset, "GET", "static"),
    ]


def page_route(path: str, page: Page, method: str, name: str) -> Route:
    async def endpoint(request: Request) -> Response:
        # The request metrics count pages by their path template, as API routes.
        request.scope[ROUTE_KEY] = path
        return await page(request)

    return Route(path, endpoint, methods=[method], name=f"{PAGE}{name}")


class Pages:
    """What every page needs: who is asking, and the log-in pages themselves."""

    def __init__(self, authenticate: Authenticate) -> None:
        self.authenticate = authenticate

    async def user(self, request: Request) -> Principal | None:
        principal = await self.authenticate(request)
        return principal if principal is not None and principal.kind == "user" else None

    async def login_form(self, request: Request) -> Response:
        if await self.user(request) is not None:
            return redirect(request, _next(request.query_params.get("next")))
        return _login_page(request, "", request.query_params.get("next"))

    async def login(self, request: Request) -> Response:
        form = await form_fields(request)
        username, password = form.get("username", ""), form.get("password", "")
        target = form.get("next")
        accounts = accounts_of_app(request.app)
        client = client_of(request)
        try:
            result = await accounts.login(username, password, client)
        except InvalidCredentials as error:
            return _login_page(request, str(error), target, username, status=401)
        except LoginThrottled as error:
            response = _login_page(request, str(error), target, username, status=429)
            response.headers["retry-after"] = str(error.retry_after)
            return response
        response = redirect(request, _next(target))
        set_session_cookie(response, request.app.state.settings, result.token)
        return response

    async def logout(self, request: Request) -> Response:
        client = client_of(request)
        await accounts_of_app(request.app).logout(session_token(request), client)
        response = redirect(request, "/login")
        clear_session_cookie(response, request.app.state.settings)
        return response


def hub_of(request: Request) -> Sentri:
    hub: Sentri = request.app.state.hub
    return hub


def ago(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "never"
    seconds = max(0, int((now - at).total_seconds()))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


async def form_fields(request: Request, limit: int = FORM_LIMIT) -> dict[str, str]:
    """An urlencoded form (a few short fields, ``limit`` bytes at most); anything else
    reads as empty."""
    fields = await form_lists(request, limit)
    return {name: values[0] for name, values in fields.items()}


async def form_lists(
    request: Request, limit: int = FORM_LIMIT, max_fields: int = 16
) -> dict[str, list[str]]:
    """As :func:`form_fields`, with every value of a name given several times (checkboxes)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return {}
    try:
        return urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=max_fields)
    except ValueError:  # more fields than any of the forms has
        return {}


def _next(target: str | None) -> str:
    """Where to go after logging in: a path on this server only (no open redirect)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


def redirect(request: Request, path: str) -> Response:
    """To ``path`` of the dashboard, under the prefix it is reached by."""
    return RedirectResponse(prefix_of(request) + path, 303, headers=SECURITY_HEADERS)


def to_login(request: Request) -> Response:
    if request.headers.get("hx-request") == "true":
        # A part of a page (a card, the list) asked after the session ended: htmx
        # would put the login page in its place, so send the whole page there.
        query = urllib.parse.urlencode({"next": "/"})
        target = f"{prefix_of(request)}/login?{query}"
        return Response(status_code=200, headers={**SECURITY_HEADERS, "hx-redirect": target})
    query = urllib.parse.urlencode({"next": app_path(request)})
    return redirect(request, f"/login?{query}")


def _login_page(
    request: Request,
    error: str,
    target: str | None,
    username: str = "",
    *,
    status: int = 200,
) -> Response:
    context = {"error": error, "next": _next(target), "username": username, "user": None}
    return render(request, "login.html", context, status=status)


def client_of(request: Request) -> str | None:
    """The caller's address, as the audit log records it."""
    return request.client.host if request.client else None


async def enabled_choice(request: Request, user: Principal, what: str) -> bool | Response:
    """The ``enabled`` field (``true`` or ``false``) of an enable/disable form, or the
    refusal page naming ``what`` when it is neither."""
    wanted = (await form_fields(request)).get("enabled")
    if wanted not in ("true", "false"):
        context = {"user": user, "message": f"Choose to enable or disable the {what}."}
        return render(request, "refused.html", context, status=400)
    return wanted == "true"


def not_found(request: Request, user: Principal, what: str) -> Response:
    return render(request, "not_found.html", {"user": user, "what": what}, status=404)


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    status: int = 200,
) -> Response:
    base = prefix_of(request)
    context = {
        **context,
        "base": base,
        "asset": lambda asset: base + asset_path(asset),
    }
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response
