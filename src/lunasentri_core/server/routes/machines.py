"""Routes: machines, their API keys and their agents' central configuration."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import attrs
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lunasentri_core.codec import decode
from lunasentri_core.errors import FieldError, ValidationError
from lunasentri_core.model import (
    METRIC_NAME,
    ApiKey,
    Labels,
    Machine,
    MachineStatus,
    SeriesValue,
    StatusChange,
)
from lunasentri_core.server import params
from lunasentri_core.server.agent_dist import DistError, manual_install
from lunasentri_core.server.api import Api, Auth, Call, Schema, array_of, items_of, ref
from lunasentri_core.server.jsonbody import load_json
from lunasentri_core.services.machines import (
    AGENT_PACKAGES,
    DEFAULT_PAGE,
    MAX_COLLECTORS,
    MAX_GRACE,
    MAX_NAME,
    MAX_OFFLINE_AFTER,
    MAX_PAGE,
    MIN_OFFLINE_AFTER,
    EffectiveConfig,
    IssuedKey,
    MachineFilter,
    MachineLatest,
    Machines,
    MachineSummary,
    SeriesFilter,
)

api = Api("machines")

T = TypeVar("T")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_BODY = 64 * 1024
"""These requests are small; a larger body is refused before it is read."""

# --------------------------------------------------------------------------- schemas

LABELS = params.LABELS
TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
MAYBE_TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}

MACHINE = api.schema(
    "Machine",
    {
        "type": "object",
        "required": [
            "id",
            "name",
            "hostname",
            "kind",
            "labels",
            "status",
            "last_seen",
            "created_at",
            "owner_id",
        ],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "hostname": {"type": ["string", "null"]},
            "kind": {"type": "string", "enum": ["agent", "agentless", "local"]},
            "labels": LABELS,
            "status": {"type": "string", "enum": ["unknown", "online", "offline"]},
            "last_seen": MAYBE_TIMESTAMP,
            "created_at": TIMESTAMP,
            "owner_id": {"type": ["string", "null"]},
            "offline_after": {
                "type": ["number", "null"],
                "description": "Seconds of silence after which this machine is offline "
                "(null: the server's offline_threshold).",
            },
        },
    },
)
SERIES_VALUE = api.schema(
    "MachineSeriesValue",
    {
        "type": "object",
        "required": ["metric", "labels", "value", "timestamp"],
        "properties": {
            "metric": {"type": "string"},
            "labels": LABELS,
            "value": {"type": "number"},
            "timestamp": TIMESTAMP,
        },
    },
)
MACHINE_SUMMARY = api.schema(
    "MachineSummary",
    {
        "allOf": [
            MACHINE,
            {
                "type": "object",
                "properties": {
                    "latest": {
                        "type": "object",
                        "description": "The newest value of every series, with derived "
                        "mem.percent, swap.percent and disk.percent (per mount) where not "
                        "stored. Left out when the list is asked with latest=false.",
                        "required": ["timestamp", "values"],
                        "properties": {
                            "timestamp": MAYBE_TIMESTAMP,
                            "values": array_of(SERIES_VALUE),
                        },
                    }
                },
            },
        ]
    },
)
API_KEY = api.schema(
    "ApiKey",
    {
        "type": "object",
        "description": "A key's metadata; the key itself is shown only when made.",
        "required": ["id", "prefix", "created_at", "expires_at", "revoked_at", "active"],
        "properties": {
            "id": {"type": "string"},
            "prefix": {"type": "string"},
            "created_at": TIMESTAMP,
            "expires_at": MAYBE_TIMESTAMP,
            "revoked_at": MAYBE_TIMESTAMP,
            "active": {"type": "boolean"},
        },
    },
)
ISSUED_KEY = api.schema(
    "IssuedApiKey",
    {
        "type": "object",
        "required": ["api_key", "key"],
        "properties": {
            "api_key": {"type": "string", "description": "lsk_…, shown this once"},
            "key": API_KEY,
        },
    },
)
REGISTERED = api.schema(
    "MachineRegistered",
    {
        "type": "object",
        "required": ["machine", "api_key", "key", "install_command"],
        "properties": {
            "machine": MACHINE,
            "api_key": {"type": "string", "description": "lsk_…, shown this once"},
            "key": API_KEY,
            "install_command": {
                "type": "string",
                "description": "installs the agent from this server's wheels and starts it",
            },
            "install_error": {
                "type": ["string", "null"],
                "description": "why the server cannot serve the agent's wheels, and how to "
                "install it by hand (the command then names the packages)",
            },
        },
    },
)
AGENT_CONFIG = api.schema(
    "AgentConfig",
    {
        "type": "object",
        "description": "What an agent runs. version 0: the server's defaults, nothing stored.",
        "required": ["machine_id", "interval", "collectors", "labels", "version", "updated_at"],
        "properties": {
            "machine_id": {"type": "string"},
            "interval": {"type": "number", "description": "seconds"},
            "collectors": array_of({"type": "string"}),
            "labels": LABELS,
            "version": {"type": "integer", "minimum": 0},
            "updated_at": MAYBE_TIMESTAMP,
        },
    },
)
# As check_name and check_hostname: no control characters; a name has no surrounding
# spaces, a hostname none at all.
NAME: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 100,
    "pattern": r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$",
}
HOSTNAME: Schema = {
    "type": ["string", "null"],
    "minLength": 1,
    "maxLength": 253,
    "pattern": r"^[^\s\x00-\x1f\x7f]+$",
}
COLLECTOR_NAME: Schema = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]{0,63}$"}


def _object(required: list[str], properties: dict[str, Schema]) -> Schema:
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


CREATE_REQUEST = _object(
    ["name"],
    {
        "name": NAME,
        "hostname": HOSTNAME,
        "labels": LABELS,
        "owner_id": {
            "type": ["string", "null"],
            "minLength": 1,
            "maxLength": params.MAX_ID,
            "pattern": params.ID_PATTERN,
            "description": "administrators only",
        },
    },
)
PATCH_REQUEST = _object(
    [],
    {
        "name": NAME,
        "hostname": HOSTNAME,
        "labels": LABELS,
        "offline_after": {
            "type": ["number", "null"],
            "minimum": MIN_OFFLINE_AFTER.total_seconds(),
            "maximum": MAX_OFFLINE_AFTER.total_seconds(),
            "description": "Seconds; null: the server's offline_threshold.",
        },
    },
)
ROTATE_REQUEST = _object(
    [],
    {
        "grace_seconds": {
            "type": "number",
            "minimum": 0,
            "maximum": MAX_GRACE.total_seconds(),
            "description": "How long the previous keys keep working (default: "
            "server.key_rotation_grace). The body may be empty.",
        }
    },
)
CONFIG_REQUEST = _object(
    ["interval", "collectors"],
    {
        "interval": {"type": "number", "minimum": 1, "maximum": 86400},
        "collectors": {
            **array_of(COLLECTOR_NAME),
            "minItems": 1,
            "maxItems": MAX_COLLECTORS,
            "uniqueItems": True,
        },
        "labels": LABELS,
    },
)

# --------------------------------------------------------------------------- bodies


@attrs.frozen
class CreateBody:
    name: str
    hostname: str | None = None
    labels: Labels = ()
    owner_id: str | None = None


@attrs.frozen
class PatchBody:
    name: str | None = None
    hostname: str | None = None
    labels: Labels | None = None
    offline_after: float | None = None


@attrs.frozen
class RotateBody:
    grace_seconds: float | None = None


@attrs.frozen
class ConfigBody:
    interval: float
    collectors: tuple[str, ...]
    labels: Labels = ()


async def json_object(call: Call, *, empty_ok: bool = False) -> dict[str, Any]:
    """The body as a JSON object (``{}`` for an empty body when ``empty_ok``)."""
    raw = await call.body(MAX_BODY)
    if empty_ok and not raw.strip():
        return {}
    data = load_json(raw)
    if not isinstance(data, dict):
        raise ValidationError([FieldError("", "expected a JSON object")], what="request body")
    return data


def service(call: Call) -> Machines:
    return Machines(call.hub, call.request.app.state.full_settings)


# --------------------------------------------------------------------------- JSON out


def machine_json(machine: Machine) -> dict[str, Any]:
    return {
        "id": machine.id,
        "name": machine.name,
        "hostname": machine.hostname,
        "kind": machine.kind.value,
        "labels": dict(machine.labels),
        "status": machine.status.value,
        "last_seen": machine.last_seen.isoformat() if machine.last_seen else None,
        "created_at": machine.created_at.isoformat(),
        "owner_id": machine.owner_id,
        "offline_after": (
            None if machine.offline_after is None else machine.offline_after.total_seconds()
        ),
    }


def series_json(values: Iterable[SeriesValue]) -> list[dict[str, Any]]:
    # A machine's values mostly share the timestamp of its last sample: each
    # distinct one is formatted once.
    stamps: dict[datetime, str] = {}
    return [
        {
            "metric": v.series.metric,
            "labels": dict(v.series.labels),
            "value": v.value,
            "timestamp": stamps.get(v.timestamp)
            or stamps.setdefault(v.timestamp, v.timestamp.isoformat()),
        }
        for v in values
    ]


def summary_json(summary: MachineSummary) -> dict[str, Any]:
    """The machine, and its latest values when they were asked for."""
    if summary.latest is None:
        return machine_json(summary.machine)
    timestamp = summary.timestamp
    latest = {
        "timestamp": timestamp.isoformat() if timestamp else None,
        "values": series_json(summary.latest),
    }
    return {**machine_json(summary.machine), "latest": latest}


def key_json(key: ApiKey, now: Any) -> dict[str, Any]:
    return {
        "id": key.id,
        "prefix": key.prefix,
        "created_at": key.created_at.isoformat(),
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "active": key.is_active(now),
    }


def issued_json(issued: IssuedKey, now: Any) -> dict[str, Any]:
    return {"api_key": issued.secret, "key": key_json(issued.key, now)}


def config_response(
    effective: EffectiveConfig, request: Request, *, conditional: bool = True
) -> Response:
    """The configuration with its ETag; 304 when the caller already has this version."""
    etag = effective.etag
    headers = {"etag": etag, "cache-control": "no-cache"}
    if conditional and _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    config = effective.config
    body = {
        "machine_id": config.machine_id,
        "interval": config.interval.total_seconds(),
        "collectors": list(config.collectors),
        "labels": dict(config.labels),
        "version": config.version if effective.stored else 0,
        "updated_at": config.updated_at.isoformat() if effective.stored else None,
    }
    return JSONResponse(body, headers=headers)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


# --------------------------------------------------------------------------- machines


@api.post(
    "/api/v1/machines",
    auth=Auth.USER,
    summary="Register a machine; its API key is shown once",
    request=CREATE_REQUEST,
    responses={201: REGISTERED, 409: ref("Error")},
    status=201,
)
async def create_machine(call: Call) -> object:
    """The response carries the machine's API key (shown only here) and a one-line
    command that installs and starts the agent with it. Names are unique per owner
    (409). An administrator may register a machine for another user (``owner_id``)."""
    body = await call.json(CreateBody, max_bytes=MAX_BODY)
    install_from, install_error = await _agent_wheels(call)
    registered = await service(call).create(
        call.user,
        body.name,
        hostname=body.hostname,
        labels=body.labels,
        owner_id=body.owner_id,
        client=call.client,
        install_from=install_from,
    )
    return {
        "machine": machine_json(registered.machine),
        **issued_json(registered.issued, call.hub.clock()),
        "install_command": registered.install_command,
        "install_error": install_error,
    }


async def _agent_wheels(call: Call) -> tuple[Sequence[str], str | None]:
    """The URLs of the served wheels (named without building them: the first download
    builds), or the package names and how to get them by hand."""
    base = call.request.app.state.settings.base_url
    try:
        wheels = await call.request.app.state.agent_dist.wheels()
    except DistError as error:
        return AGENT_PACKAGES, manual_install(error)
    return [f"{base}/agent/dist/{wheel.name}" for wheel in wheels], None


MACHINE_PAGE: Schema = {
    "type": "object",
    "required": ["items", "next_cursor"],
    "properties": {
        "items": array_of(MACHINE_SUMMARY),
        "next_cursor": {
            "type": ["string", "null"],
            "description": "Pass as `cursor` for the next page; null on the last page.",
        },
    },
}
LIST_QUERY: dict[str, Schema] = {
    "limit": {**params.LIMIT, "default": DEFAULT_PAGE, "maximum": MAX_PAGE},
    "cursor": {
        "type": "string",
        "maxLength": params.MAX_CURSOR,
        "description": "The `next_cursor` of the previous page (opaque).",
    },
    "status": params.enum_schema(list(MachineStatus), "Only machines with this status."),
    "labels": params.LABEL_SELECTOR,
    "name": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_NAME,
        "description": "Only machines whose name contains this text (ASCII letters "
        "match either case).",
    },
    "latest": {
        **params.BOOLEAN,
        "default": True,
        "description": "Whether each machine comes with its latest values.",
    },
}


@api.get(
    "/api/v1/machines",
    auth=Auth.USER,
    summary="The caller's machines, a page at a time, with their latest values",
    query=LIST_QUERY,
    responses={200: MACHINE_PAGE},
)
async def list_machines(call: Call) -> object:
    """Machines in name order, `limit` at a time (default 100): follow `next_cursor`
    until it is null. A machine added or deleted meanwhile moves no other machine
    to another page. An administrator sees every machine. With `latest=false` the
    items have no `latest` member, which makes a full list much cheaper."""
    params.only(call, set(LIST_QUERY))
    filters = MachineFilter(
        status=params.choice(call, "status", MachineStatus),
        labels=params.label_selector(call, "labels") or (),
        name=_name_filter(call),
    )
    page = await service(call).page(
        call.user,
        filters=filters,
        after=params.cursor(call),
        limit=params.limit(call, DEFAULT_PAGE, MAX_PAGE),
        latest=params.boolean(call, "latest") is not False,
    )
    after = page.next_after
    return {
        "items": [summary_json(s) for s in page.items],
        "next_cursor": None if after is None else params.make_cursor(after),
    }


def _name_filter(call: Call) -> str | None:
    text = call.query("name")
    if text is None:
        return None
    if not 1 <= len(text) <= MAX_NAME or _CONTROL.search(text):
        raise params.invalid("name", f"expected 1 to {MAX_NAME} characters, none a control")
    return text


@api.get(
    "/api/v1/machines/{machine_id}",
    auth=Auth.USER,
    summary="Get a machine",
    responses={200: MACHINE},
)
async def get_machine(call: Call) -> object:
    return machine_json(await service(call).get(call.user, call.path("machine_id")))


@api.patch(
    "/api/v1/machines/{machine_id}",
    auth=Auth.USER,
    summary="Rename a machine, or change its hostname, labels or offline threshold",
    request=PATCH_REQUEST,
    responses={200: MACHINE, 409: ref("Error")},
)
async def update_machine(call: Call) -> object:
    """Only the fields given change; ``hostname: null`` clears the hostname and
    ``offline_after: null`` brings back the server's offline threshold."""
    data = await json_object(call)
    body = decode(data, PatchBody, what="request body")
    changes: dict[str, Any] = {}
    for field in ("name", "labels"):
        if field in data:
            if data[field] is None:
                raise ValidationError([FieldError(field, "must not be null")], "request body")
            changes[field] = getattr(body, field)
    if "hostname" in data:
        changes["hostname"] = body.hostname
    if "offline_after" in data:
        seconds = body.offline_after
        changes["offline_after"] = None if seconds is None else _seconds(seconds, "offline_after")
    machine = await service(call).update(
        call.user, call.path("machine_id"), client=call.client, **changes
    )
    return machine_json(machine)


