"""The accounts service on a real hub (SQLite), with a controllable clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import attrs
import pytest

from lunasentri_core.components import Principal
from lunasentri_core.config import Settings
from lunasentri_core.errors import ConfigError, ConflictError, NotFoundError, ValidationError
from lunasentri_core.hub import Sentri
from lunasentri_core.model import MachineKind, ResetToken, Role, new_id
from lunasentri_core.security import RESET_PREFIX, hash_password, issue_token
from lunasentri_core.services.accounts import (
    DUMMY_HASH,
    Accounts,
    InvalidCredentials,
    LoginThrottled,
    ResetTokenRejected,
    check_password,
    check_username,
)
from lunasentri_core.testing import (
    make_credential_profile,
    make_device,
    make_machine,
    make_monitor,
)

pytestmark = pytest.mark.anyio

PASSWORD = "a perfectly fine password"
START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def accounts(tmp_path: Path, clock: Clock) -> AsyncIterator[Accounts]:
    settings = Settings.load(
        environ={},
        data_dir=tmp_path / "data",
        server={"login_max_failures": 2, "login_lockout": "10m", "reset_token_ttl": "1h"},
        # No poller: a monitor made by a test is due at once, and its poll would race it.
        agentless={"enabled": False},
    )
    async with Sentri(settings, clock=clock) as hub:
        yield Accounts(hub, settings.server)


def test_the_dummy_hash_costs_what_a_real_one_does() -> None:
    assert DUMMY_HASH.split("$")[:4] == hash_password("x").split("$")[:4]


@pytest.mark.parametrize("name", ["a", "alice", "Bob.Smith", "ops@example.com", "x_1-2", "9" * 64])
def test_good_usernames(name: str) -> None:
    check_username(name)


@pytest.mark.parametrize("name", ["", " alice", "al ice", ".alice", "-x", "é", "a" * 65, "a/b"])
def test_bad_usernames(name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        check_username(name)
    assert caught.value.first_path == "username"


@pytest.mark.parametrize(("password", "ok"), [("1234567", False), ("12345678", True)])
def test_passwords_need_eight_characters(password: str, ok: bool) -> None:
    if ok:
        check_password(password)
    else:
        with pytest.raises(ValidationError, match="at least 8"):
            check_password(password)


async def test_the_first_admin_is_made_once(accounts: Accounts) -> None:
    first = await accounts.ensure_admin("root", PASSWORD)
    second = await accounts.ensure_admin("other", PASSWORD)

    assert first is not None
    assert first.role is Role.ADMIN
    assert second is None
    assert [u.username for u in await accounts.list_users()] == ["root"]
    assert await accounts.ensure_admin("root", None) is None


async def test_a_weak_admin_password_in_settings_is_a_config_error(accounts: Accounts) -> None:
    with pytest.raises(ConfigError, match="admin_password"):
        await accounts.ensure_admin("root", "short")


async def test_a_user_named_like_the_admin_blocks_it_with_a_warning(
    accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    await accounts.create_user("root", PASSWORD, actor=None)

    assert await accounts.ensure_admin("root", PASSWORD) is None
    assert "users create --admin" in caplog.text


async def test_the_lockout_lifts_when_failures_leave_the_window(
    accounts: Accounts, clock: Clock
) -> None:
    await accounts.create_user("alice", PASSWORD, actor=None)
    for _ in range(2):
        with pytest.raises(InvalidCredentials):
            await accounts.login("alice", "wrong password", "10.0.0.1")

    with pytest.raises(LoginThrottled) as caught:
        await accounts.login("alice", PASSWORD, "10.0.0.1")
    assert caught.value.retry_after == 600

    clock.now += timedelta(minutes=10, seconds=1)
    login = await accounts.login("alice", PASSWORD, "10.0.0.1")
    assert login.user.username == "alice"
    assert login.session.expires_at == clock.now + timedelta(days=7)
    assert login.session.client == "10.0.0.1"


async def test_retry_after_is_the_time_until_the_limiting_failure_ages_out(
    accounts: Accounts, clock: Clock
) -> None:
    await accounts.create_user("alice", PASSWORD, actor=None)
    for gap in (timedelta(0), timedelta(minutes=4)):  # failures at +0 and +4 min
        clock.now += gap
        with pytest.raises(InvalidCredentials):
            await accounts.login("alice", "wrong password", None)

    clock.now = START + timedelta(minutes=5, seconds=30)
    with pytest.raises(LoginThrottled) as caught:
        await accounts.login("alice", PASSWORD, None)
    # The failure at +0 leaves the 10-minute window at +10 min: 4.5 min from now.
    assert caught.value.retry_after == 270

    clock.now += timedelta(seconds=270)
    with pytest.raises(LoginThrottled) as caught:  # still in, to the microsecond
        await accounts.login("alice", PASSWORD, None)
    assert caught.value.retry_after == 1
    clock.now += timedelta(microseconds=1)
    assert (await accounts.login("alice", PASSWORD, None)).user.username == "alice"


@pytest.fixture
def limits(accounts: Accounts) -> Accounts:
    """``accounts`` with small limits per address (4) and per name (3) across the other."""
    accounts.settings = attrs.evolve(
        accounts.settings, login_max_client_failures=4, login_max_account_failures=3
    )
    return accounts


async def test_failures_from_one_address_do_not_lock_the_name_elsewhere(
    limits: Accounts,
) -> None:
    await limits.create_user("admin", PASSWORD, Role.ADMIN, actor=None)
    for _ in range(2):
        with pytest.raises(InvalidCredentials):
            await limits.login("admin", "a guess", "203.0.113.9")

    with pytest.raises(LoginThrottled):
        await limits.login("admin", PASSWORD, "203.0.113.9")
    assert (await limits.login("admin", PASSWORD, "10.0.0.1")).user.username == "admin"


async def test_an_address_guessing_many_names_is_refused_before_hashing(
    limits: Accounts, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await limits.create_user("alice", PASSWORD, actor=None)
    for n in range(4):
        clock.now += timedelta(minutes=1)
        with pytest.raises(InvalidCredentials):
            await limits.login(f"name{n}", "a guess", "203.0.113.9")
    verified: list[str] = []
    verify = limits._verify

    async def counting(password: str, stored: str | None) -> bool:
        verified.append(password)
        return await verify(password, stored)

    monkeypatch.setattr(limits, "_verify", counting)

    with pytest.raises(LoginThrottled) as caught:
        await limits.login("another-name", "a guess", "203.0.113.9")
    assert verified == []  # refused before the costly hash
    # The address's first failure (+1 min) leaves the 10-minute window at +11: 7 min on.
    assert caught.value.retry_after == 7 * 60
    assert (await limits.login("alice", PASSWORD, "10.0.0.1")).user.username == "alice"


async def test_an_ipv6_address_counts_with_its_64(limits: Accounts) -> None:
    for n in range(4):
        with pytest.raises(InvalidCredentials):
            await limits.login(f"name{n}", "a guess", f"2001:db8:1:2::{n + 1}")

    with pytest.raises(LoginThrottled):
        await limits.login("name9", "a guess", "2001:db8:1:2:ffff::9")
    with pytest.raises(InvalidCredentials):
        await limits.login("name9", "a guess", "2001:db8:1:3::1")


async def test_one_name_guessed_from_many_addresses_is_refused_at_a_higher_limit(
    limits: Accounts,
) -> None:
    await limits.create_user("alice", PASSWORD, actor=None)
    for n in range(3):  # one failure from each address: below the per-address limit
        with pytest.raises(InvalidCredentials):
            await limits.login("alice", "a guess", f"198.51.100.{n}")

    with pytest.raises(LoginThrottled):
        await limits.login("alice", PASSWORD, "10.0.0.1")


async def test_sessions_expire_with_their_ttl(accounts: Accounts, clock: Clock) -> None:
    user = await accounts.create_user("alice", PASSWORD, actor=None)
    login = await accounts.login("alice", PASSWORD, None)

    assert await accounts.find_session(login.token) is not None
    clock.now += timedelta(days=7)
    assert await accounts.find_session(login.token) is None
    assert await accounts.list_sessions(user.id) == []


async def test_a_reset_token_expires(accounts: Accounts, clock: Clock) -> None:
    user = await accounts.create_user("alice", PASSWORD, actor=None)
    admin = Principal(kind="user", id="admin", role=Role.ADMIN)
    issued = await accounts.issue_reset_token(user.id, actor=admin, client=None)

    clock.now += timedelta(hours=1)

    with pytest.raises(ResetTokenRejected) as caught:
        await accounts.reset_password(issued.token, "new password", client=None)
    assert caught.value.reason == "expired"


async def test_concurrent_redemptions_of_one_reset_token_let_exactly_one_win(
    accounts: Accounts,
) -> None:
    user = await accounts.create_user("alice", PASSWORD, actor=None)
    admin = Principal(kind="user", id="admin", role=Role.ADMIN)
    issued = await accounts.issue_reset_token(user.id, actor=admin, client=None)
    outcomes: list[str] = []

    async def redeem(password: str) -> None:
        try:
            await accounts.reset_password(issued.token, password, client=None)
            outcomes.append(password)
        except ResetTokenRejected as error:
            outcomes.append(error.reason)

    async with anyio.create_task_group() as tg:
        for index in range(4):
            tg.start_soon(redeem, f"new password {index}")

    winners = [o for o in outcomes if o.startswith("new password")]
    assert len(winners) == 1
    assert sorted(o for o in outcomes if o not in winners) == ["used"] * 3
    assert (await accounts.login("alice", winners[0], None)).user.id == user.id


async def test_a_new_reset_token_ends_the_earlier_ones(accounts: Accounts) -> None:
    user = await accounts.create_user("alice", PASSWORD, actor=None)
    admin = Principal(kind="user", id="admin", role=Role.ADMIN)
    first = await accounts.issue_reset_token(user.id, actor=admin, client=None)
    second = await accounts.issue_reset_token(user.id, actor=admin, client=None)

    with pytest.raises(ResetTokenRejected) as caught:
        await accounts.reset_password(first.token, "new password", client=None)
    assert caught.value.reason == "expired"
    await accounts.reset_password(second.token, "new password", client=None)


async def test_using_a_reset_token_ends_the_users_other_ones(accounts: Accounts) -> None:
    user = await accounts.create_user("alice", PASSWORD, actor=None)
    other = await accounts.create_user("bob", PASSWORD, actor=None)
    admin = Principal(kind="user", id="admin", role=Role.ADMIN)
    issued = await accounts.issue_reset_token(user.id, actor=admin, client=None)
    kept = await accounts.issue_reset_token(other.id, actor=admin, client=None)
    older = await _stored_reset_token(accounts, user.id)

    await accounts.reset_password(issued.token, "new password", client=None)

    with pytest.raises(ResetTokenRejected) as caught:
        await accounts.reset_password(older, "another password", client=None)
    assert caught.value.reason == "expired"
    await accounts.reset_password(kept.token, "bob's new password", client=None)


async def test_changing_the_password_ends_the_users_reset_tokens(accounts: Accounts) -> None:
    user = await accounts.create_user("alice", PASSWORD, actor=None)
    admin = Principal(kind="user", id="admin", role=Role.ADMIN)
    issued = await accounts.issue_reset_token(user.id, actor=admin, client=None)
    me = Principal(kind="user", id=user.id, role=Role.USER)

    await accounts.change_password(me, PASSWORD, "new password", token=None, client=None)

    with pytest.raises(ResetTokenRejected) as caught:
        await accounts.reset_password(issued.token, "another password", client=None)
    assert caught.value.reason == "expired"


async def _stored_reset_token(accounts: Accounts, user_id: str) -> str:
    """A live reset token put straight into the store, beside one issued before it
    (only the store can make two live tokens of a user now)."""
    issued = issue_token(RESET_PREFIX)
    now = accounts.hub.clock()
    reset = ResetToken(
        id=new_id(),
        user_id=user_id,
        token_hash=issued.hash,
        created_at=now,
        expires_at=now + timedelta(hours=1),
    )
    await accounts.hub.run_sync(accounts.hub.storage.state.add_reset_token, reset)
    return issued.secret


async def test_a_user_is_deleted_by_others_only(accounts: Accounts) -> None:
    admin = await accounts.create_user("root", PASSWORD, Role.ADMIN, actor=None)
    me = Principal(kind="user", id=admin.id, role=Role.ADMIN)

    with pytest.raises(ConflictError):
        await accounts.delete_user(admin.id, actor=me, client=None)
    with pytest.raises(NotFoundError):
        await accounts.delete_user("nobody", actor=me, client=None)


async def test_deleting_a_user_deletes_their_monitored_devices(accounts: Accounts) -> None:
    hub, state = accounts.hub, accounts.hub.storage.state
    admin = await accounts.create_user("root", PASSWORD, Role.ADMIN, actor=None)
    user = await accounts.create_user("ops", PASSWORD, Role.USER, actor=None)
    credential = await hub.run_sync(state.add_credential_profile, make_credential_profile(user.id))
    device = await hub.run_sync(state.add_device, make_device(user.id))
    machine = make_machine(owner_id=user.id, kind=MachineKind.AGENTLESS)
    monitor = await hub.run_sync(state.add_monitor, make_monitor(device, credential.id), machine)
    pushed = await hub.add_machine("pushed", owner_id=user.id)
    me = Principal(kind="user", id=admin.id, role=Role.ADMIN)

    await accounts.delete_user(user.id, actor=me, client=None)

    for get, record_id in (
        (state.get_monitor, monitor.id),
        (state.get_device, device.id),
        (state.get_machine, machine.id),
        (state.get_machine, pushed.id),
        (state.get_user, user.id),
    ):
        with pytest.raises(NotFoundError):
            await hub.run_sync(get, record_id)


async def test_export_refuses_a_window_of_too_many_points(accounts: Accounts) -> None:
    admin = await accounts.create_user("root", PASSWORD, Role.ADMIN, actor=None)
    me = Principal(kind="user", id=admin.id, role=Role.ADMIN)

    with pytest.raises(ValidationError) as caught:
        await accounts.export(
            admin.id, me, since=START - timedelta(days=30), step=timedelta(seconds=1)
        )
    export = await accounts.export(admin.id, me, since=START - timedelta(days=1))

    assert caught.value.first_path == "step"
    assert export.since == START - timedelta(days=1)
    assert export.machines == []
