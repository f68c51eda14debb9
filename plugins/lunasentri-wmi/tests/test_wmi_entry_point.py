"""The plugin is found the way the hub finds it: through its entry point.

Needs the distribution installed: ``pip install -e plugins/lunasentri-wmi``
(the nox sessions install every plugin); skipped otherwise.
"""

from __future__ import annotations

import importlib.metadata

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import lunasentri_wmi
from lunasentri_core.testing import EntryPointContract

try:
    importlib.metadata.distribution("lunasentri-wmi")
except importlib.metadata.PackageNotFoundError:
    pytest.skip(
        "lunasentri-wmi is not installed: pip install -e plugins/lunasentri-wmi",
        allow_module_level=True,
    )


class TestWmiEntryPoint(EntryPointContract):
    plugin = "wmi"
    distribution = "lunasentri-wmi"
    components = frozenset({"collector:wmi"})


def test_the_entry_point_names_the_plugin_module() -> None:
    (entry_point,) = importlib.metadata.entry_points(group="lunasentri", name="wmi")
    assert entry_point.value == "lunasentri_wmi"
    assert entry_point.load() is lunasentri_wmi


def test_the_distribution_declares_its_supported_ranges() -> None:
    requirements = {
        r.name: r.specifier
        for r in map(Requirement, importlib.metadata.requires("lunasentri-wmi") or [])
    }
    assert requirements["pywinrm"] == SpecifierSet(">=0.5,<1")
    assert requirements["lunasentri-winrm"] == SpecifierSet(">=0.1,<0.2")
    assert requirements["lunasentri-core"] == SpecifierSet(">=0.1,<0.2")
