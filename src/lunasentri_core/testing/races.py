"""Running one action in several threads at once, for the contract tests of single winners."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")

CALLERS = 8
"""Threads per race: enough to overlap on two cores, few enough for SQLite's writer lock."""


def race(action: Callable[[int], _T], callers: int = CALLERS) -> list[_T]:
    """Run ``action(0..callers-1)`` in as many threads, released together."""
    barrier = threading.Barrier(callers)

    def run(index: int) -> _T:
        barrier.wait(timeout=60)
        return action(index)

    with ThreadPoolExecutor(callers) as pool:
        futures = [pool.submit(run, index) for index in range(callers)]
        return [future.result(timeout=120) for future in futures]
