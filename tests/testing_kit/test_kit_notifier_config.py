"""NotifierContract and AuthenticatorContract: channel classes that take wrong input or
raise the wrong error, components the plugin manager cannot build, and the failing
channel the suite derives when the author gives none."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from kit_doubles import LaxChannel, PathChannel
from kit_support import NOTIFIER_BASE, KitRun, outcomes

from lunasentri_core import ValidationError
from lunasentri_core.testing import decode_settings
from lunasentri_core.testing.notifier import refused_channel, refusing_port
from lunasentri_core.testing.settings import check_refuses_invalid_configs, invalid_configs

pytest_plugins = ["pytester", "lunasentri_core.testing"]

CONFIG_TEST = "test_channel_class_refuses_invalid_config"
BUILD_TEST = "test_registers_through_a_hook"
UNDELIVERABLE_TEST = "test_undeliverable_channel_is_reported"

NOTIFIERS = (
    NOTIFIER_BASE
    + """
class TestGood(Base):
    @pytest.fixture
    def notifier(self, inboxes):
        return kit_doubles.MemoryNotifier(inboxes)

class TestWrongError(Base):
    @pytest.fixture
    def notifier(self, inboxes):
        return kit_doubles.WrongErrorNotifier(inboxes)

    @pytest.fixture
    def channel(self):
        return {"path": "/ops"}

class TestLax(Base):
    @pytest.fixture
    def notifier(self, inboxes):
        return kit_doubles.LaxNotifier(inboxes)

class TestLaxOptedOut(TestLax):
    opt_out = {"test_channel_class_refuses_invalid_config": "an empty inbox is the default one"}

class TestNeedsToken(Base):
    @pytest.fixture
    def notifier(self, inboxes):
        return kit_doubles.NeedsTokenNotifier(kit_doubles.TokenSettings("t0k3n"), inboxes)