@api.delete(
    "/api/v1/machines/{machine_id}",
    auth=Auth.USER,
    summary="Delete a machine with its keys and series",
    responses={204: None, 409: ref("Error")},
    status=204,
)
async def delete_machine(call: Call) -> object:
    """An agentless machine that monitors poll cannot be deleted: the answer is 409
    with code `in_use`, and `in_use_by` lists the monitors (delete them instead)."""
    await service(call).delete(call.user, call.path("machine_id"), client=call.client)
    return Response(status_code=204)


# --------------------------------------------------------------------------- heartbeat

STATUS_CHANGE = api.schema(
    "StatusChange",
    {
        "type": "object",
        "required": ["id", "machine_id", "previous", "status", "at", "last_seen"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string"},
            "machine_id": {"type": "string"},
            "previous": {"type": "string", "enum": ["unknown", "online", "offline"]},
            "status": {"type": "string", "enum": ["unknown", "online", "offline"]},
            "at": TIMESTAMP,
            "last_seen": {**MAYBE_TIMESTAMP, "description": "The last report before the change."},
        },
    },
)


def status_change_json(change: StatusChange) -> dict[str, Any]:
    return {
        "id": change.id,
        "machine_id": change.machine_id,
        "previous": change.previous.value,
        "status": change.status.value,
        "at": change.at.isoformat(),
        "last_seen": change.last_seen.isoformat() if change.last_seen else None,
    }


