"""Users, sessions, password resets, login throttling and data export.

Password hashing (scrypt, about 50 ms and 32 MiB each) runs in worker threads
behind a small limiter of its own, so a burst of logins cannot starve storage
calls or exhaust memory. Storage calls run through the hub, several grouped in
one worker-thread hop where they belong together.

Throttling counts failed logins in the last ``login_lockout`` three ways, and
refuses every attempt (even with the right password, and before any hashing)
while one count is at its limit, until enough failures age out of the window:

- a username (known or not) from one client address: ``login_max_failures``,
  so guesses from elsewhere never lock the real user out where they log in;
- one address, across usernames: ``login_max_client_failures``, so a flood of
  made-up names from one address costs the server no hashing;
- a username from every address: ``login_max_account_failures``, higher, so
  one account guessed from many addresses is still slowed down.

An address is counted as the claim throttle counts it (an IPv6 client by its /64).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import anyio
import attrs

from lunasentri_core.components import Principal
from lunasentri_core.errors import (
    ConfigError,
    ConflictError,
    FieldError,
    InUseError,
    LunaSentriError,
    NotFoundError,
    ValidationError,
)
from lunasentri_core.model import (
    AlertRule,
    ApiKey,
    HistoryQuery,
    Machine,
    ResetToken,
    Role,
    SeriesHistory,
    SeriesKey,
    SeriesValue,
    Session,
    User,
    new_id,
)
from lunasentri_core.security import (
    RESET_PREFIX,
    SESSION_PREFIX,
    hash_password,
    hash_token,
    issue_token,
    verify_password,
)
from lunasentri_core.services import audit
from lunasentri_core.services.claims import client_key
from lunasentri_core.storage.protocols import LoginFailure, StateStore, StorageBackend

if TYPE_CHECKING:
    from lunasentri_core.config import ServerSettings
    from lunasentri_core.hub import Sentri

log = logging.getLogger(__name__)

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")
MAX_USERNAME_LENGTH = 64
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
MAX_EXPORT_STEPS = 10_000
"""Most history points per series in one export (``(now - since) / step``)."""

ANONYMOUS = Principal(kind="anonymous", id="")
"""The actor of an unauthenticated attempt (a failed login) in the audit log."""

DUMMY_HASH = (
    "scrypt$32768$8$1$M0574azQN2LcWibntV2Tvw==$cH3lEaJhnD78ERrCZK09O4nzl0Mc3Xc+MUyjcwCHnVU="
)
"""A hash of a random password nobody knows, verified for unknown usernames so that
they cost what a real verification costs. It has :func:`hash_password`'s parameters
(a test keeps them in step)."""


# --------------------------------------------------------------------------- errors


class InvalidCredentials(LunaSentriError):
    """Wrong username or password: one message, so it does not tell which."""

    def __init__(self) -> None:
        super().__init__("wrong username or password")


class LoginThrottled(LunaSentriError):
    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"too many failed logins; try again in {retry_after} s")


class WrongPassword(LunaSentriError):
    def __init__(self) -> None:
        super().__init__("the current password is wrong")


class ResetTokenRejected(LunaSentriError):
    """``reason`` is ``invalid`` (unknown token), ``used`` or ``expired`` (also when
    a newer token, a redeemed one or a password change ended it)."""

    MESSAGES: Mapping[str, str] = {
        "invalid": "the reset token is not valid",
        "used": "the reset token has already been used; ask an administrator for a new one",
        "expired": "the reset token has expired or a newer one replaced it; "
        "ask an administrator for a new one",
    }

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(self.MESSAGES[reason])


# --------------------------------------------------------------------------- rules


def check_username(username: str, field: str = "username") -> None:
    if not 1 <= len(username) <= MAX_USERNAME_LENGTH or not USERNAME.match(username):
        raise ValidationError(
            [
                FieldError(
                    field,
                    f"a username is 1 to {MAX_USERNAME_LENGTH} letters, digits or '._@-', "
                    "starting with a letter or digit",
                )
            ],
            what="user",
        )


def check_password(password: str, field: str = "password") -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        message = f"a password needs at least {MIN_PASSWORD_LENGTH} characters"
    elif len(password) > MAX_PASSWORD_LENGTH:
        message = f"a password has at most {MAX_PASSWORD_LENGTH} characters"
    else:
        return
    raise ValidationError([FieldError(field, message)], what="password")


def new_user(username: str, role: Role, now: datetime) -> User:
    check_username(username)
    return User(id=new_id(), username=username, role=role, created_at=now)


def add_user(state: StateStore, user: User, password: str) -> User:
    """Check and store a new user (blocking: hashes the password here)."""
    check_password(password)
    if state.find_user(user.username) is not None:
        raise ConflictError(f"username {user.username!r} is already taken")
    return state.add_user(user, hash_password(password))


def set_password(state: StateStore, user_id: str, password_hash: str, now: datetime) -> int:
    """Replace a password, revoke every session of the user (returning how many) and
    end their reset tokens."""
    state.set_password_hash(user_id, password_hash)
    state.end_reset_tokens(user_id, now)
    return state.revoke_user_sessions(user_id, now)


# --------------------------------------------------------------------------- results


@attrs.frozen
class Login:
    user: User
    session: Session
    token: str
    """The session token (``lss_...``), shown once."""


@attrs.frozen
class IssuedReset:
    reset: ResetToken
    token: str
    """The reset token (``lsr_...``), shown once."""


@attrs.frozen
class MachineExport:
    machine: Machine
    api_keys: Sequence[ApiKey]
    series: Sequence[SeriesKey]
    latest: Mapping[SeriesKey, SeriesValue]
    history: Mapping[SeriesKey, SeriesHistory]


@attrs.frozen
class UserExport:
    """Everything stored about a user; ``since``/``step`` are set when history is included."""

    user: User
    exported_at: datetime
    machines: Sequence[MachineExport]
    alert_rules: Sequence[AlertRule]
    since: datetime | None = None
    step: timedelta | None = None


# --------------------------------------------------------------------------- service


class Accounts:
    """Users and their sessions, for the server's routes."""

    def __init__(self, hub: Sentri, settings: ServerSettings, *, hashing_threads: int = 2) -> None:
        self.hub = hub
        self.settings = settings
        self._hashing = anyio.CapacityLimiter(hashing_threads)

    @property
    def _state(self) -> StateStore:
        return self.hub.storage.state

    def _now(self) -> datetime:
        return self.hub.clock()

    async def _hash(self, password: str) -> str:
        return await anyio.to_thread.run_sync(hash_password, password, limiter=self._hashing)

    async def _verify(self, password: str, stored: str | None) -> bool:
        # An unknown user costs a full verification too, so timing does not reveal
        # whether the name exists.
        matches = await anyio.to_thread.run_sync(
            verify_password, password, stored or DUMMY_HASH, limiter=self._hashing
        )
        return matches and stored is not None

    # ------------------------------------------------------------ users

    async def ensure_admin(self, username: str, password: str | None) -> User | None:
        """Create the first admin from settings if there is no admin yet."""
        if password is None:
            return None
        users = await self.hub.run_sync(self._state.list_users)
        if any(user.is_admin for user in users):
            return None
        try:
            check_username(username, "admin_username")
            check_password(password, "admin_password")
        except ValidationError as error:
            raise ConfigError(str(error)) from None
        try:
            return await self.create_user(username, password, Role.ADMIN, actor=None)
        except ConflictError:
            # Another server process sharing the database may have made it first.
            if not any(u.is_admin for u in await self.hub.run_sync(self._state.list_users)):
                log.warning(
                    "no admin was created: the username %r (admin_username) is taken by a "
                    "user who is not an admin; make an admin with 'lunasentri users create "
                    "--admin NAME'",
                    username,
                )
            return None

    async def create_user(
        self,
        username: str,
        password: str,
        role: Role = Role.USER,
        *,
        actor: Principal | None,
        client: str | None = None,
    ) -> User:
        user = new_user(username, role, self._now())
        check_password(password)
        if await self.hub.run_sync(self._state.find_user, username) is not None:
            raise ConflictError(f"username {username!r} is already taken")
        stored = await self.hub.run_sync(self._state.add_user, user, await self._hash(password))
        await audit.record(
            self.hub,
            action="user.create",
            actor=actor,
            target_type="user",
            target_id=stored.id,
            client=client,
            detail={"username": stored.username, "role": stored.role.value},
        )
        return stored

    async def get_user(self, user_id: str, viewer: Principal) -> User:
        """A user as ``viewer`` may see it: themselves, or anyone for an admin."""
        if not viewer.is_admin and viewer.id != user_id:
            raise NotFoundError(f"user {user_id!r} not found")
        return await self.hub.run_sync(self._state.get_user, user_id)

    async def list_users(self) -> list[User]:
        return await self.hub.run_sync(self._state.list_users)

    async def set_role(
        self, user_id: str, role: Role, *, actor: Principal, client: str | None
    ) -> User:
        """Make a user an administrator or an ordinary user (from their next request on).

        :class:`ConflictError` when that would leave no administrator: an
        administrator may step down only while another one remains.
        """
        before = await self.hub.run_sync(self._state.get_user, user_id)
        if before.role == role:
            return before
        user = await self.hub.run_sync(self._state.set_user_role, user_id, role)
        await audit.record(
            self.hub,
            action="user.role",
            actor=actor,
            target_type="user",
            target_id=user.id,
            client=client,
            detail={"username": user.username, "from": before.role.value, "role": role.value},
        )
        return user

    async def delete_user(self, user_id: str, *, actor: Principal, client: str | None) -> None:
        """Delete a user with their machines, series, rules and sessions."""
        if user_id == actor.id:
            raise ConflictError("you cannot delete your own account")
        user = await self.hub.run_sync(self._state.get_user, user_id)
        machines = await self.hub.list_machines(owner_id=user_id)
        for machine in machines:
            # NotFoundError: deleted meanwhile; InUseError: agentless monitors write
            # to it, and delete_user below deletes it after them.
            with contextlib.suppress(NotFoundError, InUseError):
                await self.hub.remove_machine(machine.id)
        # The store's cascade takes whatever was added meanwhile, and the sessions.
        await self.hub.run_sync(self._state.delete_user, user_id)
        await audit.record(
            self.hub,
            action="user.delete",
            actor=actor,
            target_type="user",
            target_id=user_id,
            client=client,
            detail={"username": user.username, "machines": len(machines)},
        )

    # ------------------------------------------------------------ sessions

    async def login(self, username: str, password: str, client: str | None) -> Login:
        if len(username) > MAX_USERNAME_LENGTH or len(password) > MAX_PASSWORD_LENGTH:
            # No account has such credentials: refused before any lookup or hashing.
            raise InvalidCredentials()
        now = self._now()
        address = _address(client)
        user, stored, failures = await self.hub.run_sync(
            self._login_lookup, username, address, now - self.settings.login_lockout
        )
        retry_after = self._throttled(failures, username, address, now)
        if retry_after is not None:
            await self._audit_failed_login(username, user, client, "throttled")
            raise LoginThrottled(retry_after)
        if not await self._verify(password, stored) or user is None:
            await self.hub.run_sync(self._state.add_login_failure, username, now, address)
            await self._audit_failed_login(username, user, client, "bad_credentials")
            raise InvalidCredentials()
        issued = issue_token(SESSION_PREFIX)
        session = Session(
            id=new_id(),
            user_id=user.id,
            token_hash=issued.hash,
            created_at=now,
            expires_at=now + self.settings.session_ttl,
            client=client,
        )
        await self.hub.run_sync(self._start_session, session, username, address)
        await audit.record(
            self.hub,
            action="user.login",
            actor=_as_principal(user),
            target_type="user",
            target_id=user.id,
            client=client,
            detail={"username": username, "success": True, "session_id": session.id},
        )
        return Login(user, session, issued.secret)

    def _login_lookup(
        self, username: str, address: str | None, since: datetime
    ) -> tuple[User | None, str | None, list[LoginFailure]]:
        """The user (if any), their password hash, and the failures that count."""
        failures = self._state.recent_login_failures(username, address, since)
        user = self._state.find_user(username)
        stored = self._state.password_hash(user.id) if user is not None else None
        return user, stored, failures

    def _start_session(self, session: Session, username: str, address: str | None) -> None:
        self._state.add_session(session)
        # Only this address's failures: a success here does not unlock a guesser elsewhere.
        self._state.clear_login_failures_from(username, address)

    def _throttled(
        self, failures: Sequence[LoginFailure], username: str, address: str | None, now: datetime
    ) -> int | None:
        """Seconds until an attempt of ``username`` from ``address`` is let in again,
        or ``None`` if it is let in now."""
        of_name = [f for f in failures if f.username == username]
        # An unknown client (address None) has no address to count by.
        from_address = [f for f in failures if address is not None and f.client == address]
        counts = (
            ([f for f in of_name if f.client == address], self.settings.login_max_failures),
            (of_name, self.settings.login_max_account_failures),
            (from_address, self.settings.login_max_client_failures),
        )
        waits = [
            self._retry_after([f.at for f in counted], limit, now)
            for counted, limit in counts
            if len(counted) >= limit
        ]
        return max(waits, default=None)

    def _retry_after(self, times: Sequence[datetime], limit: int, now: datetime) -> int:
        """Whole seconds until enough of ``times`` (oldest first) leave the window.

        Attempts are refused while ``limit`` failures are in the window, so they are
        let in again once the failure that many places from the newest has aged out.
        """
        limiting = times[len(times) - limit]
        left = limiting + self.settings.login_lockout - now
        return max(1, math.ceil(left.total_seconds()))

    async def _audit_failed_login(
        self, username: str, user: User | None, client: str | None, reason: str
    ) -> None:
        await audit.record(
            self.hub,
            action="user.login",
            actor=ANONYMOUS,
            target_type="user",
            target_id=user.id if user is not None else None,
            client=client,
            detail={"username": username, "success": False, "reason": reason},
        )

    async def find_session(self, token: str | None) -> Session | None:
        """The active session of a presented session token, if any."""
        if not token or not token.startswith(SESSION_PREFIX):
            return None
        session = await self.hub.run_sync(self._state.find_session, hash_token(token))
        if session is None or not session.is_active(self._now()):
            return None
        return session

    async def logout(self, token: str | None, client: str | None) -> Session | None:
        """Revoke the session of ``token``; ``None`` if it was not an active session."""
        session = await self.find_session(token)
        if session is None:
            return None
        await self.hub.run_sync(self._state.revoke_session, session.id, self._now())
        await audit.record(
            self.hub,
            action="user.logout",
            actor=Principal(kind="user", id=session.user_id),
            target_type="session",
            target_id=session.id,
            client=client,
        )
        return session

    async def list_sessions(self, user_id: str) -> list[Session]:
        """The user's active sessions, newest first."""
        now = self._now()
        sessions = await self.hub.run_sync(self._state.list_sessions, user_id)
        return [session for session in sessions if session.is_active(now)]

    async def revoke_session(
        self, session_id: str, *, actor: Principal, client: str | None
    ) -> None:
        """Revoke one of the actor's own active sessions (any other id is not found)."""
        if not any(s.id == session_id for s in await self.list_sessions(actor.id)):
            raise NotFoundError(f"session {session_id!r} not found")
        await self.hub.run_sync(self._state.revoke_session, session_id, self._now())
        await audit.record(
            self.hub,
            action="session.revoke",
            actor=actor,
            target_type="session",
            target_id=session_id,
            client=client,
        )

    # ------------------------------------------------------------ passwords

    async def change_password(
        self,
        actor: Principal,
        current: str,
        new: str,
        *,
        token: str | None,
        client: str | None,
    ) -> int:
        """Change the actor's password; revokes their other sessions (returns how many)."""
        check_password(new, "new_password")
        now = self._now()
        user = await self.hub.run_sync(self._state.get_user, actor.id)
        address = _address(client)
        _, stored, failures = await self.hub.run_sync(
            self._login_lookup, user.username, address, now - self.settings.login_lockout
        )
        retry_after = self._throttled(failures, user.username, address, now)
        if retry_after is not None:
            raise LoginThrottled(retry_after)
        if not await self._verify(current, stored):
            await self.hub.run_sync(self._state.add_login_failure, user.username, now, address)
            raise WrongPassword()
        password_hash = await self._hash(new)
        keep = await self.find_session(token)
        revoked = await self.hub.run_sync(
            self._replace_password, user, password_hash, keep.id if keep else None, now
        )
        await audit.record(
            self.hub,
            action="user.password_change",
            actor=actor,
            target_type="user",
            target_id=user.id,
            client=client,
            detail={"revoked_sessions": revoked},
        )
        return revoked

    def _replace_password(
        self, user: User, password_hash: str, keep: str | None, now: datetime
    ) -> int:
        self._state.set_password_hash(user.id, password_hash)
        self._state.end_reset_tokens(user.id, now)
        self._state.clear_login_failures(user.username)
        revoked = 0
        for session in self._state.list_sessions(user.id):
            if session.id != keep and session.is_active(now):
                self._state.revoke_session(session.id, now)
                revoked += 1
        return revoked

    async def issue_reset_token(
        self, user_id: str, *, actor: Principal, client: str | None
    ) -> IssuedReset:
        now = self._now()
        issued = issue_token(RESET_PREFIX)
        reset = ResetToken(
            id=new_id(),
            user_id=user_id,
            token_hash=issued.hash,
            created_at=now,
            expires_at=now + self.settings.reset_token_ttl,
        )
        stored = await self.hub.run_sync(self._replace_reset_tokens, reset)
        await audit.record(
            self.hub,
            action="reset_token.create",
            actor=actor,
            target_type="user",
            target_id=user_id,
            client=client,
            detail={"reset_token_id": reset.id, "expires_at": reset.expires_at.isoformat()},
        )
        return IssuedReset(stored, issued.secret)

    def _replace_reset_tokens(self, reset: ResetToken) -> ResetToken:
        """Store ``reset`` as the user's only usable reset token."""
        self._state.end_reset_tokens(reset.user_id, reset.created_at)
        return self._state.add_reset_token(reset)

    async def reset_password(self, token: str, new: str, *, client: str | None) -> User:
        """Set a new password with a one-time reset token; revokes every session."""
        check_password(new, "new_password")
        now = self._now()
        reset = None
        if token.startswith(RESET_PREFIX):
            reset = await self.hub.run_sync(self._state.find_reset_token, hash_token(token))
        if reset is None:
            raise ResetTokenRejected("invalid")
        if reset.used_at is not None:
            raise ResetTokenRejected("used")
        if reset.expires_at <= now:
            raise ResetTokenRejected("expired")
        password_hash = await self._hash(new)
        outcome = await self.hub.run_sync(self._redeem, reset, password_hash, now)
        if isinstance(outcome, str):
            raise ResetTokenRejected(outcome)
        user, revoked = outcome
        await audit.record(
            self.hub,
            action="user.password_reset",
            actor=_as_principal(user),
            target_type="user",
            target_id=user.id,
            client=client,
            detail={"reset_token_id": reset.id, "revoked_sessions": revoked},
        )
        return user

    def _redeem(
        self, reset: ResetToken, password_hash: str, now: datetime
    ) -> tuple[User, int] | str:
        try:
            if not self._state.use_reset_token(reset.id, now):
                return "used"  # a concurrent redemption won
            user = self._state.get_user(reset.user_id)
            revoked = set_password(self._state, user.id, password_hash, now)
        except NotFoundError:
            return "invalid"  # the user was deleted meanwhile
        self._state.clear_login_failures(user.username)
        return user, revoked

    # ------------------------------------------------------------ export

    async def export(
        self,
        user_id: str,
        viewer: Principal,
        *,
        since: datetime | None = None,
        step: timedelta = timedelta(minutes=1),
    ) -> UserExport:
        """Everything stored about a user, optionally with history from ``since`` on."""
        user = await self.get_user(user_id, viewer)
        now = self._now()
        if since is not None:
            _check_window(since, step, now)
        return await self.hub.run_sync(self._export, user, now, since, step)

    def _export(
        self, user: User, now: datetime, since: datetime | None, step: timedelta
    ) -> UserExport:
        storage = self.hub.storage
        machines = storage.state.list_machines(user.id)
        latest = storage.metrics.latest([m.id for m in machines]) if machines else []
        by_series = {value.series: value for value in latest}
        exports = [
            MachineExport(
                machine=machine,
                api_keys=storage.state.list_api_keys(machine.id),
                series=(series := storage.metrics.list_series(machine.id)),
                latest={key: by_series[key] for key in series if key in by_series},
                history=_history(storage, machine, series, since, now, step),
            )
            for machine in machines
        ]
        return UserExport(
            user=user,
            exported_at=now,
            machines=exports,
            alert_rules=storage.state.list_alert_rules(user.id),
            since=since,
            step=step if since is not None else None,
        )


