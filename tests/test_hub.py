"""The hub end to end on a real SQLite file (through the sqlite plugin's entry point)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from lunasentri_core import (
    InUseError,
    Machine,
    MachineKind,
    NotFoundError,
    Reading,
    Sample,
    Sentri,
    Settings,
    Target,
    hookimpl,
)
from lunasentri_core.components import Credentials
from lunasentri_core.errors import ConfigError
from lunasentri_core.model import ApiKey, HistoryQuery, Role, Session, new_id, utcnow
from lunasentri_core.security import API_KEY_PREFIX, SESSION_PREFIX, issue_token
from lunasentri_core.services import queries
from lunasentri_core.services.collection import CollectionError
from lunasentri_core.testing import (
    make_credential_profile,
    make_device,
    make_machine,
    make_monitor,
    make_user,
)
from lunasentri_sqlite import SQLiteStorageFactory

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings.load(environ={}, data_dir=tmp_path / "data", **extra)


def sample(at: datetime, cpu: float, mount: str = "/") -> Sample:
    return Sample(
        at, [Reading("cpu.percent", cpu), Reading("disk.used", cpu * 10, {"mount": mount})]
    )


class Fixed:
    name = "fixed"
    settings_class = None

    def collect(self, target: Target) -> list[Reading]:
        return [Reading("fixed.value", 42.0)]


class AsyncCollector:
    name = "async_fixed"
    settings_class = None

    async def collect(self, target: Target) -> list[Reading]:
        await anyio.sleep(0)
        return [Reading("async.value", 7.0, {"target": target.machine_id[:4]})]


class Broken:
    name = "broken"
    settings_class = None

    def collect(self, target: Target) -> list[Reading]:
        raise OSError("sensor unplugged")


class Slow:
    name = "slow"
    settings_class = None

    def collect(self, target: Target) -> list[Reading]:
        time.sleep(2)
        return []


class TestCollectors:
    @hookimpl
    def lunasentri_register_collectors(self) -> list[type]:
        return [Fixed, AsyncCollector, Broken, Slow]


class IngestRecorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    @hookimpl
    async def lunasentri_samples_ingested(
        self, machine: Machine, samples: Sequence[Sample]
    ) -> None:
        self.seen.append((machine.name, len(samples)))


async def test_ingest_and_query_round_trip(tmp_path: Path) -> None:
    async with Sentri(settings(tmp_path)) as hub:
        machine = await hub.add_machine("web-1", hostname="web-1.lan", labels={"env": "prod"})
        stored = await hub.ingest(
            machine.id, [sample(T0 + timedelta(seconds=5 * i), 10.0 + i) for i in range(12)]
        )

        latest = {(v.series.metric, v.series.labels): v for v in await hub.latest(machine.id)}
        history = await hub.history(
            machine.id,
            "cpu.percent",
            start=T0,
            end=T0 + timedelta(minutes=1),
            step=timedelta(seconds=30),
            aggregation="max",
        )

    assert stored == 24
    assert latest[("cpu.percent", ())].value == 21.0
    assert latest[("cpu.percent", ())].timestamp == T0 + timedelta(seconds=55)
    assert latest[("disk.used", (("mount", "/"),))].value == 210.0
    (series,) = history
    assert [(p.timestamp, p.value) for p in series.points] == [
        (T0, 15.0),
        (T0 + timedelta(seconds=30), 21.0),
    ]


class _Without:
    """A store as a plugin without the SQL store's shortcuts (``hidden``) would be."""

    def __init__(self, inner: Any, hidden: str, **parts: Any) -> None:
        self._inner, self._hidden, self._parts = inner, hidden, parts

    def __getattr__(self, name: str) -> Any:
        if name == self._hidden:
            raise AttributeError(name)
        return self._parts[name] if name in self._parts else getattr(self._inner, name)


