"""Routes: agents enrolling by claim, and fetching their central configuration."""

from __future__ import annotations

from typing import Any

import attrs
from anyio.abc import TaskGroup
from starlette.applications import Starlette
from starlette.responses import FileResponse, JSONResponse

from lunasentri_core.model import AgentClaim, Labels
from lunasentri_core.server.agent_dist import AgentDist, DistError, StillBuilding
from lunasentri_core.server.api import Api, Auth, Call, Schema, items_of, ref
from lunasentri_core.server.errors import ApiError, error_response
from lunasentri_core.server.routes.machines import (
    AGENT_CONFIG,
    HOSTNAME,
    LABELS,
    MACHINE,
    MAX_BODY,
    NAME,
    TIMESTAMP,
    config_response,
    machine_json,
    service,
)
from lunasentri_core.services.claims import (
    VERSION,
    Claims,
    ClaimTokenMismatch,
    RegistrationThrottle,
    RegistrationThrottled,
    check_agent_id,
)

api = Api("agents")

PUBLIC_MAX_BODY = 4 * 1024
"""Registration and polls are unauthenticated: keep what a stranger may send small."""

STATUS: Schema = {"type": "string", "enum": ["pending", "claimed", "delivered", "expired"]}
AGENT_ID: Schema = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"}
TOKEN: Schema = {"type": "string", "minLength": 1, "maxLength": 512}

REGISTRATION = api.schema(
    "AgentRegistration",
    {
        "type": "object",
        "description": "An agent's self-registration (the claim token's hash is never shown).",
        "required": ["agent_id", "hostname", "version", "status", "created_at", "expires_at"],
        "properties": {
            "agent_id": {"type": "string"},
            "hostname": {"type": "string"},
            "version": {"type": "string"},
            "status": STATUS,
            "created_at": TIMESTAMP,
            "expires_at": TIMESTAMP,
            "machine_id": {"type": ["string", "null"]},
            "client": {"type": ["string", "null"]},
        },
    },
)


def _object(required: list[str], properties: dict[str, Schema]) -> Schema:
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


# --------------------------------------------------------------------------- bodies


@attrs.frozen
class RegisterBody:
    agent_id: str
    claim_token_hash: str
    hostname: str
    version: str


@attrs.frozen
class PollBody:
    agent_id: str
    claim_token: str


@attrs.frozen
class ClaimBody:
    claim_token: str
    name: str
    owner_id: str | None = None
    labels: Labels = ()


def claims(call: Call) -> Claims:
    state = call.request.app.state
    return Claims(call.hub, state.full_settings, throttle=state.registrations)


def registration_json(claim: AgentClaim, status: str | None = None) -> dict[str, Any]:
    return {
        "agent_id": claim.agent_id,
        "hostname": claim.hostname,
        "version": claim.version,
        "status": status or claim.status.value,
        "created_at": claim.created_at.isoformat(),
        "expires_at": claim.expires_at.isoformat(),
        "machine_id": claim.machine_id,
        "client": claim.client,
    }


# --------------------------------------------------------------------------- claim workflow


@api.post(
    "/api/v1/agents/register",
    auth=Auth.PUBLIC,
    summary="An agent registers itself and waits to be claimed",
    request=_object(
        ["agent_id", "claim_token_hash", "hostname", "version"],
        {
            "agent_id": AGENT_ID,
            "claim_token_hash": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
            "hostname": {**HOSTNAME, "type": "string"},
            "version": {"type": "string", "pattern": VERSION.pattern},
        },
    ),
    responses={
        202: {
            "type": "object",
            "required": ["agent_id", "status", "expires_at"],
            "properties": {
                "agent_id": {"type": "string"},
                "status": STATUS,
                "expires_at": TIMESTAMP,
            },
        },
        409: ref("Error"),
        429: ref("Error"),
    },
    status=202,
)
async def register_agent(call: Call) -> object:
    """``claim_token_hash`` is the hex SHA-256 of the agent's claim token (``lsc_…``),
    which the agent keeps and shows to whoever installs it. Registering again with
    the same agent id and hash changes nothing; another hash while the registration
    is pending or claimed is a conflict (409). An unclaimed registration expires
    after ``server.claim_ttl``; the agent may then register again. Each client
    address may register ``server.register_rate`` times per second on average, up
    to ``server.register_burst`` at once (refused requests do not count): beyond
    that, 429 with ``Retry-After``."""
    throttle: RegistrationThrottle = call.request.app.state.registrations
    try:
        throttle.admit(call.client)
        body = await call.json(RegisterBody, max_bytes=PUBLIC_MAX_BODY)
        claim = await claims(call).register(
            body.agent_id, body.claim_token_hash, body.hostname, body.version, client=call.client
        )
    except RegistrationThrottled as error:
        headers = {"Retry-After": error.retry_after_header}
        raise ApiError(429, "rate_limited", str(error), headers=headers) from None
    return {
        "agent_id": claim.agent_id,
        "status": claim.status.value,
        "expires_at": claim.expires_at.isoformat(),
    }


