"""Calling plugin methods that may be plain functions or coroutine functions."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

import anyio

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