@pytest.mark.parametrize("shortcuts", [True, False], ids=["sql", "plain"])
async def test_machine_reads_are_the_owners_alone(tmp_path: Path, shortcuts: bool) -> None:
    # The SQL store checks the owner inside one snapshot (a history read in the
    # statement matching its series, the latest values with check_machine); a store
    # without them goes through get_machine: the same refusals either way.
    storage = None
    if not shortcuts:
        opened = SQLiteStorageFactory.open(f"sqlite:///{tmp_path / 'plain.db'}")
        opened.migrate()
        state = _Without(opened.state, "check_machine")
        metrics = _Without(opened.metrics, "history_reader_checks")
        storage = _Without(opened, "snapshot", state=state, metrics=metrics)
    async with Sentri(settings(tmp_path), storage=storage) as hub:
        alice = await hub.run_sync(hub.storage.state.add_user, make_user(), "h")
        bob = await hub.run_sync(hub.storage.state.add_user, make_user(), "h")
        box = await hub.add_machine("box", owner_id=alice.id)
        await hub.ingest(
            box.id, [sample(T0 + timedelta(seconds=5 * i), 1.0 + i) for i in range(12)]
        )
        asked = [
            HistoryQuery(box.id, metric, T0, T0 + timedelta(minutes=1), timedelta(minutes=1))
            for metric in ("cpu.percent", "disk.used")
        ]
        for owner in (alice.id, None):  # hers, and an administrator's scope
            found = await queries.history_columns(hub, asked, owner)
            assert [list(c.values) for c in found] == [[6.5], [65.0]]
            latest = await queries.latest(hub, box.id, owner, "cpu.percent")
            assert [v.value for v in latest.items] == [12.0]
        for owner, machine_id in [(bob.id, box.id), (alice.id, "ghost"), (None, "ghost")]:
            query = attrs.evolve(asked[0], machine_id=machine_id)
            with pytest.raises(NotFoundError):
                await queries.history_columns(hub, [query], owner)
            with pytest.raises(NotFoundError):
                await queries.latest(hub, machine_id, owner)
        await hub.remove_machine(box.id)
        with pytest.raises(NotFoundError):
            await queries.history_columns(hub, asked, alice.id)
        with pytest.raises(NotFoundError):
            await queries.latest(hub, box.id, None)
    if storage is not None:
        opened.close()


async def test_ingest_is_idempotent_and_updates_last_seen(tmp_path: Path) -> None:
    now = T0 + timedelta(hours=1)
    async with Sentri(settings(tmp_path), clock=lambda: now) as hub:
        machine = await hub.add_machine("db-1")
        batch = [sample(T0, 1.0), sample(T0 + timedelta(seconds=5), 2.0)]
        await hub.ingest(machine.id, batch)
        await hub.ingest(machine.id, [sample(T0, 99.0)])  # a retry with a different value

        history = await hub.history(
            machine.id,
            "cpu.percent",
            start=T0,
            end=T0 + timedelta(seconds=10),
            step=timedelta(seconds=5),
        )
        reloaded = await hub.get_machine(machine.id)

    assert [p.value for p in history[0].points] == [1.0, 2.0]
    assert reloaded.last_seen == now


async def test_data_survives_reopening(tmp_path: Path) -> None:
    async with Sentri(settings(tmp_path)) as hub:
        machine = await hub.add_machine("persist")
        await hub.ingest(machine.id, [sample(T0, 5.0)])
    async with Sentri(settings(tmp_path)) as hub:
        values = await hub.latest(machine.id, "cpu.percent")
    assert [v.value for v in values] == [5.0]


async def test_unknown_machine_is_refused(tmp_path: Path) -> None:
    async with Sentri(settings(tmp_path)) as hub:
        with pytest.raises(NotFoundError):
            await hub.ingest("no-such-machine", [sample(T0, 1.0)])


async def test_concurrent_ingests_share_transactions_and_all_land(tmp_path: Path) -> None:
    async with Sentri(settings(tmp_path)) as hub:
        machines = [await hub.add_machine(f"m{i}") for i in range(20)]

        async with anyio.create_task_group() as tg:
            for i, machine in enumerate(machines):
                for j in range(5):
                    at = T0 + timedelta(seconds=5 * j)
                    tg.start_soon(hub.ingest, machine.id, [sample(at, float(i))])

        stats = hub.writer.stats
        counts = [
            len(
                (
                    await hub.history(
                        m.id,
                        "cpu.percent",
                        start=T0,
                        end=T0 + timedelta(minutes=1),
                        step=timedelta(seconds=5),
                    )
                )[0].points
            )
            for m in machines
        ]

    assert stats.batches == 100
    assert stats.transactions < stats.batches
    assert counts == [5] * 20


