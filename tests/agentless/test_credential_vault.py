"""Credential profiles in the hub: sealed at rest, decrypted at use, cached with bounds."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import attrs
import pytest

from lunasentri_core import ConflictError, NotFoundError, Sentri, Settings, ValidationError
from lunasentri_core.components import Principal
from lunasentri_core.model import Role, User
from lunasentri_core.secretbox import DecryptionError, key_id_of
from lunasentri_core.services.credentials import CredentialProfiles, ProfileFields, rotate_keys

from .door import PASSWORD, USERNAME, door_plugins

pytestmark = pytest.mark.anyio


def settings(data_dir: Path, **extra: Any) -> Settings:
    return Settings.load(environ={}, data_dir=data_dir, **extra)


async def owner(hub: Sentri, name: str = "alice") -> Principal:
    user = await hub.run_sync(hub.storage.state.add_user, User(id=name, username=name), "x")
    return Principal(kind="user", id=user.id, role=Role.USER)


def fields(name: str = "domain admins", **changes: Any) -> ProfileFields:
    return ProfileFields(name=name, username=USERNAME, domain="CORP", **changes)


async def test_the_password_is_sealed_at_rest_and_opened_at_use(tmp_path: Path) -> None:
    async with Sentri(settings(tmp_path / "data"), plugins=door_plugins()) as hub:
        alice = await owner(hub)
        profile = await CredentialProfiles(hub).create(alice, fields(), PASSWORD)
        assert profile.secret is not None
        assert PASSWORD not in profile.secret
        assert PASSWORD not in repr(profile)
        credential = await hub.credentials.remote_credential(profile.id, alice.id)
        assert (credential.username, credential.password) == (USERNAME, PASSWORD)
        assert credential.account == f"CORP\\{USERNAME}"
        assert PASSWORD not in repr(credential)
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("*.db*"))
    assert raw, "no database file found"
    assert PASSWORD.encode() not in raw
    assert PASSWORD.encode("utf-16-le") not in raw


async def test_another_owner_cannot_use_a_profile(tmp_path: Path) -> None:
    async with Sentri(settings(tmp_path / "data")) as hub:
        alice, bob = await owner(hub, "alice"), await owner(hub, "bob")
        profile = await CredentialProfiles(hub).create(alice, fields(), PASSWORD)
        with pytest.raises(NotFoundError):
            await hub.credentials.remote_credential(profile.id, bob.id)
        with pytest.raises(NotFoundError):
            await CredentialProfiles(hub).get(bob, profile.id)
        with pytest.raises(ConflictError):
            await CredentialProfiles(hub).create(alice, fields(), "other")


@pytest.mark.parametrize(
    ("given", "password", "field"),
    [
        ({"username": None}, PASSWORD, "username"),
        ({}, None, "password"),
        ({"transport": "certificate", "https": False}, None, "https"),
        ({"transport": "certificate"}, None, "cert_path"),
        ({"port": 0}, PASSWORD, "port"),
        ({"name": " padded "}, PASSWORD, "name"),
    ],
)
async def test_bad_profiles_are_refused_naming_the_field(
    tmp_path: Path, given: dict[str, Any], password: str | None, field: str
) -> None:
    async with Sentri(settings(tmp_path / "data")) as hub:
        alice = await owner(hub)
        with pytest.raises(ValidationError) as caught:
            await CredentialProfiles(hub).create(alice, attrs.evolve(fields(), **given), password)
        assert caught.value.first_path == field
        assert await CredentialProfiles(hub).all(alice) == []


async def test_kerberos_and_certificates_need_no_password(tmp_path: Path) -> None:
    async with Sentri(settings(tmp_path / "data")) as hub:
        alice = await owner(hub)
        profiles = CredentialProfiles(hub)
        kerberos = await profiles.create(alice, fields("k", transport="kerberos"), None)
        certificate = fields("c", transport="certificate", cert_path="/c.pem", key_path="/k.pem")
        made = await profiles.create(alice, attrs.evolve(certificate, username=None), None)
        assert not kerberos.has_password
        assert not made.has_password
        credential = await hub.credentials.remote_credential(made.id)
        assert (credential.password, credential.cert_path) == (None, "/c.pem")


async def test_a_change_is_used_at_once_even_when_cached(tmp_path: Path) -> None:
    async with Sentri(settings(tmp_path / "data")) as hub:
        alice = await owner(hub)
        profiles = CredentialProfiles(hub)
        profile = await profiles.create(alice, fields(), "old password")
        assert (await hub.credentials.remote_credential(profile.id)).password == "old password"
        assert len(hub.credentials) == 1
        changed = await profiles.update(alice, profile.id, {}, "new password")
        assert changed.version == profile.version + 1
        assert (await hub.credentials.remote_credential(profile.id)).password == "new password"
        cleared = await profiles.update(
            alice, profile.id, {"transport": "kerberos"}, None, clear_password=True
        )
        assert (cleared.has_password, cleared.version) == (False, profile.version + 2)
        assert (await hub.credentials.remote_credential(profile.id)).password is None
        await profiles.delete(alice, profile.id)
        assert len(hub.credentials) == 0
        with pytest.raises(NotFoundError):
            await hub.credentials.remote_credential(profile.id)


async def test_a_change_made_by_another_process_is_seen(tmp_path: Path) -> None:
    """Two hubs on one database, as two server processes: neither uses a stale copy."""
    data = tmp_path / "data"
    # The follower checks for changes once at start, then only when the test asks.
    async with (
        Sentri(settings(data, sync_interval="1h")) as first,
        Sentri(settings(data, sync_interval="1h")) as second,
    ):
        alice = await owner(first)
        profile = await CredentialProfiles(first).create(alice, fields(), "old password")
        assert (await first.credentials.remote_credential(profile.id)).password == "old password"
        await CredentialProfiles(second).update(alice, profile.id, {}, "new password")
        assert (await first.credentials.remote_credential(profile.id)).password == "new password"
        await first.changes.check()  # takes in the change above
        assert (await first.credentials.remote_credential(profile.id)).password == "new password"
        assert len(first.credentials) == 1
        await CredentialProfiles(second).update(alice, profile.id, {"domain": "LAB"}, None)
        # The change counter moved: the follower drops every decrypted copy.
        assert await first.changes.check() is True
        assert len(first.credentials) == 0


async def test_decrypted_passwords_expire(tmp_path: Path) -> None:
    zero = settings(tmp_path / "data", secrets={"cache_ttl": "0s"})
    async with Sentri(zero) as hub:
        alice = await owner(hub)
        profile = await CredentialProfiles(hub).create(alice, fields(), PASSWORD)
        assert (await hub.credentials.remote_credential(profile.id)).password == PASSWORD
        assert len(hub.credentials) == 0


async def test_rotation_reencrypts_every_secret_and_they_still_open(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with Sentri(settings(data)) as hub:
        alice = await owner(hub)
        profiles = CredentialProfiles(hub)
        made = [await profiles.create(alice, fields(f"p{i}"), f"pw{i}") for i in range(3)]
        first_key = key_id_of(made[0].secret or "")
        report = rotate_keys(hub.settings, hub.storage.state)
        assert (report.reencrypted, report.unchanged, report.skipped) == (3, 0, 0)
        assert report.key_id != first_key
        hub.credentials.forget()
        for index, profile in enumerate(made):
            stored = await CredentialProfiles(hub).get(alice, profile.id)
            assert key_id_of(stored.secret or "") == report.key_id
            assert stored.version == profile.version  # same password: nothing changed
            assert (await hub.credentials.remote_credential(profile.id)).password == f"pw{index}"
        again = rotate_keys(hub.settings, hub.storage.state, new_key=False)
        assert (again.reencrypted, again.unchanged) == (0, 3)


async def test_a_secret_moved_to_another_row_does_not_open(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with Sentri(settings(data)) as hub:
        alice = await owner(hub)
        one = await CredentialProfiles(hub).create(alice, fields("one"), "first secret")
        two = await CredentialProfiles(hub).create(alice, fields("two"), "second secret")
    database = next(data.glob("*.db"))
    with sqlite3.connect(database) as conn:
        conn.execute(
            "UPDATE credential_profiles SET secret = (SELECT secret FROM credential_profiles "
            "WHERE id = ?) WHERE id = ?",
            (one.id, two.id),
        )
    async with Sentri(settings(data)) as hub:
        with pytest.raises(DecryptionError):
            await hub.credentials.remote_credential(two.id)
