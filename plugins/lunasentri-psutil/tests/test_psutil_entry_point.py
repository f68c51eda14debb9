"""The plugin is found the way the hub finds it: through its entry point."""

from __future__ import annotations

import importlib.metadata

import pluggy
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import lunasentri_psutil
from lunasentri_core import hookspecs
from lunasentri_psutil import PsutilCollector


def test_the_entry_point_names_the_plugin_module() -> None:
    entry_points = importlib.metadata.entry_points(group="lunasentri")
    found = [ep for ep in entry_points if ep.name == "psutil"]
    assert len(found) == 1, "run: pip install -e plugins/lunasentri-psutil"
    assert found[0].value == "lunasentri_psutil"
    assert found[0].dist is not None
    assert found[0].dist.name == "lunasentri-psutil"
    assert found[0].load() is lunasentri_psutil


def test_the_hookimpls_validate_against_the_specs_and_register_the_collector() -> None:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    loaded = manager.load_setuptools_entrypoints("lunasentri", name="psutil")
    assert loaded == 1
    manager.check_pending()
    registered = manager.hook.lunasentri_register_collectors()
    assert [list(classes) for classes in registered] == [[PsutilCollector]]


def test_the_distribution_declares_its_supported_ranges() -> None:
    requirements = {
        r.name: r.specifier
        for r in map(Requirement, importlib.metadata.requires("lunasentri-psutil") or [])
    }
    assert requirements["psutil"] == SpecifierSet(">=5.9,<8")
    assert requirements["lunasentri-core"] == SpecifierSet(">=0.1,<0.2")
