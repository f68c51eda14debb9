from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

import lunasentri_core
from lunasentri_core import hookimpl, hookspecs
from lunasentri_core.compat import core_requirement, supports
from lunasentri_core.config import Settings
from lunasentri_core.errors import ConfigError, PluginError
from lunasentri_core.plugins import ComponentKind, create_plugin_manager

MakeDistribution = Callable[..., Path]

GOOD = """
    import attrs
    from lunasentri_core import hookimpl, Reading

    @attrs.frozen
    class Settings:
        path: str = "/"

    class Disk:
        name = "fakedisk"
        settings_class = Settings
        def __init__(self, settings):
            self.settings = settings
        def collect(self, target):
            return [Reading("disk.free", 1.0)]

    @hookimpl
    def lunasentri_register_collectors():
        return [Disk]
"""


def settings(**kwargs: Any) -> Settings:
    return Settings.load(environ={}, **kwargs)


def test_entry_point_plugins_are_found_with_their_distribution(
    make_distribution: MakeDistribution,
) -> None:
    make_distribution(
        "lunasentri-fakedisk",
        entry_points={"fakedisk": "fakedisk"},
        modules={"fakedisk": GOOD},
        version="2.3",
    )

    manager = create_plugin_manager(settings())

    info = next(i for i in manager.infos() if i.name == "fakedisk")
    assert (info.distribution, info.version) == ("lunasentri-fakedisk", "2.3")
    assert info.hooks == ("lunasentri_register_collectors",)
    assert info.components == ("collector:fakedisk",)
    collector = manager.component(ComponentKind.COLLECTOR, "fakedisk").create()
    assert collector.settings.path == "/"


def test_plugin_settings_are_structured_from_their_table(
    make_distribution: MakeDistribution,
) -> None:
    make_distribution("fd", entry_points={"fakedisk": "fakedisk"}, modules={"fakedisk": GOOD})

    manager = create_plugin_manager(settings(plugins={"fakedisk": {"path": "/data"}}))

    assert manager.component(ComponentKind.COLLECTOR, "fakedisk").settings.path == "/data"


def test_wrong_plugin_settings_name_the_path_and_keep_others(
    make_distribution: MakeDistribution,
) -> None:
    make_distribution("fd", entry_points={"fakedisk": "fakedisk"}, modules={"fakedisk": GOOD})

    manager = create_plugin_manager(settings(plugins={"fakedisk": {"path": 3, "size": 1}}))

    (failure,) = [f for f in manager.failures if f.name == "fakedisk"]
    assert failure.stage == "settings"
    assert "plugins.fakedisk.path: expected a string" in failure.reason
    assert "plugins.fakedisk.size: unknown field" in failure.reason
    with pytest.raises(PluginError, match=r"no collector named 'fakedisk' \(fakedisk: invalid"):
        manager.component(ComponentKind.COLLECTOR, "fakedisk")


def test_a_plugin_that_raises_on_import_is_reported_and_others_work(
    make_distribution: MakeDistribution, caplog: pytest.LogCaptureFixture
) -> None:
    make_distribution(
        "lunasentri-broken",
        entry_points={"broken": "brokenplugin", "fakedisk": "fakedisk"},
        modules={"brokenplugin": "raise RuntimeError('boom at import')", "fakedisk": GOOD},
    )

    with caplog.at_level(logging.ERROR):
        manager = create_plugin_manager(settings())

    (failure,) = [f for f in manager.failures if f.name == "broken"]
    assert failure.stage == "import"
    assert failure.reason == "RuntimeError: boom at import"
    assert failure.distribution == "lunasentri-broken"
    assert "broken" in caplog.text
    assert "fakedisk" in manager.collectors()


def test_a_missing_dependency_is_reported_as_such(make_distribution: MakeDistribution) -> None:
    make_distribution(
        "needs-dep",
        entry_points={"needsdep": "needsdep"},
        modules={"needsdep": "import surely_not_installed_module"},
    )

    manager = create_plugin_manager(settings())

    (failure,) = [f for f in manager.failures if f.name == "needsdep"]
    assert failure.stage == "missing-dependency"
    assert "surely_not_installed_module" in failure.reason


