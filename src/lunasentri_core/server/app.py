"""The application factory of the reference server."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lunasentri_core.components import Credentials, Principal
from lunasentri_core.config import Settings
from lunasentri_core.hub import Sentri
from lunasentri_core.model import SeriesValue
from lunasentri_core.server import routes
from lunasentri_core.server.api import Api, Endpoint, build_routes
from lunasentri_core.server.context import (
    REQUEST_ID_HEADER,
    ROUTE_KEY,
    new_request_id,
    request_id,
)
from lunasentri_core.server.dashboard import dashboard_routes
from lunasentri_core.server.errors import EXCEPTION_HANDLERS
from lunasentri_core.server.first_admin import DemoPassword
from lunasentri_core.server.guards import (
    CrossSiteGuard,
    SecurityHeaderSet,
    refuse_cross_site,
    trusted_origins_of,
    with_headers,
)
from lunasentri_core.server.metrics import ServerMetrics

log = logging.getLogger("lunasentri.server")
_REQUEST_ID_KEY = REQUEST_ID_HEADER.encode()


def create_app(
    hub: Sentri | None = None,
    settings: Settings | None = None,
    *,
    extra_apis: Sequence[Api] = (),
    demo: bool = False,
    demo_password: DemoPassword | None = None,
) -> Starlette:
    """Build the server application.

    :param hub: A hub to serve. If given, the caller opens and closes it; if not,
        the application creates one from ``settings`` and runs it for its lifespan.
    :param settings: Defaults to the hub's settings, or :meth:`Settings.load`.
    :param extra_apis: More endpoint collections (embedding applications' own).
    :param demo: Also register this machine and run an in-process agent for it
        (``lunasentri serve --demo``).
    :param demo_password: The password the demo made for its admin, which the demo's
        banner shows while it works; one from the settings is never printed.
    """
    settings = settings or (hub.settings if hub is not None else Settings.load())
    owns_hub = hub is None
    hub = hub or Sentri(settings)
    apis = [*routes.ALL, *extra_apis]
    endpoints = [endpoint for api in apis for endpoint in api.endpoints]
    metrics = ServerMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if owns_hub:
                await stack.enter_async_context(hub)
            metrics.track_queue_depth(lambda: hub.writer.queue_depth)
            if settings.server.metrics_series:
                metrics.expose_series(lambda: _latest_of_every_machine(hub))
            async with anyio.create_task_group() as services:
                await routes.start_services(app, services)
                if demo:
                    from lunasentri_core.server.demo import start_demo

                    await start_demo(app, services, demo_password)
                if settings.local_host_metrics:
                    # Off by default: a central server is usually not a monitored host.
                    services.start_soon(_collect_own_host, hub)
                yield
                services.cancel_scope.cancel()

    app = Starlette(
        routes=_hot_first(
            [
                *build_routes(endpoints, _authenticate),
                *_plugin_routes(hub),
                *dashboard_routes(_authenticate),
            ]
        ),
        middleware=_middleware(settings, metrics),
        exception_handlers=dict(EXCEPTION_HANDLERS),
        lifespan=lifespan,
    )
    app.state.hub = hub
    app.state.settings = settings.server
    app.state.full_settings = settings
    app.state.metrics = metrics
    app.state.apis = apis
    return app


def _latest_of_every_machine(hub: Sentri) -> list[tuple[str, SeriesValue]]:
    machines = {m.id: m.name for m in hub.storage.state.list_machines(None)}
    values = hub.storage.metrics.latest(list(machines))
    return [(machines[v.series.machine_id], v) for v in values]


async def _collect_own_host(hub: Sentri) -> None:
    machine = await hub.local_machine()
    log.info("collecting this host's metrics as machine %s (%s)", machine.name, machine.id)
    await hub.run_collecting(machine)


HOT_PATHS = ("/api/v1/ingest",)
"""Paths asked for far more than the rest (every agent, every interval)."""


def _hot_first(all_routes: list[BaseRoute]) -> list[BaseRoute]:
    """The routes of :data:`HOT_PATHS` first: the router tries routes in order (about
    a microsecond each). Only a route that no other route would match its path
    before it moves, so every request still goes where it went."""
    hot: list[BaseRoute] = []
    for path in HOT_PATHS:
        found = [r for r in all_routes if isinstance(r, Route) and r.path == path]
        rivals = [
            r
            for r in all_routes
            if r not in found and (not isinstance(r, Route | Mount) or r.path_regex.match(path))
        ]
        if len(found) == 1 and not rivals:
            hot.append(found[0])
    return [*hot, *(r for r in all_routes if r not in hot)]


def _plugin_routes(hub: Sentri) -> list[BaseRoute]:
    # Mounted under the plugin's name, so a plugin cannot shadow a core route.
    return [
        Mount(f"/plugins/{name}", routes=list(plugin_routes))
        for name, plugin_routes in hub.plugins.server_routes(hub).items()
        if plugin_routes
    ]


def _middleware(settings: Settings, metrics: ServerMetrics) -> list[Middleware]:
    """One layer of ours (request context, security headers, cross-site refusal): each
    layer wraps ``send`` and costs an await per message of every request."""
    server = settings.server
    # The cross-site check sits inside CORS, so that a refusal carries the CORS
    # headers a page needs to read it; without CORS it is part of the one layer.
    trusted = [*server.cors_origins, *([server.public_url] if server.public_url else [])]
    if not server.cors_origins:
        return [
            Middleware(
                RequestContextMiddleware,
                metrics=metrics,
                hsts_max_age=server.hsts_max_age,
                trusted_origins=trusted,
            )
        ]
    return [
        Middleware(RequestContextMiddleware, metrics=metrics, hsts_max_age=server.hsts_max_age),
        Middleware(
            CORSMiddleware,
            allow_origins=list(server.cors_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["authorization", "content-type", "content-encoding"],
            expose_headers=[REQUEST_ID_HEADER, "etag", "retry-after"],
            allow_credentials=True,
        ),
        Middleware(CrossSiteGuard, trusted_origins=trusted),
    ]


async def _authenticate(request: Request) -> Principal | None:
    if "principal" not in request.scope.setdefault("state", {}):
        credentials = Credentials(
            headers={k.lower(): v for k, v in request.headers.items()},
            cookies=dict(request.cookies),
            client=request.client.host if request.client else None,
        )
        hub: Sentri = request.app.state.hub
        request.state.principal = await hub.authenticate(credentials)
    principal: Principal | None = request.state.principal
    return principal


class RequestContextMiddleware:
    """Request id in and out, one log line per request, the request metrics, the
    security headers (:class:`~lunasentri_core.server.guards.SecurityHeaderSet`) and,
    given ``trusted_origins``, the cross-site refusal
    (:class:`~lunasentri_core.server.guards.CrossSiteGuard`): one layer, one ``send``
    wrapper, for every request."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServerMetrics,
        hsts_max_age: int = 0,
        trusted_origins: Iterable[str] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.security = SecurityHeaderSet(hsts_max_age)
        self.trusted = None if trusted_origins is None else trusted_origins_of(trusted_origins)
        # The metrics' children by label values: labels() costs microseconds a call.
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = _header(scope, REQUEST_ID_HEADER)
        rid = new_request_id(offered)
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500
        security = self.security.for_scope(scope)
        tagged = (_REQUEST_ID_KEY, rid.encode())

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # The security headers unless the response has them; the request id always.
                headers = with_headers(message.get("headers", []), security)
                headers.append(tagged)
                message["headers"] = headers
            await send(message)

        try:
            trusted = self.trusted
            if trusted is None or not await refuse_cross_site(
                scope, receive, send_with_headers, trusted
            ):
                await self.app(scope, receive, send_with_headers)
        finally:
            self._observe(scope, status, time.perf_counter() - started)
            request_id.reset(token)

    def _observe(self, scope: Scope, status: int, elapsed: float) -> None:
        endpoint: Endpoint | None = scope.get("lunasentri.endpoint")
        route = endpoint.path if endpoint is not None else scope.get(ROUTE_KEY, "unmatched")
        method = scope["method"]
        counted = self._counted.get((route, method, status))
        if counted is None:
            counted = self._counted[route, method, status] = self.metrics.requests.labels(
                route, method, str(status)
            )
        timed = self._timed.get((route, method))
        if timed is None:
            timed = self._timed[route, method] = self.metrics.latency.labels(route, method)
        counted.inc()
        timed.observe(elapsed)
        client = scope.get("client")
        log.info(
            "%s %s %d %.1fms",
            method,
            scope["path"],
            status,
            elapsed * 1000,
            extra={
                "method": method,
                "path": scope["path"],
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "client": client[0] if client else None,
            },
        )


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.encode()
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            decoded: str = value.decode("latin-1")
            return decoded
    return None
