"""What a state store keeps for agentless monitoring.

Credential profiles, discovery profiles and their runs, devices and monitors,
every one owned by a user and scoped like machines: a method taking
``owner_id`` sees only that owner's records when it is given, everything when
it is ``None`` (an admin), and a record of someone else reads as missing
(:class:`~lunasentri_core.errors.NotFoundError`).

Deletion rules, held by the store itself (no cascade where they refuse):

* a monitor can always be deleted; the last monitor of a device takes the
  device's machine with it (its series, alert events and status history), and
  the device stays, without a machine;
* a credential profile used by a monitor or a discovery profile, and a device
  used by a monitor, cannot be deleted: :class:`~lunasentri_core.errors.InUseError`
  lists the ids of what uses it;
* a machine that monitors write to cannot be deleted either (delete the
  monitors);
* deleting a discovery profile keeps the devices it found (and deletes its runs);
* deleting a user deletes all of theirs.

Every change to a credential profile adds one to its ``version`` and to the
store's :meth:`~lunasentri_core.storage.StateStore.config_epoch`, so a process
holding a decrypted copy knows it is stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from lunasentri_core.model import (
    CredentialProfile,
    Device,
    DiscoveryProfile,
    DiscoveryRun,
    Machine,
    Monitor,
    PollOutcome,
)


class AgentlessStore(Protocol):
    # credential profiles (``secret`` is a sealed envelope: never log it)
    def add_credential_profile(self, profile: CredentialProfile) -> CredentialProfile:
        """Store a new profile; a name its owner already uses is a ``ConflictError``."""
        ...

    def get_credential_profile(
        self, profile_id: str, owner_id: str | None = None
    ) -> CredentialProfile: ...
    def list_credential_profiles(self, owner_id: str | None = None) -> list[CredentialProfile]: ...
    def update_credential_profile(self, profile: CredentialProfile) -> CredentialProfile:
        """Replace its fields but owner and ``created_at``; returns it stored, with
        ``version`` one more than the stored one's."""
        ...

    def delete_credential_profile(self, profile_id: str, owner_id: str | None = None) -> None:
        """Raises ``InUseError`` listing the monitors and discovery profiles using it."""
        ...

    def list_credential_secrets(self) -> list[tuple[str, str]]:
        """``(profile id, envelope)`` of every profile with a secret (key rotation)."""
        ...

    def replace_credential_secret(self, profile_id: str, old: str, new: str) -> bool:
        """Swap the envelope if it is still ``old`` (same password, re-encrypted);
        ``False`` if the profile changed or went meanwhile. The version stays."""
        ...

    # discovery profiles and runs
    def add_discovery_profile(self, profile: DiscoveryProfile) -> DiscoveryProfile:
        """A name its owner already uses, or a credential profile that is not the
        owner's, is refused (``ConflictError``, ``NotFoundError``)."""
        ...

    def get_discovery_profile(
        self, profile_id: str, owner_id: str | None = None
    ) -> DiscoveryProfile: ...
    def list_discovery_profiles(self, owner_id: str | None = None) -> list[DiscoveryProfile]: ...
    def update_discovery_profile(self, profile: DiscoveryProfile) -> DiscoveryProfile: ...
    def delete_discovery_profile(self, profile_id: str, owner_id: str | None = None) -> None:
        """Delete it and its runs; the devices it found stay."""
        ...

    def add_discovery_run(self, run: DiscoveryRun) -> DiscoveryRun:
        """Start a run; ``ConflictError`` while another run of the profile is running."""
        ...

    def update_discovery_run(self, run: DiscoveryRun) -> DiscoveryRun:
        """Record a run's progress or end (everything but its ids and start)."""
        ...

    def get_discovery_run(self, run_id: str, owner_id: str | None = None) -> DiscoveryRun: ...
    def list_discovery_runs(
        self, profile_id: str, owner_id: str | None = None, limit: int = 50
    ) -> list[DiscoveryRun]:
        """Newest first."""
        ...

    def fail_discovery_runs(self, updated_before: datetime, at: datetime, reason: str) -> int:
        """End as failed the runs still running whose progress was last recorded
        before ``updated_before`` (their process is gone); returns how many."""
        ...

    # devices
    def upsert_devices(self, devices: Sequence[Device]) -> list[Device]:
        """Insert or update by (owner, address), never duplicating an address. An
        existing device keeps its id, machine, ``first_seen`` and ``created_at``;
        the rest is replaced. Returns them stored, in the order given."""
        ...

    def add_device(self, device: Device) -> Device:
        """Add one by hand; an address its owner already has is a ``ConflictError``."""
        ...

    def get_device(self, device_id: str, owner_id: str | None = None) -> Device: ...
    def list_devices(self, owner_id: str | None = None) -> list[Device]: ...
    def delete_device(self, device_id: str, owner_id: str | None = None) -> None:
        """Raises ``InUseError`` listing the monitors using it."""
        ...

    # monitors
    def add_monitor(self, monitor: Monitor, machine: Machine) -> Monitor:
        """Store a monitor of a device, in one transaction with its machine.

        A device that has no machine yet gets ``machine`` (stored now); one that
        has a machine keeps it, and ``machine`` is ignored. The stored monitor's
        ``machine_id`` is the device's machine. The device and the credential
        profile must be the monitor owner's; one monitor per device and
        collector (``ConflictError``).
        """
        ...

    def get_monitor(self, monitor_id: str, owner_id: str | None = None) -> Monitor: ...
    def list_monitors(
        self, owner_id: str | None = None, device_id: str | None = None
    ) -> list[Monitor]: ...
    def update_monitor(self, monitor: Monitor) -> Monitor:
        """Replace its settings (credential profile, interval, enabled, options,
        ``due_at``); its poll record stays as stored."""
        ...

    def delete_monitor(self, monitor_id: str, owner_id: str | None = None) -> None:
        """Delete it; the device's last monitor deletes the device's machine too."""
        ...

    def claim_due_monitors(self, now: datetime, lease_until: datetime, limit: int) -> list[Monitor]:
        """Take up to ``limit`` enabled monitors due by ``now`` whose lease is free,
        earliest due first: each gets ``lease_until`` and ``last_attempted = now``.
        Two callers (threads or processes) never take the same monitor."""
        ...

    def finish_polls(self, outcomes: Sequence[PollOutcome]) -> None:
        """Record how polls ended: free the lease, set ``due_at``; a success sets
        ``last_polled`` and clears ``failures``, a failure sets ``last_error``,
        ``last_error_at`` and counts ``failures``. A deleted monitor is skipped."""
        ...

    def release_monitor_leases(self) -> int:
        """Free every lease (a sole server starting after a crash); returns how many."""
        ...
