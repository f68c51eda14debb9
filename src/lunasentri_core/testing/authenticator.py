"""The contract every authenticator passes."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Literal

import attrs
import pytest

from lunasentri_core.components import Authenticator, Credentials, Principal
from lunasentri_core.errors import NotFoundError
from lunasentri_core.model import Role
from lunasentri_core.plugins import ComponentKind
from lunasentri_core.storage.protocols import StateStore
from lunasentri_core.testing.aio import resolve
from lunasentri_core.testing.constant_time import Comparisons, presented, watch_compare_digest
from lunasentri_core.testing.contract import (
    Contract,
    build_through_the_plugin_manager,
    check_name,
    check_settings_class,
)
from lunasentri_core.testing.secret_fields import name_looks_secret

SecretCheck = Literal["compare_digest", "digest-lookup", "none"]

MIN_PRESENTED_CHARS = 8
"""Parts of presented credentials this long or longer are searched for in logs and storage calls."""

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
    key, a bad password). Make ``valid_credentials`` those of a plain user
    (:attr:`Role.USER <lunasentri_core.Role>`) or of a machine, so the suite can
    tell a role the authenticator grants from the one the store holds.

    Besides accepting and refusing, the suite checks what the principal claims
    and how the secret is handled:

    - the principal is a ``user`` the state store holds, with that user's role,
      or a ``machine`` the store holds (role ``user``); once that user or
      machine is deleted, the same credentials give ``None``;
    - the presented secret is checked in constant time, as :attr:`secret_check`
      declares (without measuring time: see
      :func:`~lunasentri_core.testing.watch_compare_digest`);
    - no presented secret (the value of a header whose name looks secret, such
      as ``authorization`` or ``x-api-key``, and every cookie) appears in a log
      record or in the principal, for valid, invalid or foreign credentials.
    """

    __test__ = False

    secret_check: ClassVar[SecretCheck] = "compare_digest"
    """How the authenticator checks a presented secret, and what the suite asserts:

    - ``"compare_digest"`` (the default): it compares the secret, or a hash of
      it, with the expected one through :func:`hmac.compare_digest` (or
      ``secrets.compare_digest``): authenticating ``valid_credentials`` must
      call it, and must not compare a presented value with ``==``.
    - ``"digest-lookup"``: it hashes the secret (SHA-256 of a random token)
      and looks the hash up in storage, as the core's API keys and sessions
      do; no storage call may receive the presented secret itself, and no
      presented value is compared with ``==``.
    - ``"none"``: the credentials hold no secret (a header set by a trusted
      proxy); the test is skipped, saying so.
    """

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

    # ----------------------------------------------------------- what the principal claims

    def test_principal_is_a_stored_user_or_machine(
        self, authenticator: Authenticator, state: StateStore, valid_credentials: Credentials
    ) -> None:
        principal = self.authenticate(authenticator, valid_credentials, state)
        assert principal is not None, "valid credentials were not recognised"
        check_principal(principal, state)

    def test_no_principal_once_its_user_or_machine_is_deleted(
        self, authenticator: Authenticator, state: StateStore, valid_credentials: Credentials
    ) -> None:
        principal = self.authenticate(authenticator, valid_credentials, state)
        assert principal is not None, "valid credentials were not recognised"
        check_principal(principal, state)
        if principal.kind == "user":
            state.delete_user(principal.id)
        else:
            assert principal.machine_id is not None, "a machine principal needs a machine_id"
            state.delete_machine(principal.machine_id)
        again = self.authenticate(authenticator, valid_credentials, state)
        assert again is None, (
            f"the credentials still give a principal for {principal.kind} {principal.id!r} "
            "after it was deleted: look the caller up in the state store on every "
            "request (or drop what you remember when the store changes)"
        )

    # ----------------------------------------------------------- how the secret is handled

    def test_secret_is_checked_in_constant_time(
        self, authenticator: Authenticator, state: StateStore, valid_credentials: Credentials
    ) -> None:
        if self.secret_check == "none":
            pytest.skip("the credentials hold no secret (secret_check = 'none')")
        assert self.secret_check in {"compare_digest", "digest-lookup"}, (
            f"secret_check is {self.secret_check!r}: use 'compare_digest', "
            "'digest-lookup' or 'none'"
        )
        seen = Comparisons()
        watched = presented(valid_credentials, seen)
        secrets = presented_secrets(valid_credentials)
        storage = _RecordingState(state, secrets)
        with watch_compare_digest(seen):
            principal = self.authenticate(authenticator, watched, storage)
        assert principal is not None, "valid credentials were not recognised"
        assert not seen.equality, (
            f"a presented credential value was compared with == (against a "
            f"{len(seen.equality[0][1])}-character string): == stops at the first "
            "differing character, so a caller can guess a secret one character at a "
            "time; compare with hmac.compare_digest"
        )
        if self.secret_check == "compare_digest":
            assert seen.digest, (
                "authenticating valid credentials never called hmac.compare_digest (or "
                "secrets.compare_digest): compare the presented secret, or its hash, with "
                "it; if the authenticator looks the secret's hash up in storage instead, "
                "set secret_check = 'digest-lookup'"
            )
        else:
            assert not storage.leaks, (
                f"the state store's {storage.leaks[0]}() was given the presented secret "
                "itself (secret_check = 'digest-lookup'): hash the secret and look the "
                "hash up, so storage never holds or sees it"
            )

    @pytest.mark.parametrize("which", ["valid", "invalid", *_FOREIGN_IDS])
    def test_presented_secrets_stay_out_of_logs(
        self,
        authenticator: Authenticator,
        state: StateStore,
        valid_credentials: Credentials,
        invalid_credentials: Credentials,
        which: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        given = {
            "valid": valid_credentials,
            "invalid": invalid_credentials,
            **dict(zip(_FOREIGN_IDS, _FOREIGN, strict=True)),
        }
        credentials = given[which]
        with caplog.at_level(logging.DEBUG):
            principal = self.authenticate(authenticator, credentials, state)
        logged = caplog.text
        shown = "" if principal is None else repr(attrs.astuple(principal))
        for secret in presented_secrets(credentials):
            assert secret not in logged, f"the {which} credentials' secret was logged"
            assert secret not in shown, (
                f"the principal for the {which} credentials shows their secret"
            )


def check_principal(principal: Principal, state: StateStore) -> None:
    """Assert ``principal`` is a stored user with its stored role, or a stored machine.

    Usable on its own in an authenticator's tests, for credentials the contract's
    fixtures do not cover (an admin, a user of an outside identity provider).
    """
    if principal.kind == "user":
        try:
            user = state.get_user(principal.id)
        except NotFoundError:
            pytest.fail(
                f"the principal is user {principal.id!r}, which the state store does not "
                "hold: map every identity to a stored user's id, never invent one",
                pytrace=False,
            )
        assert principal.role is user.role, (
            f"the principal has role {principal.role!r}, but the stored user "
            f"{user.username!r} has role {user.role!r}: take the role from the stored "
            "user, never grant one the credentials do not carry"
        )
        assert principal.machine_id is None, "a user principal has no machine_id"
    elif principal.kind == "machine":
        assert principal.machine_id, "a machine principal needs its machine_id"
        assert principal.id == principal.machine_id, (
            f"a machine principal's id ({principal.id!r}) must be its machine_id "
            f"({principal.machine_id!r})"
        )
        try:
            state.get_machine(principal.machine_id)
        except NotFoundError:
            pytest.fail(
                f"the principal is machine {principal.machine_id!r}, which the state store "
                "does not hold",
                pytrace=False,
            )
        assert principal.role is Role.USER, (
            f"a machine principal has role {principal.role!r}: no machine's credentials "
            "grant more than Role.USER"
        )
    else:
        pytest.fail(
            f"the principal's kind is {principal.kind!r}: an authenticator returns "
            "'user' or 'machine' principals only",
            pytrace=False,
        )


def presented_secrets(credentials: Credentials) -> list[str]:
    """What of ``credentials`` is secret: the words (of 8 characters or more) of every
    cookie and of every header whose name looks secret (``authorization``,
    ``x-api-key``), without the scheme (``Bearer``)."""
    values = [v for name, v in credentials.headers.items() if name_looks_secret(name)]
    values += credentials.cookies.values()
    found = []
    for value in values:
        words = value.split()
        if len(words) > 1:
            words = words[1:]  # "Bearer <token>", "Basic <base64>"
        found += [word for word in words if len(word) >= MIN_PRESENTED_CHARS]
    return found


class _RecordingState:
    """A state store that notes the methods whose arguments hold one of ``secrets``."""

    def __init__(self, state: StateStore, secrets: list[str]) -> None:
        self._state = state
        self._secrets = secrets
        self.leaks: list[str] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._state, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            if any(_holds(argument, self._secrets) for argument in (*args, *kwargs.values())):
                self.leaks.append(name)
            return value(*args, **kwargs)

        return call


def _holds(value: Any, secrets: list[str]) -> bool:
    return any(secret in text for text in _texts(value) for secret in secrets)


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, bytes):
        yield value.decode("utf-8", "replace")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _texts(key)
            yield from _texts(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _texts(item)
    elif attrs.has(type(value)):
        yield from _texts(attrs.asdict(value, recurse=False))