@api.get(
    "/api/v1/machines/{machine_id}/status-changes",
    auth=Auth.USER,
    summary="A machine's recorded online and offline transitions, newest first",
    query={"since": params.SINCE, "limit": params.LIMIT},
    responses={200: items_of(STATUS_CHANGE)},
)
async def list_status_changes(call: Call) -> object:
    """The heartbeat records a change when a machine stays silent past its offline
    threshold (`offline_after`, or the server's `offline_threshold`) and when it
    reports again."""
    params.only(call, {"since", "limit"})
    changes = await service(call).status_changes(
        call.user,
        call.path("machine_id"),
        since=params.since(call),
        limit=params.limit(call),
    )
    return {"items": [status_change_json(change) for change in changes]}


# --------------------------------------------------------------------------- API keys


@api.get(
    "/api/v1/machines/{machine_id}/keys",
    auth=Auth.USER,
    summary="A machine's API keys (metadata only)",
    responses={200: items_of(API_KEY)},
)
async def list_keys(call: Call) -> object:
    keys = await service(call).keys(call.user, call.path("machine_id"))
    now = call.hub.clock()
    return {"items": [key_json(key, now) for key in keys]}


@api.post(
    "/api/v1/machines/{machine_id}/keys/rotate",
    auth=Auth.USER,
    summary="Issue a new API key; the previous ones work for a grace period",
    request=ROTATE_REQUEST,
    request_required=False,
    responses={201: ISSUED_KEY},
    status=201,
)
async def rotate_key(call: Call) -> object:
    """The new key is shown once. The machine's previously active keys expire
    ``grace_seconds`` from now (0: at once), so an agent can switch without a gap."""
    body = decode(await json_object(call, empty_ok=True), RotateBody, what="request body")
    grace = None if body.grace_seconds is None else _grace(body.grace_seconds)
    issued = await service(call).rotate(
        call.user, call.path("machine_id"), grace=grace, client=call.client
    )
    return issued_json(issued, call.hub.clock())


