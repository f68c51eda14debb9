"""Purging old server state: the hub's maintenance loop, ``Sentri.purge`` and the settings.

What ``StateStore.purge`` deletes is pinned by the storage contract
(``lunasentri_core.testing.storage_purge``); here the hub drives it on a real
SQLite file.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from lunasentri_core import ConfigError, Sentri, Session, Settings, User
from lunasentri_core.model import new_id
from lunasentri_core.storage import PurgePolicy, PurgeReport
from lunasentri_core.testing import hash_secret, make_user

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
FAST = 0.05
"""Seconds between maintenance passes in these tests."""


def _settings(tmp_path: Path, **purge: Any) -> Settings:
    return Settings.load(
        environ={},
        data_dir=tmp_path / "data",
        storage={"maintenance_interval": FAST, "purge": purge},
    )


def _session(user: User, expires_at: datetime) -> Session:
    return Session(
        id=new_id(),
        user_id=user.id,
        token_hash=hash_secret(new_id()),
        created_at=expires_at - timedelta(days=7),
        expires_at=expires_at,
    )


async def _prepare(tmp_path: Path) -> tuple[Session, Session]:
    """A user with a session long expired and one still active, stored before the test's hub."""
    slow = Settings.load(environ={}, data_dir=tmp_path / "data")
    async with Sentri(slow, clock=lambda: NOW) as hub:
        state = hub.storage.state
        user = await hub.run_sync(state.add_user, make_user(), "a-hash")
        old = await hub.run_sync(state.add_session, _session(user, NOW - timedelta(days=3)))
        active = await hub.run_sync(state.add_session, _session(user, NOW + timedelta(days=3)))
    return old, active


async def _gone(hub: Sentri, session: Session) -> bool:
    return await hub.run_sync(hub.storage.state.find_session, session.token_hash) is None


async def test_the_maintenance_loop_purges_then_waits_for_the_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, active = await _prepare(tmp_path)
    caplog.set_level(logging.INFO, logger="lunasentri_core.hub")

    async with Sentri(_settings(tmp_path, interval="1h"), clock=lambda: NOW) as hub:
        with anyio.fail_after(30):
            # The line is logged once the purge's transaction is back, a moment
            # after the session is seen gone: wait for both.
            while not (await _gone(hub, old) and "purged old server state" in caplog.text):
                await anyio.sleep(FAST)
        assert not await _gone(hub, active)

        # The next purge is an hour away: what expires meanwhile waits for it...
        state = hub.storage.state
        user = await hub.run_sync(state.get_user, active.user_id)
        later = await hub.run_sync(state.add_session, _session(user, NOW - timedelta(days=2)))
        await anyio.sleep(10 * FAST)
        assert not await _gone(hub, later)

        # ...or for a purge asked for now.
        assert await hub.purge() == PurgeReport(sessions=1)
        assert await _gone(hub, later)
        assert not await _gone(hub, active)


async def test_a_disabled_purge_leaves_everything(tmp_path: Path) -> None:
    old, _ = await _prepare(tmp_path)

    async with Sentri(_settings(tmp_path, enabled=False), clock=lambda: NOW) as hub:
        await anyio.sleep(10 * FAST)
        assert not await _gone(hub, old)


async def test_a_failing_purge_is_logged_and_the_loop_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await _prepare(tmp_path)
    calls: list[datetime] = []

    def broken(now: datetime, policy: PurgePolicy) -> PurgeReport:
        calls.append(now)
        raise RuntimeError("the disk is on fire")

    async with Sentri(_settings(tmp_path, interval=FAST), clock=lambda: NOW) as hub:
        hub.storage.state.purge = broken  # type: ignore[method-assign]
        with anyio.fail_after(30):
            while len(calls) < 2:
                await anyio.sleep(FAST)
    assert "purging old server state failed" in caplog.text
    assert "the disk is on fire" in caplog.text


def test_the_policy_follows_the_settings(tmp_path: Path) -> None:
    settings = Settings.load(
        environ={"LUNASENTRI_STORAGE__PURGE__HISTORY": "30d"},
        data_dir=tmp_path,
        storage={"purge": {"grace": "2h", "claims": "3d", "outbox": "10d"}},
        server={"login_lockout": "20m"},
    )

    policy = settings.storage.purge.policy(settings.server.login_lockout)

    assert policy == PurgePolicy(
        grace=timedelta(hours=2),
        login_window=timedelta(minutes=20),
        claims=timedelta(days=3),
        outbox=timedelta(days=10),
        history=timedelta(days=30),
    )
    defaults = Settings.load(environ={}, data_dir=tmp_path).storage.purge
    assert defaults.enabled
    assert defaults.interval == timedelta(hours=1)
    assert defaults.policy(timedelta(minutes=15)) == PurgePolicy()


@pytest.mark.parametrize(
    ("purge", "message"),
    [
        ({"histroy": "30d"}, "storage.purge.histroy: unknown field"),
        ({"grace": "0s"}, "storage.purge.grace: must be positive"),
        ({"interval": "soon"}, "storage.purge.interval: expected a duration"),
    ],
)
def test_wrong_purge_settings_name_their_path(
    tmp_path: Path, purge: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        Settings.load(environ={}, data_dir=tmp_path, storage={"purge": purge})


def test_the_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="grace must be positive"):
        PurgePolicy(grace=timedelta(0))
    with pytest.raises(ValueError, match="history must be positive"):
        PurgePolicy(history=timedelta(days=-1))
    with pytest.raises(ValueError, match="batch_size"):
        PurgePolicy(batch_size=0)
    assert PurgeReport(sessions=2, deliveries=3).total == 5
