"""Every endpoint collection of the reference server, and its background services.

Each module here declares ``api = Api(tag)``; a module may also define
``async def start(app, services)`` to set up per-application state or start
background tasks in the server's task group when the server starts.
"""

from __future__ import annotations

import inspect
from types import ModuleType

from anyio.abc import TaskGroup
from starlette.applications import Starlette

from lunasentri_core.server.api import Api
from lunasentri_core.server.routes import (
    agents,
    alerts,
    audit,
    auth,
    channels,
    credentials,
    discovery,
    health,
    ingest,
    machines,
    monitors,
    plugins,
    queries,
    silences,
    users,
)

MODULES: list[ModuleType] = [
    health,
    auth,
    users,
    machines,
    agents,
    ingest,
    queries,
    audit,
    plugins,
    alerts,
    channels,
    silences,
    credentials,
    monitors,
    discovery,
]
ALL: list[Api] = [module.api for module in MODULES]


async def start_services(app: Starlette, services: TaskGroup) -> None:
    """Run each module's ``start`` (once, in the server's lifespan)."""
    for module in MODULES:
        start = getattr(module, "start", None)
        if start is not None:
            result = start(app, services)
            if inspect.isawaitable(result):
                await result
