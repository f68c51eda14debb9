"""Authenticators and notifiers that handle secrets well, and ones that do not.

A good static-token authenticator and one broken variant for each thing the
authenticator contract checks; notifiers whose channel holds a secret the
channel class does not mark, and one that marks a secret-looking field as not one.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from typing import Any, ClassVar, NewType

import attrs
from kit_doubles import MemoryNotifier

from lunasentri_core import Credentials, DeliveryResult, DeliveryStatus, Notification, Principal
from lunasentri_core.model import Role
from lunasentri_core.storage import StateStore

log = logging.getLogger(__name__)

TOKEN = "tok_9f8e7d6c5b4a39281706"
"""The static token the authenticators accept (in ``x-auth-token``)."""
USERNAME = "alice"


@attrs.frozen
class StaticTokenSettings:
    token: str = attrs.field(default="", metadata={"secret": True})
    username: str = USERNAME


class StaticTokenAuthenticator:
    """``x-auth-token: <token>`` for one stored user, compared in constant time."""

    name: ClassVar[str] = "static-token"
    settings_class: ClassVar[type[Any] | None] = StaticTokenSettings

    def __init__(self, settings: StaticTokenSettings) -> None:
        self.settings = settings

    def authenticate(self, credentials: Credentials, state: StateStore) -> Principal | None:
        presented = credentials.headers.get("x-auth-token")
        if not presented or not self.settings.token or not self.matches(presented):
            return None
        return self.principal(state)

    def matches(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self.settings.token.encode())

    def principal(self, state: StateStore) -> Principal | None:
        user = state.find_user(self.settings.username)
        if user is None:
            return None
        return Principal("user", user.id, role=user.role, via=self.name)


class InventingAuthenticator(StaticTokenAuthenticator):
    """Returns the configured user name as the principal's id, without looking it up."""

    name: ClassVar[str] = "inventing"

    def principal(self, state: StateStore) -> Principal | None:
        return Principal("user", self.settings.username, via=self.name)


class PromotingAuthenticator(StaticTokenAuthenticator):
    """Finds the stored user, but makes every caller an admin."""

    name: ClassVar[str] = "promoting"

    def principal(self, state: StateStore) -> Principal | None:
        found = super().principal(state)
        return None if found is None else attrs.evolve(found, role=Role.ADMIN)


class RememberingAuthenticator(StaticTokenAuthenticator):
    """Remembers the principal of a token for good, so a deleted user stays signed in."""

    name: ClassVar[str] = "remembering"

    def __init__(self, settings: StaticTokenSettings) -> None:
        super().__init__(settings)
        self._known: dict[str, Principal] = {}

    def authenticate(self, credentials: Credentials, state: StateStore) -> Principal | None:
        presented = str(credentials.headers.get("x-auth-token", ""))
        if presented in self._known:
            return self._known[presented]
        found = super().authenticate(credentials, state)
        if found is not None:
            self._known[presented] = found
        return found


class EqualityAuthenticator(StaticTokenAuthenticator):
    """Compares the header as it came with ``==``."""

    name: ClassVar[str] = "equality"

    def matches(self, presented: str) -> bool:
        return presented == self.settings.token


class StrippingEqualityAuthenticator(StaticTokenAuthenticator):
    """Compares the stripped header with ``==`` (a new string: only the missing
    ``compare_digest`` call shows it)."""

    name: ClassVar[str] = "stripping-equality"

    def matches(self, presented: str) -> bool:
        return presented.strip() == self.settings.token


class LoggingAuthenticator(StaticTokenAuthenticator):
    """Logs the token it was given."""

    name: ClassVar[str] = "logging"

    def matches(self, presented: str) -> bool:
        log.debug("checking token %s", presented)
        return super().matches(presented)


class RawKeyAuthenticator:
    """Looks the bearer token itself up as a key hash: storage sees (and holds) the secret."""

    name: ClassVar[str] = "raw-key"
    settings_class: ClassVar[type[Any] | None] = None

    def authenticate(self, credentials: Credentials, state: StateStore) -> Principal | None:
        scheme, _, secret = credentials.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret:
            return None
        key = state.find_api_key(secret)
        if key is None or key.revoked_at is not None:
            return None
        return Principal("machine", key.machine_id, machine_id=key.machine_id, via=self.name)


# ---------------------------------------------------------------------------- notifiers


@attrs.frozen
class PasswordChannel:
    """An inbox with a password the class forgets to mark secret."""

    inbox: str
    password: str = ""


SigningSecret = NewType("SigningSecret", str)


@attrs.frozen
class TypedSecretChannel:
    """An inbox with a key whose name says nothing, but whose type does."""

    inbox: str
    signing: SigningSecret = SigningSecret("")


@attrs.frozen
class DeclaredChannel:
    """An inbox with a field that only looks secret, declared as not one."""

    inbox: str
    idempotency_key: str = attrs.field(default="", metadata={"secret": False})


class _EchoingNotifier(MemoryNotifier):
    """Puts every channel field in the detail of a failed delivery."""

    def send(self, channel: Mapping[str, Any], notification: Notification) -> DeliveryResult:
        if channel["inbox"] == "closed":
            fields = ", ".join(f"{key}={value}" for key, value in sorted(channel.items()))
            return DeliveryResult(DeliveryStatus.RETRY, f"inbox closed ({fields})")
        return super().send(channel, notification)


class PasswordLeakingNotifier(_EchoingNotifier):
    name: ClassVar[str] = "password-leaking"
    channel_class: ClassVar[type[Any] | None] = PasswordChannel


class TypedSecretLeakingNotifier(_EchoingNotifier):
    name: ClassVar[str] = "typed-secret-leaking"
    channel_class: ClassVar[type[Any] | None] = TypedSecretChannel


class DeclaredNotifier(_EchoingNotifier):
    name: ClassVar[str] = "declared"
    channel_class: ClassVar[type[Any] | None] = DeclaredChannel