async def test_closing_flushes_writes_in_flight(tmp_path: Path) -> None:
    async with Sentri(settings(tmp_path)) as hub:
        machine = await hub.add_machine("flush")
        async with anyio.create_task_group() as tg:
            for j in range(50):
                tg.start_soon(hub.ingest, machine.id, [sample(T0 + timedelta(seconds=j), 1.0)])
    async with Sentri(settings(tmp_path)) as hub:
        (series,) = await hub.history(
            machine.id,
            "cpu.percent",
            start=T0,
            end=T0 + timedelta(minutes=1),
            step=timedelta(seconds=1),
        )
    assert len(series.points) == 50


async def test_collectors_run_sync_and_async_and_failures_are_partial(tmp_path: Path) -> None:
    async with Sentri(settings(tmp_path), plugins={"test": TestCollectors()}) as hub:
        machine = await hub.local_machine()
        result = await hub.collect_once(machine, ["fixed", "async_fixed", "broken"])
        with pytest.raises(CollectionError, match="broken: OSError: sensor unplugged"):
            await hub.collect_once(machine, ["broken"])

    assert {r.metric for r in result.sample.readings} == {"fixed.value", "async.value"}
    assert result.failures == {"broken": "OSError: sensor unplugged"}
    assert machine.kind is MachineKind.LOCAL


async def test_a_hung_collector_times_out(tmp_path: Path) -> None:
    cfg = settings(tmp_path, collect={"timeout": "0.2s"})
    async with Sentri(cfg, plugins={"test": TestCollectors()}) as hub:
        machine = await hub.local_machine()
        result = await hub.collect_once(machine, ["fixed", "slow"])
    assert result.failures == {"slow": "timed out after 0.2s"}
    assert [r.metric for r in result.sample.readings] == ["fixed.value"]


async def test_collecting_on_an_interval_in_the_callers_task_group(tmp_path: Path) -> None:
    recorder = IngestRecorder()
    plugins = {"test": TestCollectors(), "recorder": recorder}
    async with Sentri(settings(tmp_path), plugins=plugins) as hub:
        machine = await hub.local_machine()
        async with anyio.create_task_group() as tg:
            hub.start_collecting(
                tg, machine, interval=timedelta(seconds=0.05), collectors=["fixed"]
            )
            with anyio.fail_after(10):
                while len(recorder.seen) < 3:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        values = await hub.latest(machine.id, "fixed.value")

    assert [v.value for v in values] == [42.0]
    assert recorder.seen[:3] == [(machine.name, 1)] * 3


async def test_local_machine_is_created_once(tmp_path: Path) -> None:
    async with Sentri(settings(tmp_path)) as hub:
        first = await hub.local_machine()
        second = await hub.local_machine()
        assert first.id == second.id
        assert [m.id for m in await hub.list_machines()] == [first.id]


async def test_removing_a_machine_removes_its_series(tmp_path: Path) -> None:
    async with Sentri(settings(tmp_path)) as hub:
        keep = await hub.add_machine("keep")
        gone = await hub.add_machine("gone")
        for machine in (keep, gone):
            await hub.ingest(machine.id, [sample(T0, 1.0)])

        await hub.remove_machine(gone.id)

        assert await hub.series(gone.id) == []
        assert len(await hub.series(keep.id)) == 2
        with pytest.raises(NotFoundError):
            await hub.get_machine(gone.id)


async def test_a_machine_monitors_write_to_is_not_removed(tmp_path: Path) -> None:
    # The poller off: the monitor is due, and a poll's failure would add a series
    # to the machine before the count below (as it did on a loaded machine).
    async with Sentri(settings(tmp_path, agentless={"enabled": False})) as hub:
        state = hub.storage.state
        owner = await hub.run_sync(state.add_user, make_user(), "h")
        credential = await hub.run_sync(
            state.add_credential_profile, make_credential_profile(owner.id)
        )
        device = await hub.run_sync(state.add_device, make_device(owner.id))
        machine = make_machine(owner_id=owner.id, kind=MachineKind.AGENTLESS)
        monitor = await hub.run_sync(
            state.add_monitor, make_monitor(device, credential.id), machine
        )
        await hub.ingest(machine.id, [sample(T0, 1.0)])

        with pytest.raises(InUseError) as raised:
            await hub.remove_machine(machine.id)

        assert raised.value.users == {"monitors": [monitor.id]}
        assert len(await hub.series(machine.id)) == 2, "the series went before the refusal"
        assert (await hub.get_machine(machine.id)).id == machine.id


