"""Routes: users (admin), one user's data export, and the first admin at start."""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import Any

import attrs
from anyio.abc import TaskGroup
from starlette.applications import Starlette
from starlette.responses import Response

from lunasentri_core.codec import parse_datetime
from lunasentri_core.errors import FieldError, ValidationError
from lunasentri_core.model import (
    AlertRule,
    ApiKey,
    Machine,
    Role,
    SeriesKey,
    Session,
    User,
)
from lunasentri_core.server.api import Api, Auth, Call, Schema, array_of, ref
from lunasentri_core.services.accounts import (
    MAX_PASSWORD_LENGTH,
    MAX_USERNAME_LENGTH,
    MIN_PASSWORD_LENGTH,
    Accounts,
    MachineExport,
    UserExport,
)

api = Api("users")
log = logging.getLogger("lunasentri.server")

BODY_LIMIT = 64 * 1024
"""Largest body of a user or auth request: they are small, and passwords get hashed."""

MAX_STEP_SECONDS = 366 * 86400
EXPORT_FORMAT = "lunasentri-export"
EXPORT_VERSION = 1

TIME: Schema = {"type": "string", "format": "date-time"}
_OPTIONAL_TIME: Schema = {"type": ["string", "null"], "format": "date-time"}
_OPTIONAL_STRING: Schema = {"type": ["string", "null"]}
_LABELS: Schema = {"type": "object", "additionalProperties": {"type": "string"}}


def object_schema(properties: dict[str, Schema], optional: tuple[str, ...] = ()) -> Schema:
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "properties": properties,
        "additionalProperties": False,
    }


USER = api.schema(
    "User",
    object_schema(
        {
            "id": {"type": "string"},
            "username": {"type": "string"},
            "role": {"type": "string", "enum": [role.value for role in Role]},
            "created_at": TIME,
        }
    ),
)
USERNAME_SCHEMA: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_USERNAME_LENGTH,
    "pattern": "^[A-Za-z0-9][A-Za-z0-9._@-]*$",
}
PASSWORD_SCHEMA: Schema = {
    "type": "string",
    "minLength": MIN_PASSWORD_LENGTH,
    "maxLength": MAX_PASSWORD_LENGTH,
}

_POINT = object_schema({"timestamp": TIME, "value": {"type": "number"}})
EXPORT = api.schema(
    "UserExport",
    object_schema(
        {
            "format": {"const": EXPORT_FORMAT},
            "version": {"const": EXPORT_VERSION},
            "exported_at": TIME,
            "user": USER,
            "history": {
                "description": "The window of the series' history, when 'since' was given.",
                "oneOf": [
                    {"type": "null"},
                    object_schema(
                        {
                            "since": TIME,
                            "until": TIME,
                            "step": {"type": "number", "description": "seconds"},
                        }
                    ),
                ],
            },
            "machines": array_of(
                object_schema(
                    {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "hostname": _OPTIONAL_STRING,
                        "kind": {"type": "string"},
                        "labels": _LABELS,
                        "status": {"type": "string"},
                        "last_seen": _OPTIONAL_TIME,
                        "created_at": TIME,
                        "api_keys": array_of(
                            object_schema(
                                {
                                    "id": {"type": "string"},
                                    "prefix": {"type": "string"},
                                    "created_at": TIME,
                                    "expires_at": _OPTIONAL_TIME,
                                    "revoked_at": _OPTIONAL_TIME,
                                }
                            )
                        ),
                        "series": array_of(
                            object_schema(
                                {
                                    "metric": {"type": "string"},
                                    "labels": _LABELS,
                                    "latest": {"oneOf": [{"type": "null"}, _POINT]},
                                    "history": {
                                        "oneOf": [{"type": "null"}, array_of(_POINT)],
                                        "description": "Points from 'since' on, one per "
                                        "non-empty step (null without 'since').",
                                    },
                                }
                            )
                        ),
                    }
                )
            ),
            "alert_rules": array_of(
                object_schema(
                    {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "metric": {"type": "string"},
                        "comparison": {"type": "string"},
                        "threshold": {"type": "number"},
                        "for_duration": {"type": "number", "description": "seconds"},
                        "scope": object_schema({"machine_id": _OPTIONAL_STRING, "labels": _LABELS}),
                        "severity": {"type": "string"},
                        "enabled": {"type": "boolean"},
                        "created_at": TIME,
                    }
                )
            ),
        }
    ),
)


