"""Routes: discovery profiles, their runs, and a run's progress as it happens."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup
from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse

from lunasentri_core.codec import decode
from lunasentri_core.components import Credentials
from lunasentri_core.errors import FieldError, NotFoundError, ValidationError
from lunasentri_core.model import Device, DiscoveryProfile, DiscoveryRun, RunState
from lunasentri_core.server import params
from lunasentri_core.server.api import Api, Auth, Call, Schema, array_of, items_of, ref
from lunasentri_core.server.routes.machines import COLLECTOR_NAME, NAME, json_object
from lunasentri_core.server.routes.users import object_schema
from lunasentri_core.services import scan
from lunasentri_core.services.discovery import (
    MAX_CONCURRENCY,
    MAX_PORTS,
    MAX_RUNS,
    MAX_TIMEOUT,
    MIN_TIMEOUT,
    Discovery,
)

api = Api("discovery")

TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
MAYBE_TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}
MAYBE_STRING: Schema = {"type": ["string", "null"]}
POLL_SECONDS = 0.5
"""How often a run's event stream looks at the stored run."""
KEEPALIVE_SECONDS = 15.0

_TARGETS: Schema = {
    "type": "array",
    "minItems": 1,
    "maxItems": scan.MAX_TARGETS,
    "items": {"type": "string", "minLength": 1, "maxLength": scan.MAX_TARGET_LENGTH},
    "description": "CIDR blocks (10.0.0.0/24, fd00::/120), ranges (10.0.0.5-10.0.0.40 or "
    "10.0.0.5-40) and host names (resolved when a run starts). The network and broadcast "
    f"addresses of an IPv4 block larger than a /31 are skipped. At most {scan.MAX_HOSTS} "
    "hosts in all.",
}
_PORTS: Schema = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_PORTS,
    "uniqueItems": True,
    "items": {"type": "integer", "minimum": 1, "maximum": 65535},
    "description": "TCP ports tried on every host. Default: 135, 5985, 5986.",
}
_CONCURRENCY: Schema = {
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_CONCURRENCY,
    "description": "Connections tried at once. Default: 256.",
}
_TIMEOUT: Schema = {
    "type": "number",
    "minimum": MIN_TIMEOUT.total_seconds(),
    "maximum": MAX_TIMEOUT.total_seconds(),
    "description": "Seconds a connection attempt may take (per host and port). Default: 1.",
}
_COLLECTOR: Schema = {
    **COLLECTOR_NAME,
    "description": "The collector plugin that identifies hosts with WS-Management open "
    "(hostname, OS) using the credential profile. Default: wmi.",
}
_CREDENTIAL: Schema = {
    **MAYBE_STRING,
    "description": "The caller's credential profile to try on hosts with 5985 or 5986 open; "
    "null: only scan.",
}

PROFILE = api.schema(
    "DiscoveryProfile",
    object_schema(
        {
            "id": {"type": "string"},
            "owner_id": {"type": "string"},
            "name": {"type": "string"},
            "targets": array_of({"type": "string"}),
            "credential_profile_id": MAYBE_STRING,
            "ports": array_of({"type": "integer"}),
            "concurrency": {"type": "integer"},
            "timeout": {"type": "number", "description": "Seconds."},
            "collector": {"type": "string"},
            "created_at": TIMESTAMP,
        }
    ),
)
RUN_FIELDS: dict[str, Schema] = {
    "id": {"type": "string"},
    "profile_id": {"type": "string"},
    "owner_id": {"type": "string"},
    "state": params.enum_schema(list(RunState)),
    "started_at": TIMESTAMP,
    "finished_at": MAYBE_TIMESTAMP,
    "total": {"type": "integer", "minimum": 0, "description": "Hosts to scan."},
    "scanned": {"type": "integer", "minimum": 0},
    "found": {
        "type": "integer",
        "minimum": 0,
        "description": "Hosts with one of the profile's ports open.",
    },
    "errors": {
        "type": "integer",
        "minimum": 0,
        "description": "Host names that did not resolve, and found hosts that could not be "
        "identified with the credential profile (the device says why).",
    },
    "error": {**MAYBE_STRING, "description": "Why a failed run stopped."},
}
RUN = api.schema("DiscoveryRun", object_schema(RUN_FIELDS))
DEVICE = api.schema(
    "DiscoveredDevice",
    object_schema(
        {
            "id": {"type": "string"},
            "address": {"type": "string"},
            "hostname": MAYBE_STRING,
            "os": MAYBE_STRING,
            "os_version": MAYBE_STRING,
            "open_ports": array_of({"type": "integer"}),
            "credential_ok": {
                "type": ["boolean", "null"],
                "description": "Whether the credential profile worked (null: not tried).",
            },
            "credential_error": MAYBE_STRING,
            "last_seen": MAYBE_TIMESTAMP,
        }
    ),
)
RUN_WITH_DEVICES = api.schema(
    "DiscoveryRunResult",
    object_schema(
        {
            **RUN_FIELDS,
            "devices": {
                **array_of(DEVICE),
                "description": "The devices this run has found so far.",
            },
        }
    ),
)
EVENT_STREAM: Schema = {
    "type": "string",
    "contentMediaType": "text/event-stream",
    "description": "Server-Sent Events. `event: progress` carries the run (DiscoveryRun "
    "JSON) whenever its recorded progress changes (at most every 0.5 s); `event: device` "
    "one device as it is found (DiscoveredDevice JSON); `event: end` the finished run, "
    "after which the stream ends. A comment line (`: ...`) arrives first and then every "
    f"{KEEPALIVE_SECONDS:g} s as a keepalive.",
}


