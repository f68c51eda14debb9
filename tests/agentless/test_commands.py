"""``lunasentri monitors`` and ``lunasentri keys rotate`` on a real data directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from lunasentri_core import Sentri, Settings
from lunasentri_core.components import Principal
from lunasentri_core.model import User
from lunasentri_core.secretbox import key_id_of
from lunasentri_core.services.credentials import CredentialProfiles, ProfileFields
from lunasentri_core.services.monitors import Devices, Monitors

from .door import PASSWORD, USERNAME, door_plugins

pytestmark = pytest.mark.anyio


def lunasentri(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUNASENTRI_")}
    env["LUNASENTRI_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "lunasentri_core.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def populate(data_dir: Path) -> tuple[str, str]:
    """A user with a credential profile and a monitor; returns (monitor id, profile id)."""
    settings = Settings.load(environ={}, data_dir=data_dir)
    async with Sentri(settings, plugins=door_plugins()) as hub:
        await hub.run_sync(hub.storage.state.add_user, User(id="u1", username="alice"), "x")
        alice = Principal(kind="user", id="u1")
        fields = ProfileFields(name="corp", username=USERNAME)
        profile = await CredentialProfiles(hub).create(alice, fields, PASSWORD)
        device = await Devices(hub).add(alice, "srv-01.example.test")
        monitor = await Monitors(hub).create(
            alice,
            device_id=device.id,
            credential_profile_id=profile.id,
            collector="door",
            interval=timedelta(seconds=60),
        )
    return monitor.id, profile.id


async def test_monitors_are_listed_disabled_and_enabled(tmp_path: Path) -> None:
    data = tmp_path / "data"
    monitor_id, _ = await populate(data)
    listed = lunasentri(data, "monitors", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)["items"]
    assert (row["id"], row["address"], row["state"]) == (
        monitor_id,
        "srv-01.example.test",
        "pending",
    )

    off = lunasentri(data, "monitors", "disable", monitor_id)
    assert off.returncode == 0, off.stderr
    table = lunasentri(data, "monitors", "list")
    assert monitor_id in table.stdout
    assert "disabled" in table.stdout
    assert json.loads(lunasentri(data, "monitors", "list", "--failing", "--json").stdout) == {
        "items": []
    }
    assert lunasentri(data, "monitors", "enable", monitor_id).returncode == 0
    (row,) = json.loads(lunasentri(data, "monitors", "list", "--json").stdout)["items"]
    assert row["enabled"] is True

    missing = lunasentri(data, "monitors", "disable", "no-such-monitor")
    assert missing.returncode != 0
    assert "not found" in missing.stderr


async def test_keys_rotate_reencrypts_the_stored_passwords(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _, profile_id = await populate(data)
    settings = Settings.load(environ={}, data_dir=data)
    async with Sentri(settings) as hub:
        before = await hub.run_sync(hub.storage.state.get_credential_profile, profile_id)
    rotated = lunasentri(data, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted 1 secret(s)" in rotated.stdout
    async with Sentri(settings) as hub:
        after = await hub.run_sync(hub.storage.state.get_credential_profile, profile_id)
        assert key_id_of(after.secret or "") != key_id_of(before.secret or "")
        assert (await hub.credentials.remote_credential(profile_id)).password == PASSWORD
    again = lunasentri(data, "keys", "rotate", "--reencrypt-only")
    assert "re-encrypted 0 secret(s), 1 already under it" in again.stdout
