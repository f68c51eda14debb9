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
    """What became of one :meth:`Notifier.send`; the dispatcher acts on it.

    Choose by asking whether sending *the same notification to the same channel*
    again could succeed:

    ========================  =====================================================
    status                    return it when
    ========================  =====================================================
    ``DELIVERED``             the channel accepted the message (HTTP 2xx, API ok).
    ``RETRY``                 it may work later: a timeout, a refused connection,
                              HTTP 429 or 5xx, a rate limit. The dispatcher tries
                              again with exponential backoff (or after
                              ``retry_after``), up to ``[notifications]
                              max_attempts``, then gives the delivery up as dead.
    ``FAILED``                this notification will never go through, but the
                              channel is fine: e.g. HTTP 400 for this message
                              (too long, bad markup). The delivery is dead at once;
                              later notifications still use the channel.
    ``DISABLE_CHANNEL``       the channel itself is gone or refuses us for good:
                              HTTP 410, a bot blocked or removed from the chat,
                              credentials revoked. The delivery is dead and the
                              channel is disabled (with ``detail`` as the reason
                              its owner sees) until they enable it again.
    ========================  =====================================================

    Raising from ``send`` counts as ``RETRY`` (and logs the traceback); so does
    returning anything that is not a :class:`DeliveryResult`. Prefer returning
    a result: ``detail`` then tells the channel's owner what happened.
    """

    DELIVERED = "delivered"
    RETRY = "retry"
    """Temporary failure; try again (after ``retry_after`` seconds when given)."""
    FAILED = "failed"
    """Permanent failure of this delivery; the channel stays in use."""
    DISABLE_CHANNEL = "disable-channel"
    """The channel is gone for good (e.g. HTTP 410); stop using it."""


@attrs.frozen
class DeliveryResult:
    """The outcome of one :meth:`Notifier.send` (see :class:`DeliveryStatus`).

    ``detail`` is shown to the channel's owner (the delivery's last error, or the
    reason a channel was disabled) and kept in storage, cut to 500 characters:
    say what the service answered (``"HTTP 503 from hooks.example.com"``), never
    a secret from the channel's config. ``retry_after`` (seconds) is only read
    with ``RETRY``: pass the service's ``Retry-After`` so the next attempt waits
    that long instead of the dispatcher's own backoff.
    """

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
    """Who is calling: a user (with a role) or a machine (an agent with an API key).

    What an authenticator returns decides what the caller may do:

    - ``kind="user"``: ``id`` must be the id of a stored user
      (:meth:`~lunasentri_core.storage.StateStore.get_user`), because every
      record the caller makes or sees is scoped to that id as its owner. Map
      an outside identity (an SSO subject, a proxy's user header) to a stored
      user; never invent an id. ``role`` is checked on every request:
      :attr:`Role.ADMIN <lunasentri_core.Role>` reaches the admin-only
      endpoints and sees every user's records, :attr:`Role.USER
      <lunasentri_core.Role>` only its own. Take it from the stored user, so a
      demoted admin loses its rights at once.
    - ``kind="machine"``: ``machine_id`` (and ``id``) must be a stored
      machine's id; such a caller may only use the agent endpoints (ingest,
      its configuration), never a user endpoint, whatever its ``role``.

    The core also uses ``agent`` (an unclaimed agent registering), ``system``
    (the server itself, the command line) and ``anonymous`` in the audit log;
    authenticators should return only ``user`` or ``machine``.

    ``via`` names the authenticator that accepted the caller; the hub sets it to
    the authenticator's ``name`` whatever the plugin put there, and the audit log
    records it with every entry the request causes.
    """

    kind: str
    """``user`` or ``machine`` for callers an authenticator accepted (see above)."""
    id: str
    """A stored user's id (``user``), or the machine's id (``machine``)."""
    role: Role = Role.USER
    """A user's role; admin-only endpoints check it. Ignored for machines."""
    machine_id: str | None = None
    """Set exactly for machines: the endpoints for agents require it."""
    via: str = ""
    """Name of the authenticator that recognised the caller (set by the hub)."""

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


@runtime_checkable
class Authenticator(Protocol):
    """Turns a request's credentials into a principal, or ``None`` if they are not its kind.

    The hub asks the authenticators in name order and the first principal wins,
    so return ``None`` quickly for credentials that are not yours (a token
    without your prefix, a missing header) and also for credentials of your
    kind that are wrong (unknown, revoked, expired): the server then answers
    401. Raise only for a broken dependency (the database down); never raise to
    refuse a caller. See :class:`Principal` for what ``kind``, ``id`` and
    ``role`` must hold, and :class:`~lunasentri_core.testing.AuthenticatorContract`
    for the tests every authenticator should pass.
    """

    name: ClassVar[str]
    settings_class: ClassVar[type[Any] | None]

    def authenticate(
        self, credentials: Credentials, state: StateStore
    ) -> Principal | Awaitable[Principal | None] | None: ...
