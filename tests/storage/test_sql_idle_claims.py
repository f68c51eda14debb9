"""The work loops' look for due work takes no write lock when there is none.

The agentless poller claims due monitors every second and the dispatcher fans
out events and claims deliveries every ``poll_interval``; most of the time
there is nothing to take. Found in a write transaction, that nothing took
SQLite's write lock (ingest's) each time; now a read transaction looks first.
Each test holds what a write needs in another connection (SQLite's write
lock; on PostgreSQL the tables in EXCLUSIVE mode, which reads do not wait for)
and checks that the idle call returns, then that the work is still taken.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import sqlalchemy as sa

from lunasentri_core.model import MachineKind
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.testing import (
    make_channel,
    make_credential_profile,
    make_device,
    make_machine,
    make_monitor,
    make_outbox_event,
    make_user,
)

T = TypeVar("T")
T0 = datetime(2025, 3, 1, tzinfo=UTC)
LEASE = timedelta(minutes=1)


@contextmanager
def write_lock_held(storage: SqlStorage, *tables: str) -> Iterator[None]:
    if storage.engine.dialect.name == "sqlite":
        other = sqlite3.connect(str(storage.engine.url.database), isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            yield
        finally:
            other.close()
        return
    with storage.engine.connect() as conn:
        conn.execute(sa.text(f"LOCK TABLE {', '.join(tables)} IN EXCLUSIVE MODE"))
        yield
        conn.rollback()


def while_locked(storage: SqlStorage, tables: tuple[str, ...], call: Callable[[], T]) -> T:
    """``call()``'s result, called while the write lock is held; it must not wait for it."""
    pool = ThreadPoolExecutor(1)
    try:
        with write_lock_held(storage, *tables):
            future = pool.submit(call)
            done, _ = wait([future], timeout=10)
        assert done, "the call waited for the write lock"
        return future.result()
    finally:
        pool.shutdown()


def test_claiming_monitors_with_none_due(storage: SqlStorage) -> None:
    state = storage.state
    owner = state.add_user(make_user(), "h")
    credential = state.add_credential_profile(make_credential_profile(owner.id))
    device = state.add_device(make_device(owner.id))
    machine = make_machine(owner_id=owner.id, kind=MachineKind.AGENTLESS)
    monitor = state.add_monitor(make_monitor(device, credential.id, due_at=T0), machine)
    early = T0 - timedelta(seconds=1)

    claim = lambda: state.claim_due_monitors(early, early + LEASE, 5)  # noqa: E731
    assert while_locked(storage, ("monitors",), claim) == []
    claimed = state.claim_due_monitors(T0, T0 + LEASE, 5)
    assert [m.id for m in claimed] == [monitor.id]


def test_fanning_out_and_claiming_deliveries_with_nothing_to_do(storage: SqlStorage) -> None:
    state = storage.state
    tables = ("outbox_events", "deliveries")
    assert while_locked(storage, tables, lambda: state.fan_out(T0)) == 0
    assert while_locked(storage, tables, lambda: state.claim_deliveries(T0, LEASE)) == []

    owner = state.add_user(make_user(), "h")
    channel = state.add_channel(make_channel(owner.id))
    event = make_outbox_event(owner.id, occurred_at=T0)
    state.add_outbox_events([event])
    assert state.fan_out(T0) == 1
    [(delivery, claimed_event, claimed_channel)] = state.claim_deliveries(T0 + LEASE, LEASE)
    assert (claimed_event.id, claimed_channel.id) == (event.id, channel.id)
    assert delivery.event_id == event.id
