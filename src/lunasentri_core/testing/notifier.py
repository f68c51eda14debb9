"""The contract every notifier passes."""

from __future__ import annotations

import contextlib
import copy
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, cast
from urllib.parse import urlsplit, urlunsplit

import attrs
import pytest

from lunasentri_core.codec import decode, encode
from lunasentri_core.components import (
    DeliveryResult,
    DeliveryStatus,
    Notification,
    Notifier,
)
from lunasentri_core.plugins import ComponentKind
from lunasentri_core.testing.aio import LOOP_LAG_LIMIT, is_async, resolve
from lunasentri_core.testing.builders import make_notification
from lunasentri_core.testing.contract import (
    Contract,
    build_through_the_plugin_manager,
    check_does_not_block_the_loop,
    check_name,
    check_settings_class,
)
from lunasentri_core.testing.secret_fields import check_secret_fields, secret_values
from lunasentri_core.testing.settings import check_refuses_invalid_configs


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


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback TCP port held bound but not listening: connections to it are refused.

    Holding it (rather than closing a probe socket) keeps another process from
    taking the port while the test runs.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def refused_channel(channel: Mapping[str, Any], port: int) -> dict[str, Any] | None:
    """``channel`` with each URL among its values sent to ``127.0.0.1:port``, or ``None``.

    Scheme, path and query are kept; the host, port and any user info are
    replaced. ``None`` when no top-level value is a URL (nothing to redirect).
    """
    changed = dict(channel)
    for key, value in channel.items():
        if not isinstance(value, str):
            continue
        try:
            parts = urlsplit(value)
        except ValueError:
            continue
        if parts.scheme and parts.hostname:
            changed[key] = urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))
    return changed if changed != dict(channel) else None


class NotifierContract(Contract):
    """Tests every notifier must pass.

    Provide the fixtures ``notifier`` (the instance), ``channel`` (a channel config
    mapping that delivers to a loopback test receiver) and ``received`` (a callable
    returning the :class:`ReceivedMessage` list that receiver got so far).
    ``failing_channel`` is a channel that cannot deliver: derived from
    ``channel`` (its URLs sent to a loopback port that refuses connections), or
    your own override (a receiver answering 500, a chat that blocked the bot).

    Besides delivering, the suite checks the channel configuration: the notifier
    class has a ``channel_class`` (an attrs class) that the ``channel`` fixture
    decodes into and encodes back from; fields whose name or type suggests a
    secret (token, password, key, ``SecretStr``, ...) are marked
    ``metadata={"secret": True}`` (or ``False`` when they are not one); the
    values of secret fields, marked or only looking so, appear neither in a
    result's ``detail`` nor in any log record, on success or failure; and
    ``send`` leaves the channel mapping as it was. The channel class must refuse
    wrong configs derived from its fields (unknown, missing, wrong types, empty
    strings) with an error naming the field, and the plugin manager must build
    the notifier with default settings.
    """

    __test__ = False

    supports_idempotency_key: ClassVar[bool] = True
    """Whether the channel carries :attr:`Notification.id` to the receiver."""

    max_loop_lag: ClassVar[float] = LOOP_LAG_LIMIT
    """Seconds a coroutine ``send`` may hold the event loop at one stretch."""

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
    def failing_channel(self, channel: Mapping[str, Any]) -> Iterator[Mapping[str, Any] | None]:
        """A channel that cannot deliver; ``None`` skips the test that uses it.

        By default it is derived from ``channel``: every URL in it points at a
        loopback port that refuses connections (see :func:`refused_channel`).
        A channel holding no URL gives ``None``; override the fixture then (a
        receiver answering 500, a chat that blocked the bot).
        """
        with refusing_port() as port:
            yield refused_channel(channel, port)

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

    def test_registers_through_a_hook(self, notifier: Notifier) -> None:
        build_through_the_plugin_manager(type(notifier), ComponentKind.NOTIFIER)

    def test_channel_class_refuses_invalid_config(
        self, notifier: Notifier, channel: Mapping[str, Any]
    ) -> None:
        """Wrong configs derived from the fields and the ``channel`` fixture are refused."""
        check_refuses_invalid_configs(self.channel_class_of(notifier), channel, "channel class")

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

    def test_send_does_not_block_the_event_loop(
        self, notifier: Notifier, channel: Mapping[str, Any]
    ) -> None:
        """A coroutine ``send`` runs on the hub's event loop, so it must never block it."""
        if not is_async(notifier.send):
            pytest.skip("send() is a plain function: the hub runs it in a worker thread")
        send = cast(Callable[..., Awaitable[DeliveryResult]], notifier.send)
        results = check_does_not_block_the_loop(
            lambda: send(channel, make_notification()),
            "send()",
            self.max_loop_lag,
            self.async_backend,
        )
        for result in results:
            assert isinstance(result, DeliveryResult), (
                f"send() must return a DeliveryResult, not {type(result).__name__}"
            )

    def test_undeliverable_channel_is_reported(
        self, notifier: Notifier, failing_channel: Mapping[str, Any] | None
    ) -> None:
        if failing_channel is None:
            pytest.skip(
                "no failing channel: the 'channel' fixture holds no URL to point at a closed "
                "port, so define a 'failing_channel' fixture"
            )
        result = self.send(notifier, failing_channel, make_notification())
        assert result.status is not DeliveryStatus.DELIVERED, (
            "a delivery to a failing channel was reported as delivered"
        )
