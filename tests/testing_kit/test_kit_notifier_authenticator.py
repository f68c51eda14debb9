"""NotifierContract and AuthenticatorContract: pass for good components, catch broken ones."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest
from kit_doubles import (
    AsyncBearerKeyAuthenticator,
    AsyncMemoryNotifier,
    BearerKeyAuthenticator,
    Inboxes,
    MemoryNotifier,
    MemoryState,
)
from kit_support import NOTIFIER_BASE, KitRun, outcomes

from lunasentri_core import Credentials
from lunasentri_core.testing import (
    AuthenticatorContract,
    NotifierContract,
    ReceivedMessage,
    make_api_key,
    make_machine,
    make_notification,
    resolve,
)

pytest_plugins = ["pytester", "lunasentri_core.testing"]

SECRET = "ls_correct-horse-battery-staple"
REVOKED = "ls_an-old-key-that-was-revoked"


class TestMemoryNotifier(NotifierContract):
    @pytest.fixture
    def inboxes(self) -> Inboxes:
        return Inboxes()

    @pytest.fixture
    def notifier(self, inboxes: Inboxes) -> MemoryNotifier:
        return MemoryNotifier(inboxes)

    @pytest.fixture
    def channel(self) -> Mapping[str, Any]:
        return {"inbox": "ops"}

    @pytest.fixture
    def received(self, inboxes: Inboxes) -> Any:
        return lambda: inboxes.messages.get("ops", [])

    @pytest.fixture
    def failing_channel(self) -> Mapping[str, Any]:
        return {"inbox": "closed", "token": "tok-3f9a-inbox-secret"}


class TestAsyncMemoryNotifier(TestMemoryNotifier):
    @pytest.fixture
    def notifier(self, inboxes: Inboxes) -> MemoryNotifier:
        return AsyncMemoryNotifier(inboxes)


def _state() -> MemoryState:
    state = MemoryState(set())
    machine = state.add_machine(make_machine())
    from lunasentri_core.testing import hash_secret

    state.add_api_key(make_api_key(machine.id, key_hash=hash_secret(SECRET)))
    revoked = make_api_key(machine.id, key_hash=hash_secret(REVOKED))
    state.add_api_key(revoked)
    state.revoke_api_key(revoked.id, revoked.created_at + timedelta(seconds=1))
    return state


class TestBearerKeyAuthenticator(AuthenticatorContract):
    secret_check = "digest-lookup"

    @pytest.fixture
    def authenticator(self) -> BearerKeyAuthenticator:
        return BearerKeyAuthenticator()

    @pytest.fixture
    def state(self) -> MemoryState:
        return _state()

    @pytest.fixture
    def valid_credentials(self) -> Credentials:
        return Credentials(headers={"authorization": f"Bearer {SECRET}"})

    @pytest.fixture
    def invalid_credentials(self) -> Credentials:
        return Credentials(headers={"authorization": f"Bearer {REVOKED}"})


class TestAsyncBearerKeyAuthenticator(TestBearerKeyAuthenticator):
    @pytest.fixture
    def authenticator(self) -> BearerKeyAuthenticator:
        return AsyncBearerKeyAuthenticator()


NOTIFIER_MODULE = (
    NOTIFIER_BASE
    + """
    @pytest.fixture
    def failing_channel(self):
        return {"inbox": "closed"}

class TestKeyless(Base):
    @pytest.fixture
    def notifier(self, inboxes):
        return kit_doubles.KeylessNotifier(inboxes)

class TestKeylessDeclared(TestKeyless):
    supports_idempotency_key = False

class TestTitleOnly(Base):
    @pytest.fixture
    def notifier(self, inboxes):
        return kit_doubles.TitleOnlyNotifier(inboxes)

class TestOptimistic(Base):
    @pytest.fixture
    def notifier(self, inboxes):
        return kit_doubles.OptimisticNotifier(inboxes)

class TestWithoutFailingChannel(TestOptimistic):
    @pytest.fixture
    def failing_channel(self):
        return None

class TestChannelUnaware(Base):
    @pytest.fixture
    def notifier(self, inboxes):
        return kit_doubles.ChannelUnawareNotifier(inboxes)

