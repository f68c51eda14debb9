"""The ingest writer's worker threads: where transactions run, and what comes back from them."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import anyio
import pytest

from lunasentri_core import MachineSamples, Reading, Sample
from lunasentri_core.services.writer import BatchWriter

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 12, 7, tzinfo=UTC)


class _Metrics:
    """Records the thread of each transaction; a batch of a machine in ``failures`` raises."""

    writes_last_seen = False
    write_transactions = 1

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.failures: dict[str, BaseException] = {}
        self.gate = threading.Event()
        self.gate.set()

    def write(self, batch: Sequence[MachineSamples], **_: Any) -> int:
        self.threads.append(threading.current_thread().name)
        assert self.gate.wait(10), "never let go"
        for ms in batch:
            if ms.machine_id in self.failures:
                raise self.failures[ms.machine_id]
        return sum(len(s.readings) for ms in batch for s in ms.samples)


class _State:
    def touch_machines(self, seen: object) -> None:
        pass


class _Storage:
    name = "fake"
    capabilities = frozenset()

    def __init__(self) -> None:
        self.metrics = _Metrics()
        self.state = _State()


def _batch(machine_id: str) -> MachineSamples:
    return MachineSamples(machine_id, [Sample(NOW, [Reading("cpu.percent", 1.0)])])


async def test_transactions_run_off_the_event_loop_thread() -> None:
    storage = _Storage()
    writer = BatchWriter(cast(Any, storage), clock=lambda: NOW)
    async with anyio.create_task_group() as tasks:
        await tasks.start(writer.run)
        for machine_id in ("a", "b", "c"):
            assert await writer.write(_batch(machine_id)) == 1
        await writer.aclose()
    assert len(storage.metrics.threads) == 3
    assert threading.current_thread().name not in storage.metrics.threads


async def test_an_error_in_the_thread_reaches_its_caller_only() -> None:
    storage = _Storage()
    storage.metrics.failures["bad"] = ValueError("not this one")
    storage.metrics.gate.clear()
    writer = BatchWriter(cast(Any, storage), clock=lambda: NOW)
    outcome: dict[str, object] = {}

    async def write(machine_id: str) -> None:
        try:
            outcome[machine_id] = await writer.write(_batch(machine_id))
        except ValueError as error:
            outcome[machine_id] = error

    async with anyio.create_task_group() as tasks:
        await tasks.start(writer.run)
        tasks.start_soon(write, "first")
        with anyio.fail_after(10):
            while not storage.metrics.threads:
                await anyio.sleep(0.005)
        # Queued behind "first": one group, whose failure is retried batch by batch.
        for machine_id in ("good", "bad", "also-good"):
            tasks.start_soon(write, machine_id)
        with anyio.fail_after(10):
            while writer.queue_depth < 3:
                await anyio.sleep(0.005)
        storage.metrics.gate.set()
        with anyio.fail_after(10):
            while len(outcome) < 4:
                await anyio.sleep(0.005)
        await writer.aclose()
    assert outcome["first"] == outcome["good"] == outcome["also-good"] == 1
    assert isinstance(outcome["bad"], ValueError)
    assert str(outcome["bad"]) == "not this one"
    # first; the group of three; then each of the three alone.
    assert len(storage.metrics.threads) == 5


async def test_a_commit_in_flight_completes_when_the_writer_is_cancelled() -> None:
    storage = _Storage()
    storage.metrics.gate.clear()
    committed: list[str] = []
    writer = BatchWriter(
        cast(Any, storage),
        clock=lambda: NOW,
        on_committed=lambda batches: committed.extend(b.machine_id for b in batches),
    )
    result: list[int] = []

    async def write() -> None:
        with anyio.CancelScope(shield=True):
            result.append(await writer.write(_batch("a")))

    async with anyio.create_task_group() as tasks:
        await tasks.start(writer.run)
        tasks.start_soon(write)
        with anyio.fail_after(10):
            while not storage.metrics.threads:
                await anyio.sleep(0.005)
        tasks.cancel_scope.cancel()
        # The writer's task is cancelled while its transaction runs in the thread.
        threading.Timer(0.05, storage.metrics.gate.set).start()
    await writer.aclose()
    assert committed == ["a"]
    assert result == [1]