def _request(required: list[str], properties: dict[str, Schema]) -> Schema:
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


CREATE_REQUEST = _request(
    ["name", "targets"],
    {
        "name": NAME,
        "targets": _TARGETS,
        "credential_profile_id": _CREDENTIAL,
        "ports": _PORTS,
        "concurrency": _CONCURRENCY,
        "timeout": _TIMEOUT,
        "collector": _COLLECTOR,
    },
)
PATCH_REQUEST = _request(
    [],
    {
        "name": NAME,
        "targets": _TARGETS,
        "credential_profile_id": _CREDENTIAL,
        "ports": _PORTS,
        "concurrency": _CONCURRENCY,
        "timeout": _TIMEOUT,
        "collector": _COLLECTOR,
    },
)
RUN_REQUEST = _request(
    [],
    {
        "confirm_large": {
            "type": "boolean",
            "description": f"Required (true) to scan more than {scan.CONFIRM_ABOVE} hosts "
            "(larger than a /20). Default: false.",
        }
    },
)


@attrs.frozen
class ProfileBody:
    name: str
    targets: list[str]
    credential_profile_id: str | None = None
    ports: list[int] = attrs.field(factory=lambda: [135, 5985, 5986])
    concurrency: int = 256
    timeout: float = 1.0
    collector: str = "wmi"


@attrs.frozen
class ProfilePatch:
    name: str | None = None
    targets: list[str] | None = None
    credential_profile_id: str | None = None
    ports: list[int] | None = None
    concurrency: int | None = None
    timeout: float | None = None
    collector: str | None = None


@attrs.frozen
class RunBody:
    confirm_large: bool = False


def _timeout(seconds: float) -> timedelta:
    if not MIN_TIMEOUT.total_seconds() <= seconds <= MAX_TIMEOUT.total_seconds():
        raise ValidationError(
            [
                FieldError(
                    "timeout",
                    f"must be {MIN_TIMEOUT.total_seconds():g} to {MAX_TIMEOUT.total_seconds():g} s",
                )
            ],
            "request body",
        )
    return timedelta(seconds=seconds)


async def start(app: Starlette, services: TaskGroup) -> None:
    # Set (from any thread) when the server shuts down: run event streams end then.
    app.state.discovery_streams = threading.Event()


# --------------------------------------------------------------------------- JSON out


def profile_json(profile: DiscoveryProfile) -> dict[str, Any]:
    return {
        "id": profile.id,
        "owner_id": profile.owner_id,
        "name": profile.name,
        "targets": list(profile.targets),
        "credential_profile_id": profile.credential_profile_id,
        "ports": list(profile.ports),
        "concurrency": profile.concurrency,
        "timeout": profile.timeout.total_seconds(),
        "collector": profile.collector,
        "created_at": profile.created_at.isoformat(),
    }


def run_json(run: DiscoveryRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "profile_id": run.profile_id,
        "owner_id": run.owner_id,
        "state": run.state.value,
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "total": run.total,
        "scanned": run.scanned,
        "found": run.found,
        "errors": run.errors,
        "error": run.error,
    }


