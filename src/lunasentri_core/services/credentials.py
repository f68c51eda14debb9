"""Credential profiles: how the server logs in to Windows hosts, the password sealed.

A profile's password is encrypted by the secret box (:mod:`lunasentri_core.secretbox`)
before it reaches the store, bound to the profile's id, and is decrypted only when
a poll, a discovery run or a test uses it. :class:`CredentialVault` keeps decrypted
passwords for ``[secrets] cache_ttl`` at most, keyed by the profile's ``version``:
every change to a profile (here or in another server process sharing the
database) gives it a new version, so a stale copy is never used, and the hub
drops the whole cache when the store's change counter moves.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from lunasentri_core.components import Principal
from lunasentri_core.errors import ConfigError, FieldError, PluginError, ValidationError
from lunasentri_core.model import CredentialProfile, Target, new_id
from lunasentri_core.plugins import ComponentKind
from lunasentri_core.remote import (
    HostIdentity,
    Identifier,
    RemoteCredential,
    RemoteError,
    Transport,
    describe_failure,
)
from lunasentri_core.secretbox import Keyring, SecretBox, rotate
from lunasentri_core.services import audit
from lunasentri_core.services.machines import check_name, owner_scope
from lunasentri_core.storage.protocols import StateStore

if TYPE_CHECKING:
    from lunasentri_core.config import Settings
    from lunasentri_core.hub import Sentri

_SWEEP_EVERY = 1.0
"""Seconds between sweeps of expired passwords out of the cache."""
_PASSWORDLESS = (Transport.CERTIFICATE, Transport.KERBEROS)
"""Transports that can log in without a password (a client certificate; a Kerberos
ticket the server already holds)."""


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError([FieldError(field, message)], what="request body")


def open_secret_box(settings: Settings) -> SecretBox:
    """The box of ``[secrets]`` (reads, or first creates, the key file: blocking)."""
    return SecretBox(Keyring.from_settings(settings.secrets, settings.data_dir))


@attrs.define
class _Cached:
    version: int
    password: str | None
    expires: float


class CredentialVault:
    """Decrypts credential profiles at use and keeps them for a bounded time."""

    def __init__(self, hub: Sentri, ttl: timedelta) -> None:
        self._hub = hub
        self._ttl = ttl.total_seconds()
        self._box: SecretBox | None = None
        self._box_lock = threading.Lock()
        self._cache: dict[str, _Cached] = {}
        self._swept = time.monotonic()

    def box(self) -> SecretBox:
        """The secret box, opened on first use (blocking: the key file may be created)."""
        with self._box_lock:
            if self._box is None:
                self._box = open_secret_box(self._hub.settings)
            return self._box

    def __len__(self) -> int:
        """Passwords held decrypted now (expired ones are dropped first)."""
        self._sweep(time.monotonic(), force=True)
        return len(self._cache)

    async def remote_credential(
        self, profile_id: str, owner_id: str | None = None
    ) -> RemoteCredential:
        """The profile as a collector receives it: its password decrypted.

        Reads the profile from the store every time (one row), so a change or a
        deletion made by any process takes effect at the next use.
        """
        state = self._hub.storage.state
        profile = await self._hub.run_sync(state.get_credential_profile, profile_id, owner_id)
        return profile.credential(await self.password(profile))

    async def password(self, profile: CredentialProfile) -> str | None:
        if profile.secret is None:
            return None
        now = time.monotonic()
        self._sweep(now)
        cached = self._cache.get(profile.id)
        if cached is not None and cached.version == profile.version and cached.expires > now:
            return cached.password
        password = await self._hub.run_sync(self._decrypt, profile)
        if self._ttl > 0:
            self._cache[profile.id] = _Cached(profile.version, password, now + self._ttl)
        return password

    def _decrypt(self, profile: CredentialProfile) -> str:
        assert profile.secret is not None
        return self.box().decrypt_text(profile.secret, profile.secret_context())

    def seal(self, profile: CredentialProfile, password: str) -> CredentialProfile:
        """``profile`` with ``password`` encrypted into its ``secret`` (blocking)."""
        return attrs.evolve(profile, secret=self.box().encrypt(password, profile.secret_context()))

    def forget(self, profile_id: str | None = None) -> None:
        """Drop one profile's decrypted password, or every one."""
        if profile_id is None:
            self._cache.clear()
        else:
            self._cache.pop(profile_id, None)

    def _sweep(self, now: float, *, force: bool = False) -> None:
        if not force and now - self._swept < _SWEEP_EVERY:
            return
        self._swept = now
        for profile_id in [key for key, cached in self._cache.items() if cached.expires <= now]:
            self._cache.pop(profile_id, None)


