"""Routes: silences, the maintenance windows during which notifications are held back."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import attrs
from starlette.responses import Response

from lunasentri_core.codec import parse_datetime
from lunasentri_core.errors import FieldError, ValidationError
from lunasentri_core.model import Labels, Silence
from lunasentri_core.server import params
from lunasentri_core.server.api import Api, Auth, Call, Schema, items_of
from lunasentri_core.server.routes.users import object_schema
from lunasentri_core.services.notifications import MAX_COMMENT, MAX_SILENCE, Silences

api = Api("silences")

TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
MAYBE_TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}
MAYBE_STRING: Schema = {"type": ["string", "null"]}
LABELS = params.LABELS

SILENCE = api.schema(
    "Silence",
    object_schema(
        {
            "id": {"type": "string"},
            "owner_id": {"type": "string"},
            "starts_at": TIMESTAMP,
            "ends_at": TIMESTAMP,
            "machine_id": MAYBE_STRING,
            "labels": LABELS,
            "rule_id": MAYBE_STRING,
            "comment": {"type": "string"},
            "created_by": MAYBE_STRING,
            "created_at": TIMESTAMP,
            "ended_at": {
                **MAYBE_TIMESTAMP,
                "description": "When what was still wrong at the end was notified.",
            },
            "active": {"type": "boolean", "description": "Whether it mutes events now."},
        }
    ),
)
CREATE_REQUEST: Schema = {
    "type": "object",
    "required": [],
    "additionalProperties": False,
    "properties": {
        "starts_at": {**MAYBE_TIMESTAMP, "description": "Default: now."},
        "ends_at": {**MAYBE_TIMESTAMP, "description": "Give ends_at or duration."},
        "duration": {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "maximum": MAX_SILENCE.total_seconds(),
            "description": "Seconds from starts_at.",
        },
        "machine_id": {**MAYBE_STRING, "description": "Mute this machine's events."},
        "labels": {**LABELS, "description": "Mute events of machines with every label."},
        "rule_id": {**MAYBE_STRING, "description": "Mute this alert rule's events."},
        "comment": {"type": "string", "maxLength": MAX_COMMENT},
    },
    # A window has one end: ends_at, or duration from starts_at, not both (null is absent).
    "not": {
        "required": ["ends_at", "duration"],
        "properties": {"ends_at": {"type": "string"}, "duration": {"type": "number"}},
    },
}


@attrs.frozen
class SilenceBody:
    # Timestamps as text: the schema says ISO 8601, so epoch numbers are refused.
    starts_at: str | None = None
    ends_at: str | None = None
    duration: float | None = None
    machine_id: str | None = None
    labels: Labels = ()
    rule_id: str | None = None
    comment: str = ""


def _timestamp(text: str | None, field: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_datetime(text)
    except (TypeError, ValueError) as error:
        raise ValidationError([FieldError(field, str(error))], "request body") from None


def _duration(seconds: float | None) -> timedelta | None:
    if seconds is None:
        return None
    if not 0 < seconds <= MAX_SILENCE.total_seconds():
        raise ValidationError(
            [FieldError("duration", f"must be above 0 and at most {MAX_SILENCE.days} days")],
            "request body",
        )
    return timedelta(seconds=seconds)


def silence_json(silence: Silence, now: datetime) -> dict[str, Any]:
    return {
        "id": silence.id,
        "owner_id": silence.owner_id,
        "starts_at": silence.starts_at.isoformat(),
        "ends_at": silence.ends_at.isoformat(),
        "machine_id": silence.machine_id,
        "labels": dict(silence.labels),
        "rule_id": silence.rule_id,
        "comment": silence.comment,
        "created_by": silence.created_by,
        "created_at": silence.created_at.isoformat(),
        "ended_at": silence.ended_at.isoformat() if silence.ended_at else None,
        "active": silence.active(now),
    }


@api.post(
    "/api/v1/silences",
    auth=Auth.USER,
    summary="Silence a machine, a label selector or an alert rule for a time window",
    request=CREATE_REQUEST,
    responses={201: SILENCE},
    status=201,
)
async def create_silence(call: Call) -> object:
    """During the window, the caller's events matching every given condition are
    recorded but not sent; what is still wrong when it ends is notified then. At
    least one of `machine_id`, `labels` and `rule_id` is required; `machine_id` and
    `rule_id` must be the caller's. A window lasts at most 90 days."""
    body = await call.json(SilenceBody)
    silence = await Silences(call.hub).create(
        call.user,
        starts_at=_timestamp(body.starts_at, "starts_at"),
        ends_at=_timestamp(body.ends_at, "ends_at"),
        duration=_duration(body.duration),
        machine_id=body.machine_id,
        labels=body.labels,
        rule_id=body.rule_id,
        comment=body.comment,
        client=call.client,
    )
    return silence_json(silence, call.hub.clock())


@api.get(
    "/api/v1/silences",
    auth=Auth.USER,
    summary="The caller's silences",
    query={"active": {**params.BOOLEAN, "description": "Only those muting now (or not)."}},
    responses={200: items_of(SILENCE)},
)
async def list_silences(call: Call) -> object:
    """Ordered by start. An administrator sees every silence."""
    params.only(call, {"active"})
    found = await Silences(call.hub).all(call.user, active=params.boolean(call, "active"))
    now = call.hub.clock()
    return {"items": [silence_json(silence, now) for silence in found]}


@api.get(
    "/api/v1/silences/{silence_id}",
    auth=Auth.USER,
    summary="Get a silence",
    responses={200: SILENCE},
)
async def get_silence(call: Call) -> object:
    silence = await Silences(call.hub).get(call.user, call.path("silence_id"))
    return silence_json(silence, call.hub.clock())


@api.delete(
    "/api/v1/silences/{silence_id}",
    auth=Auth.USER,
    summary="End a silence now",
    responses={204: None},
    status=204,
)
async def end_silence(call: Call) -> object:
    """The silence stays listed, ending now (a planned one never starts); what it
    muted and is still wrong is notified right away."""
    await Silences(call.hub).end(call.user, call.path("silence_id"), client=call.client)
    return Response(status_code=204)
