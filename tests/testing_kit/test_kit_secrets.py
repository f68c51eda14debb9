"""What the authenticator and notifier suites check about principals and secrets.

Each broken double fails exactly the tests about its flaw, with a message that
says what to do; the good ones pass everything.
"""

from __future__ import annotations

import hmac
import re
import secrets
import threading
from typing import Annotated, Any, NewType

import attrs
import pytest
from kit_doubles import MemoryState
from kit_secret_doubles import TOKEN
from kit_support import NOTIFIER_BASE, KitRun, outcomes

from lunasentri_core import Credentials, Principal
from lunasentri_core.model import Role
from lunasentri_core.testing import (
    Comparisons,
    check_principal,
    check_secret_fields,
    looks_secret,
    make_machine,
    make_user,
    presented,
    presented_secrets,
    secret_fields,
    secret_values,
    watch_compare_digest,
)
from lunasentri_core.testing.secret_fields import name_looks_secret

pytest_plugins = ["pytester", "lunasentri_core.testing"]

AUTHENTICATORS = """
import pytest
import kit_doubles
import kit_secret_doubles as doubles
from lunasentri_core import Credentials
from lunasentri_core.testing import AuthenticatorContract, hash_secret, make_api_key, make_machine
from lunasentri_core.testing import make_user


class StaticToken(AuthenticatorContract):
    __test__ = False
    component = doubles.StaticTokenAuthenticator

    @pytest.fixture
    def authenticator(self):
        return self.component(doubles.StaticTokenSettings(token=doubles.TOKEN))

    @pytest.fixture
    def state(self):
        state = kit_doubles.MemoryState(set())
        state.add_user(make_user(username=doubles.USERNAME), "unused")
        return state

    @pytest.fixture
    def valid_credentials(self):
        return Credentials(headers={"x-auth-token": doubles.TOKEN})

    @pytest.fixture
    def invalid_credentials(self):
        return Credentials(headers={"x-auth-token": doubles.TOKEN[:-1] + "x"})


class TestGood(StaticToken):
    pass

class TestInventing(StaticToken):
    component = doubles.InventingAuthenticator

class TestPromoting(StaticToken):
    component = doubles.PromotingAuthenticator

class TestRemembering(StaticToken):
    component = doubles.RememberingAuthenticator

class TestEquality(StaticToken):
    component = doubles.EqualityAuthenticator

class TestStrippingEquality(StaticToken):
    component = doubles.StrippingEqualityAuthenticator

class TestLogging(StaticToken):
    component = doubles.LoggingAuthenticator

class TestDigestLookupUndeclared(AuthenticatorContract):
    SECRET = "ls_correct-horse-battery-staple"

    @pytest.fixture
    def authenticator(self):
        return kit_doubles.BearerKeyAuthenticator()

    @pytest.fixture
    def state(self):
        state = kit_doubles.MemoryState(set())
        machine = state.add_machine(make_machine())
        state.add_api_key(make_api_key(machine.id, key_hash=self.key_hash(self.SECRET)))
        return state

    def key_hash(self, secret):
        return hash_secret(secret)

    @pytest.fixture
    def valid_credentials(self):
        return Credentials(headers={"authorization": f"Bearer {self.SECRET}"})

    @pytest.fixture
    def invalid_credentials(self):
        return Credentials(headers={"authorization": "Bearer ls_not-the-stored-key"})

class TestDigestLookup(TestDigestLookupUndeclared):
    secret_check = "digest-lookup"

class TestRawLookup(TestDigestLookup):
    @pytest.fixture
    def authenticator(self):
        return doubles.RawKeyAuthenticator()

    def key_hash(self, secret):
        return secret

class TestNoSecret(TestGood):
    secret_check = "none"

class TestUnknownSecretCheck(TestGood):
    secret_check = "timing-safe"
"""