def test_an_entry_point_to_a_missing_module_is_an_import_failure(
    make_distribution: MakeDistribution,
) -> None:
    make_distribution("ghost", entry_points={"ghost": "ghost_module"}, modules={})

    manager = create_plugin_manager(settings())

    (failure,) = [f for f in manager.failures if f.name == "ghost"]
    assert failure.stage == "import"


def test_misspelled_and_mistyped_hooks_fail_validation(
    make_distribution: MakeDistribution,
) -> None:
    make_distribution(
        "typo",
        entry_points={"typo": "typo", "extra_arg": "extra_arg"},
        modules={
            "typo": """
                from lunasentri_core import hookimpl
                @hookimpl
                def lunasentri_register_colectors():
                    return []
            """,
            "extra_arg": """
                from lunasentri_core import hookimpl
                @hookimpl
                def lunasentri_startup(hub, surprise):
                    pass
            """,
        },
    )

    manager = create_plugin_manager(settings())

    reasons = {f.name: f.reason for f in manager.failures if f.stage == "validate"}
    assert "unknown hook 'lunasentri_register_colectors'" in reasons["typo"]
    assert "surprise" in reasons["extra_arg"]
    assert {i.name for i in manager.infos()}.isdisjoint({"typo", "extra_arg"})


def test_disabled_and_allowlisted_plugins(make_distribution: MakeDistribution) -> None:
    make_distribution("fd", entry_points={"fakedisk": "fakedisk"}, modules={"fakedisk": GOOD})

    disabled = create_plugin_manager(settings(disabled_plugins=["fakedisk"]))
    allowlisted = create_plugin_manager(settings(enabled_plugins=["psutil"]))

    assert "fakedisk" not in disabled.collectors()
    assert "fakedisk" in disabled.disabled()
    assert "fakedisk" not in allowlisted.collectors()


class _Collector:
    name = "dup"
    settings_class = None

    def collect(self, target: object) -> list[Any]:
        return []


class _RegistersDup:
    @hookimpl
    def lunasentri_register_collectors(self) -> list[type]:
        return [_Collector]


class _RegistersNameless:
    @hookimpl
    def lunasentri_register_collectors(self) -> list[type]:
        return [object]


class _RaisesInRegistration:
    @hookimpl
    def lunasentri_register_notifiers(self) -> list[type]:
        raise ValueError("no notifiers today")


def test_broken_registrations_are_reported_by_plugin_name() -> None:
    manager = create_plugin_manager(
        entry_points=False,
        plugins={
            "first": _RegistersDup(),
            "second": _RegistersDup(),
            "nameless": _RegistersNameless(),
            "raiser": _RaisesInRegistration(),
        },
    )

    assert list(manager.collectors()) == ["dup"]
    reasons = {f.name: f.reason for f in manager.failures}
    assert reasons["first"] == "collector 'dup' is already registered by plugin 'second'"
    assert "has no 'name'" in reasons["nameless"]
    assert reasons["raiser"] == "ValueError: no notifiers today"


def test_unknown_component_error_lists_what_is_available() -> None:
    manager = create_plugin_manager(entry_points=False, plugins={"p": _RegistersDup()})
    with pytest.raises(PluginError, match="no collector named 'nope'; available: dup"):
        manager.component(ComponentKind.COLLECTOR, "nope")
    with pytest.raises(PluginError, match="no storage plugin handles URL scheme 'mysql'"):
        manager.storage_for_scheme("mysql")


@attrs.define
class _Recorder:
    calls: list[str] = attrs.field(factory=list)

    @hookimpl
    def lunasentri_startup(self, hub: object) -> None:
        self.calls.append("sync")


@attrs.define
class _AsyncRecorder:
    calls: list[str]

    @hookimpl
    async def lunasentri_startup(self) -> None:
        self.calls.append("async")


class _Raiser:
    @hookimpl
    def lunasentri_startup(self) -> None:
        raise RuntimeError("plugin bug")


