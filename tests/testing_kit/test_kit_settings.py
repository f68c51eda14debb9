"""decode_settings: a plugin's settings and a channel class, decoded as the hub does."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import anyio
import attrs
import pytest

from lunasentri_core import Sentri, Settings, ValidationError, hookimpl
from lunasentri_core.components import DeliveryResult, DeliveryStatus, Notification, Principal
from lunasentri_core.model import Role
from lunasentri_core.services.channels import Channels
from lunasentri_core.testing import decode_settings


@attrs.frozen
class CheckSettings:
    timeout: timedelta = attrs.field(default=timedelta(seconds=5))
    hosts: tuple[str, ...] = ()

    @timeout.validator
    def _positive(self, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
        if value <= timedelta(0):
            raise ValueError("timeout must be positive")


@attrs.frozen
class PagerChannel:
    """A channel class whose validator raises something other than ValueError."""

    path: str = attrs.field()

    @path.validator
    def _absolute(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not value.startswith("/"):
            raise RuntimeError("bad path")


def test_decode_settings_uses_the_hubs_converter() -> None:
    decoded = decode_settings(CheckSettings, {"timeout": "30s", "hosts": ["a", "b"]})

    assert decoded == CheckSettings(timedelta(seconds=30), ("a", "b"))
    assert decode_settings(CheckSettings, {}) == CheckSettings()


@pytest.mark.parametrize(
    ("mapping", "path", "message"),
    [
        ({"timeout": "0s"}, "timeout", "timeout must be positive"),
        ({"timeout": "soon"}, "timeout", "expected a duration"),
        ({"hosts": ["a", 3]}, "hosts[1]", "expected a string"),
        ({"timout": "1s"}, "timout", "unknown field"),
    ],
)
def test_decode_settings_names_the_field_of_each_problem(
    mapping: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        decode_settings(CheckSettings, mapping)

    (error,) = caught.value.errors
    assert error.path == path
    assert message in error.message


def test_any_exception_of_a_channel_validator_names_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        decode_settings(PagerChannel, {"path": "relative"})

    assert [str(e) for e in caught.value.errors] == ["path: RuntimeError: bad path"]


class PagerNotifier:
    name: ClassVar[str] = "pager"
    settings_class: ClassVar[type[Any] | None] = None
    channel_class: ClassVar[type[Any]] = PagerChannel

    def send(self, channel: Mapping[str, Any], notification: Notification) -> DeliveryResult:
        return DeliveryResult(DeliveryStatus.DELIVERED)


class PagerPlugin:
    @hookimpl
    def lunasentri_register_notifiers(self) -> list[type[PagerNotifier]]:
        return [PagerNotifier]


def test_a_channel_whose_validator_raises_is_refused_naming_the_config_field(
    tmp_path: Path,
) -> None:
    settings = Settings.load(environ={}, data_dir=tmp_path)
    hub = Sentri(settings, plugins={"pager": PagerPlugin()})
    owner = Principal(kind="user", id="u1", role=Role.USER)

    async def create() -> None:
        await Channels(hub).create(owner, name="p", type="pager", config={"path": "x"})

    with pytest.raises(ValidationError) as caught:
        anyio.run(create)

    assert [str(e) for e in caught.value.errors] == ["config.path: RuntimeError: bad path"]
