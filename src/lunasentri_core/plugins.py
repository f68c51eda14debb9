"""Finding, validating and calling plugins.

:func:`create_plugin_manager` loads the ``lunasentri`` entry points into a fresh
:class:`PluginManager` (never a global: two hubs in one process get two managers).
A plugin that fails to import, fails hook validation, registers a broken class or
has invalid settings is recorded as a :class:`PluginFailure` with its name and the
reason; every other plugin keeps working.

The rest of the code calls plugins only through this module's typed methods and
never touches pluggy directly.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import logging
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs
import pluggy

from lunasentri_core import hookspecs
from lunasentri_core.errors import ConfigError, PluginError, ValidationError

if TYPE_CHECKING:
    from lunasentri_core.components import Authenticator, Collector, Notifier
    from lunasentri_core.config import Settings
    from lunasentri_core.storage.protocols import StorageFactory

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lunasentri"
T = TypeVar("T")


class Distribution(Protocol):
    """The installed distribution an entry point comes from (as in importlib.metadata)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...


class EntryPoint(Protocol):
    """What the manager uses of an entry point: :class:`importlib.metadata.EntryPoint`,
    or an equivalent found without it (the push agent's, see agent/entry_points.py)."""

    @property
    def name(self) -> str: ...

    @property
    def value(self) -> str: ...

    @property
    def dist(self) -> Distribution | None: ...

    def load(self) -> Any: ...


class ComponentKind(enum.StrEnum):
    COLLECTOR = "collector"
    STORAGE = "storage"
    NOTIFIER = "notifier"
    AUTHENTICATOR = "authenticator"


_REGISTRATION_HOOKS = {
    ComponentKind.COLLECTOR: "lunasentri_register_collectors",
    ComponentKind.STORAGE: "lunasentri_register_storage",
    ComponentKind.NOTIFIER: "lunasentri_register_notifiers",
    ComponentKind.AUTHENTICATOR: "lunasentri_register_authenticators",
}


@attrs.frozen
class Component:
    """A class a plugin registered, with its validated settings."""

    kind: ComponentKind
    name: str
    cls: type[Any]
    plugin: str
    settings: Any = None

    def create(self) -> Any:
        """Instantiate the class with its settings (or with no argument if it has none)."""
        if getattr(self.cls, "settings_class", None) is None:
            return self.cls()
        return self.cls(self.settings)


@attrs.frozen
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]
    components: tuple[str, ...]


@attrs.frozen
class PluginFailure:
    name: str
    reason: str
    stage: str
    """``import``, ``missing-dependency``, ``validate``, ``register`` or ``settings``."""
    distribution: str | None = None

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@attrs.frozen
class _Origin:
    distribution: str | None = None
    version: str | None = None


