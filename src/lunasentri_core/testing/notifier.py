"""The contract every notifier passes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import pytest

from lunasentri_core.components import (
    DeliveryResult,
    DeliveryStatus,
    Notification,
    Notifier,
)
from lunasentri_core.testing.aio import resolve
from lunasentri_core.testing.builders import make_notification
from lunasentri_core.testing.contract import Contract, check_name, check_settings_class


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

    def test_has_a_name_and_settings(self, notifier: Notifier) -> None:
        check_name(type(notifier), "notifier")
        check_settings_class(type(notifier), "notifier")
        assert isinstance(notifier, Notifier), "it does not implement the protocol"

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
