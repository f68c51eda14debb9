"""The interfaces a plugin's registered classes implement.

Registration hooks return *classes*; each carries its ``name`` (unique within its
kind) and an optional ``settings_class``, an attrs class structured from
``[plugins.<name>]`` in the settings file. The hub instantiates a class once, with
its settings, and reuses the instance.

Methods may be plain functions (the hub runs them in a worker thread, so they may
block) or coroutine functions (awaited on the event loop, so they must not block).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import attrs

from lunasentri_core.model import Role

# Defined with the classes collectors use, so a collecting process need not load this module.
from lunasentri_core.samples import Collector as Collector

if TYPE_CHECKING:
    # An annotation only: the push agent imports this module but never the storage layer.
    from lunasentri_core.storage.protocols import StateStore


class NotificationKind(enum.StrEnum):
    MACHINE_OFFLINE = "machine.offline"
    MACHINE_ONLINE = "machine.online"
    ALERT_FIRING = "alert.firing"
    ALERT_RESOLVED = "alert.resolved"
    TEST = "test"


@attrs.frozen
class Notification:
    """One event to deliver; ``id`` is the idempotency key of the delivery."""

    id: str
    kind: NotificationKind
    title: str
    text: str
    occurred_at: datetime
    data: Mapping[str, Any] = attrs.field(factory=dict)


class DeliveryStatus(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    """Temporary failure; try again (after ``retry_after`` seconds when given)."""
    FAILED = "failed"
    """Permanent failure of this delivery."""
    DISABLE_CHANNEL = "disable-channel"
    """The channel is gone for good (e.g. HTTP 410); stop using it."""


@attrs.frozen
class DeliveryResult:
    status: DeliveryStatus
    detail: str = ""
    retry_after: float | None = None


@runtime_checkable
class Notifier(Protocol):
    """Delivers a notification to one channel; ``channel`` is that channel's own config.

    ``channel_class`` is an attrs class describing a channel's config: the hub
    structures a user's config into it (so bad input names the field), stores it
    unstructured, and passes that mapping to :meth:`send`. Fields marked
    ``metadata={"secret": True}`` are shown once, when the channel is made.
    Fields marked ``metadata={"destination": True}`` say where notifications go
    (any other field holding a URL counts too): when one changes, an update
    must give every stored secret again, since a masked one is not kept.
    """

    name: ClassVar[str]
    settings_class: ClassVar[type[Any] | None]
    channel_class: ClassVar[type[Any]]

    def send(
        self, channel: Mapping[str, Any], notification: Notification
    ) -> DeliveryResult | Awaitable[DeliveryResult]: ...


@attrs.frozen
class Credentials:
    """What a request presented: its headers (lower-case names) and cookies."""

    headers: Mapping[str, str] = attrs.field(factory=dict)
    cookies: Mapping[str, str] = attrs.field(factory=dict)
    client: str | None = None


@attrs.frozen
class Principal:
    """Who is calling: a user (with a role) or a machine (an agent with an API key)."""

    kind: str
    id: str
    role: Role = Role.USER
    machine_id: str | None = None
    via: str = ""
    """Name of the authenticator that recognised the caller."""

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


@runtime_checkable
class Authenticator(Protocol):
    """Turns a request's credentials into a principal, or ``None`` if they are not its kind."""

    name: ClassVar[str]
    settings_class: ClassVar[type[Any] | None]

    def authenticate(
        self, credentials: Credentials, state: StateStore
    ) -> Principal | Awaitable[Principal | None] | None: ...
