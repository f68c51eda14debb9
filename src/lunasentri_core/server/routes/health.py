"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from lunasentri_core.plugins import PluginFailure
from lunasentri_core.server.api import Api, Auth, Call
from lunasentri_core.server.errors import error_response
from lunasentri_core.storage import storage_mode, storage_partitioning

api = Api("operations")

HEALTH = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {
            "type": "string",
            "description": "ok, or degraded when a plugin failed to load (still ready)",
        },
        "checks": {"type": "object"},
        "storage": {
            "type": "object",
            "description": (
                "The storage backend's name and, when it reports them, its mode and how "
                "it partitions metric data by time."
            ),
            "properties": {
                "backend": {"type": "string"},
                "mode": {"type": "string"},
                "partitioning": {
                    "type": "object",
                    "description": (
                        "kind (native or hypertable), table, column, width_hours, "
                        "ahead (partitions kept ahead of the current one), partitions"
                    ),
                },
            },
        },
        "plugins": {
            "type": "object",
            "description": "Plugins that failed to load; the others work. Details of invalid "
            "settings (which may quote the values) are in GET /api/v1/plugins (admins).",
            "properties": {
                "failed": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "stage", "error"],
                        "properties": {
                            "name": {"type": "string"},
                            "stage": {"type": "string"},
                            "error": {"type": "string"},
                        },
                    },
                }
            },
        },
    },
}


@api.get("/healthz", auth=Auth.PUBLIC, summary="Overall health", responses={200: HEALTH})
async def healthz(call: Call) -> object:
    return {"status": "ok"}


@api.get("/healthz/live", auth=Auth.PUBLIC, summary="The process is alive", responses={200: HEALTH})
async def healthz_live(call: Call) -> object:
    return {"status": "ok"}


@api.get(
    "/healthz/ready",
    auth=Auth.PUBLIC,
    summary="Storage answers; ready for traffic (failed plugins reported, not fatal)",
    responses={200: HEALTH, 503: {"$ref": "#/components/schemas/Error"}},
)
async def healthz_ready(call: Call) -> object:
    storage = call.hub.storage
    try:
        with anyio.fail_after(5):
            await call.hub.list_machines(owner_id="readiness-probe")
            partitioning = await anyio.to_thread.run_sync(storage_partitioning, storage)
    except Exception as error:
        return error_response(503, "unavailable", f"storage is not ready: {error}")
    about: dict[str, object] = {"backend": storage.name}
    mode = storage_mode(storage)
    if mode is not None:
        about["mode"] = mode
    if partitioning is not None:
        about["partitioning"] = partitioning
    failed = [_failure_json(failure) for failure in call.hub.plugins.failures]
    # A failed plugin degrades the server but does not make it unready: taking it
    # out of rotation would stop everything the other plugins still do.
    return {
        "status": "degraded" if failed else "ok",
        "checks": {"storage": "ok", "plugins": "degraded" if failed else "ok"},
        "storage": about,
        "plugins": {"failed": failed},
    }


def _failure_json(failure: PluginFailure) -> dict[str, str]:
    # This endpoint is public: a settings error may quote a configured value.
    error = failure.reason if failure.stage != "settings" else "invalid settings"
    return {"name": failure.name, "stage": failure.stage, "error": error}


@api.get(
    "/metrics",
    auth=Auth.PUBLIC,
    summary="Prometheus metrics of the server",
    responses={200: {"type": "string"}},
)
async def metrics(call: Call) -> object:
    registry = call.request.app.state.metrics.registry
    body = await anyio.to_thread.run_sync(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@api.get(
    "/api/v1/openapi.json",
    auth=Auth.PUBLIC,
    summary="This API's OpenAPI 3.1 document",
    responses={200: {"type": "object"}},
)
async def openapi(call: Call) -> object:
    from lunasentri_core import __version__
    from lunasentri_core.server.openapi import openapi_document

    return openapi_document(call.request.app.state.apis, __version__)
