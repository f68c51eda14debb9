"""The poller against an in-memory store: scheduling, retries, bounds, hung hosts."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

import anyio
import attrs
import pytest

from lunasentri_core.model import Sample
from lunasentri_core.remote import RemoteAuthError, RemoteTimeoutError
from lunasentri_core.services.poller import DURATION, UP, Poller

from .fakes import T0, Clock, FakeStore, Recorder, StubCollector, make_poller, wait_until

pytestmark = pytest.mark.anyio

MINUTE = timedelta(minutes=1)


@asynccontextmanager
async def running(poller: Poller) -> AsyncIterator[Poller]:
    async with anyio.create_task_group() as group:
        await group.start(poller.run)
        yield poller
        group.cancel_scope.cancel()


@pytest.fixture
def collector() -> StubCollector:
    stub = StubCollector()
    yield stub
    stub.released.set()  # no thread left hanging past its test
    stub.gate.set()


async def test_only_due_enabled_monitors_are_polled_once_each(collector: StubCollector) -> None:
    store, clock, recorder = FakeStore(), Clock(T0), Recorder()
    due = [store.add(f"127.0.0.{i}", due_at=T0 - timedelta(seconds=i)) for i in range(1, 4)]
    later = store.add("127.0.1.1", due_at=T0 + timedelta(seconds=30))
    disabled = store.add("127.0.1.2", enabled=False, due_at=T0 - MINUTE)

    async with running(make_poller(store, collector, clock=clock, recorder=recorder)) as poller:
        await wait_until(lambda: len(store.finished) == 3, "the due monitors' polls")
        for _ in range(5):  # more ticks: nothing else is due
            await poller.schedule()

    assert collector.calls == {store.devices[m.device_id].address: 1 for m in due}
    assert store.claims[later.id] == store.claims[disabled.id] == 0
    for monitor in due:
        stored = store.monitors[monitor.id]
        assert stored.due_at == monitor.due_at + MINUTE  # one interval after its due time
        assert stored.lease_until is None
        assert stored.last_polled == T0
        assert recorder.values(monitor.machine_id, UP) == [1.0]
        assert recorder.values(monitor.machine_id, "cpu.percent") == [1.0]
        assert len(recorder.values(monitor.machine_id, DURATION)) == 1


async def test_the_target_carries_address_options_and_decrypted_credential(
    collector: StubCollector,
) -> None:
    store, clock = FakeStore(), Clock(T0)
    monitor = store.add("127.0.0.9", options={"shell": "powershell"})
    async with running(make_poller(store, collector, clock=clock)):
        await wait_until(lambda: store.finished, "the poll")
    (target,) = collector.targets
    assert target.machine_id == monitor.machine_id
    assert target.host == "127.0.0.9"
    assert target.options == {"shell": "powershell"}
    assert target.credential is not None
    assert target.credential.password == "s3cret"


async def test_two_pollers_on_one_store_never_poll_a_monitor_twice(
    collector: StubCollector,
) -> None:
    store, clock = FakeStore(), Clock(T0)
    monitors = [store.add(f"127.0.2.{i}") for i in range(40)]
    first = make_poller(store, collector, clock=clock, workers=5)
    second = make_poller(store, collector, clock=clock, workers=7)
    collector.gate.clear()
    async with running(first), running(second):
        await wait_until(lambda: collector.running == 12, "both pollers' workers busy")
        collector.gate.set()
        await wait_until(lambda: len(store.finished) == 40, "every monitor's poll")
        for _ in range(3):
            await first.schedule()
            await second.schedule()
    assert set(store.claims.values()) == {1}
    assert sum(collector.calls.values()) == 40
    assert first.stats.started + second.stats.started == 40
    assert {m.id for m in monitors} == set(store.claims)


async def test_a_failing_host_is_retried_with_backoff_then_recorded_as_down(
    collector: StubCollector,
) -> None:
    store, clock, recorder = FakeStore(), Clock(T0), Recorder()
    monitor = store.add("127.0.0.5")
    collector.fail["127.0.0.5"] = lambda attempt: RemoteTimeoutError("no answer in 30s")
    poller = make_poller(
        store, collector, clock=clock, recorder=recorder, retry_backoff=timedelta(milliseconds=40)
    )
    async with running(poller):
        await wait_until(lambda: store.finished, "the failed poll")

    assert collector.calls["127.0.0.5"] == 3  # the first attempt and two retries
    gaps = [b - a for a, b in zip(collector.call_times, collector.call_times[1:], strict=False)]
    # The waits grow exponentially: at least half the base, then half of twice it.
    assert gaps[0] >= 0.02 * 0.9
    assert gaps[1] >= 0.04 * 0.9
    stored = store.monitors[monitor.id]
    assert stored.last_error == "timeout: no answer in 30s"
    assert stored.last_error_at == T0
    assert stored.failures == 1
    assert stored.last_polled is None
    assert stored.due_at == T0 + MINUTE
    assert stored.lease_until is None
    # Only poll.up = 0 is written, so a rule on poll.up < 1 fires.
    (sample,) = recorder.samples[monitor.machine_id]
    assert [(r.metric, r.value) for r in sample.readings] == [(UP, 0.0)]
    assert recorder.heard[monitor.machine_id] == [False]  # the host did not answer
    assert poller.stats.failed == 1
    assert poller.stats.retries == 2


async def test_a_retry_that_succeeds_is_a_success(collector: StubCollector) -> None:
    store, clock, recorder = FakeStore(), Clock(T0), Recorder()
    monitor = store.add("127.0.0.6")
    store.monitors[monitor.id] = attrs.evolve(
        monitor, failures=4, last_error="refused: nothing listens"
    )
    collector.fail["127.0.0.6"] = lambda attempt: (
        RemoteAuthError("401 Unauthorized") if attempt == 1 else None
    )
    async with running(make_poller(store, collector, clock=clock, recorder=recorder)):
        await wait_until(lambda: store.finished, "the poll")
    stored = store.monitors[monitor.id]
    assert collector.calls["127.0.0.6"] == 2
    assert (stored.failures, stored.last_error, stored.last_polled) == (0, None, T0)
    assert recorder.values(monitor.machine_id, "cpu.percent") == [2.0]
    assert recorder.values(monitor.machine_id, UP) == [1.0]
    assert recorder.heard[monitor.machine_id] == [True]


async def test_a_hung_host_does_not_delay_the_others(collector: StubCollector) -> None:
    store, clock = FakeStore(), Clock(T0)
    hung = store.add("127.0.3.1")
    others = [store.add(f"127.0.3.{i}") for i in range(2, 6)]
    collector.hang.add("127.0.3.1")
    poller = make_poller(store, collector, clock=clock, workers=3, poll_timeout=timedelta(hours=1))
    async with running(poller):
        for round_ in range(1, 6):
            await wait_until(
                lambda r=round_: all(
                    collector.calls[store.devices[m.device_id].address] == r for m in others
                ),
                f"round {round_} of the others' polls",
            )
            await wait_until(lambda: poller.stats.running == 1, "only the hung poll running")
            clock.advance(MINUTE)
        assert collector.calls["127.0.3.1"] == 1  # still in its first attempt
        assert store.monitors[hung.id].lease_until is not None


async def test_a_hung_attempt_times_out_and_the_poll_fails(collector: StubCollector) -> None:
    store, clock, recorder = FakeStore(), Clock(T0), Recorder()
    monitor = store.add("127.0.3.9")
    collector.hang.add("127.0.3.9")
    poller = make_poller(
        store, collector, clock=clock, recorder=recorder, poll_timeout=timedelta(milliseconds=50)
    )
    async with running(poller):
        await wait_until(lambda: store.finished, "the timed-out poll")
    assert collector.calls["127.0.3.9"] == 3  # each attempt abandoned at its timeout
    assert store.monitors[monitor.id].last_error == "timeout: no answer in time"
    assert recorder.values(monitor.machine_id, UP) == [0.0]


async def test_never_more_polls_at_once_than_workers(collector: StubCollector) -> None:
    store, clock = FakeStore(), Clock(T0)
    for i in range(20):
        store.add(f"127.0.4.{i}")
    collector.gate.clear()
    poller = make_poller(store, collector, clock=clock, workers=3)
    async with running(poller):
        await wait_until(lambda: collector.running == 3, "three polls waiting at the gate")
        for _ in range(5):  # the scheduler keeps ticking; it claims nothing more
            await poller.schedule()
        # Three polling, three more claimed and waiting for a worker (the bounded queue).
        assert sum(store.claims.values()) == 6
        assert poller.stats.collecting == 3
        collector.gate.set()
        await wait_until(lambda: len(store.finished) == 20, "every poll")
    assert collector.most_running == 3
    assert sum(collector.calls.values()) == 20


async def test_blocking_collectors_run_in_worker_threads(collector: StubCollector) -> None:
    store, clock = FakeStore(), Clock(T0)
    store.add("127.0.0.7")
    async with running(make_poller(store, collector, clock=clock)):
        await wait_until(lambda: store.finished, "the poll")
    assert collector.threads
    assert threading.get_ident() not in collector.threads


async def test_an_async_collector_is_awaited() -> None:
    class AsyncCollector:
        name = "stub"
        settings_class = None
        seen: list[str | None] = []

        async def collect(self, target: object) -> list[object]:
            from lunasentri_core import Reading

            self.seen.append(getattr(target, "host", None))
            await anyio.sleep(0)
            return [Reading("mem.used", 1.0)]

    store, clock, recorder = FakeStore(), Clock(T0), Recorder()
    monitor = store.add("127.0.0.8")
    stub = AsyncCollector()
    async with running(make_poller(store, stub, clock=clock, recorder=recorder)):
        await wait_until(lambda: store.finished, "the poll")
    assert stub.seen == ["127.0.0.8"]
    assert recorder.values(monitor.machine_id, "mem.used") == [1.0]


async def test_a_poll_long_behind_is_not_made_up_with_a_burst(collector: StubCollector) -> None:
    store, clock = FakeStore(), Clock(T0)
    monitor = store.add("127.0.0.10", due_at=T0 - timedelta(hours=3))
    poller = make_poller(store, collector, clock=clock)
    async with running(poller):
        await wait_until(lambda: store.finished, "the poll")
        for _ in range(5):
            await poller.schedule()
    assert collector.calls["127.0.0.10"] == 1
    due = store.monitors[monitor.id].due_at
    assert T0 <= due <= T0 + MINUTE * 0.1
    assert poller.stats.late == 1
    assert poller.stats.max_lateness == 3 * 3600


async def test_leases_left_by_a_dead_process_are_freed_at_start_when_alone(
    collector: StubCollector,
) -> None:
    store, clock = FakeStore(), Clock(T0)
    monitor = store.add("127.0.0.11")
    store.monitors[monitor.id] = attrs.evolve(monitor, lease_until=T0 + timedelta(hours=1))

    shared = make_poller(store, collector, clock=clock)
    async with running(shared):
        for _ in range(3):
            await shared.schedule()
    assert collector.calls["127.0.0.11"] == 0  # another process may be polling it

    alone = make_poller(store, collector, clock=clock, release_leases_at_start=True)
    async with running(alone):
        await wait_until(lambda: store.finished, "the poll after the restart")
    assert collector.calls["127.0.0.11"] == 1


async def test_a_monitor_deleted_during_its_poll_ends_harmlessly(
    collector: StubCollector,
) -> None:
    store, clock, recorder = FakeStore(), Clock(T0), Recorder()
    monitor = store.add("127.0.0.12")
    other = store.add("127.0.0.13")
    collector.gate.clear()
    poller = make_poller(store, collector, clock=clock, recorder=recorder)
    async with running(poller):
        await wait_until(lambda: collector.running == 2, "both polls under way")
        store.delete_monitor(monitor.id)
        recorder.refuse.add(monitor.machine_id)  # its machine went with it
        collector.gate.set()
        await wait_until(lambda: len(store.finished) == 2, "both polls ended")
        clock.advance(MINUTE)
        # Its sample written, not only collected: stopping may otherwise cut the write.
        await wait_until(lambda: len(recorder.values(other.machine_id, UP)) == 2, "polled again")
    assert monitor.id not in store.monitors
    assert monitor.machine_id not in recorder.samples
    assert recorder.values(other.machine_id, UP) == [1.0, 1.0]
    assert collector.calls["127.0.0.12"] == 1


async def test_poll_now_polls_at_once_and_keeps_the_schedule(collector: StubCollector) -> None:
    store, clock, recorder = FakeStore(), Clock(T0), Recorder()
    due_later = T0 + timedelta(seconds=40)
    monitor = store.add("127.0.0.14", due_at=due_later, enabled=False)
    poller = make_poller(store, collector, clock=clock, recorder=recorder)
    async with running(poller):
        outcome = await poller.poll_now(monitor.id, "owner-1")
    assert outcome.error is None
    assert outcome.due_at == due_later
    assert collector.calls["127.0.0.14"] == 1
    assert store.monitors[monitor.id].last_polled == T0
    assert recorder.values(monitor.machine_id, UP) == [1.0]


async def test_poll_now_reports_the_failure(collector: StubCollector) -> None:
    store, clock = FakeStore(), Clock(T0)
    monitor = store.add("127.0.0.15", due_at=T0 + MINUTE)
    collector.fail["127.0.0.15"] = lambda attempt: RemoteAuthError("401 Unauthorized")
    poller = make_poller(store, collector, clock=clock, retries=0)
    outcome = await poller.poll_now(monitor.id)  # the poller need not be running
    assert outcome.error == "authentication: 401 Unauthorized"
    assert store.monitors[monitor.id].failures == 1


async def test_poll_now_during_a_scheduled_poll_waits_for_it(collector: StubCollector) -> None:
    store, clock = FakeStore(), Clock(T0)
    monitor = store.add("127.0.0.16")
    collector.gate.clear()
    poller = make_poller(store, collector, clock=clock)
    async with running(poller), anyio.create_task_group() as group:
        await wait_until(lambda: collector.running == 1, "the scheduled poll under way")
        outcomes = []

        async def ask() -> None:
            outcomes.append(await poller.poll_now(monitor.id))

        group.start_soon(ask)
        under_way = poller._polls[monitor.id]
        await wait_until(
            lambda: under_way.done.statistics().tasks_waiting == 1, "poll_now waiting for it"
        )
        collector.gate.set()
    assert collector.calls["127.0.0.16"] == 1
    assert outcomes[0].error is None
    assert outcomes[0].due_at == T0 + MINUTE


async def test_poll_now_of_a_monitor_not_the_owners_is_not_found(
    collector: StubCollector,
) -> None:
    from lunasentri_core.errors import NotFoundError

    store, clock = FakeStore(), Clock(T0)
    monitor = store.add("127.0.0.17")
    poller = make_poller(store, collector, clock=clock)
    with pytest.raises(NotFoundError):
        await poller.poll_now(monitor.id, "someone-else")
    assert collector.calls["127.0.0.17"] == 0


async def test_outcomes_are_recorded_in_shared_transactions(collector: StubCollector) -> None:
    store, clock = FakeStore(), Clock(T0)
    for i in range(30):
        store.add(f"127.0.5.{i}")
    collector.gate.clear()
    poller = make_poller(store, collector, clock=clock, workers=30)
    async with running(poller):
        await wait_until(lambda: collector.running == 30, "all polls under way")
        collector.gate.set()
        await wait_until(lambda: len(store.finished) == 30, "every outcome")
    assert store.finish_calls < 30


async def test_a_slow_write_frees_the_worker_but_stays_bounded(collector: StubCollector) -> None:
    store, clock = FakeStore(), Clock(T0)
    for i in range(10):
        store.add(f"127.0.6.{i}")
    committed = anyio.Event()

    class SlowRecorder(Recorder):
        async def ingest(
            self, machine_id: str, samples: Iterable[Sample], *, heard: bool = True
        ) -> int:
            await committed.wait()
            return await super().ingest(machine_id, samples, heard=heard)

    recorder = SlowRecorder()
    poller = make_poller(store, collector, clock=clock, recorder=recorder, workers=2)
    async with running(poller):
        # Two polls wait for their commit without a worker; two more have collected
        # and hold their workers until the write stage has room; two are claimed
        # and wait for a worker; no more is claimed.
        await wait_until(lambda: sum(collector.calls.values()) == 4, "four hosts polled")
        await wait_until(lambda: poller.stats.collecting == 2, "two holding workers")
        for _ in range(3):
            await poller.schedule()
        assert sum(store.claims.values()) == 6
        assert sum(collector.calls.values()) == 4
        committed.set()
        await wait_until(lambda: len(store.finished) == 10, "every poll recorded")
    assert sum(collector.calls.values()) == 10
    assert all(recorder.values(m.machine_id, UP) == [1.0] for m in store.monitors.values())


async def test_a_monitor_due_before_the_next_tick_is_claimed_now_and_polled_when_due(
    collector: StubCollector,
) -> None:
    began = time.monotonic()

    def clock() -> datetime:  # real time, starting at T0
        return T0 + timedelta(seconds=time.monotonic() - began)

    store = FakeStore()
    monitor = store.add("127.0.0.20", due_at=T0 + timedelta(seconds=2))
    poller = make_poller(store, collector, clock=clock, tick=timedelta(seconds=10))
    async with running(poller):
        await wait_until(lambda: store.claims[monitor.id] == 1, "the claim, a tick ahead")
        assert collector.calls["127.0.0.20"] == 0  # claimed, but not due yet
        await wait_until(lambda: collector.calls["127.0.0.20"] == 1, "the poll when due")
    (called,) = collector.call_times
    assert T0 + timedelta(seconds=called - began) >= monitor.due_at
    assert poller.stats.started == 1


async def test_a_target_that_cannot_be_resolved_fails_the_poll(collector: StubCollector) -> None:
    store, clock, recorder = FakeStore(), Clock(T0), Recorder()
    monitor = store.add("127.0.0.21")
    del store.devices[monitor.device_id]
    async with running(make_poller(store, collector, clock=clock, recorder=recorder)):
        await wait_until(lambda: store.finished, "the failed poll")
    assert collector.calls["127.0.0.21"] == 0
    assert store.monitors[monitor.id].last_error == f"NotFoundError: no device {monitor.device_id}"
    assert recorder.values(monitor.machine_id, UP) == [0.0]
