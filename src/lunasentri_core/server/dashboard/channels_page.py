"""The channels page: the user's notification channels, a form for a new channel of
any installed notifier (generated from the notifier's channel class), editing,
enabling, disabling and deleting one, sending a test notification, and the delivery
log with its dead letters and *Retry*.

Everything goes through :class:`~lunasentri_core.services.channels.Channels` and
:class:`~lunasentri_core.services.notifications.Notifications`, as the API's routes
do: the notifier checks the config and its message is shown in the form; secrets
are password inputs, never written back into a page, and shown once after the
channel is created (as the API's answer shows them once); left blank in the edit
form, a secret keeps its stored value (unless the channel's destination changes,
which the service refuses without the secrets given again); test sends share the
API's per-user rate limit.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import TYPE_CHECKING, Any

import attrs
from starlette.requests import Request
from starlette.responses import Response

from lunasentri_core.components import Principal
from lunasentri_core.errors import ConflictError, NotFoundError, ValidationError
from lunasentri_core.model import Channel, DeliveryState
from lunasentri_core.server.dashboard.access import Section, signed_in
from lunasentri_core.server.dashboard.manage import BadForm
from lunasentri_core.server.dashboard.pages import (
    client_of,
    enabled_choice,
    form_fields,
    hub_of,
    not_found,
    redirect,
    render,
)
from lunasentri_core.services.channels import Channels, secret_fields
from lunasentri_core.services.notifications import Notifications

if TYPE_CHECKING:
    from lunasentri_core.services.ingest import TokenBucket

DELIVERIES = 50
"""Deliveries the log shows (newest first)."""
CONFIG = "config."
"""Prefix of the config fields' names in the form (so none clashes with ``name``)."""
RETRYABLE = frozenset((DeliveryState.DEAD, DeliveryState.SKIPPED))
SAVED = {
    "retried": "Delivery queued again.",
    "updated": "Channel saved.",
    "enabled": "Channel enabled.",
    "disabled": "Channel disabled.",
    "deleted": "Channel deleted.",
}
"""What ``?saved=`` may say happened (anything else says nothing)."""


@attrs.frozen
class Field:
    """One input of a channel form, from one field of the notifier's channel class."""

    name: str
    kind: str
    """``text``, ``number``, ``checkbox`` or ``lines`` (``Name: value`` per line)."""
    secret: bool
    required: bool
    default: str
    doc: str