@pytest.mark.anyio
async def test_event_hooks_await_and_isolate_failures(caplog: pytest.LogCaptureFixture) -> None:
    recorder = _Recorder()
    manager = create_plugin_manager(
        entry_points=False,
        plugins={"a": recorder, "raiser": _Raiser(), "b": _AsyncRecorder(recorder.calls)},
    )

    await manager.startup(hub=object())

    assert sorted(recorder.calls) == ["async", "sync"]
    assert "plugin raiser failed in lunasentri_startup" in caplog.text


def test_first_party_plugins_are_discovered() -> None:
    names = {i.name for i in create_plugin_manager(settings()).infos()}
    assert {"psutil", "sqlite"} <= names


VALIDATED = """
    import attrs
    from lunasentri_core import hookimpl

    @attrs.frozen
    class Settings:
        timeout: float = attrs.field(default=1.0)
        host: str = "localhost"

        @timeout.validator
        def _check(self, attribute, value):
            if value <= 0:
                raise ValueError("timeout must be positive")

        def __attrs_post_init__(self):
            if self.host == "nowhere":
                raise ValueError("host and timeout disagree")

    class Check:
        name = "tcpcheck"
        settings_class = Settings
        def __init__(self, settings):
            self.settings = settings
        def collect(self, target):
            return []

    @hookimpl
    def lunasentri_register_collectors():
        return [Check]
"""


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"timeout": 0}, "invalid settings: plugins.tcpcheck.timeout: timeout must be positive"),
        ({"host": "nowhere"}, "invalid settings: plugins.tcpcheck: host and timeout disagree"),
    ],
)
def test_a_plugin_settings_validator_error_names_the_field(
    make_distribution: MakeDistribution, table: dict[str, Any], expected: str
) -> None:
    make_distribution("tc", entry_points={"tcpcheck": "tcpcheck"}, modules={"tcpcheck": VALIDATED})

    manager = create_plugin_manager(settings(plugins={"tcpcheck": table}))

    (failure,) = [f for f in manager.failures if f.name == "tcpcheck"]
    assert failure.reason == expected


def test_a_table_naming_no_component_is_stray_unless_its_plugin_is_off_or_failed(
    make_distribution: MakeDistribution,
) -> None:
    make_distribution(
        "fd",
        entry_points={"fakedisk": "fakedisk", "needy": "needy"},
        modules={"fakedisk": GOOD, "needy": "import surely_not_installed_module"},
    )
    tables = {"fakedisk": {}, "fakedsik": {"path": "/"}, "needy": {}, "wmi": {}, "zz": {}}

    manager = create_plugin_manager(settings(plugins=tables, disabled_plugins=["wmi"]))

    assert manager.stray_settings() == ["fakedsik", "zz"]
    assert {"fakedisk", "psutil", "sqlite"} <= manager.component_names()


