"""Calling plugin methods that may be plain functions or coroutine functions."""

from __future__ import annotations

import inspect
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import anyio
import anyio.abc
import attrs

T = TypeVar("T")

DEFAULT_BACKEND = "asyncio"


def resolve(value: T | Awaitable[T], *, backend: str = DEFAULT_BACKEND) -> T:
    """Return ``value``, or the result of awaiting it on a fresh event loop.

    Components may implement their methods either way (see
    :mod:`lunasentri_core.components`), so a contract test calls a method and
    resolves what it returned. Call it from synchronous code only: it starts its
    own event loop with :func:`anyio.run`.
    """
    if inspect.isawaitable(value):
        return cast(T, anyio.run(_await, value, backend=backend))
    return value


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def is_async(method: object) -> bool:
    """Whether ``method`` is a coroutine function (so calls overlap on one event loop)."""
    return inspect.iscoroutinefunction(method)


# --------------------------------------------------------------------------- the loop watch

LOOP_LAG_LIMIT = 0.5
"""Seconds a coroutine method may hold the event loop at one stretch before a suite fails it.

A coroutine that calls ``time.sleep(1)``, ``psutil.cpu_percent(interval=1)`` or a
blocking HTTP client holds the loop for a second or more: every other collection,
ingest and request of the hub waits that long. A free loop wakes a sleeping task
within a millisecond. Measured on a 2-core machine shared by several test runs
(150 watched runs of a coroutine that only awaits): the worst wake-up was 65 ms at
load 1.4 and 0.18 s at load 17. Half a second is well above that noise and half
the shortest blocking call worth catching; a suite that sees it exceeded collects
once more and fails only if the second collection exceeds it too.
"""
_TICK = 0.005
"""Seconds between the ticker's wake-ups."""


@attrs.define
class LoopWatch:
    """What :func:`watch_the_loop` saw while it awaited a coroutine method."""

    result: Any = None
    max_lag: float = 0.0
    """The longest a task due to wake up waited for the loop, in seconds."""
    blocking_calls: list[str] = attrs.field(factory=list)
    """Blocking calls made on the loop's thread: ``time.sleep(1.0)``, a blocking connect."""
    thread: int = 0
    due: float = 0.0

    def overdue(self, now: float) -> None:
        self.max_lag = max(self.max_lag, now - self.due)


_watches: list[LoopWatch] = []
_hooked = False


def watch_the_loop(
    call: Callable[[], Awaitable[T]], *, backend: str = DEFAULT_BACKEND
) -> LoopWatch:
    """Await ``call()`` on a fresh event loop, watching whether it blocks that loop.

    Two ways, since neither sees everything: a ticker task wakes every few
    milliseconds and records how late the loop let it run (which catches any
    long stretch of blocking work, whatever its cause), and an audit hook
    (:func:`sys.addaudithook`) records ``time.sleep`` and connections of
    blocking sockets made on the loop's thread (which catches them however
    short, e.g. against a loopback test server). Work the method hands to a
    worker thread (``anyio.to_thread.run_sync``) is not the loop's and is not
    counted. Exceptions of ``call`` propagate.
    """
    _install_audit_hook()
    watch = LoopWatch()
    anyio.run(_watched, call, watch, backend=backend)
    return watch


async def _watched(call: Callable[[], Awaitable[Any]], watch: LoopWatch) -> None:
    watch.thread = threading.get_ident()
    failure: Exception | None = None
    async with anyio.create_task_group() as group:
        await group.start(_tick, watch)
        _watches.append(watch)
        try:
            watch.result = await call()
        except Exception as error:  # raised below, not wrapped in the task group's group
            failure = error
        finally:
            _watches.remove(watch)
            # The ticker may be overdue and not yet have run: count that wait too.
            watch.overdue(anyio.current_time())
            group.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def _tick(watch: LoopWatch, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    watch.due = anyio.current_time() + _TICK
    task_status.started()
    while True:
        await anyio.sleep_until(watch.due)
        now = anyio.current_time()
        watch.overdue(now)
        watch.due = now + _TICK


def _install_audit_hook() -> None:
    global _hooked
    if not _hooked:
        # Audit hooks cannot be removed: this one returns at once unless a watch runs.
        sys.addaudithook(_audit)
        _hooked = True


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _watches or event not in ("time.sleep", "socket.connect"):
        return
    try:
        thread = threading.get_ident()
        watches = [w for w in _watches if w.thread == thread]
        if not watches:
            return
        if event == "time.sleep":
            if args[0] > 0:
                call = f"time.sleep({args[0]!r})"
            else:
                return
        else:
            sock, address = args
            if sock.gettimeout() == 0.0:
                return  # a non-blocking socket, as event loops use
            call = f"a blocking socket.connect({address!r})"
        for watch in watches:
            watch.blocking_calls.append(call)
    except Exception:  # an audit hook must never break the audited call
        return