def test_the_authenticator_suite_catches_what_principals_claim(kit_run: KitRun) -> None:
    result = kit_run.run(AUTHENTICATORS)
    deletion = "test_no_principal_once_its_user_or_machine_is_deleted"
    stored = "test_principal_is_a_stored_user_or_machine"
    constant = "test_secret_is_checked_in_constant_time"
    for good in ("TestGood", "TestDigestLookup"):
        assert outcomes(result, good)["failed"] == set(), good
        assert outcomes(result, good)["skipped"] == set(), good
    assert outcomes(result, "TestInventing")["failed"] == {stored, deletion}
    assert outcomes(result, "TestPromoting")["failed"] == {stored, deletion}
    assert outcomes(result, "TestRemembering")["failed"] == {deletion}
    assert outcomes(result, "TestEquality")["failed"] == {constant}
    assert outcomes(result, "TestStrippingEquality")["failed"] == {constant}
    assert outcomes(result, "TestLogging")["failed"] == {
        "test_presented_secrets_stay_out_of_logs[valid]",
        "test_presented_secrets_stay_out_of_logs[invalid]",
    }
    assert outcomes(result, "TestDigestLookupUndeclared")["failed"] == {constant}
    assert outcomes(result, "TestRawLookup")["failed"] == {constant}
    assert outcomes(result, "TestNoSecret")["skipped"] == {constant}
    assert outcomes(result, "TestNoSecret")["failed"] == set()
    assert outcomes(result, "TestUnknownSecretCheck")["failed"] == {constant}
    result.stdout.fnmatch_lines(
        [
            "*the principal is user 'alice', which the state store does not hold*",
            "*the principal has role <Role.ADMIN: 'admin'>, but the stored user 'alice' "
            "has role <Role.USER: 'user'>*",
            "*the credentials still give a principal for user * after it was deleted*",
            "*a presented credential value was compared with == (against a 24-character*",
            "*never called hmac.compare_digest*",
            "*the valid credentials' secret was logged*",
            "*never called hmac.compare_digest*set secret_check = 'digest-lookup'*",
            "*the state store's find_api_key() was given the presented secret itself*",
            "*the credentials hold no secret (secret_check = 'none')*",
            "*secret_check is 'timing-safe': use 'compare_digest', 'digest-lookup' or 'none'*",
        ],
        consecutive=False,
    )


NOTIFIERS = (
    NOTIFIER_BASE
    + """
import kit_secret_doubles as doubles


class TestPasswordLeaking(Base):
    @pytest.fixture
    def notifier(self, inboxes):
        return doubles.PasswordLeakingNotifier(inboxes)

    @pytest.fixture
    def failing_channel(self):
        return {"inbox": "closed", "password": "hunter2-but-longer"}


class TestTypedSecretLeaking(Base):
    @pytest.fixture
    def notifier(self, inboxes):
        return doubles.TypedSecretLeakingNotifier(inboxes)

    @pytest.fixture
    def failing_channel(self):
        return {"inbox": "closed", "signing": "whsec-5b0c2f1e"}


class TestDeclared(Base):
    @pytest.fixture
    def notifier(self, inboxes):
        return doubles.DeclaredNotifier(inboxes)

    @pytest.fixture
    def failing_channel(self):
        return {"inbox": "closed", "idempotency_key": "order-20261207"}
"""
)


def test_the_notifier_suite_searches_unmarked_secrets(kit_run: KitRun) -> None:
    result = kit_run.run(NOTIFIERS)
    marked = "test_secret_fields_are_marked"
    leak = "test_secrets_stay_out_of_details_and_logs"
    assert outcomes(result, "TestPasswordLeaking")["failed"] == {marked, leak}
    assert outcomes(result, "TestTypedSecretLeaking")["failed"] == {marked, leak}
    assert outcomes(result, "TestDeclared")["failed"] == set()
    result.stdout.fnmatch_lines(
        [
            "*channel field 'password' looks like a secret*",
            "*the detail of a send to 'failing_channel' shows a secret field's value*",
            "*channel field 'signing' looks like a secret*",
        ],
        consecutive=False,
    )