"""
)


def test_the_notifier_suite_catches_bad_channel_classes_and_constructors(
    kit_run: KitRun,
) -> None:
    result = kit_run.run(NOTIFIERS, "-k", f"{CONFIG_TEST} or {BUILD_TEST}")

    assert outcomes(result, "TestGood")["passed"] == {CONFIG_TEST, BUILD_TEST}
    assert outcomes(result, "TestWrongError")["failed"] == {CONFIG_TEST}
    assert outcomes(result, "TestLax")["failed"] == {CONFIG_TEST}
    assert outcomes(result, "TestLaxOptedOut")["skipped"] == {CONFIG_TEST}
    assert outcomes(result, "TestNeedsToken") == {
        "passed": {CONFIG_TEST},
        "skipped": set(),
        "failed": {BUILD_TEST},
    }
    result.stdout.fnmatch_lines(
        [
            "*the channel class PathChannel mishandles invalid input:",
            "*'path' given '': a validator or converter raised RuntimeError: path must be "
            "absolute; raise ValueError or TypeError (or lunasentri_core.errors.InvalidValue)*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*the channel class LaxChannel mishandles invalid input:",
            "*'inbox' given '': accepted; it must be refused with an error naming the field",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*the plugin manager could not build NeedsTokenNotifier with its default "
            "settings: NeedsTokenNotifier(settings) raised ValueError: a token is required*"
        ]
    )


def test_the_authenticator_suite_builds_through_the_plugin_manager(kit_run: KitRun) -> None:
    result = kit_run.run(
        """
        import pytest
        import kit_doubles
        from lunasentri_core.testing import AuthenticatorContract

        class TestGood(AuthenticatorContract):
            @pytest.fixture
            def authenticator(self):
                return kit_doubles.BearerKeyAuthenticator()

        class TestNeedsKey(AuthenticatorContract):
            @pytest.fixture
            def authenticator(self):
                return kit_doubles.NeedsKeyAuthenticator(kit_doubles.TokenSettings("k3y"))
        """,
        "-k",
        BUILD_TEST,
    )
    assert outcomes(result, "TestGood")["passed"] == {BUILD_TEST}
    assert outcomes(result, "TestNeedsKey")["failed"] == {BUILD_TEST}
    result.stdout.fnmatch_lines(
        [
            "*could not build NeedsKeyAuthenticator with its default settings: "
            "NeedsKeyAuthenticator(settings) raised ValueError: a key is required*"
        ]
    )


def test_a_failing_channel_is_derived_from_a_channel_with_a_url(kit_run: KitRun) -> None:
    result = kit_run.run(
        """
        import pytest
        import kit_doubles
        from lunasentri_core.testing import NotifierContract

        class TestUrl(NotifierContract):
            @pytest.fixture
            def notifier(self):
                return kit_doubles.UrlNotifier()

            @pytest.fixture
            def channel(self):
                return {"url": "https://hooks.example.com/ops?team=1"}

        class TestHopeful(TestUrl):
            @pytest.fixture
            def notifier(self):
                return kit_doubles.HopefulUrlNotifier()

        class TestNoUrl(NotifierContract):
            @pytest.fixture
            def notifier(self):
                return kit_doubles.MemoryNotifier()

            @pytest.fixture
            def channel(self):
                return {"inbox": "ops"}
        """,
        "-k",
        UNDELIVERABLE_TEST,
    )
    assert outcomes(result, "TestUrl")["passed"] == {UNDELIVERABLE_TEST}
    assert outcomes(result, "TestHopeful")["failed"] == {UNDELIVERABLE_TEST}
    assert outcomes(result, "TestNoUrl")["skipped"] == {UNDELIVERABLE_TEST}
    result.stdout.fnmatch_lines(
        [
            "*a delivery to a failing channel was reported as delivered*",
            "*no failing channel: the 'channel' fixture holds no URL*define a "
            "'failing_channel' fixture*",
        ],
        consecutive=False,
    )


def test_the_derived_channel_keeps_all_but_the_address() -> None:
    channel = {"url": "https://user:pw@hooks.example.com:8443/ops?team=1", "secret": "whsec_x"}

    with refusing_port() as port:
        derived = refused_channel(channel, port)

    assert derived == {"url": f"https://127.0.0.1:{port}/ops?team=1", "secret": "whsec_x"}
    assert refused_channel({"inbox": "ops", "n": 3}, port) is None


def test_the_refusing_port_refuses_connections() -> None:
    import socket

    with refusing_port() as port, pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5.0)


@attrs.frozen
class Everything:
    name: str = attrs.field(validator=attrs.validators.min_len(1))
    count: int = 1
    ratio: float | None = None
    on: bool = False
    tags: tuple[str, ...] = ()
    extra: dict[str, str] = attrs.field(factory=dict)
    anything: Any = None


def test_invalid_configs_are_derived_from_the_fields() -> None:
    cases = {case.description: case for case in invalid_configs(Everything, {"name": "a"})}

    assert set(cases) == {
        "an unknown field 'lunasentri_contract_unknown_field'",
        "the required field 'name' left out",
        "'name' given 12345 (a wrong type)",
        "'name' given ''",
        "'count' given 'many' (a wrong type)",
        "'ratio' given 'many' (a wrong type)",
        "'on' given 'yes' (a wrong type)",
        "'tags' given 42 (a wrong type)",
        "'extra' given 42 (a wrong type)",
    }
    assert cases["the required field 'name' left out"].config == {}
    check_refuses_invalid_configs(Everything, {"name": "a"}, "test class")


@pytest.mark.parametrize(
    ("cls", "valid", "problem"),
    [
        (PathChannel, {"path": "/x"}, "'path' given '': a validator or converter raised "),
        (LaxChannel, {"inbox": "x"}, "'inbox' given '': accepted; it must be refused"),
    ],
)
def test_check_refuses_invalid_configs_lists_each_problem(
    cls: type[Any], valid: dict[str, Any], problem: str
) -> None:
    with pytest.raises(AssertionError, match=rf"mishandles invalid input:\n  {problem}"):
        check_refuses_invalid_configs(cls, valid, "channel class")


def _port(value: int) -> int:
    if not 0 < value < 65536:
        raise ValueError(f"{value} is not a TCP port")
    return value


@attrs.frozen
class Endpoint:
    host: str
    port: int = attrs.field(default=80, converter=_port)


def test_a_converters_error_names_its_field() -> None:
    with pytest.raises(ValidationError) as caught:
        decode_settings(Endpoint, {"host": "h", "port": 70000})

    assert [str(e) for e in caught.value.errors] == ["port: 70000 is not a TCP port"]
    check_refuses_invalid_configs(Endpoint, {"host": "h"}, "settings class")
