"""The agentless part of the storage contract: :class:`~lunasentri_core.storage.AgentlessStore`.

Beyond the protocol's docstrings it pins down: records read back equal to what
was added; another owner's record reads as missing (``NotFoundError``) for
reads, updates of what it refers to and deletions; names of credential and
discovery profiles are unique per owner, addresses of devices too; every
refused deletion raises ``InUseError`` whose ``users`` lists exactly the ids
(sorted) of what uses the record, by kind (``"monitors"``,
``"discovery_profiles"``); the last monitor of a device takes the machine and
its series with it, an earlier one does not; deleting a user deletes all their
agentless records; ``upsert_devices`` never duplicates an address, also when
called concurrently; of concurrent callers, one starts a discovery run and one
replaces a secret, and ``claim_due_monitors`` hands each monitor to one caller;
``fail_discovery_runs`` compares with when the store recorded a run, by the
wall clock.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Protocol

import attrs
import pytest

from lunasentri_core.errors import ConflictError, InUseError, NotFoundError
from lunasentri_core.model import (
    CredentialProfile,
    Device,
    DiscoveryRun,
    Machine,
    MachineKind,
    MachineSamples,
    Monitor,
    PollOutcome,
    Reading,
    RunState,
    Sample,
    User,
    new_id,
    utcnow,
)
from lunasentri_core.remote import Transport
from lunasentri_core.storage.protocols import StateStore, StorageBackend
from lunasentri_core.testing.builders import (
    BASE_TIME,
    make_credential_profile,
    make_device,
    make_discovery_profile,
    make_machine,
    make_monitor,
    make_user,
)
from lunasentri_core.testing.contract import Contract
from lunasentri_core.testing.races import CALLERS, race

NOW = BASE_TIME + timedelta(hours=1, microseconds=17)
LEASE = NOW + timedelta(minutes=2)
MICROSECOND = timedelta(microseconds=1)


class _Record(Protocol):
    @property
    def id(self) -> str: ...


def _ids(records: Iterable[_Record]) -> list[str]:
    return [record.id for record in records]


def _user(state: StateStore) -> User:
    return state.add_user(make_user(), "hash-of-a-password")


def _machine_for(device: Device) -> Machine:
    return make_machine(
        owner_id=device.owner_id, kind=MachineKind.AGENTLESS, hostname=device.hostname, labels={}
    )


def _run(profile_id: str, owner_id: str, **overrides: Any) -> DiscoveryRun:
    fields: dict[str, Any] = {
        "id": new_id(),
        "profile_id": profile_id,
        "owner_id": owner_id,
        "started_at": BASE_TIME + timedelta(minutes=1, microseconds=3),
        "total": 8,
    }
    fields.update(overrides)
    return DiscoveryRun(**fields)


@attrs.frozen
class _Fleet:
    """An owner with a credential profile and a device."""

    owner: User
    credential: CredentialProfile
    device: Device


class AgentlessStoreContract(Contract):
    """Tests of the agentless records of ``storage.state``; part of
    :class:`~lunasentri_core.testing.StorageContract`."""

    __test__ = False

    @pytest.fixture
    def state(self, storage: StorageBackend) -> StateStore:
        return storage.state

    def fleet(self, state: StateStore) -> _Fleet:
        owner = _user(state)
        credential = state.add_credential_profile(make_credential_profile(owner.id))
        device = state.add_device(make_device(owner.id))
        return _Fleet(owner, credential, device)

    def monitored(self, state: StateStore, fleet: _Fleet, **overrides: Any) -> Monitor:
        """A monitor of the fleet's device (made the device's machine if it has none)."""
        device = state.get_device(fleet.device.id)
        monitor = make_monitor(device, fleet.credential.id, **overrides)
        return state.add_monitor(monitor, _machine_for(device))

    # ------------------------------------------------------------ credential profiles

    def test_credential_profile_round_trip(self, state: StateStore) -> None:
        owner = _user(state)
        full = make_credential_profile(
            owner.id,
            transport=Transport.CERTIFICATE,
            username=None,
            domain=None,
            https=True,
            port=15986,
            verify_tls=False,
            ca_path="/etc/lunasentri/ca.pem",
            cert_path="/etc/lunasentri/client.pem",
            key_path="/etc/lunasentri/client.key",
            secret=None,
            version=4,
        )
        bare = make_credential_profile(owner.id, https=False, port=None)
        assert state.add_credential_profile(full) == full
        assert state.add_credential_profile(bare) == bare
        assert state.get_credential_profile(full.id) == full
        assert state.get_credential_profile(bare.id, owner.id) == bare
        assert state.get_credential_profile(bare.id).secret == bare.secret
        assert sorted(_ids(state.list_credential_profiles(owner.id))) == sorted([full.id, bare.id])

    def test_credential_profiles_are_scoped_to_their_owner(self, state: StateStore) -> None:
        alice, bob = _user(state), _user(state)
        mine = state.add_credential_profile(make_credential_profile(alice.id))
        theirs = state.add_credential_profile(make_credential_profile(bob.id))
        with pytest.raises(NotFoundError):
            state.get_credential_profile(mine.id, bob.id)
        with pytest.raises(NotFoundError):
            state.delete_credential_profile(mine.id, bob.id)
        assert state.get_credential_profile(mine.id, alice.id) == mine
        assert _ids(state.list_credential_profiles(alice.id)) == [mine.id]
        assert _ids(state.list_credential_profiles(bob.id)) == [theirs.id]
        assert {mine.id, theirs.id} <= set(_ids(state.list_credential_profiles()))

    def test_credential_profile_names_are_unique_per_owner(self, state: StateStore) -> None:
        alice, bob = _user(state), _user(state)
        first = state.add_credential_profile(make_credential_profile(alice.id, name="domain"))
        with pytest.raises(ConflictError, match="domain"):
            state.add_credential_profile(make_credential_profile(alice.id, name="domain"))
        state.add_credential_profile(make_credential_profile(bob.id, name="domain"))
        other = state.add_credential_profile(make_credential_profile(alice.id, name="local"))
        with pytest.raises(ConflictError):
            state.update_credential_profile(attrs.evolve(other, name="domain"))
        assert state.get_credential_profile(other.id) == other
        assert _ids(state.list_credential_profiles(alice.id)) == [first.id, other.id]

    def test_unknown_credential_profile_is_not_found(self, state: StateStore) -> None:
        owner = _user(state)
        with pytest.raises(NotFoundError):
            state.get_credential_profile("no-such-id")
        with pytest.raises(NotFoundError):
            state.update_credential_profile(make_credential_profile(owner.id))
        with pytest.raises(NotFoundError):
            state.delete_credential_profile("no-such-id")
        with pytest.raises(NotFoundError):
            state.add_credential_profile(make_credential_profile("no-such-user"))

    def test_every_change_bumps_version_and_config_epoch(self, state: StateStore) -> None:
        owner = _user(state)
        profile = state.add_credential_profile(make_credential_profile(owner.id, version=1))
        epoch = state.config_epoch()
        changed = attrs.evolve(
            profile,
            name="renamed",
            username="other",
            secret="sealed:new",
            # Owner and creation time are the stored ones, whatever the copy says.
            owner_id=_user(state).id,
            created_at=BASE_TIME + timedelta(days=3),
            updated_at=BASE_TIME + timedelta(hours=5),
        )
        stored = state.update_credential_profile(changed)
        assert stored == attrs.evolve(
            changed, owner_id=owner.id, created_at=profile.created_at, version=2
        )
        assert state.get_credential_profile(profile.id) == stored
        assert state.config_epoch() > epoch
        # A stale copy (version 1) still gets the stored version plus one.
        epoch = state.config_epoch()
        again = state.update_credential_profile(attrs.evolve(changed, port=5985))
        assert again.version == 3
        assert state.config_epoch() > epoch
        epoch = state.config_epoch()
        state.get_credential_profile(profile.id)
        state.list_credential_profiles()
        assert state.config_epoch() == epoch, "reads moved config_epoch"
        state.delete_credential_profile(profile.id)
        assert state.config_epoch() > epoch

    def test_delete_credential_profile_in_use(self, state: StateStore) -> None:
        fleet = self.fleet(state)
        cred = fleet.credential.id
        monitor = self.monitored(state, fleet)
        other = self.monitored(state, fleet, collector="wmi")
        discovery = state.add_discovery_profile(
            make_discovery_profile(fleet.owner.id, credential_profile_id=cred)
        )
        tried = state.add_device(make_device(fleet.owner.id, credential_profile_id=cred))
        with pytest.raises(InUseError) as raised:
            state.delete_credential_profile(cred)
        assert raised.value.users == {
            "monitors": sorted([monitor.id, other.id]),
            "discovery_profiles": [discovery.id],
        }
        assert state.get_credential_profile(cred) == fleet.credential
        state.delete_monitor(monitor.id)
        state.delete_monitor(other.id)
        with pytest.raises(InUseError) as raised:
            state.delete_credential_profile(cred, fleet.owner.id)
        assert raised.value.users == {"discovery_profiles": [discovery.id]}
        state.delete_discovery_profile(discovery.id)
        state.delete_credential_profile(cred, fleet.owner.id)
        with pytest.raises(NotFoundError):
            state.get_credential_profile(cred)
        # A device only remembers the profile last tried on it: that link goes.
        assert state.get_device(tried.id).credential_profile_id is None

    def test_replace_credential_secret_is_compare_and_set(self, state: StateStore) -> None:
        owner = _user(state)
        sealed = state.add_credential_profile(make_credential_profile(owner.id, version=3))
        bare = state.add_credential_profile(make_credential_profile(owner.id, secret=None))
        secrets = dict(state.list_credential_secrets())
        assert secrets[sealed.id] == sealed.secret
        assert bare.id not in secrets
        assert sealed.secret is not None
        assert not state.replace_credential_secret(sealed.id, "not-the-stored-one", "x")
        assert state.get_credential_profile(sealed.id) == sealed
        assert state.replace_credential_secret(sealed.id, sealed.secret, "sealed:rotated")
        stored = state.get_credential_profile(sealed.id)
        assert stored == attrs.evolve(sealed, secret="sealed:rotated"), "the version moved"
        assert not state.replace_credential_secret(sealed.id, sealed.secret, "sealed:late")
        assert not state.replace_credential_secret("no-such-id", "a", "b")
        assert dict(state.list_credential_secrets())[sealed.id] == "sealed:rotated"

    def test_one_of_concurrent_secret_replacements_wins(self, state: StateStore) -> None:
        owner = _user(state)
        profile = state.add_credential_profile(make_credential_profile(owner.id))
        assert profile.secret is not None
        old = profile.secret
        won = race(lambda n: state.replace_credential_secret(profile.id, old, f"sealed:{n}"))
        assert won.count(True) == 1
        winner = won.index(True)
        assert state.get_credential_profile(profile.id).secret == f"sealed:{winner}"

    # ------------------------------------------------------------ discovery profiles

    def test_discovery_profile_round_trip(self, state: StateStore) -> None:
        owner = _user(state)
        cred = state.add_credential_profile(make_credential_profile(owner.id))
        profile = make_discovery_profile(
            owner.id,
            targets=("10.0.0.0/24", "10.1.0.5-10.1.0.40", "win-01.example.test"),
            credential_profile_id=cred.id,
            ports=(5986,),
            concurrency=17,
            timeout=timedelta(milliseconds=1500, microseconds=3),
            collector="winrm",
        )
        bare = make_discovery_profile(owner.id)
        assert state.add_discovery_profile(profile) == profile
        assert state.add_discovery_profile(bare) == bare
        assert state.get_discovery_profile(profile.id) == profile
        assert state.get_discovery_profile(bare.id, owner.id) == bare
        assert sorted(_ids(state.list_discovery_profiles(owner.id))) == sorted(
            [profile.id, bare.id]
        )

    def test_discovery_profiles_are_scoped_to_their_owner(self, state: StateStore) -> None:
        alice, bob = _user(state), _user(state)
        mine = state.add_discovery_profile(make_discovery_profile(alice.id))
        theirs = state.add_discovery_profile(make_discovery_profile(bob.id))
        with pytest.raises(NotFoundError):
            state.get_discovery_profile(mine.id, bob.id)
        with pytest.raises(NotFoundError):
            state.delete_discovery_profile(mine.id, bob.id)
        assert _ids(state.list_discovery_profiles(alice.id)) == [mine.id]
        assert _ids(state.list_discovery_profiles(bob.id)) == [theirs.id]
        # Another owner's credential profile reads as missing, on add and on update.
        bobs = state.add_credential_profile(make_credential_profile(bob.id))
        with pytest.raises(NotFoundError, match="credential profile"):
            state.add_discovery_profile(
                make_discovery_profile(alice.id, credential_profile_id=bobs.id)
            )
        with pytest.raises(NotFoundError, match="credential profile"):
            state.update_discovery_profile(attrs.evolve(mine, credential_profile_id=bobs.id))
        assert state.get_discovery_profile(mine.id) == mine

    def test_discovery_profile_names_and_updates(self, state: StateStore) -> None:
        owner = _user(state)
        first = state.add_discovery_profile(make_discovery_profile(owner.id, name="office"))
        with pytest.raises(ConflictError, match="office"):
            state.add_discovery_profile(make_discovery_profile(owner.id, name="office"))
        second = state.add_discovery_profile(make_discovery_profile(owner.id, name="lab"))
        with pytest.raises(ConflictError):
            state.update_discovery_profile(attrs.evolve(second, name="office"))
        cred = state.add_credential_profile(make_credential_profile(owner.id))
        changed = attrs.evolve(
            first,
            name="office-2",
            targets=("192.0.2.0/28",),
            credential_profile_id=cred.id,
            ports=(135, 5985),
            created_at=BASE_TIME + timedelta(days=9),
        )
        stored = state.update_discovery_profile(changed)
        assert stored == attrs.evolve(changed, created_at=first.created_at)
        assert state.get_discovery_profile(first.id) == stored
        with pytest.raises(NotFoundError):
            state.update_discovery_profile(make_discovery_profile(owner.id))
        with pytest.raises(NotFoundError):
            state.get_discovery_profile("no-such-id")
        with pytest.raises(NotFoundError):
            state.delete_discovery_profile("no-such-id")

    def test_deleting_a_discovery_profile_keeps_its_devices(self, state: StateStore) -> None:
        owner = _user(state)
        profile = state.add_discovery_profile(make_discovery_profile(owner.id))
        run = state.add_discovery_run(_run(profile.id, owner.id))
        [found] = state.upsert_devices([make_device(owner.id, discovery_profile_id=profile.id)])
        assert found.discovery_profile_id == profile.id
        state.delete_discovery_profile(profile.id, owner.id)
        with pytest.raises(NotFoundError):
            state.get_discovery_profile(profile.id)
        with pytest.raises(NotFoundError):
            state.get_discovery_run(run.id)
        assert state.get_device(found.id) == attrs.evolve(found, discovery_profile_id=None)

    # ------------------------------------------------------------ discovery runs

    def test_discovery_runs_record_progress(self, state: StateStore) -> None:
        owner = _user(state)
        profile = state.add_discovery_profile(make_discovery_profile(owner.id))
        first = state.add_discovery_run(_run(profile.id, owner.id))
        assert state.get_discovery_run(first.id) == first
        progress = attrs.evolve(first, scanned=5, found=2, errors=1)
        assert state.update_discovery_run(progress) == progress
        done = attrs.evolve(
            progress,
            state=RunState.DONE,
            scanned=8,
            finished_at=BASE_TIME + timedelta(minutes=2, microseconds=9),
            # Ids and start are the stored ones.
            started_at=BASE_TIME + timedelta(days=1),
        )
        assert state.update_discovery_run(done) == attrs.evolve(done, started_at=first.started_at)
        later = []
        for n in (1, 2):
            run = _run(profile.id, owner.id, started_at=BASE_TIME + timedelta(hours=n))
            later.append(state.add_discovery_run(run))
            state.update_discovery_run(attrs.evolve(run, state=RunState.DONE))
        listed = state.list_discovery_runs(profile.id, owner.id)
        assert _ids(listed) == [later[1].id, later[0].id, first.id], "not newest first"
        assert _ids(state.list_discovery_runs(profile.id, limit=2)) == [later[1].id, later[0].id]
        with pytest.raises(NotFoundError):
            state.update_discovery_run(_run(profile.id, owner.id))

    def test_discovery_runs_are_scoped_to_their_owner(self, state: StateStore) -> None:
        alice, bob = _user(state), _user(state)
        profile = state.add_discovery_profile(make_discovery_profile(alice.id))
        run = state.add_discovery_run(_run(profile.id, alice.id))
        with pytest.raises(NotFoundError):
            state.get_discovery_run(run.id, bob.id)
        with pytest.raises(NotFoundError):
            state.list_discovery_runs(profile.id, bob.id)
        with pytest.raises(NotFoundError):
            state.list_discovery_runs("no-such-profile")
        with pytest.raises(NotFoundError):
            state.add_discovery_run(_run(profile.id, bob.id))
        with pytest.raises(NotFoundError):
            state.add_discovery_run(_run("no-such-profile", alice.id))
        assert state.get_discovery_run(run.id, alice.id) == run

    def test_a_profile_runs_once_at_a_time(self, state: StateStore) -> None:
        owner = _user(state)
        profile = state.add_discovery_profile(make_discovery_profile(owner.id))
        running = state.add_discovery_run(_run(profile.id, owner.id))
        with pytest.raises(ConflictError, match="running"):
            state.add_discovery_run(_run(profile.id, owner.id))
        other = state.add_discovery_profile(make_discovery_profile(owner.id))
        state.add_discovery_run(_run(other.id, owner.id))
        state.update_discovery_run(attrs.evolve(running, state=RunState.FAILED, error="stopped"))
        state.add_discovery_run(_run(profile.id, owner.id))

    def test_one_of_concurrent_starts_runs(self, state: StateStore) -> None:
        owner = _user(state)
        profile = state.add_discovery_profile(make_discovery_profile(owner.id))

        def start(_: int) -> bool:
            try:
                state.add_discovery_run(_run(profile.id, owner.id))
            except ConflictError:
                return False
            return True

        assert race(start).count(True) == 1
        assert len(state.list_discovery_runs(profile.id)) == 1

    def test_fail_discovery_runs_ends_silent_running_runs(self, state: StateStore) -> None:
        owner = _user(state)
        profiles = [state.add_discovery_profile(make_discovery_profile(owner.id)) for _ in "ab"]
        silent = state.add_discovery_run(_run(profiles[0].id, owner.id))
        ended = state.add_discovery_run(_run(profiles[1].id, owner.id))
        ended = state.update_discovery_run(attrs.evolve(ended, state=RunState.DONE))
        at = BASE_TIME + timedelta(hours=3, microseconds=1)
        assert state.fail_discovery_runs(utcnow() - timedelta(hours=1), at, "server stopped") == 0
        assert state.get_discovery_run(silent.id) == silent
        assert state.fail_discovery_runs(utcnow() + timedelta(minutes=1), at, "server stopped") == 1
        assert state.get_discovery_run(silent.id) == attrs.evolve(
            silent, state=RunState.FAILED, finished_at=at, error="server stopped"
        )
        assert state.get_discovery_run(ended.id) == ended
        assert state.fail_discovery_runs(utcnow() + timedelta(minutes=1), at, "again") == 0

    # ------------------------------------------------------------ devices

    def test_device_round_trip(self, state: StateStore) -> None:
        owner = _user(state)
        cred = state.add_credential_profile(make_credential_profile(owner.id))
        profile = state.add_discovery_profile(make_discovery_profile(owner.id))
        full = make_device(
            owner.id,
            credential_ok=False,
            credential_error="authentication: the host refused the credential",
            credential_profile_id=cred.id,
            discovery_profile_id=profile.id,
            open_ports=(135, 5985, 5986),
        )
        bare = make_device(owner.id, hostname=None, os=None, os_version=None, open_ports=())
        assert state.add_device(full) == full
        assert state.add_device(bare) == bare
        assert state.get_device(full.id) == full
        assert state.get_device(bare.id, owner.id) == bare
        assert sorted(_ids(state.list_devices(owner.id))) == sorted([full.id, bare.id])

    def test_devices_are_scoped_and_unique_by_address(self, state: StateStore) -> None:
        alice, bob = _user(state), _user(state)
        mine = state.add_device(make_device(alice.id, address="127.0.0.9"))
        theirs = state.add_device(make_device(bob.id, address="127.0.0.9"))
        with pytest.raises(ConflictError, match=r"127\.0\.0\.9"):
            state.add_device(make_device(alice.id, address="127.0.0.9"))
        with pytest.raises(NotFoundError):
            state.get_device(mine.id, bob.id)
        with pytest.raises(NotFoundError):
            state.delete_device(mine.id, bob.id)
        with pytest.raises(NotFoundError):
            state.get_device("no-such-id")
        with pytest.raises(NotFoundError):
            state.add_device(make_device("no-such-user"))
        bobs = state.add_credential_profile(make_credential_profile(bob.id))
        with pytest.raises(NotFoundError, match="credential profile"):
            state.add_device(make_device(alice.id, credential_profile_id=bobs.id))
        assert _ids(state.list_devices(alice.id)) == [mine.id]
        assert _ids(state.list_devices(bob.id)) == [theirs.id]
        state.delete_device(mine.id, alice.id)
        with pytest.raises(NotFoundError):
            state.get_device(mine.id)
        assert state.get_device(theirs.id) == theirs

    def test_upsert_devices_never_duplicates_an_address(self, state: StateStore) -> None:
        fleet = self.fleet(state)
        owner = fleet.owner.id
        monitor = self.monitored(state, fleet)
        known = state.get_device(fleet.device.id)
        new = make_device(owner, address="127.0.3.1")
        seen = BASE_TIME + timedelta(days=1, microseconds=5)
        again = make_device(
            owner,
            address=known.address,
            hostname="renamed",
            os="Microsoft Windows 11 Pro",
            os_version="10.0.22631",
            open_ports=(5986,),
            credential_ok=True,
            credential_profile_id=fleet.credential.id,
            first_seen=seen,
            last_seen=seen,
            created_at=seen,
        )
        stored = state.upsert_devices([new, again])
        assert stored[0] == new
        assert stored[1] == attrs.evolve(
            again,
            id=known.id,
            machine_id=monitor.machine_id,
            first_seen=known.first_seen,
            created_at=known.created_at,
        )
        assert state.get_device(known.id) == stored[1]
        assert sorted(_ids(state.list_devices(owner))) == sorted([known.id, new.id])
        # A second scan: still one device per address, found again in the order given.
        rescan = state.upsert_devices(
            [make_device(owner, address=a) for a in ("127.0.3.1", known.address, "127.0.3.2")]
        )
        assert _ids(rescan[:2]) == [new.id, known.id]
        assert len(state.list_devices(owner)) == 3
        assert state.upsert_devices([]) == []

    def test_upsert_devices_forgets_deleted_profiles(self, state: StateStore) -> None:
        owner = _user(state)
        profile = state.add_discovery_profile(make_discovery_profile(owner.id))
        state.delete_discovery_profile(profile.id)
        [device] = state.upsert_devices(
            [make_device(owner.id, discovery_profile_id=profile.id, credential_profile_id="gone")]
        )
        assert device.discovery_profile_id is None
        assert device.credential_profile_id is None
        assert state.get_device(device.id) == device

    def test_concurrent_upserts_of_one_address_make_one_device(self, state: StateStore) -> None:
        owner = _user(state)
        stored = race(lambda _: state.upsert_devices([make_device(owner.id, address="127.0.4.4")]))
        assert len({device.id for [device] in stored}) == 1
        assert len(state.list_devices(owner.id)) == 1

    def test_delete_device_in_use(self, state: StateStore) -> None:
        fleet = self.fleet(state)
        monitors = [self.monitored(state, fleet, collector=c) for c in ("winrm", "wmi")]
        with pytest.raises(InUseError) as raised:
            state.delete_device(fleet.device.id, fleet.owner.id)
        assert raised.value.users == {"monitors": sorted(_ids(monitors))}
        assert state.get_device(fleet.device.id).machine_id == monitors[0].machine_id
        for monitor in monitors:
            state.delete_monitor(monitor.id)
        state.delete_device(fleet.device.id)
        with pytest.raises(NotFoundError):
            state.get_device(fleet.device.id)

    # ------------------------------------------------------------ monitors

    def test_first_monitor_makes_the_device_a_machine(self, state: StateStore) -> None:
        fleet = self.fleet(state)
        machine = _machine_for(fleet.device)
        monitor = make_monitor(fleet.device, fleet.credential.id, machine_id="ignored")
        stored = state.add_monitor(monitor, machine)
        assert stored == attrs.evolve(monitor, machine_id=machine.id)
        assert state.get_monitor(monitor.id) == stored
        assert state.get_machine(machine.id, fleet.owner.id) == machine
        assert state.get_device(fleet.device.id).machine_id == machine.id
        # A second monitor writes to the same machine; the machine given is ignored.
        unused = _machine_for(fleet.device)
        second = state.add_monitor(
            make_monitor(fleet.device, fleet.credential.id, collector="wmi"), unused
        )
        assert second.machine_id == machine.id
        with pytest.raises(NotFoundError):
            state.get_machine(unused.id)

    def test_add_monitor_checks_what_it_uses(self, state: StateStore) -> None:
        fleet, other = self.fleet(state), self.fleet(state)
        machine = _machine_for(fleet.device)
        with pytest.raises(NotFoundError, match="device"):
            state.add_monitor(
                make_monitor(other.device, fleet.credential.id, owner_id=fleet.owner.id), machine
            )
        with pytest.raises(NotFoundError, match="credential profile"):
            state.add_monitor(make_monitor(fleet.device, other.credential.id), machine)
        # Nothing of a refused monitor is stored: not its machine either.
        with pytest.raises(NotFoundError):
            state.get_machine(machine.id)
        assert state.get_device(fleet.device.id).machine_id is None
        assert state.list_monitors(fleet.owner.id) == []
        first = self.monitored(state, fleet)
        with pytest.raises(ConflictError, match="winrm"):
            state.add_monitor(make_monitor(fleet.device, fleet.credential.id), machine)
        assert _ids(state.list_monitors(fleet.owner.id)) == [first.id]

    def test_monitors_are_scoped_to_their_owner(self, state: StateStore) -> None:
        alice, bob = self.fleet(state), self.fleet(state)
        mine = self.monitored(state, alice)
        theirs = self.monitored(state, bob)
        extra = state.add_device(make_device(alice.owner.id))
        elsewhere = state.add_monitor(make_monitor(extra, alice.credential.id), _machine_for(extra))
        with pytest.raises(NotFoundError):
            state.get_monitor(mine.id, bob.owner.id)
        with pytest.raises(NotFoundError):
            state.delete_monitor(mine.id, bob.owner.id)
        with pytest.raises(NotFoundError):
            state.get_monitor("no-such-id")
        assert state.get_monitor(mine.id, alice.owner.id) == mine
        assert sorted(_ids(state.list_monitors(alice.owner.id))) == sorted([mine.id, elsewhere.id])
        assert _ids(state.list_monitors(alice.owner.id, device_id=extra.id)) == [elsewhere.id]
        assert state.list_monitors(bob.owner.id, device_id=extra.id) == []
        assert _ids(state.list_monitors(bob.owner.id)) == [theirs.id]
        assert {mine.id, theirs.id, elsewhere.id} <= set(_ids(state.list_monitors()))

    def test_update_monitor_replaces_settings_and_keeps_the_poll_record(
        self, state: StateStore
    ) -> None:
        fleet = self.fleet(state)
        monitor = self.monitored(state, fleet)
        [claimed] = state.claim_due_monitors(NOW, LEASE, 10)
        assert claimed.id == monitor.id
        cred = state.add_credential_profile(make_credential_profile(fleet.owner.id))
        changed = attrs.evolve(
            monitor,
            credential_profile_id=cred.id,
            interval=timedelta(seconds=300, microseconds=1),
            enabled=False,
            options={"timeout": 5},
            due_at=NOW + timedelta(minutes=5),
            # Not settings: these stay as stored.
            collector="wmi",
            last_error="made up",
            failures=7,
            lease_until=None,
        )
        stored = state.update_monitor(changed)
        assert stored == attrs.evolve(
            claimed,
            credential_profile_id=cred.id,
            interval=changed.interval,
            enabled=False,
            options={"timeout": 5},
            due_at=changed.due_at,
        )
        assert state.get_monitor(monitor.id) == stored
        bobs = self.fleet(state).credential
        with pytest.raises(NotFoundError, match="credential profile"):
            state.update_monitor(attrs.evolve(monitor, credential_profile_id=bobs.id))
        with pytest.raises(NotFoundError):
            state.update_monitor(make_monitor(fleet.device, cred.id))

    def test_the_last_monitor_takes_the_machine_and_its_series(
        self, storage: StorageBackend
    ) -> None:
        state = storage.state
        fleet = self.fleet(state)
        first = self.monitored(state, fleet)
        second = self.monitored(state, fleet, collector="wmi")
        machine_id = first.machine_id
        sample = Sample(BASE_TIME, [Reading("cpu.percent", 12.5), Reading("poll.up", 1)])
        storage.metrics.write([MachineSamples(machine_id, [sample])])
        assert len(storage.metrics.list_series(machine_id)) == 2
        epoch = state.config_epoch()
        state.delete_monitor(first.id, fleet.owner.id)
        assert state.get_machine(machine_id).id == machine_id
        assert len(storage.metrics.list_series(machine_id)) == 2
        assert state.get_device(fleet.device.id).machine_id == machine_id
        state.delete_monitor(second.id)
        with pytest.raises(NotFoundError):
            state.get_machine(machine_id)
        assert storage.metrics.list_series(machine_id) == []
        assert storage.metrics.latest([machine_id]) == []
        assert state.get_device(fleet.device.id) == attrs.evolve(fleet.device, machine_id=None)
        assert state.config_epoch() > epoch, "a deleted machine must move config_epoch"
        with pytest.raises(NotFoundError):
            state.get_monitor(second.id)
        # The device can be monitored again: with a new machine.
        again = self.monitored(state, fleet)
        assert again.machine_id != machine_id
        assert state.get_machine(again.machine_id).kind is MachineKind.AGENTLESS

    def test_a_machine_monitors_write_to_cannot_be_deleted(self, state: StateStore) -> None:
        fleet = self.fleet(state)
        monitors = [self.monitored(state, fleet, collector=c) for c in ("winrm", "wmi")]
        machine_id = monitors[0].machine_id
        with pytest.raises(InUseError) as raised:
            state.delete_machine(machine_id)
        assert raised.value.users == {"monitors": sorted(_ids(monitors))}
        assert state.get_machine(machine_id).id == machine_id

    def test_delete_user_deletes_their_agentless_records(self, storage: StorageBackend) -> None:
        state = storage.state
        fleet, other = self.fleet(state), self.fleet(state)
        monitor = self.monitored(state, fleet)
        kept = self.monitored(state, other)
        discovery = state.add_discovery_profile(
            make_discovery_profile(fleet.owner.id, credential_profile_id=fleet.credential.id)
        )
        run = state.add_discovery_run(_run(discovery.id, fleet.owner.id))
        found = state.upsert_devices(
            [make_device(fleet.owner.id, discovery_profile_id=discovery.id)]
        )
        storage.metrics.write(
            [MachineSamples(monitor.machine_id, [Sample(BASE_TIME, [Reading("proc.count", 9)])])]
        )
        state.delete_user(fleet.owner.id)
        gone = [
            (state.get_monitor, monitor.id),
            (state.get_device, fleet.device.id),
            (state.get_device, found[0].id),
            (state.get_machine, monitor.machine_id),
            (state.get_credential_profile, fleet.credential.id),
            (state.get_discovery_profile, discovery.id),
            (state.get_discovery_run, run.id),
        ]
        for get, record_id in gone:
            with pytest.raises(NotFoundError):
                get(record_id)
        assert storage.metrics.list_series(monitor.machine_id) == []
        assert state.get_monitor(kept.id) == kept
        assert state.get_device(other.device.id).machine_id == kept.machine_id
        assert state.get_credential_profile(other.credential.id) == other.credential

    # ------------------------------------------------------------ scheduling

    def test_claim_due_monitors(self, state: StateStore) -> None:
        fleet = self.fleet(state)
        devices = [fleet.device] + [state.add_device(make_device(fleet.owner.id)) for _ in range(5)]

        def monitor_of(device: Device, **overrides: Any) -> Monitor:
            return state.add_monitor(
                make_monitor(device, fleet.credential.id, **overrides), _machine_for(device)
            )

        late = monitor_of(devices[0], due_at=NOW - timedelta(minutes=5))
        due = monitor_of(devices[1], due_at=NOW)
        not_due = monitor_of(devices[2], due_at=NOW + MICROSECOND)
        monitor_of(devices[3], due_at=NOW - timedelta(hours=1), enabled=False)
        leased = monitor_of(
            devices[4], due_at=NOW - timedelta(hours=1), lease_until=NOW + MICROSECOND
        )
        expired = monitor_of(devices[5], due_at=NOW - timedelta(minutes=1), lease_until=NOW)
        assert state.claim_due_monitors(NOW, LEASE, 0) == []
        [first] = state.claim_due_monitors(NOW, LEASE, 1)
        assert first == attrs.evolve(late, lease_until=LEASE, last_attempted=NOW)
        claimed = state.claim_due_monitors(NOW, LEASE, 10)
        assert _ids(claimed) == [expired.id, due.id], "not earliest due first"
        assert all(m.lease_until == LEASE and m.last_attempted == NOW for m in claimed)
        assert state.get_monitor(due.id) == claimed[1]
        assert state.claim_due_monitors(NOW, LEASE, 10) == [], "a leased monitor was taken"
        # Once the leases run out, they are taken again; a disabled monitor never is.
        again = state.claim_due_monitors(LEASE, LEASE + timedelta(minutes=2), 10)
        assert _ids(again) == [leased.id, late.id, expired.id, due.id, not_due.id]

    def test_concurrent_claims_never_take_a_monitor_twice(self, state: StateStore) -> None:
        owner = _user(state)
        cred = state.add_credential_profile(make_credential_profile(owner.id))
        count = CALLERS * 5
        for n in range(count):
            device = state.add_device(make_device(owner.id, address=f"127.0.5.{n + 1}"))
            state.add_monitor(
                make_monitor(device, cred.id, due_at=NOW - n * MICROSECOND), _machine_for(device)
            )
        batches = race(lambda _: _ids(state.claim_due_monitors(NOW, LEASE, 10)))
        taken = list(itertools.chain.from_iterable(batches))
        assert len(taken) == len(set(taken)), "a monitor was claimed twice"
        assert len(taken) == count

    def test_finish_polls_records_outcomes(self, state: StateStore) -> None:
        fleet = self.fleet(state)
        ok, failing = (self.monitored(state, fleet, collector=c) for c in ("winrm", "wmi"))
        gone = state.add_device(make_device(fleet.owner.id))
        deleted = state.add_monitor(make_monitor(gone, fleet.credential.id), _machine_for(gone))
        state.claim_due_monitors(NOW, LEASE, 10)
        state.delete_monitor(deleted.id)
        at = NOW + timedelta(seconds=2, microseconds=1)
        next_due = NOW + timedelta(minutes=1)
        state.finish_polls(
            [
                PollOutcome(ok.id, at, next_due),
                PollOutcome(failing.id, at, next_due, error="timeout: no answer in 30 s"),
                PollOutcome(deleted.id, at, next_due),
            ]
        )
        stored = state.get_monitor(ok.id)
        assert stored == attrs.evolve(
            ok, due_at=next_due, last_attempted=NOW, last_polled=at, failures=0
        )
        failed = state.get_monitor(failing.id)
        assert failed == attrs.evolve(
            failing,
            due_at=next_due,
            last_attempted=NOW,
            last_error="timeout: no answer in 30 s",
            last_error_at=at,
            failures=1,
        )
        # The lease is free: due again, claimed again; failures count up, a success clears them.
        later = next_due + timedelta(seconds=1)
        assert set(_ids(state.claim_due_monitors(later, later + timedelta(minutes=2), 10))) == {
            ok.id,
            failing.id,
        }
        state.finish_polls([PollOutcome(failing.id, later, later, error="refused")])
        assert state.get_monitor(failing.id).failures == 2
        assert state.get_monitor(failing.id).last_error == "refused"
        state.finish_polls([PollOutcome(failing.id, later + MICROSECOND, later)])
        recovered = state.get_monitor(failing.id)
        assert recovered.failures == 0
        assert recovered.last_polled == later + MICROSECOND
        state.finish_polls([])

    def test_release_monitor_leases(self, state: StateStore) -> None:
        fleet = self.fleet(state)
        monitors = [self.monitored(state, fleet, collector=c) for c in ("a", "b", "c")]
        state.update_monitor(attrs.evolve(monitors[2], due_at=NOW + timedelta(hours=1)))
        assert len(state.claim_due_monitors(NOW, LEASE, 10)) == 2
        assert state.claim_due_monitors(NOW, LEASE, 10) == []
        assert state.release_monitor_leases() == 2
        assert all(m.lease_until is None for m in state.list_monitors(fleet.owner.id))
        assert len(state.claim_due_monitors(NOW, LEASE, 10)) == 2
        assert state.release_monitor_leases() == 2
        assert state.release_monitor_leases() == 0
