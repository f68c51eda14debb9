"""CollectorContract (and NotifierContract's send): a coroutine that blocks the event
loop, a collector that ignores its timeout, and a reading given a bool are each caught
with a clear message."""

from __future__ import annotations

import socket

import anyio
import pytest
from kit_doubles import (
    LOOP_BLOCK_SECONDS,
    AsyncCountingCollector,
    ProbeCollector,
    ThreadedAsyncCollector,
)
from kit_support import KitRun, outcomes

from lunasentri_core import Reading, Target
from lunasentri_core.testing import LOOP_LAG_LIMIT, CollectorContract, watch_the_loop

pytest_plugins = ["pytester", "lunasentri_core.testing"]

LOOP_TEST = "test_collect_does_not_block_the_event_loop"
TIMEOUT_TEST = "test_collect_gives_up_after_its_timeout"
SEND_LOOP_TEST = "test_send_does_not_block_the_event_loop"


class TestThreadedAsyncCollector(CollectorContract):
    """Blocking work handed to a worker thread leaves the loop free: the suite passes it."""

    @pytest.fixture
    def collector(self) -> ThreadedAsyncCollector:
        return ThreadedAsyncCollector()


class TestProbeCollector(CollectorContract):
    """A collector that passes its timeout to the socket: the suite passes it."""

    timeout_settings = {"timeout": 0.2}
    timeout_seconds = 0.2

    @pytest.fixture
    def collector(self) -> ProbeCollector:
        return ProbeCollector()

    @pytest.fixture
    def unresponsive_target(self, silent_server: tuple[str, int]) -> Target:
        host, port = silent_server
        return Target("probe-1", host=host, options={"port": port})


# ---------------------------------------------------------------------------- the loop


def test_a_coroutine_that_sleeps_on_the_loop_fails(kit_run: KitRun) -> None:
    result = kit_run.run(
        """
        import pytest
        import kit_doubles
        from lunasentri_core.testing import CollectorContract

        class TestSleepy(CollectorContract):
            @pytest.fixture
            def collector(self):
                return kit_doubles.SleepyAsyncCollector()

        class TestGood(CollectorContract):
            @pytest.fixture
            def collector(self):
                return kit_doubles.AsyncCountingCollector()
        """,
        "-k",
        LOOP_TEST,
    )
    assert outcomes(result, "TestSleepy")["failed"] == {LOOP_TEST}
    assert outcomes(result, "TestGood")["passed"] == {LOOP_TEST}
    result.stdout.fnmatch_lines(
        [
            "*the coroutine collect() held the event loop for *s and *s at one stretch "
            f"in two calls (the limit is {LOOP_LAG_LIMIT}s)*"
        ]
    )


def test_a_coroutine_that_connects_a_blocking_socket_fails(kit_run: KitRun) -> None:
    result = kit_run.run(
        """
        import pytest
        import kit_doubles
        from lunasentri_core.testing import CollectorContract

        class TestBlockingSocket(CollectorContract):
            @pytest.fixture
            def collector(self):
                return kit_doubles.BlockingSocketAsyncCollector()
        """,
        "-k",
        LOOP_TEST,
    )
    assert outcomes(result)["failed"] == {LOOP_TEST}
    result.stdout.fnmatch_lines(
        [
            "*made blocking calls on the event loop's thread: a blocking "
            "socket.connect(('127.0.0.1', *))*anyio.to_thread.run_sync*"
        ]
    )


def test_a_coroutine_send_that_sleeps_on_the_loop_fails(kit_run: KitRun) -> None:
    result = kit_run.run(
        """
        import pytest
        import kit_doubles
        from lunasentri_core.testing import NotifierContract

        class TestSleepy(NotifierContract):
            @pytest.fixture
            def notifier(self):
                return kit_doubles.SleepyAsyncNotifier()

            @pytest.fixture
            def channel(self):
                return {"inbox": "ops"}

        class TestGood(TestSleepy):
            @pytest.fixture
            def notifier(self):
                return kit_doubles.AsyncMemoryNotifier()
        """,
        "-k",
        SEND_LOOP_TEST,
    )
    assert outcomes(result, "TestSleepy")["failed"] == {SEND_LOOP_TEST}
    assert outcomes(result, "TestGood")["passed"] == {SEND_LOOP_TEST}
    result.stdout.fnmatch_lines(["*the coroutine send() held the event loop for *s and *s*"])


def test_a_plain_collect_is_not_held_to_the_loop_rule(kit_run: KitRun) -> None:
    result = kit_run.run(
        """
        import pytest
        import kit_doubles
        from lunasentri_core.testing import CollectorContract

        class TestPlain(CollectorContract):
            @pytest.fixture
            def collector(self):
                return kit_doubles.CountingCollector()
        """,
        "-k",
        LOOP_TEST,
    )
    assert outcomes(result)["skipped"] == {LOOP_TEST}
    result.stdout.fnmatch_lines(["*collect() is a plain function: the hub runs it in a worker*"])


def test_the_loop_watch_measures_a_blocking_stretch() -> None:
    async def sleepy() -> int:
        import time

        time.sleep(LOOP_BLOCK_SECONDS / 2)
        return 7

    watch = watch_the_loop(sleepy)

    assert watch.result == 7
    assert watch.max_lag >= LOOP_BLOCK_SECONDS / 2 - 0.01