class TestUnmarkedSecret(Base):
    @pytest.fixture
    def notifier(self, inboxes):
        return kit_doubles.UnmarkedSecretNotifier(inboxes)

class TestLeaky(Base):
    @pytest.fixture
    def notifier(self, inboxes):
        return kit_doubles.LeakyNotifier(inboxes)

    @pytest.fixture
    def failing_channel(self):
        return {"inbox": "closed", "token": "tok-3f9a-inbox-secret"}

class TestMutating(Base):
    @pytest.fixture
    def notifier(self, inboxes):
        return kit_doubles.MutatingNotifier(inboxes)
"""
)


def test_the_notifier_suite_catches_broken_notifiers(kit_run: KitRun) -> None:
    result = kit_run.run(NOTIFIER_MODULE)
    assert outcomes(result, "TestKeyless")["failed"] == {"test_idempotency_key"}
    # The memory notifiers' send is a plain function: the event loop check skips.
    plain = "test_send_does_not_block_the_event_loop"
    assert outcomes(result, "TestKeylessDeclared")["skipped"] == {"test_idempotency_key", plain}
    assert outcomes(result, "TestKeylessDeclared")["failed"] == set()
    assert outcomes(result, "TestTitleOnly")["failed"] == {"test_delivers_one_message"}
    assert outcomes(result, "TestOptimistic")["failed"] == {
        "test_undeliverable_channel_is_reported"
    }
    assert outcomes(result, "TestWithoutFailingChannel")["skipped"] == {
        "test_undeliverable_channel_is_reported",
        plain,
    }
    assert outcomes(result, "TestChannelUnaware")["failed"] == {
        "test_channel_class_decodes_the_channel",
        "test_channel_class_refuses_invalid_config",
        "test_secret_fields_are_marked",
        "test_secrets_stay_out_of_details_and_logs",
    }
    assert outcomes(result, "TestUnmarkedSecret")["failed"] == {"test_secret_fields_are_marked"}
    assert outcomes(result, "TestLeaky")["failed"] == {"test_secrets_stay_out_of_details_and_logs"}
    assert outcomes(result, "TestMutating")["failed"] == {"test_send_leaves_the_channel_unchanged"}
    result.stdout.fnmatch_lines(
        [
            "*each delivery must carry its Notification.id*",
            "*the message lacks the text line 'Line one of the test notification.'*",
            "*channel lacks capability 'idempotency-key'",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*the notifier class ChannelUnawareNotifier needs a 'channel_class'*",
            "*channel field 'api_token' looks like a secret*",
            "*the detail of a send to 'failing_channel' shows a secret field's value*",
            "*send() changed the channel mapping it was given*",
        ],
        consecutive=False,
    )


def test_the_authenticator_suite_catches_a_careless_authenticator(kit_run: KitRun) -> None:
    result = kit_run.run(
        """
        import pytest
        import kit_doubles
        from lunasentri_core import Credentials
        from lunasentri_core.testing import AuthenticatorContract, hash_secret, make_api_key

        class TestCareless(AuthenticatorContract):
            @pytest.fixture
            def authenticator(self):
                return kit_doubles.CarelessAuthenticator()

            @pytest.fixture
            def state(self):
                state = kit_doubles.MemoryState(set())
                state.add_api_key(make_api_key("m1", key_hash=hash_secret("good")))
                return state

            @pytest.fixture
            def valid_credentials(self):
                return Credentials(headers={"authorization": "Bearer good"})

            @pytest.fixture
            def invalid_credentials(self):
                return Credentials(headers={"authorization": "Bearer bad"})
        """
    )
    found = outcomes(result)
    assert "test_valid_credentials_give_a_principal" in found["failed"]
    assert "test_other_credentials_give_none[empty]" in found["failed"]
    assert "test_invalid_credentials_give_none" in found["passed"]
    result.stdout.fnmatch_lines(["*Principal.via is '', expected the authenticator's name*"])


def test_received_message_carries_the_delivery(kit_run: KitRun) -> None:
    inboxes = Inboxes()
    notification = make_notification()
    result = resolve(AsyncMemoryNotifier(inboxes).send({"inbox": "x"}, notification))
    assert result.status == "delivered"
    messages: Sequence[ReceivedMessage] = inboxes.messages["x"]
    assert [m.idempotency_key for m in messages] == [notification.id]