@api.post(
    "/api/v1/machines/{machine_id}/keys/{key_id}/revoke",
    auth=Auth.USER,
    summary="Revoke an API key at once",
    responses={204: None},
    status=204,
)
async def revoke_key(call: Call) -> object:
    await service(call).revoke(
        call.user, call.path("machine_id"), call.path("key_id"), client=call.client
    )
    return Response(status_code=204)


def _grace(seconds: float) -> timedelta:
    # Checked before the conversion: timedelta rounds a tiny negative number to 0.
    if seconds < 0:
        raise ValidationError(
            [FieldError("grace_seconds", f"must be 0 to {int(MAX_GRACE.total_seconds())}")],
            "request body",
        )
    return _seconds(seconds, "grace_seconds")


def _seconds(value: float, field: str) -> timedelta:
    try:
        return timedelta(seconds=value)
    except OverflowError:
        raise ValidationError([FieldError(field, "is out of range")], "request body") from None


# --------------------------------------------------------------------------- agent config


@api.get(
    "/api/v1/machines/{machine_id}/agent-config",
    auth=Auth.USER,
    summary="A machine's central agent configuration",
    responses={200: AGENT_CONFIG, 304: None},
)
async def get_agent_config(call: Call) -> object:
    """Version 0 means nothing is stored and the agent runs the server's defaults
    (``[collect]`` settings). The ETag changes with every version."""
    effective = await service(call).agent_config(call.path("machine_id"), call.user)
    return config_response(effective, call.request)