async def test_storage_runs_off_the_event_loop(tmp_path: Path) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    class Spy:
        name = "spy"
        settings_class = None

        def collect(self, target: Target) -> list[Reading]:
            seen.append(threading.get_ident())
            return []

    class Plugin:
        @hookimpl
        def lunasentri_register_collectors(self) -> list[type]:
            return [Spy]

    async with Sentri(settings(tmp_path), plugins={"spy": Plugin()}) as hub:
        await hub.collect_once(await hub.local_machine(), ["spy"])
    assert seen
    assert loop_thread not in seen


async def test_settings_and_overrides_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="either settings or keyword overrides"):
        Sentri(settings(tmp_path), data_dir=tmp_path)


async def test_a_hub_follows_changes_made_by_another_hub_on_its_storage(tmp_path: Path) -> None:
    # b checks only when told to here (its own task would every hour).
    slow = settings(tmp_path, sync_interval="1h")
    async with Sentri(settings(tmp_path)) as a, Sentri(slow) as b:
        web = await a.add_machine("web")
        await b.ingest(web.id, [sample(T0, 10.0)])  # b now holds a copy of web
        assert await b.changes.check() is False, "nothing changed since b started"

        await a.run_sync(a.storage.state.update_machine, attrs.evolve(web, name="web-2"))
        assert (await b.cached_machine(web.id)).name == "web", "b has not looked yet"
        assert await b.changes.check() is True
        assert (await b.cached_machine(web.id)).name == "web-2"
        assert await b.changes.check() is False, "a change is followed once"

        await a.remove_machine(web.id)
        assert await b.changes.check() is True
        with pytest.raises(NotFoundError):
            await b.cached_machine(web.id)


@pytest.mark.parametrize("end", ["revoke", "expire"])
async def test_a_key_ended_by_another_hub_is_forgotten_when_its_changes_are_followed(
    tmp_path: Path, end: str
) -> None:
    # SQLite: no notices between processes; the followed config epoch carries the change.
    slow = settings(tmp_path, sync_interval="1h")
    async with Sentri(settings(tmp_path)) as a, Sentri(slow) as b:
        web = await a.add_machine("web")
        token = issue_token(API_KEY_PREFIX)
        key = ApiKey(
            id=new_id(), machine_id=web.id, prefix=token.visible, key_hash=token.hash,
            created_at=utcnow(),
        )  # fmt: skip
        await a.run_sync(a.storage.state.add_api_key, key)
        other = issue_token(API_KEY_PREFIX)
        other_key = attrs.evolve(key, id=new_id(), prefix=other.visible, key_hash=other.hash)
        await a.run_sync(a.storage.state.add_api_key, other_key)
        credentials = Credentials(headers={"authorization": f"Bearer {token.secret}"})
        others = Credentials(headers={"authorization": f"Bearer {other.secret}"})
        assert await b.changes.check() is False, "nothing changed since b started"
        assert (await b.authenticate(credentials)) is not None  # b remembers the key now
        assert (await b.authenticate(others)) is not None

        if end == "revoke":
            await a.run_sync(a.storage.state.revoke_api_key, key.id, utcnow())
        else:
            await a.run_sync(a.storage.state.set_api_key_expiry, key.id, utcnow())
        assert (await b.authenticate(credentials)) is not None, "b has not looked yet"
        assert await b.changes.check() is True
        assert await b.authenticate(credentials) is None
        assert (await b.authenticate(others)) is not None, "the other key still works"