# --------------------------------------------------------------------------- service


async def start(app: Starlette, services: TaskGroup) -> None:
    """Create the first admin from ``admin_password`` when there is no admin yet."""
    settings = app.state.full_settings
    created = await accounts_of_app(app).ensure_admin(
        settings.admin_username, settings.admin_password
    )
    if created is not None:
        log.info("created admin user %r", created.username)


def accounts_of(call: Call) -> Accounts:
    return accounts_of_app(call.request.app)


def accounts_of_app(app: Starlette) -> Accounts:
    accounts: Accounts | None = getattr(app.state, "accounts", None)
    if accounts is None:
        accounts = app.state.accounts = Accounts(app.state.hub, app.state.settings)
    return accounts


# --------------------------------------------------------------------------- JSON


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role.value,
        "created_at": user.created_at.isoformat(),
    }


def session_json(session: Session, current: str | None) -> dict[str, Any]:
    return {
        "id": session.id,
        "created_at": session.created_at.isoformat(),
        "expires_at": session.expires_at.isoformat(),
        "client": session.client,
        "current": session.id == current,
    }


def export_json(export: UserExport) -> dict[str, Any]:
    history = None
    if export.since is not None and export.step is not None:
        history = {
            "since": export.since.isoformat(),
            "until": export.exported_at.isoformat(),
            "step": export.step.total_seconds(),
        }
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "exported_at": export.exported_at.isoformat(),
        "user": user_json(export.user),
        "history": history,
        "machines": [_machine_export_json(m, export.since is not None) for m in export.machines],
        "alert_rules": [_rule_json(rule) for rule in export.alert_rules],
    }


def _machine_export_json(export: MachineExport, with_history: bool) -> dict[str, Any]:
    return {
        **_machine_json(export.machine),
        "api_keys": [_key_json(key) for key in export.api_keys],
        "series": [_series_json(key, export, with_history) for key in export.series],
    }


def _machine_json(machine: Machine) -> dict[str, Any]:
    return {
        "id": machine.id,
        "name": machine.name,
        "hostname": machine.hostname,
        "kind": machine.kind.value,
        "labels": dict(machine.labels),
        "status": machine.status.value,
        "last_seen": _time(machine.last_seen),
        "created_at": machine.created_at.isoformat(),
    }


def _key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "prefix": key.prefix,
        "created_at": key.created_at.isoformat(),
        "expires_at": _time(key.expires_at),
        "revoked_at": _time(key.revoked_at),
    }


def _series_json(key: SeriesKey, export: MachineExport, with_history: bool) -> dict[str, Any]:
    latest = export.latest.get(key)
    history = export.history.get(key)
    return {
        "metric": key.metric,
        "labels": dict(key.labels),
        "latest": None
        if latest is None
        else {"timestamp": latest.timestamp.isoformat(), "value": latest.value},
        "history": None
        if not with_history
        else [
            {"timestamp": point.timestamp.isoformat(), "value": point.value}
            for point in (history.points if history is not None else ())
        ],
    }


def _rule_json(rule: AlertRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "name": rule.name,
        "metric": rule.metric,
        "comparison": rule.comparison.value,
        "threshold": rule.threshold,
        "for_duration": rule.for_duration.total_seconds(),
        "scope": {"machine_id": rule.scope.machine_id, "labels": dict(rule.scope.labels)},
        "severity": rule.severity.value,
        "enabled": rule.enabled,
        "created_at": rule.created_at.isoformat(),
    }


