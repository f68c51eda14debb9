"""The base of every contract suite: abstract until subclassed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, TypeVar

import attrs
import pytest

from lunasentri_core.codec import decode
from lunasentri_core.plugins import ComponentKind, PluginManager
from lunasentri_core.testing.aio import DEFAULT_BACKEND, watch_the_loop
from lunasentri_core.testing.recorder import make_plugin
from lunasentri_core.testing.settings import check_refuses_invalid_configs

T = TypeVar("T")

_REGISTRATION_HOOKS = {
    ComponentKind.COLLECTOR: "lunasentri_register_collectors",
    ComponentKind.STORAGE: "lunasentri_register_storage",
    ComponentKind.NOTIFIER: "lunasentri_register_notifiers",
    ComponentKind.AUTHENTICATOR: "lunasentri_register_authenticators",
}


class Contract:
    """Base class of the contract suites.

    A suite is not collected on its own, even when imported into a test module;
    every subclass is collected, whatever its name (name it ``Test...`` anyway, for
    readers). A subclass meant as another abstract base, shared by several test
    classes, sets ``__test__ = False`` in its own body.
    """

    __test__: ClassVar[bool] = False

    async_backend: ClassVar[str] = DEFAULT_BACKEND
    """Event loop that runs coroutine methods of the component (``"asyncio"`` or ``"trio"``).

    Not named ``anyio_backend``: that is the anyio pytest plugin's fixture.
    """

    opt_out: ClassVar[Mapping[str, str]] = {}
    """Checks of the suite this plugin does not pass on purpose: test name -> reason.

    Each is skipped with ``opted out: <reason>`` in the report, so the choice stays
    visible. A name that is not a test of the suite, or an empty reason, fails.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__test__" not in cls.__dict__:
            cls.__test__ = True

    @pytest.fixture(autouse=True)
    def _lunasentri_opt_out(self, request: pytest.FixtureRequest) -> None:
        unknown = sorted(name for name in self.opt_out if not hasattr(type(self), name))
        if unknown:
            pytest.fail(
                f"{type(self).__name__}.opt_out names no test of the suite: {', '.join(unknown)}",
                pytrace=False,
            )
        name = request.function.__name__
        if name in self.opt_out:
            reason = self.opt_out[name]
            if not isinstance(reason, str) or not reason.strip():
                pytest.fail(f"opt_out[{name!r}] needs a reason", pytrace=False)
            pytest.skip(f"opted out: {reason}")


def check_name(cls: type[Any], kind: str) -> str:
    """Assert a component class has the non-empty ``name`` it is registered under."""
    name = getattr(cls, "name", None)
    assert isinstance(name, str), f"the {kind} class {cls.__name__} needs a str 'name'"
    assert name, f"the {kind} class {cls.__name__} has an empty 'name'"
    assert name == name.strip(), f"name {name!r} has surrounding whitespace"
    return name


def check_settings_class(cls: type[Any], kind: str) -> None:
    """Assert ``settings_class`` is ``None`` or an attrs class built from an empty table.

    It must also refuse the wrong tables derived from its fields, naming the
    field (see :func:`~lunasentri_core.testing.settings.invalid_configs`).
    """
    assert hasattr(cls, "settings_class"), (
        f"the {kind} class {cls.__name__} needs a 'settings_class' attribute (None for none)"
    )
    settings_class = cls.settings_class
    if settings_class is None:
        return
    assert attrs.has(settings_class), f"settings_class {settings_class!r} is not an attrs class"
    try:
        settings_class()
    except TypeError as error:
        pytest.fail(f"every field of {settings_class.__name__} needs a default: {error}")
    # The plugin manager structures settings from an empty [plugins.<name>] table.
    decode({}, settings_class, what=f"empty settings of {cls.__name__}")
    check_refuses_invalid_configs(settings_class, {}, "settings class")


def build_through_the_plugin_manager(
    cls: type[Any], kind: ComponentKind, settings: Mapping[str, Any] | None = None
) -> Any:
    """Register ``cls`` through its registration hook and build it as the hub does.

    ``settings`` is the ``[plugins.<name>]`` table (none: the defaults). Fails with
    the plugin manager's reason when the class is refused, and with the error
    when its constructor raises.
    """
    hooks: dict[str, Callable[..., Any]] = {_REGISTRATION_HOOKS[kind]: lambda: [cls]}
    plugin = make_plugin("contract-plugin", **hooks)
    name = getattr(cls, "name", None)
    manager = PluginManager(
        plugin_settings={name: settings} if settings is not None and isinstance(name, str) else None
    )
    manager.register(plugin, "contract-plugin")
    failures = [str(f) for f in manager.failures]
    assert not failures, f"the plugin manager refused the {kind} class: {failures}"
    component = manager.component(kind, name)  # type: ignore[arg-type]
    assert component.cls is cls
    what = "its default settings" if settings is None else f"the settings {dict(settings)!r}"
    try:
        created = component.create()
    except Exception as error:  # reported to the plugin's author
        pytest.fail(
            f"the plugin manager could not build {cls.__name__} with {what}: "
            f"{cls.__name__}({'settings' if cls.settings_class else ''}) raised "
            f"{type(error).__name__}: {error}",
            pytrace=False,
        )
    assert isinstance(created, cls), (
        f"building {cls.__name__} gave a {type(created).__name__}, not a {cls.__name__}"
    )
    return created


def check_does_not_block_the_loop(
    call: Callable[[], Awaitable[T]], what: str, limit: float, backend: str
) -> list[T]:
    """Assert awaiting ``call()`` neither blocks nor holds the event loop; its results.

    Runs it under :func:`~lunasentri_core.testing.watch_the_loop`: any blocking
    call seen on the loop's thread fails at once; a stretch over ``limit``
    seconds fails only if a second call exceeds it too (a call that blocks does
    so every time; a busy machine holding up the thread seldom does twice).
    """
    results: list[T] = []
    lags: list[float] = []
    for _ in range(2):
        watch = watch_the_loop(call, backend=backend)
        results.append(watch.result)
        assert not watch.blocking_calls, (
            f"the coroutine {what} made blocking calls on the event loop's thread: "
            + ", ".join(watch.blocking_calls)
            + "; await an async client (anyio, httpx.AsyncClient) or move the blocking "
            "work to a thread with anyio.to_thread.run_sync"
        )
        lags.append(watch.max_lag)
        if watch.max_lag <= limit:
            return results
    raise AssertionError(
        f"the coroutine {what} held the event loop for "
        + " and ".join(f"{lag:.2f}s" for lag in lags)
        + f" at one stretch in two calls (the limit is {limit}s): it blocks (time.sleep, "
        "a blocking socket or client, long CPU work); await instead, or move that work "
        "to a thread with anyio.to_thread.run_sync"
    )