# ------------------------------------------------------------------ the helpers themselves


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("token", True),
        ("bot_token", True),
        ("botToken", True),
        ("clientSecret", True),
        ("password", True),
        ("db_passwd", True),
        ("api_key", True),
        ("apikey", True),
        ("private_key", True),
        ("basic_auth", True),
        ("credentials", True),
        ("passphrase", True),
        ("key_file", False),
        ("token_url", False),
        ("password_file", False),
        ("api_key_prefix", False),
        ("keyboard", False),
        ("monkey", False),
        ("author", False),
        ("inbox", False),
        ("url", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert name_looks_secret(name) is secret


class SecretStr:
    """Shaped like pydantic's: the value behind a method, a masked repr."""

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value


Hidden = NewType("Hidden", str)
HiddenSecret = NewType("HiddenSecret", Hidden)


@attrs.define
class Mixed:
    inbox: str = ""
    plain: SecretStr | None = None
    wrapped: HiddenSecret = HiddenSecret(Hidden(""))
    annotated: Annotated[str, SecretStr] = ""
    key: str = attrs.field(default="", metadata={"secret": False})
    marked: str = attrs.field(default="", metadata={"secret": True})
    nested: dict[str, str] = attrs.field(factory=dict, metadata={"secret": True})


def test_secret_types_and_marks() -> None:
    fields = {field.name: field for field in attrs.fields(Mixed)}
    assert looks_secret(Mixed, fields["plain"])
    assert looks_secret(Mixed, fields["wrapped"])
    assert looks_secret(Mixed, fields["annotated"])
    assert looks_secret(Mixed, fields["key"])
    assert not looks_secret(Mixed, fields["inbox"])
    assert secret_fields(Mixed) == ["plain", "wrapped", "annotated", "marked", "nested"]
    values = {
        "inbox": "ops-inbox",
        "plain": SecretStr("pydantic-like"),
        "wrapped": "wrapped-value",
        "key": "not-a-secret-key",
        "marked": "short",
        "nested": {"x": "nested-value", "y": "tiny"},
    }
    assert secret_values(Mixed, values) == ["pydantic-like", "wrapped-value", "nested-value"]
    with pytest.raises(AssertionError, match="field 'plain' looks like a secret"):
        check_secret_fields(Mixed)


def test_a_bad_mark_is_refused() -> None:
    @attrs.define
    class Odd:
        inbox: str = attrs.field(default="", metadata={"secret": "yes"})

    with pytest.raises(AssertionError, match="metadata 'secret' must be True or False"):
        check_secret_fields(Odd, "channel field")


def test_watch_compare_digest_sees_every_binding_and_thread() -> None:
    from lunasentri_core import security

    original = hmac.compare_digest
    with watch_compare_digest() as seen:
        assert hmac.compare_digest(b"a", b"a")
        assert not secrets.compare_digest("a", "b")
        assert security.tokens_match("x", security.hash_token("x"))
        worker = threading.Thread(target=hmac.compare_digest, args=(b"t", b"t"))
        worker.start()
        worker.join()
    # Other threads of the process could add calls of their own: look for these.
    assert {(b"a", b"a"), ("a", "b"), (b"t", b"t")} <= set(seen.digest)
    assert (security.hash_token("x"), security.hash_token("x")) in seen.digest
    assert hmac.compare_digest is original
    assert secrets.compare_digest is original
    with watch_compare_digest() as later:
        pass
    assert later.digest == []


def test_presented_values_record_secret_sized_comparisons() -> None:
    seen = Comparisons()
    credentials = presented(
        Credentials(headers={"authorization": f"Bearer {TOKEN}", "x-api-key": TOKEN}), seen
    )
    key = credentials.headers["x-api-key"]
    assert key != "short"
    assert key == TOKEN
    assert not TOKEN != key  # noqa: SIM202, SIM300 - the reflected comparison is seen too
    assert key.strip() == TOKEN  # a new, plain string: not seen
    assert hash(key) == hash(TOKEN)
    assert seen.equality == [(TOKEN, TOKEN), (TOKEN, TOKEN)]
    assert presented_secrets(credentials) == [TOKEN, TOKEN]
    assert presented_secrets(Credentials(headers={"user-agent": "curl/8.5.0 long-value"})) == []
    assert presented_secrets(Credentials(cookies={"session": "cookie-value-1"})) == [
        "cookie-value-1"
    ]


def _principal_state() -> tuple[MemoryState, str, str]:
    state = MemoryState(set())
    user = state.add_user(make_user(role=Role.USER), "unused")
    machine = state.add_machine(make_machine())
    return state, user.id, machine.id


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"kind": "user", "id": "nobody"}, "user 'nobody', which the state store does not hold"),
        ({"kind": "user", "role": Role.ADMIN}, "has role <Role.ADMIN: 'admin'>, but the stored"),
        ({"kind": "user", "machine_id": "m"}, "a user principal has no machine_id"),
        ({"kind": "machine", "role": Role.ADMIN}, "no machine's credentials grant more"),
        ({"kind": "machine", "machine_id": "gone", "id": "gone"}, "machine 'gone', which"),
        ({"kind": "machine", "id": "other"}, "a machine principal's id ('other') must be"),
        ({"kind": "machine", "machine_id": None}, "a machine principal needs its machine_id"),
        ({"kind": "agent"}, "the principal's kind is 'agent'"),
    ],
)
def test_check_principal_refuses_what_the_store_does_not_grant(
    claims: dict[str, Any], message: str
) -> None:
    state, user_id, machine_id = _principal_state()
    if claims["kind"] == "user":
        fields: dict[str, Any] = {"id": user_id}
    else:
        fields = {"id": machine_id, "machine_id": machine_id}
    principal = Principal(**{**fields, **claims})
    with pytest.raises((AssertionError, pytest.fail.Exception), match=re.escape(message)):
        check_principal(principal, state)


def test_check_principal_accepts_stored_callers() -> None:
    state, user_id, machine_id = _principal_state()
    check_principal(Principal("user", user_id), state)
    check_principal(Principal("machine", machine_id, machine_id=machine_id), state)