def _time(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


# --------------------------------------------------------------------------- endpoints


@attrs.frozen
class NewUser:
    username: str
    password: str
    role: Role = Role.USER


@api.post(
    "/api/v1/users",
    auth=Auth.ADMIN,
    summary="Create a user",
    request=object_schema(
        {
            "username": USERNAME_SCHEMA,
            "password": PASSWORD_SCHEMA,
            "role": {"type": "string", "enum": [role.value for role in Role], "default": "user"},
        },
        optional=("role",),
    ),
    responses={201: USER, 409: ref("Error")},
    status=201,
)
async def create_user(call: Call) -> object:
    """A duplicate username is a 409; a weak password or bad username a 422."""
    body = await call.json(NewUser, max_bytes=BODY_LIMIT)
    user = await accounts_of(call).create_user(
        body.username, body.password, body.role, actor=call.user, client=call.client
    )
    return user_json(user)


@api.get(
    "/api/v1/users",
    auth=Auth.ADMIN,
    summary="List users",
    responses={200: object_schema({"items": array_of(USER)})},
)
async def list_users(call: Call) -> object:
    return {"items": [user_json(user) for user in await accounts_of(call).list_users()]}


@api.get(
    "/api/v1/users/{user_id}",
    auth=Auth.USER,
    summary="Get a user (yourself, or anyone for an admin)",
    responses={200: USER},
)
async def get_user(call: Call) -> object:
    """Another user's id is a 404 for a non-admin, exactly like an unknown one."""
    return user_json(await accounts_of(call).get_user(call.path("user_id"), call.user))


@attrs.frozen
class UserChange:
    role: Role


@api.patch(
    "/api/v1/users/{user_id}",
    auth=Auth.ADMIN,
    summary="Change a user's role",
    request=object_schema({"role": {"type": "string", "enum": [role.value for role in Role]}}),
    responses={200: USER, 409: ref("Error")},
)
async def update_user(call: Call) -> object:
    """Demoting the only administrator is a 409: make another one first. The new role
    applies from the user's next request."""
    body = await call.json(UserChange, max_bytes=BODY_LIMIT)
    user = await accounts_of(call).set_role(
        call.path("user_id"), body.role, actor=call.user, client=call.client
    )
    return user_json(user)


@api.delete(
    "/api/v1/users/{user_id}",
    auth=Auth.ADMIN,
    summary="Delete a user with their machines, series, alert rules and sessions",
    responses={204: None, 409: ref("Error")},
    status=204,
)
async def delete_user(call: Call) -> object:
    """Deleting your own account is a 409. Audit entries about the user are kept."""
    await accounts_of(call).delete_user(call.path("user_id"), actor=call.user, client=call.client)
    return Response(status_code=204)


@api.post(
    "/api/v1/users/{user_id}/reset-token",
    auth=Auth.ADMIN,
    summary="Issue a one-time password reset token",
    responses={
        201: api.schema(
            "ResetToken",
            object_schema(
                {
                    "token": {"type": "string", "description": "lsr_… shown only once"},
                    "user_id": {"type": "string"},
                    "expires_at": TIME,
                }
            ),
        )
    },
    status=201,
)
async def create_reset_token(call: Call) -> object:
    """Hand the token to the user, who sets a new password with POST /api/v1/auth/reset."""
    issued = await accounts_of(call).issue_reset_token(
        call.path("user_id"), actor=call.user, client=call.client
    )
    return {
        "token": issued.token,
        "user_id": issued.reset.user_id,
        "expires_at": issued.reset.expires_at.isoformat(),
    }


@api.get(
    "/api/v1/users/{user_id}/export",
    auth=Auth.USER,
    summary="Export a user's data as JSON",
    query={
        "since": {
            **TIME,
            "description": "Include each series' history from this time on (ISO 8601).",
        },
        "step": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": MAX_STEP_SECONDS,
            "default": 60,
            "description": "Seconds per history point (with 'since').",
        },
    },
    responses={200: EXPORT},
)
async def export_user(call: Call) -> object:
    """The user, their machines (with API key metadata, never hashes), each series'
    latest value (and history with ``since``) and their alert rules. Yourself, or
    anyone for an admin."""
    since_text = call.query("since")
    since = _parse_since(since_text) if since_text is not None else None
    step = _parse_step(call.query("step"))
    export = await accounts_of(call).export(call.path("user_id"), call.user, since=since, step=step)
    return export_json(export)


def _parse_since(text: str) -> Any:
    try:
        return parse_datetime(text)
    except (TypeError, ValueError) as error:
        raise ValidationError([FieldError("since", str(error))], what="query") from None


def _parse_step(text: str | None) -> timedelta:
    if text is None:
        return timedelta(minutes=1)
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_STEP_SECONDS:
        raise ValidationError(
            [FieldError("step", f"expected seconds, above 0 and at most {MAX_STEP_SECONDS}")],
            what="query",
        )
    return timedelta(seconds=seconds)
