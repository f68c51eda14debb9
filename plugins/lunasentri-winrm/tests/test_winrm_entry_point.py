"""The plugin is found the way the hub finds it: through its entry point.

Needs the distribution installed: ``pip install -e plugins/lunasentri-winrm``
(the nox sessions do it).
"""

from __future__ import annotations

import importlib.metadata

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import lunasentri_winrm
from lunasentri_core.testing import EntryPointContract


class TestWinrmEntryPoint(EntryPointContract):
    plugin = "winrm"
    distribution = "lunasentri-winrm"
    components = frozenset({"collector:winrm"})


def test_the_entry_point_names_the_plugin_module() -> None:
    (entry_point,) = importlib.metadata.entry_points(group="lunasentri", name="winrm")
    assert entry_point.value == "lunasentri_winrm"
    assert entry_point.load() is lunasentri_winrm


def test_the_distribution_declares_its_supported_ranges() -> None:
    requirements = {
        r.name: r.specifier
        for r in map(Requirement, importlib.metadata.requires("lunasentri-winrm") or [])
        if r.marker is None
    }
    assert requirements["pywinrm"] == SpecifierSet(">=0.5,<1")
    assert requirements["lunasentri-core"] == SpecifierSet(">=0.1,<0.2")
