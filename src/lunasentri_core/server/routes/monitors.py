"""Routes: devices (hosts to poll) and monitors (what polls them, and how it goes)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import attrs
from starlette.responses import Response

from lunasentri_core.codec import decode
from lunasentri_core.errors import FieldError, ValidationError
from lunasentri_core.model import Device, Monitor
from lunasentri_core.server import params
from lunasentri_core.server.api import Api, Auth, Call, Schema, items_of, ref
from lunasentri_core.server.routes.credentials import COLLECTOR, HOST
from lunasentri_core.server.routes.machines import json_object
from lunasentri_core.server.routes.users import object_schema
from lunasentri_core.services.monitors import (
    MAX_INTERVAL,
    MIN_INTERVAL,
    Devices,
    MonitorChanges,
    Monitors,
    outcome,
)

api = Api("agentless")

TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
MAYBE_TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}
MAYBE_STRING: Schema = {"type": ["string", "null"]}
ID: Schema = {"type": "string", "minLength": 1, "maxLength": 64}
INTERVAL: Schema = {
    "type": "number",
    "minimum": MIN_INTERVAL.total_seconds(),
    "maximum": MAX_INTERVAL.total_seconds(),
    "description": "Seconds between polls.",
}
OPTIONS: Schema = {
    "type": "object",
    "description": "The collector's options for this monitor (see its documentation).",
}

DEVICE = api.schema(
    "Device",
    object_schema(
        {
            "id": {"type": "string"},
            "owner_id": {"type": "string"},
            "address": {"type": "string"},
            "hostname": MAYBE_STRING,
            "os": MAYBE_STRING,
            "os_version": MAYBE_STRING,
            "open_ports": {"type": "array", "items": {"type": "integer"}},
            "credential_ok": {
                "type": ["boolean", "null"],
                "description": "Whether the last credential tried worked (null: not tried).",
            },
            "credential_error": MAYBE_STRING,
            "credential_profile_id": MAYBE_STRING,
            "discovery_profile_id": MAYBE_STRING,
            "machine_id": {
                **MAYBE_STRING,
                "description": "The machine its monitors write to (made by the first one).",
            },
            "first_seen": TIMESTAMP,
            "last_seen": MAYBE_TIMESTAMP,
            "created_at": TIMESTAMP,
        }
    ),
)
MONITOR = api.schema(
    "Monitor",
    object_schema(
        {
            "id": {"type": "string"},
            "owner_id": {"type": "string"},
            "device_id": {"type": "string"},
            "credential_profile_id": {"type": "string"},
            "collector": {"type": "string"},
            "machine_id": {"type": "string"},
            "interval": {"type": "number"},
            "enabled": {"type": "boolean"},
            "options": {"type": "object"},
            "state": {
                "type": "string",
                "enum": ["disabled", "pending", "ok", "failing"],
                "description": "How its polling goes: pending until the first poll ends.",
            },
            "due_at": {**TIMESTAMP, "description": "When it polls next."},
            "last_attempted": MAYBE_TIMESTAMP,
            "last_polled": {**MAYBE_TIMESTAMP, "description": "The last successful poll."},
            "last_error": MAYBE_STRING,
            "last_error_at": MAYBE_TIMESTAMP,
            "failures": {"type": "integer", "description": "Failed polls in a row."},
            "created_at": TIMESTAMP,
        }
    ),
)
DEVICE_REQUEST: Schema = object_schema({"address": HOST})
MONITOR_REQUEST: Schema = object_schema(
    {
        "device_id": ID,
        "credential_profile_id": ID,
        "collector": COLLECTOR,
        "interval": {**INTERVAL, "description": "Seconds between polls; default 60."},
        "enabled": {"type": "boolean"},
        "options": OPTIONS,
    },
    optional=("interval", "enabled", "options"),
)
MONITOR_PATCH: Schema = object_schema(
    {
        "credential_profile_id": ID,
        "interval": INTERVAL,
        "enabled": {"type": "boolean"},
        "options": OPTIONS,
    },
    optional=("credential_profile_id", "interval", "enabled", "options"),
)


@attrs.frozen
class DeviceBody:
    address: str


@attrs.frozen
class MonitorBody:
    device_id: str
    credential_profile_id: str
    collector: str
    interval: float = 60.0
    enabled: bool = True
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class MonitorPatch:
    credential_profile_id: str | None = None
    interval: float | None = None
    enabled: bool | None = None
    options: dict[str, Any] | None = None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _seconds(value: float | None) -> timedelta | None:
    if value is None:
        return None
    if not MIN_INTERVAL.total_seconds() <= value <= MAX_INTERVAL.total_seconds():
        raise ValidationError(
            [
                FieldError(
                    "interval",
                    f"must be {MIN_INTERVAL.total_seconds():g} to "
                    f"{MAX_INTERVAL.total_seconds():g} seconds",
                )
            ],
            "request body",
        )
    return timedelta(seconds=value)


def device_json(device: Device) -> dict[str, Any]:
    return {
        "id": device.id,
        "owner_id": device.owner_id,
        "address": device.address,
        "hostname": device.hostname,
        "os": device.os,
        "os_version": device.os_version,
        "open_ports": list(device.open_ports),
        "credential_ok": device.credential_ok,
        "credential_error": device.credential_error,
        "credential_profile_id": device.credential_profile_id,
        "discovery_profile_id": device.discovery_profile_id,
        "machine_id": device.machine_id,
        "first_seen": device.first_seen.isoformat(),
        "last_seen": _iso(device.last_seen),
        "created_at": device.created_at.isoformat(),
    }


def monitor_json(monitor: Monitor) -> dict[str, Any]:
    return {
        "id": monitor.id,
        "owner_id": monitor.owner_id,
        "device_id": monitor.device_id,
        "credential_profile_id": monitor.credential_profile_id,
        "collector": monitor.collector,
        "machine_id": monitor.machine_id,
        "interval": monitor.interval.total_seconds(),
        "enabled": monitor.enabled,
        "options": dict(monitor.options),
        "state": outcome(monitor),
        "due_at": monitor.due_at.isoformat(),
        "last_attempted": _iso(monitor.last_attempted),
        "last_polled": _iso(monitor.last_polled),
        "last_error": monitor.last_error,
        "last_error_at": _iso(monitor.last_error_at),
        "failures": monitor.failures,
        "created_at": monitor.created_at.isoformat(),
    }


# --------------------------------------------------------------------------- devices


@api.post(
    "/api/v1/devices",
    auth=Auth.USER,
    summary="Add a device by address (discovery adds the ones it finds)",
    request=DEVICE_REQUEST,
    responses={201: DEVICE, 409: ref("Error")},
    status=201,
)
async def create_device(call: Call) -> object:
    """An address the caller already has is a 409."""
    body = await call.json(DeviceBody)
    return device_json(await Devices(call.hub).add(call.user, body.address, client=call.client))


@api.get(
    "/api/v1/devices",
    auth=Auth.USER,
    summary="The caller's devices",
    responses={200: items_of(DEVICE)},
)
async def list_devices(call: Call) -> object:
    """An administrator sees every device."""
    return {"items": [device_json(d) for d in await Devices(call.hub).all(call.user)]}


@api.get(
    "/api/v1/devices/{device_id}",
    auth=Auth.USER,
    summary="Get a device",
    responses={200: DEVICE},
)
async def get_device(call: Call) -> object:
    return device_json(await Devices(call.hub).get(call.user, call.path("device_id")))


@api.delete(
    "/api/v1/devices/{device_id}",
    auth=Auth.USER,
    summary="Delete a device no monitor polls",
    responses={204: None, 409: ref("Error")},
    status=204,
)
async def delete_device(call: Call) -> object:
    """While monitors poll it, the answer is 409 with code `in_use`, and `in_use_by`
    lists their ids."""
    await Devices(call.hub).delete(call.user, call.path("device_id"), client=call.client)
    return Response(status_code=204)


# --------------------------------------------------------------------------- monitors


@api.post(
    "/api/v1/monitors",
    auth=Auth.USER,
    summary="Poll a device with a collector plugin on a schedule",
    request=MONITOR_REQUEST,
    responses={201: MONITOR, 409: ref("Error")},
    status=201,
)
async def create_monitor(call: Call) -> object:
    """The device's first monitor makes it a machine of kind `agentless`
    (`machine_id`), which its later monitors share. One monitor per device and
    collector (409). The credential profile must belong to the device's owner;
    `GET /api/v1/collectors` lists the usable collectors. The first poll comes
    within one interval (monitors made together are spread over it)."""
    body = await call.json(MonitorBody)
    interval = _seconds(body.interval)
    assert interval is not None
    monitor = await Monitors(call.hub).create(
        call.user,
        device_id=body.device_id,
        credential_profile_id=body.credential_profile_id,
        collector=body.collector,
        interval=interval,
        enabled=body.enabled,
        options=body.options,
        client=call.client,
    )
    return monitor_json(monitor)


@api.get(
    "/api/v1/monitors",
    auth=Auth.USER,
    summary="The caller's monitors and how their polling goes",
    query={"device_id": {"type": "string", "description": "Only this device's monitors."}},
    responses={200: items_of(MONITOR)},
)
async def list_monitors(call: Call) -> object:
    """An administrator sees every monitor."""
    params.only(call, {"device_id"})
    found = await Monitors(call.hub).all(call.user, device_id=call.query("device_id") or None)
    return {"items": [monitor_json(m) for m in found]}


@api.get(
    "/api/v1/monitors/{monitor_id}",
    auth=Auth.USER,
    summary="Get a monitor with its last poll outcome",
    responses={200: MONITOR},
)
async def get_monitor(call: Call) -> object:
    return monitor_json(await Monitors(call.hub).get(call.user, call.path("monitor_id")))


@api.patch(
    "/api/v1/monitors/{monitor_id}",
    auth=Auth.USER,
    summary="Change a monitor's credential profile, interval, options or enabled state",
    request=MONITOR_PATCH,
    responses={200: MONITOR},
)
async def update_monitor(call: Call) -> object:
    """Only the fields given change. A shorter interval takes effect at once; a
    monitor enabled again polls within ten seconds."""
    data = await json_object(call)
    body = decode(data, MonitorPatch, what="request body")
    for name, value in data.items():
        if value is None:
            raise ValidationError([FieldError(name, "must not be null")], "request body")
    changes = MonitorChanges(
        credential_profile_id=body.credential_profile_id,
        interval=_seconds(body.interval),
        enabled=body.enabled,
        options=body.options,
    )
    monitor = await Monitors(call.hub).update(
        call.user, call.path("monitor_id"), changes, client=call.client
    )
    return monitor_json(monitor)


@api.post(
    "/api/v1/monitors/{monitor_id}/enable",
    auth=Auth.USER,
    summary="Enable a monitor",
    responses={200: MONITOR},
)
async def enable_monitor(call: Call) -> object:
    """It polls within ten seconds."""
    return await _set_enabled(call, True)


@api.post(
    "/api/v1/monitors/{monitor_id}/disable",
    auth=Auth.USER,
    summary="Disable a monitor (it stays, with its metrics, and polls no more)",
    responses={200: MONITOR},
)
async def disable_monitor(call: Call) -> object:
    return await _set_enabled(call, False)


async def _set_enabled(call: Call, enabled: bool) -> object:
    monitor = await Monitors(call.hub).update(
        call.user, call.path("monitor_id"), MonitorChanges(enabled=enabled), client=call.client
    )
    return monitor_json(monitor)


POLL_RESULT = api.schema(
    "PollResult",
    object_schema(
        {
            "ok": {"type": "boolean"},
            "error": {**MAYBE_STRING, "description": "Why the poll failed: `<kind>: <message>`."},
            "at": TIMESTAMP,
            "monitor": MONITOR,
        }
    ),
)


@api.post(
    "/api/v1/monitors/{monitor_id}/poll",
    auth=Auth.USER,
    summary="Poll a monitor now and answer how the poll went",
    responses={200: POLL_RESULT},
)
async def poll_monitor(call: Call) -> object:
    """Runs one poll at once (with its retries), a disabled monitor's too, and answers
    when it has ended; the sample is stored as a scheduled poll's is. The schedule
    stays as it was. A poll of the monitor already under way is waited for rather
    than doubled."""
    monitor, outcome = await Monitors(call.hub).poll_now(
        call.user, call.path("monitor_id"), client=call.client
    )
    return {
        "ok": outcome.error is None,
        "error": outcome.error,
        "at": outcome.at.isoformat(),
        "monitor": monitor_json(monitor),
    }


@api.delete(
    "/api/v1/monitors/{monitor_id}",
    auth=Auth.USER,
    summary="Delete a monitor (the device's last one takes the machine and its metrics)",
    responses={204: None},
    status=204,
)
async def delete_monitor(call: Call) -> object:
    """Always allowed. When it is the device's last monitor, the device's machine
    goes with it, with its metrics, alert events and status history; the device
    stays."""
    await Monitors(call.hub).delete(call.user, call.path("monitor_id"), client=call.client)
    return Response(status_code=204)
