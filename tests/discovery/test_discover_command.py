"""``lunasentri discover PROFILE``, run as a user runs it: a subprocess on the storage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from test_cli import lunasentri

from lunasentri_core import Sentri, Settings
from lunasentri_core.components import Principal
from lunasentri_core.model import Role, User
from lunasentri_core.services.discovery import Discovery

from .listeners import Listeners, listeners

NET = "127.71.70"


@pytest.fixture
def live() -> Iterator[Listeners]:
    with listeners() as made:
        yield made


def prepare(data_dir: Path, owner: str, port: int, name: str = "office") -> str:
    """A user ``owner`` with a discovery profile ``name`` of NET.1-4 on ``port``."""

    async def make() -> str:
        async with Sentri(Settings.load(environ={}, data_dir=data_dir)) as hub:
            state = hub.storage.state
            user = state.find_user(owner) or await hub.run_sync(
                state.add_user, User(id=owner, username=owner), "x"
            )
            actor = Principal(kind="user", id=user.id, role=Role.USER)
            profile = await Discovery(hub).create(
                actor, name=name, targets=[f"{NET}.1-4"], ports=[port]
            )
            return profile.id

    return anyio.run(make)


def test_discover_runs_the_profile_and_lists_what_it_found(tmp_path: Path, live: Listeners) -> None:
    data = tmp_path / "data"
    port = live.listen(f"{NET}.3")
    prepare(data, "alice", port)
    env = {"LUNASENTRI_DATA_DIR": str(data)}

    result = lunasentri("discover", "office", env=env)

    assert result.returncode == 0, result.stderr
    assert "scanned 4 of 4, found 1, errors 0" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith(f"{NET}.3"))
    assert row.split() == [f"{NET}.3", "-", "-", str(port), "not", "tried"]

    again = lunasentri("discover", "office", "--json", env=env)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert (report["state"], report["found"]) == ("done", 1)
    assert [d["address"] for d in report["devices"]] == [f"{NET}.3"]


def test_discover_says_which_profile_it_cannot_choose(tmp_path: Path, live: Listeners) -> None:
    data = tmp_path / "data"
    port = live.listen(f"{NET}.3")
    prepare(data, "alice", port)
    bob_profile = prepare(data, "bob", port)
    env = {"LUNASENTRI_DATA_DIR": str(data)}

    ambiguous = lunasentri("discover", "office", env=env)
    unknown = lunasentri("discover", "nowhere", env=env)
    by_owner = lunasentri("discover", "office", "--owner", "bob", "--json", env=env)
    by_id = lunasentri("discover", bob_profile, "--json", env=env)

    assert ambiguous.returncode == 1
    assert "--owner" in ambiguous.stderr
    assert unknown.returncode == 1
    assert "no discovery profile named 'nowhere'" in unknown.stderr
    assert by_owner.returncode == 0, by_owner.stderr
    assert json.loads(by_owner.stdout)["profile_id"] == bob_profile
    assert by_id.returncode == 0, by_id.stderr
