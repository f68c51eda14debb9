"""The contract every authenticator passes."""

from __future__ import annotations

import pytest

from lunasentri_core.components import Authenticator, Credentials, Principal
from lunasentri_core.plugins import ComponentKind
from lunasentri_core.storage.protocols import StateStore
from lunasentri_core.testing.aio import resolve
from lunasentri_core.testing.contract import (
    Contract,
    build_through_the_plugin_manager,
    check_name,
    check_settings_class,
)

_FOREIGN = (
    Credentials(),
    Credentials(headers={"authorization": "Bearer not-a-real-token"}),
    Credentials(headers={"authorization": "Basic !!!not-base64"}),
    Credentials(headers={"x-api-key": ""}, cookies={"session": "garbage"}),
    Credentials(headers={"authorization": "Bearer " + "\u00ff" * 300}, client="127.0.0.1"),
)
"""Credentials no authenticator may accept, and none may raise on."""
_FOREIGN_IDS = ["empty", "unknown-bearer", "malformed-basic", "garbage-cookie", "oversized"]


class AuthenticatorContract(Contract):
    """Tests every authenticator must pass.

    Provide the fixtures ``authenticator`` (the instance), ``state`` (a
    :class:`~lunasentri_core.storage.StateStore` holding whatever the credentials
    refer to), ``valid_credentials`` (must authenticate) and
    ``invalid_credentials`` (of the authenticator's kind, but wrong: a revoked
    key, a bad password).
    """

    __test__ = False

    @pytest.fixture
    def authenticator(self) -> Authenticator:
        pytest.fail(f"{type(self).__name__} must define an 'authenticator' fixture", pytrace=False)

    @pytest.fixture
    def state(self) -> StateStore:
        pytest.fail(f"{type(self).__name__} must define a 'state' fixture", pytrace=False)

    @pytest.fixture
    def valid_credentials(self) -> Credentials:
        pytest.fail(f"{type(self).__name__} must define 'valid_credentials'", pytrace=False)

    @pytest.fixture
    def invalid_credentials(self) -> Credentials:
        pytest.fail(f"{type(self).__name__} must define 'invalid_credentials'", pytrace=False)

    def authenticate(
        self, authenticator: Authenticator, credentials: Credentials, state: StateStore
    ) -> Principal | None:
        result = resolve(authenticator.authenticate(credentials, state), backend=self.async_backend)
        assert result is None or isinstance(result, Principal), (
            f"authenticate() must return a Principal or None, not {type(result).__name__}"
        )
        return result

    def test_has_a_name_and_settings(self, authenticator: Authenticator) -> None:
        check_name(type(authenticator), "authenticator")
        check_settings_class(type(authenticator), "authenticator")
        assert isinstance(authenticator, Authenticator), "it does not implement the protocol"

    def test_registers_through_a_hook(self, authenticator: Authenticator) -> None:
        build_through_the_plugin_manager(type(authenticator), ComponentKind.AUTHENTICATOR)

    def test_valid_credentials_give_a_principal(
        self, authenticator: Authenticator, state: StateStore, valid_credentials: Credentials
    ) -> None:
        principal = self.authenticate(authenticator, valid_credentials, state)
        assert principal is not None, "valid credentials were not recognised"
        assert principal.via == type(authenticator).name, (
            f"Principal.via is {principal.via!r}, expected the authenticator's name"
        )
        assert principal.kind, "the principal needs a kind"
        assert principal.id, "the principal needs an id"

    def test_invalid_credentials_give_none(
        self, authenticator: Authenticator, state: StateStore, invalid_credentials: Credentials
    ) -> None:
        assert self.authenticate(authenticator, invalid_credentials, state) is None

    @pytest.mark.parametrize("credentials", _FOREIGN, ids=_FOREIGN_IDS)
    def test_other_credentials_give_none(
        self, authenticator: Authenticator, state: StateStore, credentials: Credentials
    ) -> None:
        assert self.authenticate(authenticator, credentials, state) is None