@api.post(
    "/api/v1/agents/claim-status",
    auth=Auth.PUBLIC,
    summary="An agent polls its registration; once claimed, it receives its API key once",
    request=_object(["agent_id", "claim_token"], {"agent_id": AGENT_ID, "claim_token": TOKEN}),
    responses={
        200: {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": STATUS,
                "machine_id": {"type": ["string", "null"]},
                "api_key": {"type": "string", "description": "lsk_…, in one answer only"},
                "expires_at": TIMESTAMP,
            },
        }
    },
)
async def claim_status(call: Call) -> object:
    """The agent proves itself with its claim token (sent in the body, never in a URL).
    An unknown agent and a wrong token are both 404. The first poll after an
    administrator's claim answers ``claimed`` with ``api_key``; every later poll
    answers ``delivered`` without it."""
    body = await call.json(PollBody, max_bytes=PUBLIC_MAX_BODY)
    check_agent_id(body.agent_id)
    result = await claims(call).poll(body.agent_id, body.claim_token)
    answer: dict[str, Any] = {"status": result.status.value, "machine_id": result.machine_id}
    if result.api_key is not None:
        answer["api_key"] = result.api_key
    if result.expires_at is not None:
        answer["expires_at"] = result.expires_at.isoformat()
    # The answer may carry a key: no cache may keep it.
    return JSONResponse(answer, headers={"cache-control": "no-store"})


@api.get(
    "/api/v1/agents/pending",
    auth=Auth.ADMIN,
    summary="Agent registrations waiting to be claimed",
    responses={200: items_of(REGISTRATION)},
)
async def pending_agents(call: Call) -> object:
    return {"items": [registration_json(c) for c in await claims(call).pending()]}


@api.post(
    "/api/v1/agents/{agent_id}/claim",
    auth=Auth.ADMIN,
    summary="Claim a pending agent: make its machine and key, delivered on its next poll",
    request=_object(
        ["claim_token", "name"],
        {
            "claim_token": TOKEN,
            "name": NAME,
            "owner_id": {"type": ["string", "null"], "description": "default: the caller"},
            "labels": LABELS,
        },
    ),
    responses={
        201: {"type": "object", "required": ["machine"], "properties": {"machine": MACHINE}},
        409: ref("Error"),
    },
    status=201,
)
async def claim_agent(call: Call) -> object:
    """The claim token must be the one the agent registered (403 otherwise); a
    registration that is not pending (claimed, delivered, expired) is a conflict (409)."""
    body = await call.json(ClaimBody, max_bytes=MAX_BODY)
    agent_id = check_agent_id(call.path("agent_id"), field="agent_id")
    try:
        machine = await claims(call).claim(
            call.user,
            agent_id,
            body.claim_token,
            body.name,
            owner_id=body.owner_id,
            labels=body.labels,
            client=call.client,
        )
    except ClaimTokenMismatch as error:
        raise ApiError(403, "claim_token_mismatch", str(error), "claim_token") from None
    return {"machine": machine_json(machine)}


# --------------------------------------------------------------------------- agent config


@api.get(
    "/api/v1/agent/config",
    auth=Auth.MACHINE,
    summary="The calling agent's configuration (conditional on its ETag)",
    responses={200: AGENT_CONFIG, 304: None},
)
async def agent_config(call: Call) -> object:
    """Send ``If-None-Match`` with the last ETag: 304 while nothing changed. Version 0
    is the server's defaults (nothing stored for this machine)."""
    effective = await service(call).agent_config(call.machine_id)
    return config_response(effective, call.request)


# --------------------------------------------------------------------------- background


def start(app: Starlette, services: TaskGroup) -> None:
    """Throttle registrations; expire unclaimed ones at start and then periodically;
    serve the agent's wheels."""
    app.state.registrations = RegistrationThrottle(app.state.settings)
    settings = app.state.full_settings
    # Built on the first download, not here: most servers never register a machine
    # after setup, and a build fetches its backend from the package index.
    app.state.agent_dist = AgentDist(settings, settings.collect.collectors, services)
    services.start_soon(Claims(app.state.hub, app.state.full_settings).expire_forever)


# --------------------------------------------------------------------------- distributions


@api.get(
    "/agent/dist/{filename}",
    auth=Auth.PUBLIC,
    summary="A wheel of the agent, for a registration's install command",
    responses={
        200: {"type": "string", "contentMediaType": "application/octet-stream"},
        503: ref("Error"),
    },
)
async def agent_wheel(call: Call) -> object:
    """Public: a new machine has no credential yet, and the wheels hold no secret. Only
    the wheels the install command names are served, never another file. The first
    download builds them; a download waits for a running build, then answers 503 with
    Retry-After, which pip honours and retries."""
    try:
        path = await call.request.app.state.agent_dist.file(call.path("filename"))
    except StillBuilding as error:
        return error_response(503, "building", str(error))
    except DistError as error:
        return error_response(503, "unavailable", str(error))
    if path is None:
        return error_response(404, "not_found", "no such agent wheel", "filename")
    return FileResponse(path, media_type="application/octet-stream")