def _check_window(since: datetime, step: timedelta, now: datetime) -> None:
    if since >= now:
        raise ValidationError([FieldError("since", "must be in the past")], what="query")
    if step <= timedelta(0):
        raise ValidationError([FieldError("step", "must be positive")], what="query")
    if (now - since) / step > MAX_EXPORT_STEPS:
        raise ValidationError(
            [
                FieldError(
                    "step",
                    f"more than {MAX_EXPORT_STEPS} points per series; "
                    "use a larger step or a later 'since'",
                )
            ],
            what="query",
        )


def _history(
    storage: StorageBackend,
    machine: Machine,
    series: Sequence[SeriesKey],
    since: datetime | None,
    now: datetime,
    step: timedelta,
) -> dict[SeriesKey, SeriesHistory]:
    if since is None:
        return {}
    found: dict[SeriesKey, SeriesHistory] = {}
    for metric in sorted({key.metric for key in series}):
        query = HistoryQuery(machine.id, metric, start=since, end=now, step=step)
        for history in storage.metrics.history(query):
            found[history.series] = history
    return found


def _address(client: str | None) -> str | None:
    """The address failed logins are counted by (``None`` when the client is unknown)."""
    return None if client is None else client_key(client)


def _as_principal(user: User) -> Principal:
    return Principal(kind="user", id=user.id, role=user.role)