class ChannelsPage(Section):
    @signed_in
    async def page(self, request: Request, user: Principal) -> Response:
        """``GET /channels``: the channels, the notifiers to add one of, the delivery log."""
        return await _page(request, user, saved=request.query_params.get("saved", ""))

    @signed_in
    async def new_form(self, request: Request, user: Principal) -> Response:
        """``GET /channels/new?type=<notifier>``: the form for that notifier's config."""
        type_name = request.query_params.get("type", "")
        return _form(request, user, type_name, {}, status=200)

    @signed_in
    async def create(self, request: Request, user: Principal) -> Response:
        """``POST /channels/new``: the channel, enabled; its secrets shown this once."""
        form = await form_fields(request)
        type_name = form.get("type", "")
        channels = Channels(hub_of(request))
        try:
            config = _config(fields_of(channels, type_name), form)
            channel = await channels.create(
                user,
                name=form.get("name", "").strip(),
                type=type_name,
                config=config,
                client=client_of(request),
            )
        except (BadForm, ValidationError) as error:
            return _form(request, user, type_name, form, problem=_problem(error), status=400)
        except ConflictError as error:
            return _form(request, user, type_name, form, problem=str(error), status=409)
        secrets = secret_fields(channels.channel_class(channel.type))
        shown = {
            name: value
            for name, value in channel.config.items()
            if (secrets is None or name in secrets) and not _empty(value)
        }
        context = {"user": user, "channel": channel, "secrets": shown}
        return render(request, "channel_created.html", context, status=201)

    @signed_in
    async def test(self, request: Request, user: Principal) -> Response:
        """``POST /channels/{channel_id}/test``: send a test now and show the outcome."""
        channels, channel_id = Channels(hub_of(request)), request.path_params["channel_id"]
        try:
            channel = await channels.get(user, channel_id)
        except NotFoundError:
            return not_found(request, user, "channel")
        tests: TokenBucket = request.app.state.channel_tests
        wait = tests.take(user.id, 1)
        if wait > 0:
            outcome = {"channel": channel, "status": "refused", "detail": _too_many(wait)}
            return await _page(request, user, outcome=outcome, status=429)
        result = await channels.test(user, channel_id, client=client_of(request))
        outcome = {"channel": channel, "status": result.status.value, "detail": result.detail}
        return await _page(request, user, outcome=outcome)

    @signed_in
    async def edit(self, request: Request, user: Principal) -> Response:
        """``GET /channels/{channel_id}``: its form, filled in except for the secrets."""
        try:
            channel = await Channels(hub_of(request)).get(user, request.path_params["channel_id"])
        except NotFoundError:
            return not_found(request, user, "channel")
        return _form(request, user, channel.type, _form_of(channel), channel=channel, status=200)

    @signed_in
    async def update(self, request: Request, user: Principal) -> Response:
        """``POST /channels/{channel_id}``: its name and config; a blank secret is kept."""
        channels, channel_id = Channels(hub_of(request)), request.path_params["channel_id"]
        try:
            channel = await channels.get(user, channel_id)
        except NotFoundError:
            return not_found(request, user, "channel")
        form = await form_fields(request)
        fields = fields_of(channels, channel.type)
        try:
            name = form.get("name", "").strip()
            if fields is None:
                # A notifier without a channel class has no form for its config: name only.
                await channels.update(user, channel_id, name=name, client=client_of(request))
            else:
                config = _config(fields, form)
                await channels.update(
                    user, channel_id, name=name, config=config, client=client_of(request)
                )
        except NotFoundError:
            return not_found(request, user, "channel")
        except (BadForm, ValidationError) as error:
            return _form(
                request,
                user,
                channel.type,
                form,
                channel=channel,
                problem=_problem(error),
                status=400,
            )
        except ConflictError as error:
            return _form(
                request, user, channel.type, form, channel=channel, problem=str(error), status=409
            )
        return redirect(request, "/channels?saved=updated")

    @signed_in
    async def enable(self, request: Request, user: Principal) -> Response:
        """``POST /channels/{channel_id}/enabled``: ``enabled=true`` or ``false``."""
        enabled = await enabled_choice(request, user, "channel")
        if isinstance(enabled, Response):
            return enabled
        try:
            await Channels(hub_of(request)).update(
                user,
                request.path_params["channel_id"],
                enabled=enabled,
                client=client_of(request),
            )
        except NotFoundError:
            return not_found(request, user, "channel")
        return redirect(request, "/channels?saved=" + ("enabled" if enabled else "disabled"))

    @signed_in
    async def delete_form(self, request: Request, user: Principal) -> Response:
        """``GET /channels/{channel_id}/delete``: ask first."""
        try:
            channel = await Channels(hub_of(request)).get(user, request.path_params["channel_id"])
        except NotFoundError:
            return not_found(request, user, "channel")
        return render(request, "channel_delete.html", {"user": user, "channel": channel})

    @signed_in
    async def delete(self, request: Request, user: Principal) -> Response:
        """``POST /channels/{channel_id}/delete``: the channel and its deliveries."""
        try:
            await Channels(hub_of(request)).delete(
                user, request.path_params["channel_id"], client=client_of(request)
            )
        except NotFoundError:
            return not_found(request, user, "channel")
        return redirect(request, "/channels?saved=deleted")

    @signed_in
    async def retry(self, request: Request, user: Principal) -> Response:
        """``POST /notifications/{delivery_id}/retry``: a dead or skipped delivery again."""
        try:
            await Notifications(hub_of(request)).retry(
                user, request.path_params["delivery_id"], client=client_of(request)
            )
        except NotFoundError:
            return not_found(request, user, "delivery")
        except ConflictError as error:
            return await _page(request, user, problem=str(error), status=409)
        return redirect(request, "/channels?saved=retried#deliveries")


def fields_of(channels: Channels, type_name: str) -> list[Field] | None:
    """The form's config inputs for a notifier; ``None`` when it declares no channel
    class (its config cannot be made from a form) or is not installed."""
    cls = channels.channel_class(type_name)
    if cls is None or not attrs.has(cls):
        return None
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation this module cannot resolve
        hints = {}
    return [_field(f, hints.get(f.name, str)) for f in attrs.fields(cls)]


def _field(field: attrs.Attribute[Any], hint: Any) -> Field:
    default = field.default
    # attrs' stubs type Factory as a function, though it is the class of factory defaults.
    made: Any = default if isinstance(default, attrs.Factory) else None  # type: ignore[arg-type]
    # A factory that makes something (a signing secret) is worth saying; an empty dict is not.
    generated = made is not None and not made.takes_self and not _empty(made.factory())
    required = default is attrs.NOTHING
    shown = "" if required or made is not None or isinstance(default, dict) else default
    return Field(
        name=field.name,
        kind=_kind(hint),
        secret=bool(field.metadata.get("secret")),
        required=required,
        default="" if shown is None else str(shown),
        doc="generated when left empty" if generated else "",
    )


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == {} or value == []


