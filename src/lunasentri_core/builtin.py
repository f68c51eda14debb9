"""The core's own plugin: the API-key and session authenticators.

Registered through the same ``lunasentri`` entry point group as any third-party
plugin (as ``core``), so it shows in ``lunasentri plugins`` and can be replaced
or disabled the same way.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lunasentri_core.components import Authenticator, Credentials, Principal
from lunasentri_core.errors import NotFoundError
from lunasentri_core.hookspecs import hookimpl
from lunasentri_core.model import utcnow
from lunasentri_core.security import API_KEY_PREFIX, SESSION_PREFIX, hash_token
from lunasentri_core.storage.protocols import StateStore

SESSION_COOKIE = "lunasentri_session"


def bearer_token(credentials: Credentials) -> str | None:
    header = credentials.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class ApiKeyAuthenticator:
    """A machine's API key: ``Authorization: Bearer lsk_...`` or ``X-API-Key: lsk_...``."""

    name: ClassVar[str] = "api-key"
    settings_class: ClassVar[type[Any] | None] = None

    def authenticate(self, credentials: Credentials, state: StateStore) -> Principal | None:
        token = bearer_token(credentials) or credentials.headers.get("x-api-key")
        if not token or not token.startswith(API_KEY_PREFIX):
            return None
        key = state.find_api_key(hash_token(token))
        if key is None or not key.is_active(utcnow()):
            return None
        return Principal(
            kind="machine", id=key.machine_id, machine_id=key.machine_id, via=self.name
        )


class SessionAuthenticator:
    """A user's session token: ``Authorization: Bearer lss_...`` or the dashboard cookie."""

    name: ClassVar[str] = "session"
    settings_class: ClassVar[type[Any] | None] = None

    def authenticate(self, credentials: Credentials, state: StateStore) -> Principal | None:
        token = bearer_token(credentials) or credentials.cookies.get(SESSION_COOKIE)
        if not token or not token.startswith(SESSION_PREFIX):
            return None
        session = state.find_session(hash_token(token))
        if session is None or not session.is_active(utcnow()):
            return None
        try:
            user = state.get_user(session.user_id)
        except NotFoundError:
            return None
        return Principal(kind="user", id=user.id, role=user.role, via=self.name)


@hookimpl
def lunasentri_register_authenticators() -> list[type[Authenticator]]:
    return [ApiKeyAuthenticator, SessionAuthenticator]