class PluginManager:
    """A typed facade over a pluggy manager for the ``lunasentri`` project."""

    def __init__(
        self,
        *,
        disabled: Iterable[str] = (),
        enabled: Iterable[str] | None = None,
        plugin_settings: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._disabled = set(disabled)
        self._enabled = None if enabled is None else set(enabled)
        self._plugin_settings = dict(plugin_settings or {})
        self._origins: dict[str, _Origin] = {}
        self._failures: list[PluginFailure] = []
        self._component_failures: list[PluginFailure] = []
        self._components: dict[ComponentKind, dict[str, Component]] | None = None

    # ------------------------------------------------------------ loading

    def is_blocked(self, name: str) -> bool:
        if name in self._disabled:
            return True
        return self._enabled is not None and name not in self._enabled

    def load_entry_points(
        self, group: str = ENTRY_POINT_GROUP, *, found: Iterable[EntryPoint] | None = None
    ) -> None:
        """Load the entry points of ``group``; ``found`` gives them instead of
        :func:`importlib.metadata.entry_points` looking them up."""
        if found is None:
            # Imported here: a process given its entry points need not load it.
            import importlib.metadata

            found = importlib.metadata.entry_points(group=group)
        for entry_point in sorted(found, key=_ep_key):
            self._load_entry_point(entry_point)

    def _load_entry_point(self, entry_point: EntryPoint) -> None:
        dist = entry_point.dist
        origin = _Origin(dist.name if dist else None, dist.version if dist else None)
        if self.is_blocked(entry_point.name) or self._pm.has_plugin(entry_point.name):
            self._origins.setdefault(entry_point.name, origin)
            return
        try:
            plugin = entry_point.load()
        except ModuleNotFoundError as error:
            own_module = entry_point.value.split(":")[0]
            if _is_own_module(error.name, own_module):
                self._fail(entry_point.name, _describe(error), "import", origin.distribution)
            else:
                reason = f"missing dependency {error.name!r}"
                self._fail(entry_point.name, reason, "missing-dependency", origin.distribution)
            return
        except Exception as error:
            self._fail(entry_point.name, _describe(error), "import", origin.distribution)
            return
        if self.register(plugin, entry_point.name, _origin=origin):
            _check_core_range(entry_point.name, dist)

    def register(self, plugin: object, name: str, *, _origin: _Origin | None = None) -> bool:
        """Register a plugin object (module, class or instance) under ``name``.

        Returns ``False`` (and records a failure) when its hooks do not validate.
        Plugins registered this way are explicit choices of the caller, so only
        ``disabled`` applies to them, not the ``enabled`` allowlist of entry points.
        """
        if name in self._disabled:
            return False
        try:
            with _deprecations(name):
                self._pm.register(plugin, name=name)
            self._pm.check_pending()
        except (pluggy.PluginValidationError, ValueError) as error:
            if self._pm.is_registered(plugin):
                self._pm.unregister(plugin)
            dist = _origin.distribution if _origin else None
            self._fail(name, _describe(error), "validate", dist)
            return False
        self._origins[name] = _origin or _Origin()
        self._components = None
        return True

    def unregister(self, name: str) -> None:
        plugin = self._pm.get_plugin(name)
        if plugin is not None:
            self._pm.unregister(plugin)
        self._origins.pop(name, None)
        self._components = None

    def _fail(self, name: str, reason: str, stage: str, distribution: str | None) -> None:
        failure = PluginFailure(name, reason, stage, distribution)
        # Component failures are recomputed whenever the registered set changes.
        into = self._component_failures if stage in {"register", "settings"} else self._failures
        into.append(failure)
        # A missing dependency is often an optional extra not installed on purpose.
        level = logging.WARNING if stage == "missing-dependency" else logging.ERROR
        log.log(level, "plugin %s skipped (%s): %s", name, stage, reason)

    # ------------------------------------------------------------ introspection

    @property
    def failures(self) -> tuple[PluginFailure, ...]:
        self._collected()
        return (*self._failures, *self._component_failures)

    def disabled(self) -> list[str]:
        """Plugins whose entry point was found but which settings turned off."""
        return sorted(n for n in self._origins if self.is_blocked(n))

    def infos(self) -> list[PluginInfo]:
        """Name, distribution, version, hooks and components of every registered plugin."""
        components = self._collected()
        infos = []
        for name, plugin in sorted(self._pm.list_name_plugin(), key=lambda item: item[0]):
            hooks = tuple(sorted(c.name for c in self._pm.get_hookcallers(plugin) or ()))
            mine = tuple(
                f"{kind}:{component.name}"
                for kind, by_name in components.items()
                for component in by_name.values()
                if component.plugin == name
            )
            origin = self._origins.get(name, _Origin())
            infos.append(PluginInfo(name, origin.distribution, origin.version, hooks, mine))
        return infos

    def stray_settings(self) -> list[str]:
        """``[plugins.<name>]`` tables that name no loaded component.

        Tables are keyed by component name (``[plugins.psutil]``, ``[plugins.webhook]``).
        A table naming a plugin that is disabled or failed to load is not stray: that
        plugin is reported on its own, and its table is kept for when it loads again.
        """
        known = self.component_names() | set(self.disabled()) | {f.name for f in self.failures}
        return sorted(set(self._plugin_settings) - known)

    def check_settings_tables(self, *, strict: bool = False) -> None:
        """Warn about each stray ``[plugins.<name>]`` table; ``strict`` refuses them.

        :raises ConfigError: when ``strict`` and a table names no loaded component.
        """
        stray = self.stray_settings()
        if not stray:
            return
        loaded = ", ".join(sorted(self.component_names())) or "none"
        problems = [f"[plugins.{name}] names no loaded component" for name in stray]
        hint = f"tables are keyed by component name; loaded components: {loaded}"
        if strict:
            raise ConfigError(f"{'; '.join(problems)} ({hint}; strict_plugins is set)")
        for problem in problems:
            log.warning("%s, so it is ignored (%s)", problem, hint)

    # ------------------------------------------------------------ components

    def component_names(self) -> set[str]:
        """The names of every loaded component, of every kind."""
        return {name for by_name in self._collected().values() for name in by_name}

    def components(self, kind: ComponentKind) -> dict[str, Component]:
        return dict(self._collected()[kind])

    def component(self, kind: ComponentKind, name: str) -> Component:
        """The component ``name`` of ``kind``, or a :class:`PluginError` saying why not."""
        found = self._collected()[kind].get(name)
        if found is not None:
            return found
        reasons = [str(f) for f in self.failures if f.name == name]
        known = ", ".join(sorted(self._collected()[kind])) or "none"
        detail = f" ({'; '.join(reasons)})" if reasons else f"; available: {known}"
        raise PluginError(f"no {kind} named {name!r}{detail}")

    def collectors(self) -> dict[str, type[Collector]]:
        return {n: c.cls for n, c in self._collected()[ComponentKind.COLLECTOR].items()}

    def notifiers(self) -> dict[str, type[Notifier]]:
        return {n: c.cls for n, c in self._collected()[ComponentKind.NOTIFIER].items()}

    def authenticators(self) -> dict[str, type[Authenticator]]:
        return {n: c.cls for n, c in self._collected()[ComponentKind.AUTHENTICATOR].items()}

    def storage_for_scheme(self, scheme: str) -> Component:
        """The storage component whose factory handles URL ``scheme`` (e.g. ``sqlite``)."""
        base = scheme.split("+", 1)[0]
        for component in self._collected()[ComponentKind.STORAGE].values():
            factory: type[StorageFactory] = component.cls
            if scheme in factory.schemes or base in factory.schemes:
                return component
        known = sorted(
            s for c in self._collected()[ComponentKind.STORAGE].values() for s in c.cls.schemes
        )
        hint = f"; installed schemes: {', '.join(known)}" if known else "; none is installed"
        raise PluginError(f"no storage plugin handles URL scheme {scheme!r}{hint}")

    def _collected(self) -> dict[ComponentKind, dict[str, Component]]:
        if self._components is None:
            self._component_failures = []
            self._components = {kind: {} for kind in ComponentKind}
            for kind, hook_name in _REGISTRATION_HOOKS.items():
                for impl in self._impls(hook_name):
                    self._collect_from(kind, impl)
        return self._components

    def _collect_from(self, kind: ComponentKind, impl: pluggy.HookImpl) -> None:
        assert self._components is not None
        try:
            classes: list[type[Any]] = list(_call(impl, {}) or ())
        except Exception as error:
            self._fail(impl.plugin_name, _describe(error), "register", None)
            return
        for cls in classes:
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                self._fail(
                    impl.plugin_name, f"{kind} class {cls!r} has no 'name'", "register", None
                )
                continue
            taken = self._components[kind].get(name)
            if taken is not None:
                reason = f"{kind} {name!r} is already registered by plugin {taken.plugin!r}"
                self._fail(impl.plugin_name, reason, "register", None)
                continue
            try:
                settings = self._settings_for(name, getattr(cls, "settings_class", None))
            except PluginError as error:
                self._fail(name, str(error), "settings", None)
                continue
            self._components[kind][name] = Component(kind, name, cls, impl.plugin_name, settings)

    def _settings_for(self, name: str, settings_class: type[T] | None) -> T | None:
        raw = self._plugin_settings.get(name, {})
        if settings_class is None:
            if raw:
                raise PluginError(f"[plugins.{name}] is set, but {name!r} takes no settings")
            return None
        if not raw:
            # Defaults need no converter, so the usual case imports no cattrs;
            # should they fail, the converter below names the problem.
            with contextlib.suppress(Exception):
                return settings_class()
        from lunasentri_core.codec import decode

        try:
            return decode(raw, settings_class, what=f"settings [plugins.{name}]")
        except ValidationError as error:
            paths = "; ".join(
                f"{_join('plugins', name, e.path)}: {e.message}" for e in error.errors
            )
            raise PluginError(f"invalid settings: {paths}") from None

    # ------------------------------------------------------------ event hooks

    async def startup(self, hub: Any) -> None:
        await self._notify("lunasentri_startup", hub=hub)

    async def shutdown(self, hub: Any) -> None:
        await self._notify("lunasentri_shutdown", hub=hub)

    async def samples_ingested(self, hub: Any, machine: Any, samples: Sequence[Any]) -> None:
        await self._notify("lunasentri_samples_ingested", hub=hub, machine=machine, samples=samples)

    async def machine_status_changed(
        self, hub: Any, machine: Any, old: Any, new: Any, at: Any
    ) -> None:
        await self._notify(
            "lunasentri_machine_status_changed", hub=hub, machine=machine, old=old, new=new, at=at
        )

    async def alert_changed(self, hub: Any, event: Any) -> None:
        await self._notify("lunasentri_alert_changed", hub=hub, event=event)

    def server_routes(self, hub: Any) -> dict[str, list[Any]]:
        """Extra routes per plugin name (the server mounts them under the plugin's name)."""
        routes: dict[str, list[Any]] = {}
        for impl in self._impls("lunasentri_server_routes"):
            try:
                routes[impl.plugin_name] = list(_call(impl, {"hub": hub}) or ())
            except Exception:
                log.exception("plugin %s failed in lunasentri_server_routes", impl.plugin_name)
        return routes

    def listens(self, hook_name: str) -> bool:
        """Whether any plugin implements ``hook_name`` (so callers can skip building
        its arguments when nobody listens)."""
        return bool(self._impls(hook_name))

    @property
    def has_samples_ingested_hooks(self) -> bool:
        """Lets the ingest path skip building hook arguments when nobody listens."""
        return bool(self._impls("lunasentri_samples_ingested"))

    def _impls(self, hook_name: str) -> list[pluggy.HookImpl]:
        # pluggy calls implementations last-registered first; keep that order.
        caller: pluggy.HookCaller = getattr(self._pm.hook, hook_name)
        return list(reversed(caller.get_hookimpls()))

    async def _notify(self, hook_name: str, **kwargs: Any) -> None:
        # Called one implementation at a time (not via pluggy's loop) so that one
        # plugin raising neither stops the others nor the flow that fired the event.
        for impl in self._impls(hook_name):
            try:
                result = _call(impl, kwargs)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("plugin %s failed in %s", impl.plugin_name, hook_name)


def create_plugin_manager(
    settings: Settings | None = None,
    *,
    entry_points: bool = True,
    plugins: Mapping[str, object] | None = None,
) -> PluginManager:
    """Build a plugin manager from settings: entry points plus any extra ``plugins``.

    ``plugins`` maps names to plugin objects, for embedding applications and tests
    that want a plugin without publishing an entry point.
    """
    manager = PluginManager(
        disabled=settings.disabled_plugins if settings else (),
        enabled=settings.enabled_plugins if settings else None,
        plugin_settings=settings.plugins if settings else None,
    )
    if entry_points:
        manager.load_entry_points()
    for name, plugin in (plugins or {}).items():
        manager.register(plugin, name)
    return manager


@contextlib.contextmanager
def _deprecations(name: str) -> Iterator[None]:
    """Log the :class:`~lunasentri_core.hookspecs.HookDeprecationWarning` that registering
    plugin ``name`` issues, with its name, then issue it again for the warning filters
    (Python hides a DeprecationWarning by default; a plugin's tests may turn it into an
    error)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", hookspecs.HookDeprecationWarning)
        yield
    for found in caught:
        if issubclass(found.category, hookspecs.HookDeprecationWarning):
            log.warning("plugin %s: %s", name, found.message)
        warnings.warn_explicit(found.message, found.category, found.filename, found.lineno)


def _check_core_range(name: str, dist: Distribution | None) -> None:
    """Warn when the plugin's distribution declares core versions the running core is not."""
    # importlib.metadata's distributions have ``requires``; the agent's own scan has not,
    # and the agent does without this check (and without importing packaging for it).
    requires: Sequence[str] | None = getattr(dist, "requires", None)
    if not requires or dist is None:
        return
    from lunasentri_core import __version__ as running
    from lunasentri_core.compat import core_requirement, supports

    requirement = core_requirement(requires)
    if requirement is None or supports(requirement, running):
        return
    log.warning(
        "plugin %s (%s %s) supports lunasentri-core %s, not the running lunasentri-core %s: "
        "it is loaded, but may fail; install a release of %s made for this core",
        name,
        dist.name,
        dist.version,
        requirement.specifier,
        running,
        dist.name,
    )


def _call(impl: pluggy.HookImpl, kwargs: Mapping[str, Any]) -> Any:
    function: Callable[..., Any | Awaitable[Any]] = impl.function
    return function(**{name: kwargs[name] for name in impl.argnames})


def _ep_key(entry_point: EntryPoint) -> str:
    return entry_point.name


def _is_own_module(missing: str | None, own_module: str) -> bool:
    if missing is None:
        return True
    return own_module == missing or own_module.startswith(missing + ".")


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
