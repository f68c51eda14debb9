"""The stop flag the agent sleeps on: woken by another thread or by a signal."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType

import pytest

from lunasentri_core.agent.stop import StopFlag


def test_a_wait_times_out_unless_stopped() -> None:
    flag = StopFlag()
    with flag.armed():
        started = time.monotonic()
        assert flag.wait(0.05) is False
        assert time.monotonic() - started >= 0.05
        flag.set()
        assert flag.wait(30) is True  # at once


def test_another_thread_wakes_a_long_wait() -> None:
    flag = StopFlag()
    with flag.armed():
        threading.Timer(0.1, flag.set).start()
        started = time.monotonic()
        assert flag.wait(30) is True
        assert time.monotonic() - started < 10


def test_setting_it_outside_a_wait_is_harmless() -> None:
    flag = StopFlag()
    flag.set()  # not armed: nothing to wake
    assert flag.wait(30) is True
    with flag.armed():
        flag.set()
        flag.set()
    flag.set()  # after the sockets closed


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_a_signal_runs_the_handler_and_wakes_the_wait() -> None:
    flag = StopFlag()
    seen: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        seen.append(signum)
        flag.set()

    before = signal.getsignal(signal.SIGUSR1)
    with flag.armed(handler, signal.SIGUSR1):
        threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        started = time.monotonic()
        assert flag.wait(30) is True
        assert time.monotonic() - started < 10
    assert seen == [signal.SIGUSR1]
    assert signal.getsignal(signal.SIGUSR1) == before
    assert signal.set_wakeup_fd(-1) == -1  # the wakeup fd was given back


def test_signals_are_left_alone_outside_the_main_thread() -> None:
    # A handler of the test's own, so the check does not depend on the disposition
    # the test run inherited (SIGINT is ignored under nohup or in a background job).
    def sentinel(signum: int, frame: FrameType | None) -> None:
        raise AssertionError("not expected to run")

    flag = StopFlag()
    errors: list[BaseException] = []
    seen: list[object] = []

    def run() -> None:
        try:
            with flag.armed(lambda *_: None, signal.SIGINT):
                seen.append(signal.getsignal(signal.SIGINT))
        except BaseException as error:
            errors.append(error)

    before = signal.signal(signal.SIGINT, sentinel)
    try:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
    finally:
        signal.signal(signal.SIGINT, before)
    assert errors == []
    assert seen == [sentinel]
