"""Routes: notification channels, their deliveries, and the notification outbox."""

from __future__ import annotations

import math
from typing import Any

import attrs
from anyio.abc import TaskGroup
from starlette.applications import Starlette
from starlette.responses import Response

from lunasentri_core.codec import decode
from lunasentri_core.components import DeliveryResult, DeliveryStatus
from lunasentri_core.config import ServerSettings
from lunasentri_core.errors import ConflictError, FieldError, ValidationError
from lunasentri_core.model import Channel, Delivery, DeliveryState, EventState, OutboxEvent
from lunasentri_core.server import params
from lunasentri_core.server.api import Api, Auth, Call, Schema, items_of, ref
from lunasentri_core.server.errors import ApiError
from lunasentri_core.server.routes.machines import NAME, json_object
from lunasentri_core.server.routes.users import object_schema
from lunasentri_core.services.channels import MASK, Channels
from lunasentri_core.services.ingest import TokenBucket
from lunasentri_core.services.notifications import DeliveryView, Notifications

api = Api("channels")
NOTIFICATIONS = ("notifications",)

TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
MAYBE_TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}
MAYBE_STRING: Schema = {"type": ["string", "null"]}
_NAME: Schema = NAME
_CONFIG: Schema = {
    "type": "object",
    "description": "The notifier's channel settings (e.g. a webhook's url). Secret fields "
    f'are shown only when the channel is created, then as "{MASK}"; sending "{MASK}" back '
    "(or leaving the field out) in an update keeps the stored secret.",
}

CHANNEL = api.schema(
    "Channel",
    object_schema(
        {
            "id": {"type": "string"},
            "owner_id": {"type": "string"},
            "name": {"type": "string"},
            "type": {"type": "string", "description": "The notifier plugin, e.g. webhook."},
            "config": _CONFIG,
            "enabled": {"type": "boolean"},
            "disabled_reason": {
                **MAYBE_STRING,
                "description": "Why the server disabled it (e.g. the receiver said it is "
                "gone); cleared when it is enabled again.",
            },
            "created_at": TIMESTAMP,
        }
    ),
)
TEST_RESULT = api.schema(
    "ChannelTestResult",
    object_schema(
        {
            "status": params.enum_schema(list(DeliveryStatus)),
            "detail": {"type": "string"},
            "retry_after": {"type": ["number", "null"]},
        }
    ),
)
NOTIFICATION_EVENT = api.schema(
    "NotificationEvent",
    object_schema(
        {
            "id": {"type": "string"},
            "kind": {
                "type": "string",
                "description": "machine.offline, machine.online, alert.firing, alert.resolved",
            },
            "owner_id": {**MAYBE_STRING, "description": "null: addressed to every admin."},
            "title": {"type": "string"},
            "text": {"type": "string"},
            "occurred_at": TIMESTAMP,
            "data": {"type": "object"},
            "machine_id": MAYBE_STRING,
            "rule_id": MAYBE_STRING,
            "state": params.enum_schema(
                list(EventState),
                "new: not yet handed to channels; dispatched: a delivery was queued per "
                "active channel; silenced: recorded during a silence and not sent.",
            ),
            "silence_id": MAYBE_STRING,
        }
    ),
)
DELIVERY = api.schema(
    "Delivery",
    object_schema(
        {
            "id": {"type": "string", "description": "Also the idempotency key receivers see."},
            "event_id": {"type": "string"},
            "channel_id": {"type": "string"},
            "owner_id": {"type": "string"},
            "state": params.enum_schema(
                list(DeliveryState),
                "dead: given up (attempts exhausted, a permanent failure, or the channel "
                "gone); skipped: not sent because the channel was disabled (last_error "
                "says why). Both can be retried.",
            ),
            "attempts": {"type": "integer", "minimum": 0},
            "next_attempt_at": TIMESTAMP,
            "last_error": MAYBE_STRING,
            "delivered_at": MAYBE_TIMESTAMP,
            "created_at": TIMESTAMP,
            "event": {
                "oneOf": [
                    {"type": "null"},
                    object_schema(
                        {
                            "kind": {"type": "string"},
                            "title": {"type": "string"},
                            "occurred_at": TIMESTAMP,
                        }
                    ),
                ]
            },
        }
    ),
)


RESENT = api.schema(
    "ResentDeliveries",
    object_schema(
        {"resent": {"type": "integer", "minimum": 0, "description": "Deliveries queued."}}
    ),
)


def _request(required: list[str], properties: dict[str, Schema]) -> Schema:
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


CREATE_REQUEST = _request(
    ["name", "type", "config"],
    {
        "name": _NAME,
        "type": {
            "type": "string",
            "minLength": 1,
            "description": "An installed notifier plugin's name.",
        },
        "config": _CONFIG,
        "enabled": {"type": "boolean", "description": "Default: true."},
    },
)
PATCH_REQUEST = _request(
    [],
    {
        "name": _NAME,
        "config": _CONFIG,
        "enabled": {"type": "boolean", "description": "true also clears disabled_reason."},
    },
)


