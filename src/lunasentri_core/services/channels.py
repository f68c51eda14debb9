"""Notification channels, as one principal sees them, and their test sends.

A channel names a notifier plugin (``type``) and holds that notifier's
configuration, validated by the notifier's ``channel_class`` and stored in its
encoded form. Fields the channel class marks ``metadata={"secret": True}`` are
shown once, in the answer to the creation, and masked afterwards; an update
that sends the mask back (or leaves the field out) keeps the stored secret,
unless it changes where notifications go (a field marked
``metadata={"destination": True}``, or any other field holding a URL): then
every stored secret must be given again, so that none follows a new URL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from lunasentri_core.codec import decode, encode
from lunasentri_core.components import (
    DeliveryResult,
    DeliveryStatus,
    Notification,
    NotificationKind,
    Principal,
)
from lunasentri_core.errors import FieldError, PluginError, ValidationError
from lunasentri_core.model import Channel, new_id
from lunasentri_core.services import audit, dispatch
from lunasentri_core.services.machines import check_name, owner_scope
from lunasentri_core.storage.protocols import StateStore

if TYPE_CHECKING:
    from lunasentri_core.hub import Sentri

MASK = "********"
"""What a stored secret reads as."""
_UNCHANGED: Any = object()


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError([FieldError(field, message)], what="request body")


def secret_fields(channel_class: type[Any] | None) -> frozenset[str] | None:
    """Names of the secret fields; ``None`` when unknown (every field counts as secret)."""
    if channel_class is None or not attrs.has(channel_class):
        return None
    return frozenset(f.name for f in attrs.fields(channel_class) if f.metadata.get("secret"))


def mask(config: Mapping[str, Any], secrets: frozenset[str] | None) -> dict[str, Any]:
    """``config`` with each secret value replaced by :data:`MASK` (a mapping's values each)."""
    return {
        name: _masked(value) if secrets is None or name in secrets else value
        for name, value in config.items()
    }


def _masked(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _masked(item) for key, item in value.items()}
    if _empty(value):
        return value  # nothing to hide, and "not set" is worth showing
    return MASK


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def unmask(
    sent: Mapping[str, Any], stored: Mapping[str, Any], secrets: frozenset[str]
) -> dict[str, Any]:
    """``sent`` with masked or left-out secrets taken from ``stored``."""
    merged = dict(sent)
    for name in secrets:
        if name not in stored:
            continue
        if name not in merged:
            merged[name] = stored[name]
        else:
            merged[name] = _restored(merged[name], stored[name])
    return merged


def destination_fields(
    channel_class: type[Any], secrets: frozenset[str], *configs: Mapping[str, Any]
) -> list[str]:
    """The fields that say where notifications (and so the secrets) go: those marked
    ``metadata={"destination": True}``, and, since a plugin may not mark them, any
    other field that holds a URL in one of ``configs``."""
    marked = [f.name for f in attrs.fields(channel_class) if f.metadata.get("destination")]
    holding_urls = [
        name
        for name in dict.fromkeys(key for config in configs for key in config)
        if name not in secrets
        and name not in marked
        and any(isinstance(c.get(name), str) and "://" in c[name] for c in configs)
    ]
    return marked + holding_urls


def kept_secrets(
    sent: Mapping[str, Any], stored: Mapping[str, Any], secrets: Iterable[str]
) -> list[str]:
    """Paths (``token``, ``headers.Authorization``) of the stored secrets that ``sent``
    would keep: masked or left out, and not empty."""
    kept = []
    for name in secrets:
        value = stored.get(name)
        if _empty(value):
            continue  # nothing stored, so nothing to keep
        if name not in sent or sent[name] == MASK:
            kept.append(name)
        elif isinstance(sent[name], Mapping) and isinstance(value, Mapping):
            kept += [f"{name}.{key}" for key, item in sent[name].items() if item == MASK]
    return kept


def _restored(sent: Any, stored: Any) -> Any:
    if sent == MASK:
        return stored
    if isinstance(sent, Mapping) and isinstance(stored, Mapping):
        return {
            key: _restored(value, stored[key]) if key in stored else value
            for key, value in sent.items()
        }
    return sent


class Channels:
    """Notification channels, scoped by the acting principal."""

    def __init__(self, hub: Sentri) -> None:
        self.hub = hub

    @property
    def _state(self) -> StateStore:
        return self.hub.storage.state

    # ------------------------------------------------------------ notifier types

    def types(self) -> list[str]:
        """The notifier plugins installed, by name."""
        return sorted(self.hub.plugins.notifiers())

    def channel_class(self, type_name: str) -> type[Any] | None:
        """The notifier's channel config class (``None``: not installed, or it declares none)."""
        notifier = self.hub.plugins.notifiers().get(type_name)
        return None if notifier is None else getattr(notifier, "channel_class", None)

    def _check_type(self, type_name: str) -> str:
        if type_name not in self.hub.plugins.notifiers():
            available = ", ".join(self.types()) or "none is installed"
            raise _invalid(
                "type", f"no notifier plugin named {type_name!r} (available: {available})"
            )
        return type_name

    def _check_config(self, type_name: str, config: object) -> dict[str, Any]:
        """The config as the notifier's channel class accepts it, encoded for storage."""
        if not isinstance(config, Mapping):
            raise _invalid("config", "expected a JSON object")
        cls = self.channel_class(type_name)
        if cls is None:
            return dict(config)  # a notifier that declares no channel class checks nothing
        try:
            instance = decode(dict(config), cls, what="config")
        except ValidationError as error:
            names = {field.name for field in attrs.fields(cls)}
            raise ValidationError(
                [FieldError(_config_path(_path_of(e, names)), e.message) for e in error.errors],
                what="request body",
            ) from None
        encoded: dict[str, Any] = encode(instance)
        return encoded

    def present(self, channel: Channel) -> Channel:
        """The channel as shown after its creation: secrets masked."""
        secrets = secret_fields(self.channel_class(channel.type))
        return attrs.evolve(channel, config=mask(channel.config, secrets))

    # ------------------------------------------------------------ CRUD

    async def create(
        self,
        actor: Principal,
        *,
        name: str,
        type: str,
        config: object,
        enabled: bool = True,
        client: str | None = None,
    ) -> Channel:
        """Add a channel owned by ``actor``; the answer shows its secrets, this once."""
        type_name = self._check_type(type)
        channel = Channel(
            id=new_id(),
            owner_id=actor.id,
            name=check_name(name),
            type=type_name,
            config=self._check_config(type_name, config),
            enabled=enabled,
            created_at=self.hub.clock(),
        )
        stored = await self.hub.run_sync(self._state.add_channel, channel)
        await self._audit("channel.create", actor, stored, client, {"enabled": stored.enabled})
        return stored

    async def all(self, actor: Principal) -> list[Channel]:
        found = await self.hub.run_sync(self._state.list_channels, owner_scope(actor))
        return [self.present(channel) for channel in found]

    async def get(self, actor: Principal, channel_id: str) -> Channel:
        return self.present(await self._get(actor, channel_id))

    async def _get(self, actor: Principal, channel_id: str) -> Channel:
        return await self.hub.run_sync(self._state.get_channel, channel_id, owner_scope(actor))

    async def update(
        self,
        actor: Principal,
        channel_id: str,
        *,
        name: str = _UNCHANGED,
        config: object = _UNCHANGED,
        enabled: bool = _UNCHANGED,
        client: str | None = None,
    ) -> Channel:
        """Rename, reconfigure, disable or re-enable a channel (which clears why it was off)."""
        before = await self._get(actor, channel_id)
        changes: dict[str, Any] = {}
        if name is not _UNCHANGED:
            changes["name"] = check_name(name)
        if config is not _UNCHANGED:
            changes["config"] = self._reconfigured(before, config)
        if enabled is not _UNCHANGED:
            changes["enabled"] = enabled
            changes["disabled_reason"] = None
        after = attrs.evolve(before, **changes)
        if after == before:
            return self.present(before)
        stored = await self.hub.run_sync(self._state.update_channel, after)
        detail = {
            "changed": sorted(k for k in changes if getattr(before, k) != getattr(stored, k)),
            "enabled": stored.enabled,
        }
        await self._audit("channel.update", actor, stored, client, detail)
        return self.present(stored)

    def _reconfigured(self, channel: Channel, config: object) -> dict[str, Any]:
        if not isinstance(config, Mapping):
            raise _invalid("config", "expected a JSON object")
        cls = self.channel_class(channel.type)
        secrets = secret_fields(cls)
        if cls is None or secrets is None:
            return self._check_config(channel.type, config)
        checked = self._check_config(channel.type, unmask(config, channel.config, secrets))
        # After the config's own checks, so that a bad new URL is named as such.
        _check_secrets_follow(cls, secrets, config, channel.config)
        return checked

    async def delete(self, actor: Principal, channel_id: str, *, client: str | None = None) -> None:
        """Delete a channel with its deliveries."""
        channel = await self._get(actor, channel_id)
        await self.hub.run_sync(self._state.delete_channel, channel.id, owner_scope(actor))
        await self._audit("channel.delete", actor, channel, client, {})

    async def resend_skipped(
        self, actor: Principal, channel_id: str, *, client: str | None = None
    ) -> int:
        """Queue the deliveries skipped while the channel was disabled; returns how many.

        Not done by enabling it: its owner may not want hours-old alerts, or only some
        (each can also be retried alone)."""
        channel = await self._get(actor, channel_id)
        now = self.hub.clock()
        resent = await self.hub.run_sync(
            self._state.resend_skipped, channel.id, now, owner_scope(actor)
        )
        self.hub.dispatcher.wake()
        await self._audit("channel.resend", actor, channel, client, {"resent": resent})
        return resent

    async def _audit(
        self,
        action: str,
        actor: Principal,
        channel: Channel,
        client: str | None,
        detail: dict[str, Any],
    ) -> None:
        # Never the config: it may hold secrets.
        await audit.record(
            self.hub,
            action=action,
            actor=actor,
            target_type="channel",
            target_id=channel.id,
            client=client,
            detail={
                "name": channel.name,
                "type": channel.type,
                "owner_id": channel.owner_id,
                **detail,
            },
        )

    # ------------------------------------------------------------ test

    async def test(
        self, actor: Principal, channel_id: str, *, client: str | None = None
    ) -> DeliveryResult:
        """Send a ``test`` notification now, straight through the notifier (not the outbox).

        A disabled channel is tested too: that is how one checks it before enabling it.
        """
        channel = await self._get(actor, channel_id)
        now = self.hub.clock()
        notification = Notification(
            id=new_id(),
            kind=NotificationKind.TEST,
            title="LunaSentri test notification",
            text=f"This is a test of the channel {channel.name!r}: it can reach you.",
            occurred_at=now,
            data={},
        )
        try:
            notifier = self.hub.notifier(channel.type)
        except PluginError as error:
            result = DeliveryResult(DeliveryStatus.FAILED, str(error))
        else:
            timeout = self.hub.settings.notifications.send_timeout.total_seconds()
            result = await dispatch.send(
                self.hub, notifier, dict(channel.config), notification, timeout
            )
        detail = {"status": result.status.value, "notification_id": notification.id}
        await self._audit("channel.test", actor, channel, client, detail)
        return result


def _check_secrets_follow(
    cls: type[Any], secrets: frozenset[str], sent: Mapping[str, Any], stored: Mapping[str, Any]
) -> None:
    """Refuse to keep a stored secret for a new destination: it was given for the old
    one, and a client that sends back what it was shown may not mean to move it."""
    moved = [
        name
        for name in destination_fields(cls, secrets, sent, stored)
        if sent.get(name) != stored.get(name)
    ]
    in_order = [f.name for f in attrs.fields(cls) if f.name in secrets]
    kept = kept_secrets(sent, stored, in_order) if moved else []
    if kept:
        because = ", ".join(f"config.{name}" for name in moved)
        message = f"give it again: {because} changes, and a stored secret does not follow it"
        raise ValidationError(
            [FieldError(f"config.{path}", message) for path in kept], what="request body"
        )


def _path_of(error: FieldError, names: set[str]) -> str:
    """The field an error is about; an attrs validator's error comes without a path,
    but by convention its message starts with the field's name."""
    if error.path:
        return error.path
    first = re.split(r"[\s:]", error.message, maxsplit=1)[0]
    return first if first in names else ""


def _config_path(path: str) -> str:
    if not path:
        return "config"
    return f"config{path}" if path.startswith("[") else f"config.{path}"
