"""Routes: the audit log (admins only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lunasentri_core.codec import parse_datetime
from lunasentri_core.errors import FieldError, ValidationError
from lunasentri_core.model import AuditEntry
from lunasentri_core.server.api import Api, Auth, Call, array_of
from lunasentri_core.server.routes.users import TIME, object_schema
from lunasentri_core.services import audit

api = Api("audit")

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

_OPTIONAL_STRING = {"type": ["string", "null"]}

AUDIT_ENTRY = api.schema(
    "AuditEntry",
    object_schema(
        {
            "id": {"type": "string"},
            "at": TIME,
            "action": {"type": "string", "description": "e.g. user.login, machine.create"},
            "actor_kind": {
                "type": "string",
                "description": "user, machine, agent, system or anonymous",
            },
            "actor_id": _OPTIONAL_STRING,
            "target_type": _OPTIONAL_STRING,
            "target_id": _OPTIONAL_STRING,
            "client": {"type": ["string", "null"], "description": "IP address of the caller"},
            "detail": {"type": "object"},
            "via": {
                "type": ["string", "null"],
                "description": "The authenticator that accepted the request (session, "
                "api-key, a plugin's), or cli; null when none did",
            },
        }
    ),
)


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": entry.at.isoformat(),
        "action": entry.action,
        "actor_kind": entry.actor_kind,
        "actor_id": entry.actor_id,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "client": entry.client,
        "detail": dict(entry.detail),
        "via": entry.via,
    }


@api.get(
    "/api/v1/audit",
    auth=Auth.ADMIN,
    summary="Query the audit log, newest first",
    query={
        "action": {"type": "string", "description": "Exactly this action"},
        "actor_id": {"type": "string", "description": "Exactly this actor"},
        "via": {"type": "string", "description": "Accepted by exactly this authenticator"},
        "target_id": {
            "type": "string",
            "description": "About exactly this target (a machine's id…)",
        },
        "since": {**TIME, "description": "Entries at or after this time (ISO 8601)"},
        "until": {**TIME, "description": "Entries before this time (ISO 8601)"},
        "before": {
            "type": "string",
            "description": "An entry's id: the entries listed after it (the next page)",
        },
        "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    },
    responses={200: object_schema({"items": array_of(AUDIT_ENTRY)})},
)
async def list_audit(call: Call) -> object:
    since = _time(call.query("since"), "since")
    until = _time(call.query("until"), "until")
    limit = _limit(call.query("limit"))
    entries = await audit.entries(
        call.hub,
        action=call.query("action") or None,
        actor_id=call.query("actor_id") or None,
        via=call.query("via") or None,
        since=since,
        limit=limit,
        target_id=call.query("target_id") or None,
        until=until,
        before=call.query("before") or None,
    )
    return {"items": [audit_json(entry) for entry in entries]}


def _time(text: str | None, field: str) -> datetime | None:
    # An empty value is refused like any other that is not a time (the schema says so).
    if text is None:
        return None
    try:
        return parse_datetime(text)
    except (TypeError, ValueError) as error:
        raise _invalid(field, str(error)) from None


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not (text.isascii() and text.isdigit() and len(text) <= 6 and 1 <= int(text) <= MAX_LIMIT):
        raise _invalid("limit", f"expected an integer from 1 to {MAX_LIMIT}")
    return int(text)


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError([FieldError(field, message)], what="query")
