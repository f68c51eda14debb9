"""Which plugins the agent loads for its collectors, and their settings."""

from __future__ import annotations

import logging
import textwrap
from typing import TYPE_CHECKING

import pytest

from lunasentri_core.agent.collectors import load_collectors
from lunasentri_core.agent.settings import AgentRunSettings
from lunasentri_core.errors import PluginError
from lunasentri_core.samples import Target

if TYPE_CHECKING:
    from conftest import Site

PLUGIN = textwrap.dedent(
    """
    import attrs
    from lunasentri_core import Reading, hookimpl

    def _small(_, attribute, value):
        if value > 10:
            raise ValueError("threshold must be at most 10")

    @attrs.frozen
    class Options:
        threshold: int = attrs.field(default=3, validator=_small)

    @attrs.frozen
    class Needy:
        path: str

    class MadeUp:
        name = "madeup"
        settings_class = Options

        def __init__(self, settings):
            self.settings = settings

        def collect(self, target):
            return [Reading("made.up", self.settings.threshold)]

    class NeedsSettings:
        name = "needy"
        settings_class = Needy

        def __init__(self, settings):
            self.settings = settings

        def collect(self, target):
            return []

    @hookimpl
    def lunasentri_register_collectors():
        return [MadeUp, NeedsSettings]
    """
)


@pytest.fixture
def plugin(site: Site) -> Site:
    (site.first / "made_up_plugin.py").write_text(PLUGIN)
    return site


def _install(site: Site, entry_point_name: str) -> None:
    site.distribution(
        site.first,
        "made_up_plugin-1.0.dist-info",
        "made-up-plugin",
        "1.0",
        f"[lunasentri]\n{entry_point_name} = made_up_plugin\n",
    )


def test_a_plugin_named_like_its_collector_is_loaded_alone(
    plugin: Site, caplog: pytest.LogCaptureFixture
) -> None:
    _install(plugin, "madeup")
    caplog.set_level(logging.INFO, logger="lunasentri_core.agent")
    (collector,) = load_collectors(AgentRunSettings(), ("madeup",)).values()
    assert [r.value for r in collector.collect(Target("m"))] == [3.0]  # type: ignore[union-attr]
    assert "loading all plugins" not in caplog.text


def test_a_collector_of_a_plugin_of_another_name_is_found_by_loading_all(
    plugin: Site, caplog: pytest.LogCaptureFixture
) -> None:
    _install(plugin, "other_name")
    caplog.set_level(logging.INFO, logger="lunasentri_core.agent")
    collectors = load_collectors(AgentRunSettings(), ("madeup", "psutil"))
    assert sorted(collectors) == ["madeup", "psutil"]
    assert "collector(s) madeup not provided by a plugin of the same name" in caplog.text


def test_plugin_settings_and_their_errors(plugin: Site) -> None:
    _install(plugin, "madeup")
    settings = AgentRunSettings(plugins={"madeup": {"threshold": 7}})
    (collector,) = load_collectors(settings, ("madeup",)).values()
    assert [r.value for r in collector.collect(Target("m"))] == [7.0]  # type: ignore[union-attr]
    bad = AgentRunSettings(plugins={"madeup": {"threshold": "many"}})
    with pytest.raises(PluginError, match=r"plugins\.madeup\.threshold: expected an integer"):
        load_collectors(bad, ("madeup",))
    too_big = AgentRunSettings(plugins={"madeup": {"threshold": 11}})
    with pytest.raises(PluginError, match="threshold must be at most 10"):
        load_collectors(too_big, ("madeup",))


def test_settings_without_defaults_need_their_table(plugin: Site) -> None:
    _install(plugin, "needy")
    with pytest.raises(PluginError, match=r"plugins\.needy\.path: required field is missing"):
        load_collectors(AgentRunSettings(), ("needy",))
    settings = AgentRunSettings(plugins={"needy": {"path": "/x"}})
    assert load_collectors(settings, ("needy",))["needy"].name == "needy"


def test_an_unknown_collector_is_a_plugin_error() -> None:
    with pytest.raises(PluginError, match="no collector named 'nosuch'"):
        load_collectors(AgentRunSettings(), ("nosuch",))
