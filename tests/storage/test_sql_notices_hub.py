"""Two hubs on one PostgreSQL schema follow each other through change notices.

Each hub has its own storage object and engine, as two server processes would,
and a ``sync_interval`` of an hour, so only a notice can explain what the other
hub sees: a machine renamed through one is renamed in the other's cache, and
samples ingested through one reach a live subscription on the other, once,
while the ingesting hub's own subscribers get them once too. On SQLite the hub
has nothing to listen to and relies on polling.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import attrs
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lunasentri_core import Sentri, Settings
from lunasentri_core.samples import Sample
from lunasentri_core.services.live import LiveFeed
from lunasentri_core.storage.sql import SqlStorage
from lunasentri_core.testing.builders import make_reading

pytestmark = pytest.mark.anyio

WAIT = 10.0
"""Seconds to wait for what a notice brings before the test fails (not a timing assertion)."""

OpenHub = Callable[[], contextlib.AbstractAsyncContextManager[Sentri]]


@pytest.fixture
def two_storages(postgres_url: str, postgres_engine: Engine) -> Iterator[list[SqlStorage]]:
    with postgres_engine.connect() as conn:
        schema = str(conn.execute(sa.select(sa.func.current_schema())).scalar())
    second = sa.create_engine(postgres_url, connect_args={"options": f"-c search_path={schema}"})
    storages = [SqlStorage(postgres_engine), SqlStorage(second)]
    yield storages
    for storage in storages:
        storage.close()


def settings(tmp_path: Path, name: str) -> Settings:
    return Settings.load(
        environ={}, data_dir=tmp_path / name, sync_interval="1h", server={"shared_database": True}
    )


@contextlib.asynccontextmanager
async def hubs(storages: list[SqlStorage], tmp_path: Path) -> AsyncIterator[tuple[Sentri, Sentri]]:
    async with (
        Sentri(settings(tmp_path, "a"), storage=storages[0]) as a,
        Sentri(settings(tmp_path, "b"), storage=storages[1]) as b,
    ):
        with anyio.fail_after(WAIT):
            while not (a.changes.listening and b.changes.listening):
                await anyio.sleep(0.02)
        yield a, b


@pytest.mark.postgres
async def test_a_machine_changed_through_one_hub_is_reloaded_by_the_other(
    two_storages: list[SqlStorage], tmp_path: Path
) -> None:
    async with hubs(two_storages, tmp_path) as (a, b):
        machine = await a.add_machine("web-1")
        assert (await b.cached_machine(machine.id)).name == "web-1"
        renamed = attrs.evolve(machine, name="web-2")
        await a.run_sync(a.storage.state.update_machine, renamed)
        with anyio.fail_after(WAIT):
            while (await b.cached_machine(machine.id)).name != "web-2":
                await anyio.sleep(0.02)


@pytest.mark.postgres
async def test_samples_ingested_through_one_hub_reach_the_other_hubs_subscribers_once(
    two_storages: list[SqlStorage], tmp_path: Path
) -> None:
    async with hubs(two_storages, tmp_path) as (a, b):
        feeds = [LiveFeed(), LiveFeed()]
        assert feeds[0].attach(a)
        assert feeds[1].attach(b)
        machine = await a.add_machine("web-1")
        sent = [
            Sample(datetime(2026, 1, 1, 0, 0, i, tzinfo=UTC), [make_reading(value=float(i))])
            for i in range(3)
        ]
        async with feeds[0].watch(machine.id) as here, feeds[1].watch(machine.id) as there:
            await a.ingest(machine.id, sent)
            for subscription in (here, there):
                got: list[Sample] = []
                with anyio.fail_after(WAIT):
                    while len(got) < len(sent):
                        delivery = await subscription.receive(WAIT)
                        assert delivery is not None
                        got += delivery.samples
                assert got == sent
            # Nothing more: the ingesting hub's own notice is not delivered again.
            for subscription in (here, there):
                late = await subscription.receive(1.0)
                assert late is not None
                assert late.samples == ()
        for feed in feeds:
            feed.close()
            feed.detach()
        assert a.changes.sample_listeners == []


async def test_on_sqlite_a_hub_has_nothing_to_listen_to(tmp_path: Path) -> None:
    storage = SqlStorage(sa.create_engine(f"sqlite:///{tmp_path / 'one.db'}"))
    storage.migrate()
    try:
        async with Sentri(settings(tmp_path, "a"), storage=storage) as hub:
            await anyio.sleep(0.1)
            assert not hub.changes.listening
    finally:
        storage.close()


async def test_samples_left_out_of_a_notice_reach_subscribers_as_dropped() -> None:
    feed = LiveFeed()
    sample = Sample(datetime(2026, 1, 1, tzinfo=UTC), [make_reading()])
    with feed.subscribe("m1") as subscription:
        feed.publish("m1", [], missed=7)
        delivery = await subscription.receive(1.0)
        assert delivery is not None
        assert (delivery.samples, delivery.dropped) == ((), 7)
        feed.publish("m1", [sample], missed=2)
        delivery = await subscription.receive(1.0)
        assert delivery is not None
        assert (delivery.samples, delivery.dropped) == ((sample,), 2)