@attrs.frozen
class ChannelBody:
    name: str
    type: str
    config: Any
    enabled: bool = True


@attrs.frozen
class ChannelPatch:
    name: str | None = None
    config: Any = None
    enabled: bool | None = None


# --------------------------------------------------------------------------- JSON out


def channel_json(channel: Channel) -> dict[str, Any]:
    return {
        "id": channel.id,
        "owner_id": channel.owner_id,
        "name": channel.name,
        "type": channel.type,
        "config": dict(channel.config),
        "enabled": channel.enabled,
        "disabled_reason": channel.disabled_reason,
        "created_at": channel.created_at.isoformat(),
    }


def _time(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())


def delivery_json(view: DeliveryView) -> dict[str, Any]:
    delivery: Delivery = view.delivery
    event = view.event
    return {
        "id": delivery.id,
        "event_id": delivery.event_id,
        "channel_id": delivery.channel_id,
        "owner_id": delivery.owner_id,
        "state": delivery.state.value,
        "attempts": delivery.attempts,
        "next_attempt_at": delivery.next_attempt_at.isoformat(),
        "last_error": delivery.last_error,
        "delivered_at": _time(delivery.delivered_at),
        "created_at": delivery.created_at.isoformat(),
        "event": None
        if event is None
        else {
            "kind": event.kind,
            "title": event.title,
            "occurred_at": event.occurred_at.isoformat(),
        },
    }


def outbox_json(event: OutboxEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "kind": event.kind,
        "owner_id": event.owner_id,
        "title": event.title,
        "text": event.text,
        "occurred_at": event.occurred_at.isoformat(),
        "data": dict(event.data),
        "machine_id": event.machine_id,
        "rule_id": event.rule_id,
        "state": event.state.value,
        "silence_id": event.silence_id,
    }


def result_json(result: DeliveryResult) -> dict[str, Any]:
    return {
        "status": result.status.value,
        "detail": result.detail,
        "retry_after": result.retry_after,
    }


# --------------------------------------------------------------------------- channels


@api.post(
    "/api/v1/channels",
    auth=Auth.USER,
    summary="Create a notification channel; its secrets are shown this once",
    request=CREATE_REQUEST,
    responses={201: CHANNEL, 409: ref("Error")},
    status=201,
)
async def create_channel(call: Call) -> object:
    """`type` names an installed notifier plugin (the error lists the available ones);
    `config` is checked by that notifier (errors name the field, e.g. `config.url`).
    Channel names are unique per owner (409). The caller's notifications go to each of
    their enabled channels."""
    body = await call.json(ChannelBody)
    channel = await Channels(call.hub).create(
        call.user,
        name=body.name,
        type=body.type,
        config=body.config,
        enabled=body.enabled,
        client=call.client,
    )
    return channel_json(channel)


@api.get(
    "/api/v1/channels",
    auth=Auth.USER,
    summary="The caller's notification channels (secrets masked)",
    responses={200: items_of(CHANNEL)},
)
async def list_channels(call: Call) -> object:
    """An administrator sees every channel."""
    return {"items": [channel_json(c) for c in await Channels(call.hub).all(call.user)]}


@api.get(
    "/api/v1/channels/{channel_id}",
    auth=Auth.USER,
    summary="Get a notification channel (secrets masked)",
    responses={200: CHANNEL},
)
async def get_channel(call: Call) -> object:
    return channel_json(await Channels(call.hub).get(call.user, call.path("channel_id")))


@api.patch(
    "/api/v1/channels/{channel_id}",
    auth=Auth.USER,
    summary="Rename, reconfigure, disable or re-enable a notification channel",
    request=PATCH_REQUEST,
    responses={200: CHANNEL, 409: ref("Error")},
)
async def update_channel(call: Call) -> object:
    """Only the fields given change; a new `config` replaces the old one, except for
    secrets sent back masked or left out, which keep their stored values. When the
    config changes where notifications go (a webhook's `url`), every stored secret
    must be given again: a masked or left-out one is a 422 naming it
    (`config.secret`, `config.headers.Authorization`), and nothing changes."""
    data = await json_object(call)
    body = decode(data, ChannelPatch, what="request body")
    changes: dict[str, Any] = {}
    for field in ("name", "config", "enabled"):
        if field in data:
            if data[field] is None:
                raise ValidationError([FieldError(field, "must not be null")], "request body")
            changes[field] = getattr(body, field)
    channel = await Channels(call.hub).update(
        call.user, call.path("channel_id"), client=call.client, **changes
    )
    return channel_json(channel)


@api.delete(
    "/api/v1/channels/{channel_id}",
    auth=Auth.USER,
    summary="Delete a notification channel with its deliveries",
    responses={204: None},
    status=204,
)
async def delete_channel(call: Call) -> object:
    await Channels(call.hub).delete(call.user, call.path("channel_id"), client=call.client)
    return Response(status_code=204)