def test_the_loop_watch_sees_no_lag_when_the_work_awaits() -> None:
    async def patient() -> int:
        for _ in range(3):
            await anyio.sleep(0.01)
        return await anyio.to_thread.run_sync(lambda: 8)

    watch = watch_the_loop(patient)

    assert watch.result == 8
    assert watch.blocking_calls == []
    assert watch.max_lag < LOOP_LAG_LIMIT


def test_the_loop_watch_does_not_count_the_loops_own_sockets() -> None:
    async def connect() -> bytes:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            port = listener.getsockname()[1]
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(b"hello")
            accepted, _ = await anyio.to_thread.run_sync(listener.accept)
            with accepted:
                return await anyio.to_thread.run_sync(accepted.recv, 16)

    watch = watch_the_loop(connect)

    assert watch.result == b"hello"
    assert watch.blocking_calls == []


def test_the_loop_watch_lets_the_methods_error_through() -> None:
    async def broken() -> None:
        raise LookupError("no such host")

    with pytest.raises(LookupError, match="no such host"):
        watch_the_loop(broken)


def test_a_good_async_collector_passes_the_loop_check() -> None:
    watch = watch_the_loop(lambda: AsyncCountingCollector().collect(Target("m1")))

    assert [r.metric for r in watch.result][-1] == "demo.calls"
    assert watch.blocking_calls == []


# ---------------------------------------------------------------------------- timeouts

PROBE_MODULE = """
import pytest
import kit_doubles
from lunasentri_core import Target
from lunasentri_core.testing import CollectorContract

class TestProbe(CollectorContract):
    timeout_settings = {"timeout": 0.2}
    timeout_seconds = 0.2

    @pytest.fixture
    def collector(self):
        return kit_doubles.ProbeCollector()

    @pytest.fixture
    def unresponsive_target(self, silent_server):
        host, port = silent_server
        return Target("probe-1", host=host, options={"port": port})

class TestDeafProbe(TestProbe):
    @pytest.fixture
    def collector(self):
        return kit_doubles.DeafProbeCollector()

class TestUndeclared(CollectorContract):
    @pytest.fixture
    def collector(self):
        return kit_doubles.ProbeCollector()

class TestOptedOut(TestUndeclared):
    opt_out = {"test_collect_gives_up_after_its_timeout": "the hub's poll timeout is enough"}
"""


def test_a_collector_that_ignores_its_timeout_fails(kit_run: KitRun) -> None:
    result = kit_run.run(PROBE_MODULE, "-k", TIMEOUT_TEST)

    assert outcomes(result, "TestProbe")["passed"] == {TIMEOUT_TEST}
    assert outcomes(result, "TestDeafProbe")["failed"] == {TIMEOUT_TEST}
    assert outcomes(result, "TestUndeclared")["failed"] == {TIMEOUT_TEST}
    assert outcomes(result, "TestOptedOut")["skipped"] == {TIMEOUT_TEST}
    result.stdout.fnmatch_lines(
        [
            "*a collection of a host that never answers was still running 3.2s after it "
            "started, with the settings {'timeout': 0.2} meant to end it within 0.2s: the "
            "collector ignores its timeout*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*ProbeCollector's settings have timeout: set the class attribute "
            "'timeout_settings'*'silent_server'*",
            "*opted out: the hub's poll timeout is enough*",
        ],
        consecutive=False,
    )


def test_opt_out_must_name_a_test_of_the_suite_and_give_a_reason(kit_run: KitRun) -> None:
    result = kit_run.run(
        """
        import pytest
        import kit_doubles
        from lunasentri_core.testing import CollectorContract

        class TestTypo(CollectorContract):
            opt_out = {"test_collect_gives_up": "typo"}

            @pytest.fixture
            def collector(self):
                return kit_doubles.CountingCollector()

        class TestNoReason(TestTypo):
            opt_out = {"test_collect_repeatedly": " "}
        """,
        "-k",
        "test_collect_repeatedly",
    )
    assert outcomes(result, "TestTypo")["failed"] == {"test_collect_repeatedly"}
    assert outcomes(result, "TestNoReason")["failed"] == {"test_collect_repeatedly"}
    result.stdout.fnmatch_lines(
        [
            "*TestTypo.opt_out names no test of the suite: test_collect_gives_up*",
            "*opt_out[[]'test_collect_repeatedly'[]] needs a reason*",
        ],
        consecutive=False,
    )


# ---------------------------------------------------------------------------- bool values


def test_a_reading_refuses_a_bool_value() -> None:
    with pytest.raises(TypeError, match=r"value must be a number, not the bool True"):
        Reading("demo.up", True)
    with pytest.raises(TypeError, match=r"not the bool False: write 0.0"):
        Reading("demo.up", False)

    assert Reading("demo.up", 1).value == 1.0
    assert type(Reading("demo.up", 1).value) is float


def test_a_collector_reporting_a_bool_fails_the_suite(kit_run: KitRun) -> None:
    result = kit_run.run(
        """
        import pytest
        import kit_doubles
        from lunasentri_core.testing import CollectorContract

        class TestFlag(CollectorContract):
            @pytest.fixture
            def collector(self):
                return kit_doubles.FlagCollector()
        """,
        "-k",
        "test_collect_returns_readings",
    )
    assert outcomes(result)["failed"] == {"test_collect_returns_readings"}
    result.stdout.fnmatch_lines(["*TypeError: value must be a number, not the bool True*"])
