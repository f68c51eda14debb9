"""The plugin is found the way the hub finds it: through its entry point.

Needs the distribution installed: ``pip install -e plugins/lunasentri-psutil``.
"""

from __future__ import annotations

import importlib.metadata

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import lunasentri_psutil
from lunasentri_core.testing import EntryPointContract


class TestPsutilEntryPoint(EntryPointContract):
    plugin = "psutil"
    distribution = "lunasentri-psutil"
    components = frozenset({"collector:psutil"})


def test_the_entry_point_names_the_plugin_module() -> None:
    (entry_point,) = importlib.metadata.entry_points(group="lunasentri", name="psutil")
    assert entry_point.value == "lunasentri_psutil"
    assert entry_point.load() is lunasentri_psutil


def test_the_distribution_declares_its_supported_ranges() -> None:
    requirements = {
        r.name: r.specifier
        for r in map(Requirement, importlib.metadata.requires("lunasentri-psutil") or [])
    }
    assert requirements["psutil"] == SpecifierSet(">=5.9,<8")
    assert requirements["lunasentri-core"] == SpecifierSet(">=0.1,<0.2")