def _kind(hint: Any) -> str:
    """The input for a field of this type (of ``X | None``, as for ``X``)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    members = set(typing.get_args(hint)) - {type(None)} if union else {hint}
    origins = {typing.get_origin(t) or t for t in members}
    if origins <= {bool}:
        return "checkbox"
    if origins <= {int}:
        return "number"
    if origins & {dict, collections.abc.Mapping}:
        return "lines"
    return "text"


def _config(fields: list[Field] | None, form: dict[str, str]) -> dict[str, Any]:
    """The config the form describes; a field left empty takes its default."""
    if fields is None:
        raise BadForm("type: choose one of the installed notifiers")
    config: dict[str, Any] = {}
    for field in fields:
        text = form.get(CONFIG + field.name, "").strip()
        if field.kind == "checkbox":
            config[field.name] = text == "true"
        elif text:
            config[field.name] = _value(field, text)
    return config


def _value(field: Field, text: str) -> Any:
    if field.kind == "number":
        try:
            return int(text)
        except ValueError:
            raise BadForm(f"config.{field.name}: {text!r} is not a whole number") from None
    if field.kind == "lines":
        pairs = {}
        for line in filter(None, (line.strip() for line in text.splitlines())):
            key, sep, value = line.partition(":")
            if not sep or not key.strip():
                raise BadForm(f"config.{field.name}: write one 'Name: value' a line")
            pairs[key.strip()] = value.strip()
        return pairs
    return text


def _form_of(channel: Channel) -> dict[str, str]:
    """A stored channel as the edit form's fields (its secrets are dropped by :func:`_form`)."""
    form = {"name": channel.name}
    for name, value in channel.config.items():
        if isinstance(value, bool):
            text = "true" if value else ""
        elif isinstance(value, dict):
            text = "\n".join(f"{key}: {item}" for key, item in value.items())
        else:
            text = "" if value is None else str(value)
        form[CONFIG + name] = text
    return form


def _too_many(wait: float) -> str:
    return f"too many test sends; try again in {max(1, int(wait + 0.999))} s"


def _problem(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(str(e) for e in error.errors)
    return str(error)


def _form(
    request: Request,
    user: Principal,
    type_name: str,
    form: dict[str, str],
    *,
    channel: Channel | None = None,
    problem: str = "",
    status: int,
) -> Response:
    channels = Channels(hub_of(request))
    fields = fields_of(channels, type_name)
    if fields is None and channel is None:
        problem = problem or f"No installed notifier {type_name!r} has a channel form."
    context = {
        "user": user,
        "channel": channel,
        "type": type_name,
        "fields": fields or [],
        # Never a secret back into the page: it would sit in the HTML and the history.
        "form": {k: v for k, v in form.items() if not _is_secret(fields, k)},
        "problem": problem,
        "prefix": CONFIG,
    }
    return render(request, "channel_new.html", context, status=status)


def _is_secret(fields: list[Field] | None, name: str) -> bool:
    if not name.startswith(CONFIG):
        return False
    return fields is None or any(f.secret for f in fields if CONFIG + f.name == name)


async def _page(
    request: Request,
    user: Principal,
    *,
    saved: str = "",
    outcome: dict[str, Any] | None = None,
    problem: str = "",
    status: int = 200,
) -> Response:
    hub = hub_of(request)
    channels = Channels(hub)
    found = sorted(await channels.all(user), key=lambda c: (c.name, c.id))
    state = _state(request.query_params.get("state", ""))
    deliveries = await Notifications(hub).deliveries(user, state=state, limit=DELIVERIES)
    context = {
        "user": user,
        "channels": found,
        "names": {c.id: c.name for c in found},
        "types": [t for t in channels.types() if fields_of(channels, t) is not None],
        "deliveries": deliveries,
        "states": [s.value for s in DeliveryState],
        "state": state.value if state else "",
        "retryable": RETRYABLE,
        "saved": SAVED.get(saved, ""),
        "outcome": outcome,
        "problem": problem,
    }
    return render(request, "channels.html", context, status=status)


def _state(text: str) -> DeliveryState | None:
    try:
        return DeliveryState(text)
    except ValueError:
        return None