def device_json(device: Device) -> dict[str, Any]:
    return {
        "id": device.id,
        "address": device.address,
        "hostname": device.hostname,
        "os": device.os,
        "os_version": device.os_version,
        "open_ports": list(device.open_ports),
        "credential_ok": device.credential_ok,
        "credential_error": device.credential_error,
        "last_seen": device.last_seen.isoformat() if device.last_seen else None,
    }


# --------------------------------------------------------------------------- profiles


@api.post(
    "/api/v1/discovery-profiles",
    auth=Auth.USER,
    summary="Create a discovery profile: where to look for Windows hosts",
    request=CREATE_REQUEST,
    responses={201: PROFILE, 409: ref("Error")},
    status=201,
)
async def create_discovery_profile(call: Call) -> object:
    """A bad target is a 422 naming it (`targets[2]`); a name the caller already uses
    is a 409; `credential_profile_id` must be one of the caller's."""
    body = await call.json(ProfileBody)
    profile = await Discovery(call.hub).create(
        call.user,
        name=body.name,
        targets=body.targets,
        credential_profile_id=body.credential_profile_id,
        ports=body.ports,
        concurrency=body.concurrency,
        timeout=_timeout(body.timeout),
        collector=body.collector,
        client=call.client,
    )
    return profile_json(profile)


@api.get(
    "/api/v1/discovery-profiles",
    auth=Auth.USER,
    summary="The caller's discovery profiles",
    responses={200: items_of(PROFILE)},
)
async def list_discovery_profiles(call: Call) -> object:
    """An administrator sees every profile."""
    params.only(call, set())
    found = await Discovery(call.hub).all(call.user)
    return {"items": [profile_json(profile) for profile in found]}


@api.get(
    "/api/v1/discovery-profiles/{discovery_profile_id}",
    auth=Auth.USER,
    summary="Get a discovery profile",
    responses={200: PROFILE},
)
async def get_discovery_profile(call: Call) -> object:
    profile = await Discovery(call.hub).get(call.user, call.path("discovery_profile_id"))
    return profile_json(profile)


@api.patch(
    "/api/v1/discovery-profiles/{discovery_profile_id}",
    auth=Auth.USER,
    summary="Change a discovery profile",
    request=PATCH_REQUEST,
    responses={200: PROFILE, 409: ref("Error")},
)
async def update_discovery_profile(call: Call) -> object:
    """Only the fields given change; `credential_profile_id: null` stops trying a
    credential. A run under way goes on with the profile as it was."""
    data = await json_object(call)
    body = decode(data, ProfilePatch, what="request body")
    changes: dict[str, Any] = {}
    for field in ("name", "targets", "ports", "concurrency", "collector"):
        if field in data:
            if data[field] is None:
                raise ValidationError([FieldError(field, "must not be null")], "request body")
            changes[field] = getattr(body, field)
    if "timeout" in data:
        if body.timeout is None:
            raise ValidationError([FieldError("timeout", "must not be null")], "request body")
        changes["timeout"] = _timeout(body.timeout)
    if "credential_profile_id" in data:
        changes["credential_profile_id"] = body.credential_profile_id
    profile = await Discovery(call.hub).update(
        call.user, call.path("discovery_profile_id"), client=call.client, **changes
    )
    return profile_json(profile)


@api.delete(
    "/api/v1/discovery-profiles/{discovery_profile_id}",
    auth=Auth.USER,
    summary="Delete a discovery profile and its runs (the devices it found stay)",
    responses={204: None},
    status=204,
)
async def delete_discovery_profile(call: Call) -> object:
    await Discovery(call.hub).delete(
        call.user, call.path("discovery_profile_id"), client=call.client
    )
    return Response(status_code=204)


# --------------------------------------------------------------------------- runs


@api.post(
    "/api/v1/discovery-profiles/{discovery_profile_id}/run",
    auth=Auth.USER,
    summary="Start a discovery run; it goes on in the background",
    request=RUN_REQUEST,
    request_required=False,
    responses={202: RUN, 409: ref("Error")},
    status=202,
)
async def run_discovery_profile(call: Call) -> object:
    """Answers at once with the run (`running`); follow it with
    `GET /api/v1/discovery-runs/{run_id}` or its event stream. A profile runs once at
    a time (409 while a run is under way). More than 4096 hosts need
    `confirm_large: true` (else a 422 naming the count)."""
    data = await json_object(call, empty_ok=True)
    body = decode(data, RunBody, what="request body")
    run = await Discovery(call.hub).start(
        call.user,
        call.path("discovery_profile_id"),
        confirm_large=body.confirm_large,
        client=call.client,
    )
    return run_json(run)


