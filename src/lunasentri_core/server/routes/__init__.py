"""Every endpoint collection of the reference server, and its background services."""

from __future__ import annotations

from anyio.abc import TaskGroup
from starlette.applications import Starlette

from lunasentri_core.server.api import Api
from lunasentri_core.server.routes import health

ALL: list[Api] = [health.api]


async def start_services(app: Starlette, services: TaskGroup) -> None:
    """Start what the server runs beside its routes (called once in the lifespan)."""
