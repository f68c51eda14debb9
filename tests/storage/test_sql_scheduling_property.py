"""Claiming due monitors takes exactly what a naive reference says, whatever the mix of
due times, disabled monitors and leases, and never takes a monitor twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lunasentri_core.model import MachineKind, Monitor
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.testing import (
    make_credential_profile,
    make_device,
    make_machine,
    make_monitor,
    make_user,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
LEASE = NOW + timedelta(minutes=1)


@attrs.frozen
class Shape:
    due: int
    """Seconds from :data:`NOW` (few values, so equal due times occur)."""
    enabled: bool
    lease: int | None
    """Seconds from :data:`NOW`, or no lease."""


shapes = st.builds(
    Shape,
    due=st.integers(-3, 3),
    enabled=st.booleans(),
    lease=st.none() | st.integers(-2, 2),
)


def claimable(monitor: Monitor) -> bool:
    lease_free = monitor.lease_until is None or monitor.lease_until <= NOW
    return monitor.enabled and monitor.due_at <= NOW and lease_free


def store(storage: SqlStorage, owner_id: str, drawn: list[Shape]) -> list[Monitor]:
    state = storage.state
    credential = state.add_credential_profile(make_credential_profile(owner_id))
    stored = []
    for shape in drawn:
        device = state.add_device(make_device(owner_id))
        monitor = make_monitor(
            device,
            credential.id,
            due_at=NOW + shape.due * SECOND,
            enabled=shape.enabled,
            lease_until=None if shape.lease is None else NOW + shape.lease * SECOND,
        )
        machine = make_machine(owner_id=owner_id, kind=MachineKind.AGENTLESS)
        stored.append(state.add_monitor(monitor, machine))
    return stored


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(drawn=st.lists(shapes, max_size=10), limit=st.integers(0, 12))
def test_claims_match_the_reference(storage: SqlStorage, drawn: list[Shape], limit: int) -> None:
    state = storage.state
    # Examples share the store: each has an owner of its own, deleted with all of it.
    owner = state.add_user(make_user(), "h")
    try:
        monitors = store(storage, owner.id, drawn)
        expected = sorted(filter(claimable, monitors), key=lambda m: (m.due_at, m.id))
        first = state.claim_due_monitors(NOW, LEASE, limit)
        taken = [attrs.evolve(m, lease_until=LEASE, last_attempted=NOW) for m in expected]
        assert first == taken[:limit]
        rest = state.claim_due_monitors(NOW, LEASE, len(monitors) + 1)
        assert rest == taken[limit:], "the second claim differs from what the first left"
        assert state.claim_due_monitors(NOW, LEASE, len(monitors) + 1) == []
        unclaimed = {m.id for m in monitors} - {m.id for m in expected}
        for monitor in monitors:
            if monitor.id in unclaimed:
                assert state.get_monitor(monitor.id) == monitor, "an unclaimed monitor changed"
    finally:
        state.delete_user(owner.id)