@attrs.frozen
class ProfileFields:
    """A profile's settable fields, as a create or an update gives them."""

    name: str
    transport: Transport = attrs.field(default=Transport.NTLM, converter=Transport)
    username: str | None = None
    domain: str | None = None
    https: bool = True
    port: int | None = None
    verify_tls: bool = True
    ca_path: str | None = None
    cert_path: str | None = None
    key_path: str | None = None


def _check(fields: ProfileFields, has_password: bool) -> None:
    check_name(fields.name)
    if fields.port is not None and not 1 <= fields.port <= 65535:
        raise _invalid("port", f"{fields.port} is not a TCP port (1-65535)")
    if fields.transport is Transport.CERTIFICATE:
        if not fields.https:
            raise _invalid("https", "the certificate transport works over HTTPS only")
        for name in ("cert_path", "key_path"):
            if not getattr(fields, name):
                raise _invalid(name, "the certificate transport needs a client certificate and key")
        return
    if not fields.username:
        raise _invalid("username", f"the {fields.transport.value} transport needs a user name")
    if not has_password and fields.transport not in _PASSWORDLESS:
        raise _invalid("password", f"the {fields.transport.value} transport needs a password")


class CredentialProfiles:
    """Credential profiles as one principal sees them."""

    def __init__(self, hub: Sentri) -> None:
        self._hub = hub

    @property
    def _state(self) -> StateStore:
        return self._hub.storage.state

    async def create(
        self,
        actor: Principal,
        fields: ProfileFields,
        password: str | None,
        *,
        client: str | None = None,
    ) -> CredentialProfile:
        _check(fields, has_password=bool(password))
        now = self._hub.clock()
        profile = CredentialProfile(
            id=new_id(),
            owner_id=actor.id,
            created_at=now,
            updated_at=now,
            **attrs.asdict(fields, recurse=False),
        )
        vault = self._hub.credentials
        if password:
            profile = await self._hub.run_sync(vault.seal, profile, password)
        stored = await self._hub.run_sync(self._state.add_credential_profile, profile)
        await self._audit("credential_profile.create", actor, stored, client)
        return stored

    async def get(self, actor: Principal, profile_id: str) -> CredentialProfile:
        return await self._hub.run_sync(
            self._state.get_credential_profile, profile_id, owner_scope(actor)
        )

    async def all(self, actor: Principal) -> list[CredentialProfile]:
        return await self._hub.run_sync(self._state.list_credential_profiles, owner_scope(actor))

    async def update(
        self,
        actor: Principal,
        profile_id: str,
        changes: Mapping[str, Any],
        password: str | None,
        *,
        clear_password: bool = False,
        client: str | None = None,
    ) -> CredentialProfile:
        """Change the given fields; a given ``password`` replaces the stored one,
        ``clear_password`` removes it, neither keeps it."""
        current = await self.get(actor, profile_id)
        known = {f.name for f in attrs.fields(ProfileFields)}
        kept = {name: getattr(current, name) for name in known}
        fields = ProfileFields(**{**kept, **{k: v for k, v in changes.items() if k in known}})
        has_password = bool(password) or (current.has_password and not clear_password)
        _check(fields, has_password)
        profile = attrs.evolve(
            current,
            updated_at=self._hub.clock(),
            secret=None if clear_password else current.secret,
            **attrs.asdict(fields, recurse=False),
        )
        if password:
            profile = await self._hub.run_sync(self._hub.credentials.seal, profile, password)
        stored = await self._hub.run_sync(self._state.update_credential_profile, profile)
        self._hub.credentials.forget(profile_id)
        detail = {"fields": sorted(changes), "password_changed": bool(password) or clear_password}
        await self._audit("credential_profile.update", actor, stored, client, detail)
        return stored

    async def delete(self, actor: Principal, profile_id: str, *, client: str | None = None) -> None:
        """Refused with ``InUseError`` while monitors or discovery profiles use it."""
        profile = await self.get(actor, profile_id)
        await self._hub.run_sync(
            self._state.delete_credential_profile, profile_id, owner_scope(actor)
        )
        self._hub.credentials.forget(profile_id)
        await self._audit("credential_profile.delete", actor, profile, client)

    async def test(
        self,
        actor: Principal,
        profile_id: str,
        host: str,
        *,
        collector: str,
        timeout: timedelta,
        client: str | None = None,
    ) -> TestOutcome:
        """Log in to ``host`` with the profile through ``collector`` and say what happened."""
        profile = await self.get(actor, profile_id)
        identifier = self._identifier(collector)
        credential = profile.credential(await self._hub.credentials.password(profile))
        target = Target(machine_id="", host=host, credential=credential)
        started = time.monotonic()
        try:
            with anyio.fail_after(timeout.total_seconds()):
                identity = await _identify(identifier, target)
        except (RemoteError, ConfigError, TimeoutError, OSError) as error:
            outcome = TestOutcome(ok=False, elapsed=time.monotonic() - started, error=error)
        else:
            outcome = TestOutcome(ok=True, elapsed=time.monotonic() - started, identity=identity)
        detail = {"host": host, "collector": collector, "ok": outcome.ok}
        await self._audit("credential_profile.test", actor, profile, client, detail)
        return outcome

    def _identifier(self, name: str) -> Identifier:
        usable = ", ".join(identifier_names(self._hub)) or "none installed"
        try:
            collector = self._hub.collector(name)
        except PluginError:
            raise _invalid("collector", f"no collector {name!r} (usable: {usable})") from None
        if not isinstance(collector, Identifier):
            raise _invalid("collector", f"{name!r} cannot identify hosts (usable: {usable})")
        return collector

    async def _audit(
        self,
        action: str,
        actor: Principal,
        profile: CredentialProfile,
        client: str | None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        await audit.record(
            self._hub,
            action=action,
            actor=actor,
            target_type="credential_profile",
            target_id=profile.id,
            client=client,
            detail={"name": profile.name, **(detail or {})},
        )


@attrs.frozen
class TestOutcome:
    """What a credential test found: the host's identity, or the failure."""

    __test__ = False  # not a pytest test class, despite its name

    ok: bool
    elapsed: float
    identity: HostIdentity | None = None
    error: BaseException | None = None

    @property
    def error_kind(self) -> str | None:
        if self.error is None:
            return None
        if isinstance(self.error, RemoteError):
            return self.error.kind.value
        if isinstance(self.error, ConfigError):
            return "configuration"  # e.g. the transport's library is not installed
        return "timeout" if isinstance(self.error, TimeoutError) else "unreachable"

    @property
    def message(self) -> str | None:
        return None if self.error is None else describe_failure(self.error)


async def _identify(identifier: Identifier, target: Target) -> HostIdentity:
    if inspect.iscoroutinefunction(identifier.identify):
        result = await identifier.identify(target)
    else:
        result = await anyio.to_thread.run_sync(identifier.identify, target, abandon_on_cancel=True)
    if not isinstance(result, HostIdentity):
        raise TypeError("identify() must return a lunasentri_core.HostIdentity")
    return result


def identifier_names(hub: Sentri) -> list[str]:
    """Collector plugins that can identify hosts (those usable for discovery and tests)."""
    names = []
    for name, component in sorted(hub.plugins.components(ComponentKind.COLLECTOR).items()):
        if callable(getattr(component.cls, "identify", None)):
            names.append(name)
    return names


def collector_names(hub: Sentri) -> list[str]:
    """Every collector plugin (what a monitor may name)."""
    return sorted(hub.plugins.components(ComponentKind.COLLECTOR))


# --------------------------------------------------------------------------- key rotation


@attrs.frozen
class RotationReport:
    key_id: str
    """The key that encrypts from now on."""
    reencrypted: int
    unchanged: int
    """Already under the current key."""
    skipped: int
    """Changed or deleted while the rotation ran (they are sealed under the new key)."""


def rotate_keys(settings: Settings, state: StateStore, *, new_key: bool = True) -> RotationReport:
    """Add a new current key (key file only) and re-encrypt every stored secret under it.

    With keys from ``[secrets] keys``, the settings name the current key: give
    ``new_key=False`` to only re-encrypt. Safe to run again after an interruption.
    """
    if new_key:
        rotate(settings.secrets, settings.data_dir)
    box = open_secret_box(settings)
    done = unchanged = skipped = 0
    for profile_id, envelope in state.list_credential_secrets():
        context = CredentialProfile(id=profile_id, owner_id="", name="").secret_context()
        sealed = box.reencrypt(envelope, context)
        if sealed == envelope:
            unchanged += 1
        elif state.replace_credential_secret(profile_id, envelope, sealed):
            done += 1
        else:
            skipped += 1
    return RotationReport(box.keyring.current, done, unchanged, skipped)