@api.put(
    "/api/v1/machines/{machine_id}/agent-config",
    auth=Auth.USER,
    summary="Set a machine's central agent configuration",
    request=CONFIG_REQUEST,
    responses={200: AGENT_CONFIG},
)
async def set_agent_config(call: Call) -> object:
    """The agent picks it up at its next configuration poll; the version goes up by one."""
    body = await call.json(ConfigBody, max_bytes=MAX_BODY)
    effective = await service(call).set_agent_config(
        call.user,
        call.path("machine_id"),
        interval=_seconds(body.interval, "interval"),
        collectors=body.collectors,
        labels=body.labels,
        client=call.client,
    )
    return config_response(effective, call.request, conditional=False)


# --------------------------------------------------------------------------- latest of many

MACHINE_LATEST = api.schema(
    "MachineLatestValues",
    {
        "type": "object",
        "required": ["machine_id", "name", "labels", "items", "derived"],
        "properties": {
            "machine_id": {"type": "string"},
            "name": {"type": "string"},
            "labels": LABELS,
            "items": array_of(SERIES_VALUE),
            "derived": {
                **array_of(SERIES_VALUE),
                "description": "mem.percent, swap.percent and disk.percent (per mount) "
                "from the latest used and total points, where no series of that name is "
                "stored (as in a machine's latest values).",
            },
        },
    },
)
LATEST_PAGE: Schema = {
    "type": "object",
    "required": ["items", "next_cursor"],
    "properties": {
        "items": array_of(MACHINE_LATEST),
        "next_cursor": MACHINE_PAGE["properties"]["next_cursor"],
    },
}
MAX_IDS_TEXT = 8000
"""Characters of ``machine``: what fits a request line that proxies pass on (nginx's
default buffer is 8 KiB); some 240 ids of the usual 32 characters."""
LATEST_QUERY: dict[str, Schema] = {
    **{k: v for k, v in LIST_QUERY.items() if k != "latest"},
    "machine": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_IDS_TEXT,
        # Ids are visible ASCII: the line then stays within what HTTP parsers take
        # (8,000 characters of anything else may percent-encode to 48 KB).
        "pattern": params.ID_PATTERN,
        "description": f"Only these machines: ids separated by commas (at most {MAX_PAGE} ids "
        f"and {MAX_IDS_TEXT} characters; select more machines by labels or by pages). "
        "An id the caller cannot see matches nothing.",
    },
    "metric": {
        "type": "string",
        "pattern": METRIC_NAME.pattern,
        "description": "Only this metric, stored or derived (e.g. disk.percent).",
    },
    "series_labels": {
        **params.LABEL_SELECTOR,
        "description": "Only series with every one of these labels: name:value pairs "
        "separated by commas, e.g. mount:/ (`labels` selects machines by theirs).",
    },
}