@api.get(
    "/api/v1/discovery-profiles/{discovery_profile_id}/runs",
    auth=Auth.USER,
    summary="A discovery profile's runs, newest first",
    query={"limit": {**params.LIMIT, "maximum": MAX_RUNS, "default": 50}},
    responses={200: items_of(RUN)},
)
async def list_discovery_runs(call: Call) -> object:
    params.only(call, {"limit"})
    limit = params.limit(call, default=50, maximum=MAX_RUNS)
    service = Discovery(call.hub)
    profile = await service.get(call.user, call.path("discovery_profile_id"))
    found = await service.runs(call.user, profile.id, limit=limit)
    return {"items": [run_json(run) for run in found]}


@api.get(
    "/api/v1/discovery-runs/{run_id}",
    auth=Auth.USER,
    summary="A discovery run's progress, and the devices it has found so far",
    responses={200: RUN_WITH_DEVICES},
)
async def get_discovery_run(call: Call) -> object:
    params.only(call, set())
    service = Discovery(call.hub)
    run = await service.get_run(call.user, call.path("run_id"))
    devices = await service.found(call.user, run)
    return {**run_json(run), "devices": [device_json(d) for d in devices]}


@api.get(
    "/api/v1/discovery-runs/{run_id}/events",
    auth=Auth.USER,
    summary="A discovery run's progress and found devices as they happen (Server-Sent Events)",
    responses={200: EVENT_STREAM},
)
async def discovery_run_events(call: Call) -> object:
    """Works from any server process sharing the storage: it follows the run's
    stored record. The stream ends with `event: end` when the run does, and when
    the caller's credential ends (checked every `server.stream_recheck`)."""
    params.only(call, set())
    run = await Discovery(call.hub).get_run(call.user, call.path("run_id"))
    recheck = call.settings.stream_recheck.total_seconds()
    closing: threading.Event = call.request.app.state.discovery_streams
    return StreamingResponse(
        _events(_Follow(call, run.id), recheck, closing),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


class _Follow:
    """Reads a run for its stream's caller, whose credential is checked again now and
    then against storage (a logout or deletion by any process ends the stream)."""

    def __init__(self, call: Call, run_id: str) -> None:
        request = call.request
        self._hub = call.hub
        self._service = Discovery(call.hub)
        self._user = call.user
        self.run_id = run_id
        self._credentials = Credentials(
            headers={k.lower(): v for k, v in request.headers.items()},
            cookies=dict(request.cookies),
            client=call.client,
        )

    async def allowed(self) -> bool:
        principal = await self._hub.authenticate(self._credentials)
        return principal is not None and principal.kind == "user" and principal.id == self._user.id

    async def read(self) -> tuple[DiscoveryRun, list[Device]] | None:
        try:
            run = await self._service.get_run(self._user, self.run_id)
        except NotFoundError:
            return None  # deleted with its profile
        return run, await self._service.found(self._user, run)


async def _events(follow: _Follow, recheck: float, closing: threading.Event) -> AsyncIterator[str]:
    yield "retry: 3000\n: following\n\n"
    sent: dict[str, Any] = {}
    last: dict[str, Any] | None = None
    next_check = anyio.current_time() + recheck
    next_keepalive = anyio.current_time() + KEEPALIVE_SECONDS
    while not closing.is_set():
        read = await follow.read()
        if read is None:
            return
        run, devices = read
        parts = []
        for device in devices:
            shown = device_json(device)
            if sent.get(device.id) != shown:
                sent[device.id] = shown
                parts.append(_event("device", shown))
        shown_run = run_json(run)
        if run.state is not RunState.RUNNING:
            yield "".join([*parts, _event("end", shown_run)])
            return
        if shown_run != last:
            last = shown_run
            parts.append(_event("progress", shown_run))
        now = anyio.current_time()
        if parts:
            next_keepalive = now + KEEPALIVE_SECONDS
            yield "".join(parts)
        elif now >= next_keepalive:
            next_keepalive = now + KEEPALIVE_SECONDS
            yield ": keepalive\n\n"
        if now >= next_check:
            if not await follow.allowed():
                return
            next_check = anyio.current_time() + recheck
        await anyio.sleep(POLL_SECONDS)


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"
