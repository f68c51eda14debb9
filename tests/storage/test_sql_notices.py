"""Change notices between processes on one PostgreSQL database (LISTEN/NOTIFY).

Two :class:`SqlStorage` objects on two engines stand for two server processes:
what one commits, the other's listener hears (configuration, ended API keys,
stored samples of the machines some process watches, the newest of a large
batch), never its own; nothing is heard of a rolled-back transaction, nor by a
deployment in another schema. Watches count, and are taken again when their
connection is lost; a listener whose session is killed reconnects and reports
that it may have missed changes. SQLite has one process: no listener.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import attrs
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lunasentri_core.errors import SeriesLimitError
from lunasentri_core.model import MachineSamples
from lunasentri_core.samples import Sample
from lunasentri_core.storage import Change, ChangeKind, ChangeListener, listen_for_changes
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.storage.sql.notices import (
    LIVE_CLASS,
    PAYLOAD_LIMIT,
    SAMPLE_BUDGET,
    Notices,
    PgChangeListener,
    parse,
)
from lunasentri_core.testing.builders import (
    make_alert_rule,
    make_api_key,
    make_machine,
    make_reading,
    make_user,
)

WAIT = 10.0
"""Seconds to wait for a notice before the test fails (not a timing assertion)."""
QUIET = 1.0
"""Seconds to listen when nothing must arrive."""


def heard(listener: ChangeListener, want: int = 1, timeout: float = WAIT) -> list[Change]:
    """What ``listener`` hears until ``want`` changes arrived or ``timeout`` passed."""
    changes: list[Change] = []
    deadline = time.monotonic() + timeout
    while len(changes) < want and time.monotonic() < deadline:
        changes += listener.receive(0.2)
    return changes


def settle(listener: ChangeListener) -> list[Change]:
    """Everything pending, read until the listener has been quiet for a moment."""
    changes: list[Change] = []
    while more := listener.receive(0.3):
        changes += more
    return changes


def drain(listener: ChangeListener) -> list[Change]:
    """Connect (the first call reports the catch-up changes) and read what is pending."""
    changes = heard(listener, want=2)
    assert [c.kind for c in changes[:2]] == [ChangeKind.CONFIG, ChangeKind.KEYS]
    return changes[2:] + listener.receive(0.1)


@pytest.fixture
def two_stores(
    postgres_url: str, postgres_engine: Engine
) -> Iterator[tuple[SqlStorage, SqlStorage]]:
    schema = _schema(postgres_engine)
    second = sa.create_engine(postgres_url, connect_args={"options": f"-c search_path={schema}"})
    first, other = SqlStorage(postgres_engine), SqlStorage(second)
    yield first, other
    first.close()
    other.close()


def _schema(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.select(sa.func.current_schema())).scalar())


@pytest.fixture
def listeners() -> Iterator[list[ChangeListener]]:
    opened: list[ChangeListener] = []
    yield opened
    for listener in opened:
        listener.close()


def listen(storage: SqlStorage, opened: list[ChangeListener]) -> ChangeListener:
    listener = listen_for_changes(storage)
    assert listener is not None
    opened.append(listener)
    assert drain(listener) == []
    return listener


def samples(count: int, readings: int = 1) -> list[Sample]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        Sample(
            start + timedelta(seconds=i),
            [make_reading("disk.used", float(i), mount=f"/m{r}") for r in range(readings)],
        )
        for i in range(count)
    ]


def test_sqlite_has_no_listener_and_sends_nothing(sqlite_engine: Engine) -> None:
    storage = SqlStorage(sqlite_engine)
    try:
        assert listen_for_changes(storage) is None
        assert not storage.db.notices.enabled
        storage.state.add_user(make_user(), "x")  # no pg_notify on SQLite
    finally:
        storage.close()


@pytest.mark.postgres
def test_configuration_changes_are_heard_by_the_other_process_only(
    two_stores: tuple[SqlStorage, SqlStorage], listeners: list[ChangeListener]
) -> None:
    writer, other = two_stores
    own, theirs = listen(writer, listeners), listen(other, listeners)
    user = writer.state.add_user(make_user(), "x")
    machine = writer.state.add_machine(make_machine(owner_id=user.id))
    settle(theirs)
    writer.state.add_alert_rule(make_alert_rule(user.id))
    assert heard(theirs) == [Change(ChangeKind.CONFIG)]
    assert settle(theirs) == []  # one notice per transaction
    writer.state.update_machine(attrs.evolve(machine, name="renamed"))
    assert heard(theirs) == [Change(ChangeKind.CONFIG)]
    assert own.receive(QUIET) == []  # a process's own changes are not news to it


@pytest.mark.postgres
def test_ended_keys_move_the_other_process_key_generation(
    two_stores: tuple[SqlStorage, SqlStorage], listeners: list[ChangeListener]
) -> None:
    writer, other = two_stores
    theirs = listen(other, listeners)
    user = writer.state.add_user(make_user(), "x")
    machine = writer.state.add_machine(make_machine(owner_id=user.id))
    settle(theirs)
    key = writer.state.add_api_key(make_api_key(machine.id))
    assert theirs.receive(QUIET) == []  # a new key ends nothing

    generation = other.state.api_key_generation
    writer.state.revoke_api_key(key.id, datetime.now(UTC))
    assert heard(theirs) == [Change(ChangeKind.KEYS)]
    assert other.state.api_key_generation != generation

    generation = other.state.api_key_generation
    writer.state.set_api_key_expiry(key.id, datetime.now(UTC))
    assert heard(theirs) == [Change(ChangeKind.KEYS)]
    assert other.state.api_key_generation != generation

    generation = other.state.api_key_generation
    writer.state.delete_machine(machine.id)  # its keys go with it: a configuration change
    assert heard(theirs) == [Change(ChangeKind.CONFIG)]
    assert other.state.api_key_generation != generation


@pytest.mark.postgres
def test_stored_samples_reach_the_other_process_the_newest_of_a_large_batch(
    two_stores: tuple[SqlStorage, SqlStorage], listeners: list[ChangeListener]
) -> None:
    writer, other = two_stores
    own, theirs = listen(writer, listeners), listen(other, listeners)
    user = writer.state.add_user(make_user(), "x")
    machines = [writer.state.add_machine(make_machine(owner_id=user.id)) for _ in range(3)]
    settle(theirs)
    for machine in machines[:2]:
        theirs.watch(machine.id)
    own.watch(machines[2].id)  # watched in the writing process only: sent all the same
    big, small = samples(300, readings=4), samples(2)
    writer.metrics.write(
        [
            MachineSamples(machines[0].id, big),
            MachineSamples(machines[1].id, small),
            MachineSamples(machines[2].id, small),
        ]
    )

    changes = heard(theirs, want=4)
    changes += settle(theirs)
    assert all(c.kind is ChangeKind.SAMPLES for c in changes)
    first = [c for c in changes if c.machine_id == machines[0].id]
    second = [c for c in changes if c.machine_id == machines[1].id]
    third = [c for c in changes if c.machine_id == machines[2].id]
    assert second == [Change(ChangeKind.SAMPLES, machines[1].id, tuple(small))]
    assert third == [Change(ChangeKind.SAMPLES, machines[2].id, tuple(small))]
    # The newest of the big batch, over several notices, in order; the rest counted.
    got = [s for c in first for s in c.samples]
    missed = sum(c.missed for c in first)
    assert len(first) > 1
    assert 0 < len(got) < len(big)
    assert got == big[missed:]
    assert len(got) + missed == len(big)
    assert own.receive(QUIET) == []


@pytest.mark.postgres
def test_only_watched_machines_samples_are_sent_and_watches_count(
    two_stores: tuple[SqlStorage, SqlStorage], listeners: list[ChangeListener]
) -> None:
    writer, other = two_stores
    theirs = listen(other, listeners)
    user = writer.state.add_user(make_user(), "x")
    machine = writer.state.add_machine(make_machine(owner_id=user.id))
    settle(theirs)
    stored = iter(samples(10))

    def write_one() -> Sample:
        sample = next(stored)
        writer.metrics.write([MachineSamples(machine.id, [sample])])
        return sample

    write_one()
    assert theirs.receive(QUIET) == []  # no one watches: nothing sent
    theirs.watch(machine.id)
    theirs.watch(machine.id)  # two subscribers
    sample = write_one()
    assert heard(theirs) == [Change(ChangeKind.SAMPLES, machine.id, (sample,))]
    theirs.unwatch(machine.id)
    sample = write_one()
    assert heard(theirs) == [Change(ChangeKind.SAMPLES, machine.id, (sample,))]
    theirs.unwatch(machine.id)
    theirs.unwatch(machine.id)  # one too many: nothing to end
    write_one()
    assert theirs.receive(QUIET) == []


@pytest.mark.postgres
def test_watches_survive_their_connection_ending(
    two_stores: tuple[SqlStorage, SqlStorage], listeners: list[ChangeListener]
) -> None:
    writer, other = two_stores
    theirs = listen(other, listeners)
    user = writer.state.add_user(make_user(), "x")
    machine = writer.state.add_machine(make_machine(owner_id=user.id))
    settle(theirs)
    theirs.watch(machine.id)
    with writer.engine.connect() as conn:
        ended = (
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND classid = :c AND objsubid = 2"
                    " AND objid = CAST(hashtext(current_schema() || ':' || :m) AS oid)"
                ),
                {"c": LIVE_CLASS, "m": machine.id},
            )
            .scalars()
            .all()
        )
        conn.commit()
    assert ended == [True]
    theirs.watch(machine.id)  # finds the connection gone, takes both watches again
    theirs.unwatch(machine.id)
    sent = samples(1)
    writer.metrics.write([MachineSamples(machine.id, sent)])
    assert heard(theirs) == [Change(ChangeKind.SAMPLES, machine.id, tuple(sent))]


@pytest.mark.postgres
def test_a_sample_too_large_for_a_notice_is_counted_not_sent(
    two_stores: tuple[SqlStorage, SqlStorage], listeners: list[ChangeListener]
) -> None:
    writer, other = two_stores
    theirs = listen(other, listeners)
    user = writer.state.add_user(make_user(), "x")
    machine = writer.state.add_machine(make_machine(owner_id=user.id))
    settle(theirs)
    theirs.watch(machine.id)
    huge, fine = samples(1, readings=400), samples(1)
    writer.metrics.write([MachineSamples(machine.id, [*huge, *fine])], max_series=1000)
    assert heard(theirs) == [Change(ChangeKind.SAMPLES, machine.id, tuple(fine), missed=1)]


@pytest.mark.postgres
def test_nothing_is_heard_of_a_rolled_back_write(
    two_stores: tuple[SqlStorage, SqlStorage], listeners: list[ChangeListener]
) -> None:
    writer, other = two_stores
    theirs = listen(other, listeners)
    user = writer.state.add_user(make_user(), "x")
    machine = writer.state.add_machine(make_machine(owner_id=user.id))
    settle(theirs)
    with pytest.raises(SeriesLimitError):
        writer.metrics.write([MachineSamples(machine.id, samples(1, readings=3))], max_series=2)
    assert theirs.receive(QUIET) == []


@pytest.mark.postgres
def test_another_schema_hears_nothing(
    postgres_url: str, two_stores: tuple[SqlStorage, SqlStorage], listeners: list[ChangeListener]
) -> None:
    writer, other = two_stores
    theirs = listen(other, listeners)
    elsewhere = sa.create_engine(postgres_url)  # the default schema: another deployment
    listener = PgChangeListener(elsewhere, "someone", lambda: None)
    try:
        drain(listener)
        user = writer.state.add_user(make_user(), "x")
        machine = writer.state.add_machine(make_machine(owner_id=user.id))
        listener.watch(machine.id)
        theirs.watch(machine.id)
        writer.metrics.write([MachineSamples(machine.id, samples(1))])
        assert listener.receive(QUIET) == []
        assert [c.kind for c in settle(theirs)] == [ChangeKind.SAMPLES]  # the same schema does
    finally:
        listener.close()
        elsewhere.dispose()


@pytest.mark.postgres
def test_a_listener_whose_session_ends_reconnects_and_reports_a_resync(
    two_stores: tuple[SqlStorage, SqlStorage], listeners: list[ChangeListener]
) -> None:
    writer, other = two_stores
    user = writer.state.add_user(make_user(), "x")
    theirs = listen(other, listeners)
    with writer.engine.connect() as conn:
        ended = (
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"
                    " AND datname = current_database()"
                )
            )
            .scalars()
            .all()
        )
        conn.commit()
    assert ended
    assert all(ended)
    generation = other.state.api_key_generation
    # The loss is noticed, then the listener reconnects and says what it may have missed.
    changes = heard(theirs, want=2)
    assert changes == [Change(ChangeKind.CONFIG), Change(ChangeKind.KEYS)]
    assert other.state.api_key_generation != generation
    writer.state.add_alert_rule(make_alert_rule(user.id))
    assert heard(theirs) == [Change(ChangeKind.CONFIG)]


@pytest.mark.postgres
def test_a_listener_that_cannot_connect_backs_off(
    caplog: pytest.LogCaptureFixture, listeners: list[ChangeListener]
) -> None:
    unreachable = sa.create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:9/none", connect_args={"connect_timeout": 2}
    )
    listener = PgChangeListener(unreachable, "someone", lambda: None)
    listeners.append(listener)
    try:
        with caplog.at_level(logging.WARNING):
            assert listener.receive(0.2) == []
            started = time.monotonic()
            assert listener.receive(0.2) == []  # waiting out the back-off, not connecting
        assert time.monotonic() - started >= 0.15
        attempts = [r for r in caplog.records if "cannot listen for changes" in r.message]
        assert len(attempts) == 1
        assert not listener.connected
    finally:
        unreachable.dispose()


def test_notices_carry_no_more_than_the_payload_limit_and_parse_back() -> None:
    notices = Notices(enabled=True)
    batch = samples(30, readings=20)
    chunks = list(notices._sample_chunks("m1", batch))
    assert len(chunks) > 1
    assert all(len(chunk.encode()) <= PAYLOAD_LIMIT for chunk in chunks)
    assert sum(len(chunk) for chunk in chunks) <= SAMPLE_BUDGET + len(chunks) * 100
    parsed = [parse(chunk, "another origin") for chunk in chunks]
    got = [s for c in parsed if c is not None for s in c.samples]
    missed = sum(c.missed for c in parsed if c is not None)
    assert got == batch[missed:]
    assert parse(chunks[0], notices.origin) is None  # one's own


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        "[]",
        '{"o": "x"}',
        '{"o": "x", "k": "nonsense"}',
        '{"o": "x", "k": "samples"}',
        '{"o": "x", "k": "samples", "m": "m1", "s": [{"timestamp": "no"}]}',
    ],
)
def test_a_malformed_notice_is_ignored_with_a_warning(
    payload: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert parse(payload, "mine") is None
    assert "malformed change notice" in caplog.text


def test_a_notice_payload_names_no_secret() -> None:
    notices = Notices(enabled=True)
    payload = json.loads(notices._payload(ChangeKind.KEYS))
    assert set(payload) == {"o", "k"}