@api.get(
    "/api/v1/latest",
    auth=Auth.USER,
    summary="The newest value of each series of many machines, in one call",
    query=LATEST_QUERY,
    responses={200: LATEST_PAGE},
)
async def latest_of_machines(call: Call) -> object:
    """For each of the caller's machines (an administrator: every machine) that
    matches the filters, the newest value of each matching series, read from
    the latest-values table in one query for the whole page. Machines come in
    name order, `limit` at a time (default 100), as in the machine list: follow
    `next_cursor` until it is null. A machine without matching series is listed
    with empty `items`."""
    params.only(call, set(LATEST_QUERY))
    filters = MachineFilter(
        status=params.choice(call, "status", MachineStatus),
        labels=params.label_selector(call, "labels") or (),
        name=_name_filter(call),
    )
    page = await service(call).latest(
        call.user,
        filters=filters,
        ids=_machine_ids(call),
        series=SeriesFilter(
            metric=_metric_filter(call), labels=params.label_selector(call, "series_labels") or ()
        ),
        after=params.cursor(call),
        limit=params.limit(call, DEFAULT_PAGE, MAX_PAGE),
    )
    after = page.next_after
    return {
        "items": [_machine_latest_json(found) for found in page.items],
        "next_cursor": None if after is None else params.make_cursor(after),
    }


def _machine_ids(call: Call) -> tuple[str, ...]:
    text = call.query("machine")
    if text is None:
        return ()
    if len(text) > MAX_IDS_TEXT:
        raise params.invalid(
            "machine",
            f"at most {MAX_IDS_TEXT} characters of ids separated by commas; "
            "select more machines by labels or by pages",
        )
    ids = tuple(dict.fromkeys(text.split(",")))
    if len(ids) > MAX_PAGE:
        raise params.invalid("machine", f"at most {MAX_PAGE} machine ids")
    for item in ids:
        if not item or len(item) > params.MAX_ID or not params.ID_RE.match(item):
            raise params.invalid(
                "machine",
                f"{item[:50]!r} is not a machine id (1 to {params.MAX_ID} visible ASCII "
                "characters but ','; ids separated by commas)",
            )
    return ids


def _metric_filter(call: Call) -> str | None:
    text = call.query("metric")
    if text is not None and not METRIC_NAME.match(text):
        raise params.invalid("metric", f"{text[:50]!r} is not a metric name (e.g. cpu.percent)")
    return text


def _machine_latest_json(found: MachineLatest) -> dict[str, Any]:
    machine = found.machine
    return {
        "machine_id": machine.id,
        "name": machine.name,
        "labels": dict(machine.labels),
        "items": series_json(found.items),
        "derived": series_json(found.derived),
    }
