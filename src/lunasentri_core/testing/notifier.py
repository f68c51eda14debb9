"""The contract every notifier passes."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import pytest

from lunasentri_core.codec import decode, encode
from lunasentri_core.components import (
    DeliveryResult,
    DeliveryStatus,
    Notification,
    Notifier,
)
from lunasentri_core.testing.aio import resolve
from lunasentri_core.testing.builders import make_notification
from lunasentri_core.testing.contract import Contract, check_name, check_settings_class
from lunasentri_core.testing.secret_fields import check_secret_fields, secret_values


@attrs.frozen
class ReceivedMessage:
    """What the test receiver of a channel got, as the ``received`` fixture reports it.

    ``body`` is the delivered content as text (an HTTP body, a chat message);
    ``idempotency_key`` is the delivery id the channel carried (a header, a field),
    or ``None`` when the channel has no place for one.
    """

    body: str
    idempotency_key: str | None = None
    raw: Any = None
    """The receiver's own record, for failure messages."""


Received = Callable[[], Sequence[ReceivedMessage]]


class NotifierContract(Contract):
    """Tests every notifier must pass.

    Provide the fixtures ``notifier`` (the instance), ``channel`` (a channel config
    mapping that delivers to a loopback test receiver) and ``received`` (a callable
    returning the :class:`ReceivedMessage` list that receiver got so far).
    Optionally override ``failing_channel`` with a channel that cannot deliver
    (a closed port, a receiver answering 500).

    Besides delivering, the suite checks the channel configuration: the notifier
    class has a ``channel_class`` (an attrs class) that the ``channel`` fixture
    decodes into and encodes back from; fields whose name or type suggests a
    secret (token, password, key, ``SecretStr``, ...) are marked
    ``metadata={"secret": True}`` (or ``False`` when they are not one); the
    values of secret fields, marked or only looking so, appear neither in a
    result's ``detail`` nor in any log record, on success or failure; and
    ``send`` leaves the channel mapping as it was.
    """

    __test__ = False

    supports_idempotency_key: ClassVar[bool] = True
    """Whether the channel carries :attr:`Notification.id` to the receiver."""

    @pytest.fixture
    def notifier(self) -> Notifier:
        pytest.fail(f"{type(self).__name__} must define a 'notifier' fixture", pytrace=False)

    @pytest.fixture
    def channel(self) -> Mapping[str, Any]:
        pytest.fail(
            f"{type(self).__name__} must define a 'channel' fixture: the channel config "
            "that delivers to a loopback test receiver",
            pytrace=False,
        )

    @pytest.fixture
    def received(self) -> Received:
        pytest.fail(
            f"{type(self).__name__} must define a 'received' fixture: a callable returning "
            "the ReceivedMessage list of the test receiver",
            pytrace=False,
        )

    @pytest.fixture
    def failing_channel(self) -> Mapping[str, Any] | None:
        """A channel that cannot deliver; ``None`` skips the test that uses it."""
        return None

    def send(
        self, notifier: Notifier, channel: Mapping[str, Any], notification: Notification
    ) -> DeliveryResult:
        result = resolve(notifier.send(channel, notification), backend=self.async_backend)
        assert isinstance(result, DeliveryResult), (
            f"send() must return a DeliveryResult, not {type(result).__name__}"
        )
        return result

    def channel_class_of(self, notifier: Notifier) -> type[Any]:
        cls = getattr(type(notifier), "channel_class", None)
        assert cls is not None, (
            f"the notifier class {type(notifier).__name__} needs a 'channel_class': the "
            "attrs class a channel's config is decoded into"
        )
        assert attrs.has(cls), f"channel_class {cls!r} is not an attrs class"
        return cls

    def test_has_a_name_and_settings(self, notifier: Notifier) -> None:
        check_name(type(notifier), "notifier")
        check_settings_class(type(notifier), "notifier")
        assert isinstance(notifier, Notifier), "it does not implement the protocol"

    def test_channel_class_decodes_the_channel(
        self, notifier: Notifier, channel: Mapping[str, Any]
    ) -> None:
        cls = self.channel_class_of(notifier)
        # As the core does: decode the user's config, store the encoded instance.
        config = decode(dict(channel), cls, what="the 'channel' fixture")
        stored = encode(config)
        assert decode(stored, cls, what="the stored channel") == config, (
            "a decoded channel config does not survive encode() and decode() unchanged"
        )

    def test_secret_fields_are_marked(self, notifier: Notifier) -> None:
        check_secret_fields(self.channel_class_of(notifier), "channel field")

    def test_secrets_stay_out_of_details_and_logs(
        self,
        notifier: Notifier,
        channel: Mapping[str, Any],
        failing_channel: Mapping[str, Any] | None,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        cls = self.channel_class_of(notifier)
        channels = {"channel": channel, "failing_channel": failing_channel}
        for fixture, tried in channels.items():
            if tried is None:
                continue
            caplog.clear()
            with caplog.at_level(logging.DEBUG):
                result = self.send(notifier, tried, make_notification())
            logged = caplog.text
            for value in secret_values(cls, tried):
                assert value not in result.detail, (
                    f"the detail of a send to {fixture!r} shows a secret field's value"
                )
                assert value not in logged, f"a send to {fixture!r} logged a secret field's value"

    def test_send_leaves_the_channel_unchanged(
        self, notifier: Notifier, channel: Mapping[str, Any]
    ) -> None:
        before = copy.deepcopy(dict(channel))
        self.send(notifier, channel, make_notification())
        assert dict(channel) == before, "send() changed the channel mapping it was given"

    def test_delivers_one_message(
        self, notifier: Notifier, channel: Mapping[str, Any], received: Received
    ) -> None:
        notification = make_notification()
        result = self.send(notifier, channel, notification)
        assert result.status is DeliveryStatus.DELIVERED, f"delivery failed: {result}"
        messages = list(received())
        assert len(messages) == 1, f"the receiver got {len(messages)} messages, expected 1"
        (message,) = messages
        assert notification.title in message.body, "the message lacks the notification's title"
        for line in notification.text.splitlines():
            assert line in message.body, f"the message lacks the text line {line!r}"

    def test_idempotency_key(
        self, notifier: Notifier, channel: Mapping[str, Any], received: Received
    ) -> None:
        if not self.supports_idempotency_key:
            pytest.skip("channel lacks capability 'idempotency-key'")
        notification, other = make_notification(), make_notification()
        for sent in (notification, notification, other):
            assert self.send(notifier, channel, sent).status is DeliveryStatus.DELIVERED
        keys = [m.idempotency_key for m in received()]
        assert keys == [notification.id, notification.id, other.id], (
            "each delivery must carry its Notification.id, the same on a retry"
        )

    def test_undeliverable_channel_is_reported(
        self, notifier: Notifier, failing_channel: Mapping[str, Any] | None
    ) -> None:
        if failing_channel is None:
            pytest.skip("no 'failing_channel' fixture given")
        result = self.send(notifier, failing_channel, make_notification())
        assert result.status is not DeliveryStatus.DELIVERED, (
            "a delivery to a failing channel was reported as delivered"
        )
