"""Fixtures for heartbeat, alerting and notification tests: a hub on a SQLite file
with a clock the test moves, and a notifier that records what it is asked to send."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import anyio
import attrs
import pytest

from lunasentri_core import (
    DeliveryResult,
    DeliveryStatus,
    Notification,
    Sentri,
    Settings,
    User,
    hookimpl,
)
from lunasentri_core.model import Channel, Role, new_id

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class Clock:
    """The hub's "now", moved by the test."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@attrs.frozen
class RecordingChannel:
    inbox: str
    token: str = attrs.field(default="s3cret", metadata={"secret": True})


class RecordingNotifier:
    """Delivers into a list per inbox; ``script`` gives the results to answer in turn."""

    name: ClassVar[str] = "recording"
    settings_class: ClassVar[type[Any] | None] = None
    channel_class: ClassVar[type[Any]] = RecordingChannel

    def __init__(self) -> None:
        self.sent: dict[str, list[Notification]] = {}
        self.script: list[DeliveryResult] = []
        self.attempts: list[Notification] = []

    def send(self, channel: Mapping[str, Any], notification: Notification) -> DeliveryResult:
        self.attempts.append(notification)
        result = self.script.pop(0) if self.script else DeliveryResult(DeliveryStatus.DELIVERED)
        if result.status is DeliveryStatus.DELIVERED:
            self.sent.setdefault(channel["inbox"], []).append(notification)
        return result

    def kinds(self, inbox: str) -> list[str]:
        return [n.kind.value for n in self.sent.get(inbox, [])]


class RecordingPlugin:
    """Registers a notifier class whose one instance is the test's ``notifier``."""

    def __init__(self, notifier: RecordingNotifier) -> None:
        self.notifier = notifier

    @hookimpl
    def lunasentri_register_notifiers(self) -> list[type[Any]]:
        instance = self.notifier

        class Bound(RecordingNotifier):
            def __new__(cls) -> RecordingNotifier:  # type: ignore[misc]
                return instance

        return [Bound]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def notifier() -> RecordingNotifier:
    return RecordingNotifier()


OpenHub = Callable[..., contextlib.AbstractAsyncContextManager[Sentri]]


@pytest.fixture
def open_hub(tmp_path: Path, clock: Clock, notifier: RecordingNotifier) -> OpenHub:
    """Open a hub on this test's SQLite file (the same file each time: restarts)."""

    @contextlib.asynccontextmanager
    async def open_(
        plugins: Mapping[str, object] | None = None, **settings: Any
    ) -> AsyncIterator[Sentri]:
        # Tests sweep when they mean to: no periodic sweep comes between their steps
        # however slowly they run, and the sweep at start is over before they begin.
        settings.setdefault("heartbeat_interval", "1d")
        config = Settings.load(environ={}, data_dir=tmp_path / "data", **settings)
        plugins = {"recording": RecordingPlugin(notifier), **(plugins or {})}
        async with Sentri(config, clock=clock, plugins=plugins) as hub:
            with anyio.fail_after(60):
                await hub.heartbeat.first_round.wait()
            yield hub

    return open_


async def add_user(hub: Sentri, name: str = "alice", role: Role = Role.USER) -> User:
    user = User(id=new_id(), username=name, role=role)
    return await hub.run_sync(hub.storage.state.add_user, user, "unused-hash")


async def add_channel(hub: Sentri, owner_id: str, inbox: str) -> Channel:
    channel = Channel(
        id=new_id(), owner_id=owner_id, name=inbox, type="recording", config={"inbox": inbox}
    )
    return await hub.run_sync(hub.storage.state.add_channel, channel)
