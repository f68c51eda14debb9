"""The kit's pytest fixtures, enabled by ``pytest_plugins = ["lunasentri_core.testing"]``."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable, Iterator

import pytest

from lunasentri_core.errors import PluginError
from lunasentri_core.plugins import PluginManager, create_plugin_manager
from lunasentri_core.testing.recorder import HookRecorder

RegisterPlugin = Callable[..., str]
"""``register_plugin(plugin, name=None) -> name``: the type of the ``register_plugin`` fixture."""

_names = itertools.count(1)


@pytest.fixture
def lunasentri_plugin_manager() -> PluginManager:
    """A fresh plugin manager with no plugins: installed entry points are not loaded."""
    return create_plugin_manager(entry_points=False)


@pytest.fixture
def register_plugin(lunasentri_plugin_manager: PluginManager) -> Iterator[RegisterPlugin]:
    """Register plugin objects on ``lunasentri_plugin_manager`` for the length of one test.

    ``register_plugin(plugin, name=None)`` returns the name it registered under and
    raises :class:`~lunasentri_core.PluginError` (with pluggy's reason) when the
    plugin's hooks do not validate. Every plugin it registered is unregistered at
    teardown.
    """
    registered: list[str] = []

    def register(plugin: object, name: str | None = None) -> str:
        chosen = name or f"test-plugin-{next(_names)}"
        if not lunasentri_plugin_manager.register(plugin, chosen):
            reasons = [f.reason for f in lunasentri_plugin_manager.failures if f.name == chosen]
            raise PluginError(f"plugin {chosen!r} was rejected: {'; '.join(reasons) or 'blocked'}")
        registered.append(chosen)
        return chosen

    yield register
    for name in reversed(registered):
        lunasentri_plugin_manager.unregister(name)


@pytest.fixture
def hook_recorder(register_plugin: RegisterPlugin) -> HookRecorder:
    """A :class:`HookRecorder` registered on ``lunasentri_plugin_manager``."""
    recorder = HookRecorder()
    register_plugin(recorder, "lunasentri-hook-recorder")
    return recorder


@pytest.fixture
def silent_server() -> Iterator[tuple[str, int]]:
    """``(host, port)`` of a loopback TCP server that accepts and never answers.

    Connections complete (the kernel accepts them into the listen backlog) and
    requests are taken, but no byte ever comes back: what a hung host looks
    like to a client, for checking that a collector honours its timeout. At
    teardown the connections are reset, which ends any call still waiting.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        host, port = listener.getsockname()
        yield host, port
    finally:
        listener.close()