@pytest.mark.parametrize("end", ["revoke", "revoke all", "demote"])
async def test_a_session_ended_by_another_hub_is_forgotten_when_its_changes_are_followed(
    tmp_path: Path, end: str
) -> None:
    # SQLite: no notices between processes; the followed config epoch carries the change.
    slow = settings(tmp_path, sync_interval="1h")
    async with Sentri(settings(tmp_path)) as a, Sentri(slow) as b:
        state = a.storage.state
        await a.run_sync(state.add_user, make_user(role=Role.ADMIN), "hash")
        user = await a.run_sync(state.add_user, make_user(role=Role.ADMIN), "hash")
        token = issue_token(SESSION_PREFIX)
        session = Session(
            id=new_id(), user_id=user.id, token_hash=token.hash, created_at=utcnow(),
            expires_at=utcnow() + timedelta(hours=1),
        )  # fmt: skip
        await a.run_sync(state.add_session, session)
        credentials = Credentials(headers={"authorization": f"Bearer {token.secret}"})
        assert await b.changes.check() is False, "nothing changed since b started"
        remembered = await b.authenticate(credentials)  # b remembers the session now
        assert remembered is not None
        assert remembered.is_admin

        if end == "revoke":
            await a.run_sync(state.revoke_session, session.id, utcnow())
        elif end == "revoke all":
            await a.run_sync(state.revoke_user_sessions, user.id, utcnow())
        else:
            await a.run_sync(state.set_user_role, user.id, Role.USER)
        assert (await b.authenticate(credentials)) is not None, "b has not looked yet"
        assert await b.changes.check() is True
        after = await b.authenticate(credentials)
        if end == "demote":
            assert after is not None
            assert not after.is_admin
        else:
            assert after is None


async def test_samples_ingested_unheard_leave_last_seen(tmp_path: Path) -> None:
    """A poll that found its host down stores poll.up = 0 without the host seeming alive."""
    async with Sentri(settings(tmp_path)) as hub:
        machine = await hub.add_machine("polled")
        down = Sample(T0, [Reading("poll.up", 0)])
        assert await hub.ingest(machine.id, [down], heard=False) == 1
        assert (await hub.get_machine(machine.id)).last_seen is None
        assert [v.value for v in await hub.latest(machine.id, "poll.up")] == [0.0]
        await hub.ingest(machine.id, [Sample(T0 + timedelta(seconds=1), [Reading("poll.up", 1)])])
        assert (await hub.get_machine(machine.id)).last_seen is not None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://ls:pw-x9@db:5432/ls", "postgresql://ls:***@db:5432/ls"),
        ("postgresql://:pw-x9@db/ls?sslmode=require", "postgresql://:***@db/ls?sslmode=require"),
        ("postgresql://ls@db/ls", "postgresql://ls@db/ls"),
        ("sqlite:////var/lib/ls.db", "sqlite:////var/lib/ls.db"),
    ],
)
def test_the_storage_log_line_never_shows_a_password(url: str, shown: str) -> None:
    from lunasentri_core.hub import _redact_url

    assert _redact_url(url) == shown


async def test_sums_past_the_float_range_do_not_stop_compaction(tmp_path: Path) -> None:
    """Two points near the largest float in one minute: their sum is not a float."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(hours=3)
    async with Sentri(settings(tmp_path)) as hub:
        machine = await hub.add_machine("extreme")
        for offset, value in ((0, 1.7e308), (10, 1.7e308), (20, -1.0)):
            at = start + timedelta(seconds=offset)
            await hub.ingest(machine.id, [Sample(at, [Reading("disk.used", value)])])
        await hub.maintain()
        await hub.maintain()  # a second pass must not fail on what the first left
        [raw] = await hub.history(
            machine.id, "disk.used", start=start, end=now, step=timedelta(seconds=10)
        )
        assert [p.value for p in raw.points] == [1.7e308, 1.7e308, -1.0]
        [minutes] = await hub.history(
            machine.id, "disk.used", start=start, end=now, step=timedelta(minutes=1)
        )
        # The minute's sum is held at the largest float: its average is finite, if low.
        [point] = minutes.points
        assert 0 < point.value <= sys.float_info.max
        [hourly] = await hub.history(
            machine.id,
            "disk.used",
            start=start,
            end=now,
            step=timedelta(hours=1),
            aggregation="max",
        )
        assert [p.value for p in hourly.points] == [1.7e308]


async def test_a_stray_plugin_table_is_warned_about_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="lunasentri_core.plugins"):
        async with Sentri(settings(tmp_path, plugins={"pstuil": {"per_cpu": True}})):
            pass

    assert any("[plugins.pstuil] names no loaded component" in m for m in caplog.messages)


async def test_strict_plugins_refuses_to_start_with_a_stray_table(tmp_path: Path) -> None:
    hub = Sentri(settings(tmp_path, plugins={"pstuil": {}}, strict_plugins=True))

    with pytest.raises(ConfigError, match=r"\[plugins\.pstuil\] names no loaded component"):
        async with hub:
            pass

    assert not (tmp_path / "data").exists(), "refused before opening the storage"