@api.post(
    "/api/v1/channels/{channel_id}/test",
    auth=Auth.USER,
    summary="Send a test notification through a channel now",
    responses={200: TEST_RESULT, 429: ref("Error")},
)
async def test_channel(call: Call) -> object:
    """The notification goes straight to the notifier (not through the outbox, no
    retries) and the answer is its outcome: `delivered`, or `retry`/`failed`/
    `disable-channel` with the notifier's `detail` (e.g. what the receiver answered).
    Each user may send `server.channel_test_rate` tests per second on average, up to
    `server.channel_test_burst` at once: beyond that, 429 with `Retry-After` (a
    refused test is not sent and does not count, nor does one of a channel not found)."""
    channels, channel_id = Channels(call.hub), call.path("channel_id")
    await channels.get(call.user, channel_id)  # a 404 sends nothing, so it is not counted
    _count_test(call)
    result = await channels.test(call.user, channel_id, client=call.client)
    return result_json(result)


@api.post(
    "/api/v1/channels/{channel_id}/resend-skipped",
    auth=Auth.USER,
    summary="Send the deliveries skipped while a channel was disabled",
    responses={200: RESENT, 409: ref("Error")},
)
async def resend_skipped(call: Call) -> object:
    """While a channel is disabled (by its owner, or by the server when the receiver
    said it is gone), each event for it is recorded as a `skipped` delivery. Once the
    channel is enabled again (`PATCH` with `enabled: true`), this queues them all, each
    with its attempts started over; enabling alone sends nothing. A channel still
    disabled is a 409 (`channel_disabled`, field `enabled`)."""
    try:
        resent = await Channels(call.hub).resend_skipped(
            call.user, call.path("channel_id"), client=call.client
        )
    except ConflictError as error:
        raise ApiError(409, "channel_disabled", str(error), "enabled") from None
    return {"resent": resent}


def _count_test(call: Call) -> None:
    # Per user: a test send reaches an outside service at once, with no outbox between.
    tests: TokenBucket = call.request.app.state.channel_tests
    wait = tests.take(call.user.id, 1)
    if wait > 0:
        seconds = str(max(1, math.ceil(wait)))
        message = f"too many test sends; try again in {seconds} s"
        raise ApiError(429, "rate_limited", message, headers={"Retry-After": seconds})


def start(app: Starlette, services: TaskGroup) -> None:
    """A token bucket per user for channel test sends."""
    settings: ServerSettings = app.state.settings
    app.state.channel_tests = TokenBucket(settings.channel_test_rate, settings.channel_test_burst)


# --------------------------------------------------------------------------- deliveries

_ID_FILTER = params.ID_FILTER


@api.get(
    "/api/v1/notifications",
    auth=Auth.USER,
    tags=NOTIFICATIONS,
    summary="Deliveries of notifications to the caller's channels, newest first",
    query={
        "state": params.enum_schema(list(DeliveryState), "e.g. dead: the dead-letter list"),
        "channel_id": _ID_FILTER,
        "event_id": _ID_FILTER,
        "limit": params.LIMIT,
    },
    responses={200: items_of(DELIVERY)},
)
async def list_notifications(call: Call) -> object:
    """Each delivery carries its event's kind and title. A failed attempt is retried
    with exponential backoff; after the last attempt the delivery is `dead`. An event
    for a disabled channel gets a `skipped` delivery (`state=skipped` lists them)."""
    params.only(call, {"state", "channel_id", "event_id", "limit"})
    found = await Notifications(call.hub).deliveries(
        call.user,
        state=params.choice(call, "state", DeliveryState),
        channel_id=params.identifier(call, "channel_id"),
        event_id=params.identifier(call, "event_id"),
        limit=params.limit(call),
    )
    return {"items": [delivery_json(view) for view in found]}


@api.post(
    "/api/v1/notifications/{delivery_id}/retry",
    auth=Auth.USER,
    tags=NOTIFICATIONS,
    summary="Queue a dead or skipped delivery again",
    responses={200: DELIVERY, 409: ref("Error")},
)
async def retry_notification(call: Call) -> object:
    """Its attempts start over and it is sent at once. Only a dead or skipped delivery
    can be retried (409 otherwise); one to a channel still disabled is skipped again."""
    view = await Notifications(call.hub).retry(
        call.user, call.path("delivery_id"), client=call.client
    )
    return delivery_json(view)


@api.get(
    "/api/v1/notification-events",
    auth=Auth.USER,
    tags=NOTIFICATIONS,
    summary="Notifiable events addressed to the caller (the outbox), newest first",
    query={
        "state": params.enum_schema(list(EventState), "e.g. silenced"),
        "limit": params.LIMIT,
    },
    responses={200: items_of(NOTIFICATION_EVENT)},
)
async def list_notification_events(call: Call) -> object:
    """Machine status changes and alert transitions, each written with the change it
    reports. An administrator sees every event, those addressed to all admins
    (`owner_id` null) included."""
    params.only(call, {"state", "limit"})
    found = await Notifications(call.hub).events(
        call.user,
        state=params.choice(call, "state", EventState),
        limit=params.limit(call),
    )
    return {"items": [outbox_json(event) for event in found]}
