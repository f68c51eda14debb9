"""The agentless tables beyond the contract: the database itself holds the deletion
rules, several stores ("processes") share the scheduling, and the scheduler's
query is indexed."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sql_support import OpenStorage
from sqlalchemy import exc
from sqlalchemy.engine import Engine

from lunasentri_core.model import Device, MachineKind, Monitor
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.storage.sql.schema import (
    credential_profiles,
    devices,
    discovery_profiles,
    machines,
    monitors,
)
from lunasentri_core.testing import (
    make_credential_profile,
    make_device,
    make_discovery_profile,
    make_machine,
    make_monitor,
    make_user,
)

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def monitored_device(storage: SqlStorage) -> tuple[Device, Monitor]:
    state = storage.state
    owner = state.add_user(make_user(), "h")
    credential = state.add_credential_profile(make_credential_profile(owner.id))
    profile = state.add_discovery_profile(
        make_discovery_profile(owner.id, credential_profile_id=credential.id)
    )
    device = state.add_device(make_device(owner.id, discovery_profile_id=profile.id))
    machine = make_machine(owner_id=owner.id, kind=MachineKind.AGENTLESS)
    monitor = state.add_monitor(make_monitor(device, credential.id), machine)
    return state.get_device(device.id), monitor


def raw_delete(storage: SqlStorage, table: sa.Table, record_id: str) -> None:
    with storage.engine.begin() as conn:
        if storage.engine.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA foreign_keys = ON")
        conn.execute(sa.delete(table).where(table.c.id == record_id))


@pytest.mark.parametrize(
    ("table", "what"),
    [(credential_profiles, "credential"), (devices, "device"), (machines, "machine")],
)
def test_the_database_refuses_deleting_what_a_monitor_uses(
    storage: SqlStorage, table: sa.Table, what: str
) -> None:
    device, monitor = monitored_device(storage)
    record_id = {
        "credential": monitor.credential_profile_id,
        "device": device.id,
        "machine": monitor.machine_id,
    }[what]
    with pytest.raises(exc.IntegrityError):
        raw_delete(storage, table, record_id)
    assert storage.state.get_monitor(monitor.id) == monitor


def test_the_database_unlinks_devices_of_a_deleted_discovery_profile(storage: SqlStorage) -> None:
    device, monitor = monitored_device(storage)
    assert device.discovery_profile_id is not None
    storage.state.delete_monitor(monitor.id)
    # What the store does itself, the foreign key does as well (no cascade to devices).
    with storage.engine.begin() as conn:
        if storage.engine.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA foreign_keys = ON")
        conn.execute(sa.update(discovery_profiles).values(credential_profile_id=None))
        conn.execute(
            sa.delete(discovery_profiles).where(
                discovery_profiles.c.id == device.discovery_profile_id
            )
        )
    assert storage.state.get_device(device.id).discovery_profile_id is None


def test_stores_sharing_a_database_never_claim_a_monitor_twice(
    open_storage: OpenStorage,
) -> None:
    first, second = open_storage(), open_storage()
    state = first.state
    owner = state.add_user(make_user(), "h")
    credential = state.add_credential_profile(make_credential_profile(owner.id))
    count = 60
    for n in range(count):
        device = state.add_device(make_device(owner.id, address=f"127.0.6.{n + 1}"))
        machine = make_machine(owner_id=owner.id, kind=MachineKind.AGENTLESS)
        state.add_monitor(make_monitor(device, credential.id, due_at=T0), machine)
    barrier = threading.Barrier(4)

    def claim(store: SqlStorage) -> list[str]:
        barrier.wait(timeout=60)
        taken: list[str] = []
        while batch := store.state.claim_due_monitors(T0, T0 + timedelta(minutes=1), 7):
            taken.extend(m.id for m in batch)
        return taken

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(claim, [first, second, first, second]))
    taken = list(itertools.chain.from_iterable(results))
    assert len(taken) == len(set(taken)), "a monitor was claimed twice"
    assert len(taken) == count


def test_the_scheduler_query_uses_its_index(sqlite_engine: Engine) -> None:
    # Checked on SQLite: PostgreSQL's plan depends on the table's statistics.
    query = (
        sa.select(monitors.c.id)
        .where(
            monitors.c.enabled == sa.true(),
            monitors.c.due_at <= T0,
            sa.or_(monitors.c.lease_until.is_(None), monitors.c.lease_until <= T0),
        )
        .order_by(monitors.c.due_at, monitors.c.id)
        .limit(10)
    )
    compiled = query.compile(sqlite_engine, compile_kwargs={"literal_binds": True})
    with sqlite_engine.connect() as conn:
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
        plan = " ".join(str(row[-1]) for row in rows)
    assert "ix_monitors_enabled_due_at" in plan, plan
