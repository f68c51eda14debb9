"""Discovery runs in a real hub on SQLite, against real listeners on loopback addresses."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from lunasentri_core import Sentri, Settings, ValidationError
from lunasentri_core.components import Principal
from lunasentri_core.errors import ConflictError, NotFoundError
from lunasentri_core.model import DiscoveryRun, Role, RunState, User, utcnow
from lunasentri_core.services import discovery as discovery_module
from lunasentri_core.services.credentials import CredentialProfiles, ProfileFields
from lunasentri_core.services.discovery import Discovery, fail_stale_runs

from .identifiers import PASSWORD, USERNAME, Sesame, identifier_plugins
from .listeners import Listeners, listeners

pytestmark = pytest.mark.anyio

NET = "127.71.10"


@pytest.fixture
def live() -> Iterator[Listeners]:
    with listeners() as made:
        yield made


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    Sesame.gate = threading.Event()
    try:
        yield Sesame.gate
    finally:
        Sesame.gate.set()
        Sesame.gate = None


def settings(data_dir: Path) -> Settings:
    return Settings.load(environ={}, data_dir=data_dir)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Sentri]:
    async with Sentri(settings(tmp_path / "data"), plugins=identifier_plugins()) as made:
        yield made


async def user(hub: Sentri, name: str = "alice") -> Principal:
    made = await hub.run_sync(hub.storage.state.add_user, User(id=name, username=name), "x")
    return Principal(kind="user", id=made.id, role=Role.USER)


async def credential(hub: Sentri, actor: Principal, password: str = PASSWORD) -> str:
    fields = ProfileFields(name=f"creds-{password[:4]}", username=USERNAME, https=False)
    return (await CredentialProfiles(hub).create(actor, fields, password)).id


async def finished(hub: Sentri, run: DiscoveryRun) -> DiscoveryRun:
    with anyio.fail_after(60):
        while True:
            run = await hub.run_sync(hub.storage.state.get_discovery_run, run.id)
            if run.state is not RunState.RUNNING:
                return run
            await anyio.sleep(0.05)


async def test_a_run_records_exactly_the_hosts_with_open_ports(
    hub: Sentri, live: Listeners
) -> None:
    alice = await user(hub)
    port = live.listen(f"{NET}.2")
    live.listen(f"{NET}.7", port)
    live.listen(f"{NET}.40", port)  # outside the targets
    service = Discovery(hub)
    profile = await service.create(
        alice, name="lan", targets=[f"{NET}.1-10"], ports=[port, 1], timeout=timedelta(seconds=2)
    )
    run = await service.start(alice, profile.id)
    assert run.state is RunState.RUNNING
    done = await finished(hub, run)
    assert (done.state, done.total, done.scanned, done.found, done.errors) == (
        RunState.DONE,
        10,
        10,
        2,
        0,
    )
    assert done.finished_at is not None
    devices = await hub.run_sync(hub.storage.state.list_devices, alice.id)
    assert sorted((d.address, d.open_ports) for d in devices) == [
        (f"{NET}.2", (port,)),
        (f"{NET}.7", (port,)),
    ]
    assert all(d.discovery_profile_id == profile.id and d.last_seen for d in devices)
    assert all(d.credential_ok is None for d in devices)  # no credential: not tried
    assert live.accepted[(f"{NET}.40", port)] == 0
    assert {d.address for d in await service.found(alice, done)} == {f"{NET}.2", f"{NET}.7"}


async def test_a_rerun_updates_devices_and_never_duplicates_them(
    hub: Sentri, live: Listeners
) -> None:
    alice = await user(hub)
    port = live.listen(f"{NET}.3")
    service = Discovery(hub)
    profile = await service.create(alice, name="lan", targets=[f"{NET}.3"], ports=[port])
    await finished(hub, await service.start(alice, profile.id))
    first = await hub.run_sync(hub.storage.state.list_devices, alice.id)
    second_port = live.listen(f"{NET}.3")
    await service.update(alice, profile.id, ports=[port, second_port])
    await finished(hub, await service.start(alice, profile.id))
    again = await hub.run_sync(hub.storage.state.list_devices, alice.id)
    assert len(again) == 1
    assert (again[0].id, again[0].first_seen) == (first[0].id, first[0].first_seen)
    assert again[0].open_ports == tuple(sorted((port, second_port)))
    assert again[0].last_seen is not None
    assert first[0].last_seen is not None
    assert again[0].last_seen >= first[0].last_seen
    runs = await service.runs(alice, profile.id)
    assert [r.state for r in runs] == [RunState.DONE, RunState.DONE]


async def test_hosts_with_ws_management_open_are_identified_with_the_credential(
    hub: Sentri, live: Listeners
) -> None:
    alice = await user(hub)
    good, bad = await credential(hub, alice), await credential(hub, alice, "wrong password")
    for n in (2, 3):
        live.listen(f"{NET}.{n}", 5985)
    other = live.listen(f"{NET}.4")  # open, but no WS-Management: not identified
    service = Discovery(hub)
    profile = await service.create(
        alice,
        name="lan",
        targets=[f"{NET}.2-4"],
        ports=[5985, other],
        credential_profile_id=good,
        collector="sesame",
    )
    done = await finished(hub, await service.start(alice, profile.id))
    assert (done.found, done.errors) == (3, 0)
    devices = {d.address: d for d in await hub.run_sync(hub.storage.state.list_devices, alice.id)}
    assert devices[f"{NET}.2"].hostname == "WIN-2"
    assert devices[f"{NET}.2"].os == "Microsoft Windows Server 2019 Datacenter"
    assert devices[f"{NET}.2"].credential_ok is True
    assert devices[f"{NET}.2"].credential_profile_id == good
    assert devices[f"{NET}.4"].credential_ok is None

    await service.update(alice, profile.id, credential_profile_id=bad)
    done = await finished(hub, await service.start(alice, profile.id))
    assert (done.found, done.errors) == (3, 2)
    device = await hub.run_sync(hub.storage.state.get_device, devices[f"{NET}.2"].id)
    assert device.credential_ok is False
    assert device.credential_error == "authentication: the host refused the credential (HTTP 401)"
    assert device.hostname == "WIN-2"  # what the failed attempt could not learn is kept


async def test_a_credential_needs_a_collector_that_identifies(hub: Sentri) -> None:
    alice = await user(hub)
    creds = await credential(hub, alice)
    service = Discovery(hub)
    for collector, says in (("counter", "cannot identify"), ("nothere", "no collector")):
        profile = await service.create(
            alice,
            name=collector,
            targets=[f"{NET}.1"],
            credential_profile_id=creds,
            collector=collector,
        )
        with pytest.raises(ValidationError, match=says) as caught:
            await service.start(alice, profile.id)
        assert caught.value.errors[0].path == "collector"
        assert await service.runs(alice, profile.id) == []


async def test_deleting_a_profile_keeps_its_devices(hub: Sentri, live: Listeners) -> None:
    alice = await user(hub)
    port = live.listen(f"{NET}.5")
    service = Discovery(hub)
    profile = await service.create(alice, name="lan", targets=[f"{NET}.5"], ports=[port])
    run = await finished(hub, await service.start(alice, profile.id))
    await service.delete(alice, profile.id)
    devices = await hub.run_sync(hub.storage.state.list_devices, alice.id)
    assert [(d.address, d.discovery_profile_id) for d in devices] == [(f"{NET}.5", None)]
    with pytest.raises(NotFoundError):
        await service.get_run(alice, run.id)


async def test_more_than_a_slash_20_needs_confirmation(hub: Sentri) -> None:
    alice = await user(hub)
    service = Discovery(hub)
    # Refused before the run starts: nothing of the block is ever scanned.
    profile = await service.create(alice, name="big", targets=["127.72.0.0/19"], ports=[9])
    with pytest.raises(ValidationError, match="8190 hosts") as caught:
        await service.start(alice, profile.id)
    assert caught.value.errors[0].path == "confirm_large"
    assert await service.runs(alice, profile.id) == []


async def test_progress_is_recorded_while_the_run_goes_on(
    hub: Sentri, live: Listeners, gate: threading.Event
) -> None:
    alice = await user(hub)
    creds = await credential(hub, alice)
    for n in (2, 3):
        live.listen(f"{NET}.{n}", 5985)
    service = Discovery(hub)
    profile = await service.create(
        alice,
        name="lan",
        targets=[f"{NET}.1-4"],
        ports=[5985],
        credential_profile_id=creds,
        collector="sesame",
    )
    run = await service.start(alice, profile.id)
    with pytest.raises(ConflictError):
        await service.start(alice, profile.id)  # one run of a profile at a time
    with anyio.fail_after(60):
        while True:  # identification is held: the scan's progress shows meanwhile
            seen = await service.get_run(alice, run.id)
            if seen.scanned == 4:
                break
            await anyio.sleep(0.05)
    assert (seen.state, seen.total, seen.found) == (RunState.RUNNING, 4, 2)
    gate.set()
    done = await finished(hub, run)
    assert (done.state, done.found, done.errors) == (RunState.DONE, 2, 0)


async def test_a_run_stopped_by_shutdown_is_failed(
    tmp_path: Path, live: Listeners, gate: threading.Event
) -> None:
    data = tmp_path / "data"
    async with Sentri(settings(data), plugins=identifier_plugins()) as hub:
        alice = await user(hub)
        creds = await credential(hub, alice)
        live.listen(f"{NET}.2", 5985)
        service = Discovery(hub)
        profile = await service.create(
            alice,
            name="lan",
            targets=[f"{NET}.2"],
            ports=[5985],
            credential_profile_id=creds,
            collector="sesame",
        )
        run = await service.start(alice, profile.id)
    gate.set()
    async with Sentri(settings(data), plugins=identifier_plugins()) as hub:
        stopped = await hub.run_sync(hub.storage.state.get_discovery_run, run.id)
    assert (stopped.state, stopped.error) == (RunState.FAILED, discovery_module.STOPPED)
    assert stopped.finished_at is not None


async def test_runs_of_a_process_that_died_are_failed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    later = discovery_module.STALE_AFTER + timedelta(seconds=5)
    async with Sentri(settings(data)) as hub:
        alice = await user(hub)
        profile = await Discovery(hub).create(alice, name="lan", targets=[f"{NET}.1"])
        orphan = DiscoveryRun(
            id="orphan", profile_id=profile.id, owner_id=alice.id, started_at=utcnow()
        )
        await hub.run_sync(hub.storage.state.add_discovery_run, orphan)
        assert await fail_stale_runs(hub) == 0  # recorded just now: its process may live
    async with Sentri(settings(data), clock=lambda: utcnow() + later) as hub:
        # The hub fails them at start too; look at what it recorded.
        with anyio.fail_after(60):
            while True:
                run = await hub.run_sync(hub.storage.state.get_discovery_run, "orphan")
                if run.state is not RunState.RUNNING:
                    break
                await anyio.sleep(0.05)
    assert (run.state, run.error) == (RunState.FAILED, discovery_module.LOST)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"targets": ["10.0.0.0/24", "10.0.0.9-1"]}, "targets[1]"),
        ({"targets": []}, "targets"),
        ({"ports": []}, "ports"),
        ({"ports": [5985, 5985]}, "ports"),
        ({"ports": [0]}, "ports[0]"),
        ({"concurrency": 0}, "concurrency"),
        ({"timeout": timedelta(0)}, "timeout"),
        ({"collector": "Not A Name"}, "collector"),
        ({"name": " spaced "}, "name"),
        ({"credential_profile_id": "nope"}, "credential_profile_id"),
    ],
)
async def test_bad_profiles_are_refused_naming_the_field(
    hub: Sentri, changes: dict[str, Any], field: str
) -> None:
    alice = await user(hub)
    service = Discovery(hub)
    fields: dict[str, Any] = {"name": "lan", "targets": [f"{NET}.1"], **changes}
    with pytest.raises(ValidationError) as caught:
        await service.create(alice, **fields)
    assert caught.value.errors[0].path == field
    assert await service.all(alice) == []
    profile = await service.create(alice, name="ok", targets=[f"{NET}.1"])
    with pytest.raises(ValidationError) as caught:
        await service.update(alice, profile.id, **changes)
    assert caught.value.errors[0].path == field
    assert await service.get(alice, profile.id) == profile


async def test_another_users_profiles_and_runs_are_not_found(hub: Sentri, live: Listeners) -> None:
    alice, bob = await user(hub, "alice"), await user(hub, "bob")
    port = live.listen(f"{NET}.6")
    service = Discovery(hub)
    profile = await service.create(alice, name="lan", targets=[f"{NET}.6"], ports=[port])
    run = await finished(hub, await service.start(alice, profile.id))
    for attempt in (
        service.get(bob, profile.id),
        service.update(bob, profile.id, name="mine"),
        service.delete(bob, profile.id),
        service.start(bob, profile.id),
        service.runs(bob, profile.id),
        service.get_run(bob, run.id),
    ):
        with pytest.raises(NotFoundError):
            await attempt
    assert await service.all(bob) == []
    admin = attrs.evolve(bob, role=Role.ADMIN)
    assert [p.id for p in await service.all(admin)] == [profile.id]
    assert await service.get(alice, profile.id) == profile


async def test_deleting_a_profile_during_its_run_stops_the_run(
    hub: Sentri, live: Listeners, gate: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await user(hub)
    creds = await credential(hub, alice)
    live.listen(f"{NET}.2", 5985)
    service = Discovery(hub)
    profile = await service.create(
        alice,
        name="lan",
        targets=[f"{NET}.1-3"],
        ports=[5985],
        credential_profile_id=creds,
        collector="sesame",
    )
    run = await service.start(alice, profile.id)
    await service.delete(alice, profile.id)
    gate.set()
    with anyio.fail_after(60):  # the run's task ends, having recorded nothing more
        while any(t.name and run.id in t.name for t in _tasks()):
            await anyio.sleep(0.05)
    with pytest.raises(NotFoundError):
        await service.get_run(alice, run.id)
    assert await hub.run_sync(hub.storage.state.list_discovery_profiles, alice.id) == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def _tasks() -> list[anyio.TaskInfo]:
    return list(anyio.get_running_tasks())
