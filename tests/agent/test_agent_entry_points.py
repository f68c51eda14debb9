"""The agent's own scan of installed distributions agrees with importlib.metadata."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import sys
from typing import TYPE_CHECKING

import pytest

from lunasentri_core.agent import entry_points
from lunasentri_core.agent.collectors import load_collectors
from lunasentri_core.agent.settings import AgentRunSettings
from lunasentri_core.plugins import ENTRY_POINT_GROUP, PluginManager

if TYPE_CHECKING:
    from conftest import Site


def _as_tuples(found: object) -> list[tuple[str, str, str, str]]:
    return sorted(
        (ep.name, ep.value, ep.dist.name, ep.dist.version)  # type: ignore[attr-defined]
        for ep in found  # type: ignore[attr-defined]
    )


def test_the_installed_plugins_as_importlib_finds_them() -> None:
    found = entry_points.entry_points(ENTRY_POINT_GROUP)
    assert found is not None
    expected = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    assert _as_tuples(found) == _as_tuples(expected)
    assert "psutil" in {ep.name for ep in found}
    for ours, theirs in zip(
        sorted(found, key=lambda ep: ep.name), sorted(expected, key=lambda ep: ep.name), strict=True
    ):
        assert ours.load() is theirs.load()


def test_versions_as_importlib_reads_them() -> None:
    assert entry_points.version("lunasentri-core") == importlib.metadata.version("lunasentri-core")
    assert entry_points.version("LunaSentri_Core") == importlib.metadata.version("lunasentri-core")
    assert entry_points.agent_version() == importlib.metadata.version("lunasentri-core")
    assert entry_points.version("no-such-distribution") is None


def test_made_up_distributions_as_importlib_reads_them(site: Site) -> None:
    first, second = site.first, site.second
    (first / "made_up.py").write_text("class Thing:\n    class Inner:\n        pass\n")
    site.distribution(
        first,
        "Made_Up-1.0.dist-info",
        "Made-Up",
        "1.0",
        "# a comment\n[lunasentri_test]\n  inner = made_up:Thing.Inner [extra]\n"
        "module=made_up\n\n[other]\nnot = made_up:Thing\n",
    )
    # The same distribution later on sys.path is shadowed, as in importlib.
    site.distribution(
        second, "made_up-2.0.dist-info", "made-up", "2.0", "[lunasentri_test]\nx = y\n"
    )
    site.distribution(
        second, "egged.egg-info", "egged", "0.3", "[lunasentri_test]\negg = made_up\n"
    )
    group = "lunasentri_test"
    found = entry_points.entry_points(group)
    assert found is not None
    assert _as_tuples(found) == _as_tuples(importlib.metadata.entry_points(group=group))
    assert {ep.name: ep.value for ep in found} == {
        "inner": "made_up:Thing.Inner [extra]",
        "module": "made_up",
        "egg": "made_up",
    }
    by_name = {ep.name: ep.load() for ep in found}
    made_up = importlib.import_module("made_up")
    assert by_name == {"inner": made_up.Thing.Inner, "module": made_up, "egg": made_up}
    assert entry_points.version("made-up") == "1.0"


def test_the_manager_reports_a_broken_plugin_the_same_way(site: Site) -> None:
    first = site.first
    site.distribution(
        first,
        "made_up_broken-1.0.dist-info",
        "made-up-broken",
        "1.0",
        "[lunasentri_test]\nbroken = made_up_missing:plugin\n",
    )
    failures = []
    for found in (entry_points.entry_points("lunasentri_test"), None):
        manager = PluginManager()
        manager.load_entry_points("lunasentri_test", found=found)
        failures.append(manager.failures)
    ours, importlibs = failures
    assert ours == importlibs
    assert [(f.name, f.stage, f.distribution) for f in ours] == [
        ("broken", "import", "made-up-broken")
    ]


class _DistributionHook:
    """An import hook that provides distributions itself (as zipapps and PEX do)."""

    @staticmethod
    def find_spec(*args: object) -> None:
        return None

    @staticmethod
    def find_distributions(*args: object) -> list[object]:
        return []


def test_an_import_hook_with_distributions_leaves_them_to_importlib(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sys, "meta_path", [_DistributionHook(), *sys.meta_path])
    assert entry_points.entry_points(ENTRY_POINT_GROUP) is None
    assert entry_points.version("lunasentri-core") is None
    assert entry_points.agent_version() == importlib.metadata.version("lunasentri-core")
    caplog.set_level(logging.INFO, logger="lunasentri_core.agent")
    # Found through importlib.metadata, still limited to the plugin of that name.
    collectors = load_collectors(AgentRunSettings(), ("psutil",))
    assert collectors["psutil"].name == "psutil"
    assert "loading all plugins" not in caplog.text