def test_stray_tables_are_warned_about_by_name_or_refused_when_strict(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = create_plugin_manager(settings(plugins={"pstuil": {"per_cpu": True}}))

    with caplog.at_level(logging.WARNING, logger="lunasentri_core.plugins"):
        manager.check_settings_tables()
    with pytest.raises(ConfigError) as refused:
        manager.check_settings_tables(strict=True)

    (warning,) = caplog.records
    assert warning.levelno == logging.WARNING
    assert "[plugins.pstuil] names no loaded component" in warning.getMessage()
    assert "psutil" in warning.getMessage().split("loaded components:")[1]
    assert "[plugins.pstuil] names no loaded component" in str(refused.value)
    assert "strict_plugins is set" in str(refused.value)


def test_no_warning_when_every_table_names_a_component(caplog: pytest.LogCaptureFixture) -> None:
    manager = create_plugin_manager(settings(plugins={"psutil": {"per_cpu": True}}))

    with caplog.at_level(logging.WARNING, logger="lunasentri_core.plugins"):
        manager.check_settings_tables(strict=True)

    assert caplog.records == []


# ------------------------------------------------------------------ supported core versions


@pytest.mark.parametrize(
    ("requires", "warned"),
    [
        (["attrs>=23.2", "lunasentri-core>=0.1,<0.2"], False),
        (["lunasentri-core>=9,<10"], True),
        (["lunasentri_core<0.1"], True),  # any spelling of the name
        (["lunasentri-core>=9; python_version < '3'"], False),  # a marker that does not apply
        (["lunasentri-core>=9; extra == 'extras'"], False),  # only with an extra
        (["attrs>=23.2"], False),  # no range declared: nothing to compare
        ([], False),
    ],
)
def test_a_plugin_declaring_core_versions_that_exclude_the_running_core_is_warned_about(
    make_distribution: MakeDistribution,
    caplog: pytest.LogCaptureFixture,
    requires: list[str],
    warned: bool,
) -> None:
    make_distribution(
        "lunasentri-fakedisk",
        entry_points={"fakedisk": "fakedisk"},
        modules={"fakedisk": GOOD},
        version="2.3",
        requires=requires,
    )

    with caplog.at_level(logging.WARNING, logger="lunasentri_core.plugins"):
        manager = create_plugin_manager(settings())

    # Loaded either way: the warning tells the operator, pip decides what is installed.
    assert "fakedisk" in manager.collectors()
    assert not manager.failures
    lines = [r.getMessage() for r in caplog.records if "fakedisk" in r.getMessage()]
    if warned:
        (line,) = lines
        assert line.startswith("plugin fakedisk (lunasentri-fakedisk 2.3) supports lunasentri-core")
        assert f"not the running lunasentri-core {lunasentri_core.__version__}" in line
    else:
        assert lines == []


@pytest.mark.parametrize(
    ("core", "supported"),
    [("0.1.0", True), ("0.1.7", True), ("0.1.0.dev3", True), ("0.2.0.dev1", False),
     ("0.2.0", False), ("0.0.9", False), ("0.1.0+local", True), ("not-a-version", True)],
)  # fmt: skip
def test_core_versions_in_a_declared_range(core: str, supported: bool) -> None:
    requirement = core_requirement(["attrs", "lunasentri-core>=0.1,<0.2"])
    assert requirement is not None
    assert supports(requirement, core) is supported


# ------------------------------------------------------------------ deprecated hooks


class UsesHub:
    @hookimpl
    def lunasentri_startup(self, hub: object) -> None:
        pass


class WithoutHub:
    @hookimpl
    def lunasentri_startup(self) -> None:
        pass


@pytest.fixture
def hub_argument_deprecated(monkeypatch: pytest.MonkeyPatch) -> None:
    """lunasentri_startup's ``hub`` deprecated, as a future release would declare it with
    ``@hookspec(warn_on_impl_args={"hub": HookDeprecationWarning(...)})``."""
    options = getattr(hookspecs.lunasentri_startup, f"{hookspecs.PROJECT_NAME}_spec")
    warning = hookspecs.HookDeprecationWarning("'hub' is deprecated since 0.9: take 'app'")
    monkeypatch.setitem(options, "warn_on_impl_args", {"hub": warning})


@pytest.mark.usefixtures("hub_argument_deprecated")
def test_a_deprecated_hook_argument_is_warned_about_with_the_plugin_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.warns(hookspecs.HookDeprecationWarning, match="'hub' is deprecated") as seen:
        manager = create_plugin_manager(
            entry_points=False, plugins={"old-style": UsesHub(), "new-style": WithoutHub()}
        )
    # Still registered and called: a deprecation is a warning, not a failure.
    assert manager.listens("lunasentri_startup")
    assert not manager.failures
    (warning,) = seen.list
    assert warning.filename == __file__  # points at the implementation
    (record,) = [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "plugin old-style: 'hub' is deprecated since 0.9: take 'app'"


@pytest.mark.usefixtures("hub_argument_deprecated")
def test_a_deprecation_is_an_error_where_warnings_are(caplog: pytest.LogCaptureFixture) -> None:
    # The filterwarnings = error of this suite, as in a plugin's own tests.
    with pytest.raises(hookspecs.HookDeprecationWarning):
        create_plugin_manager(entry_points=False, plugins={"old-style": UsesHub()})
    assert "plugin old-style: 'hub' is deprecated" in caplog.text
