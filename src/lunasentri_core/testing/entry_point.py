"""The contract of an installed plugin distribution: found, loaded, registering."""

from __future__ import annotations

import importlib.metadata
import re
from typing import ClassVar

import pytest

from lunasentri_core.compat import CORE_DISTRIBUTION, core_requirement, supports
from lunasentri_core.plugins import ENTRY_POINT_GROUP, PluginInfo, create_plugin_manager
from lunasentri_core.testing.contract import Contract


def _normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


class EntryPointContract(Contract):
    """Tests that an installed distribution plugs into LunaSentri through its entry point.

    Set ``plugin`` (the entry-point name), ``distribution`` (the project name) and
    ``components`` (what it registers, as ``"<kind>:<name>"``, e.g.
    ``"collector:filesize"``). The distribution must be installed
    (``pip install -e .``) for these tests to pass. It must also declare the
    core versions it supports, as a dependency on ``lunasentri-core`` with a
    range that holds the running core (``"lunasentri-core>=0.1,<0.2"``).
    """

    __test__ = False

    plugin: ClassVar[str] = ""
    distribution: ClassVar[str] = ""
    components: ClassVar[frozenset[str]] = frozenset()

    def _required(self) -> None:
        if not self.plugin or not self.distribution:
            pytest.fail(
                f"{type(self).__name__} must set 'plugin' and 'distribution'", pytrace=False
            )

    def _entry_point(self) -> importlib.metadata.EntryPoint:
        self._required()
        found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=self.plugin)
        assert found, (
            f"no {ENTRY_POINT_GROUP!r} entry point named {self.plugin!r} is installed; "
            f"run `pip install -e .` in the {self.distribution} project"
        )
        return next(iter(found))

    def _info(self) -> PluginInfo:
        manager = create_plugin_manager()
        failures = [str(f) for f in manager.failures if f.name == self.plugin]
        assert not failures, f"the plugin failed to load: {failures}"
        infos = {info.name: info for info in manager.infos()}
        assert self.plugin in infos, f"{self.plugin!r} is not among {sorted(infos)}"
        return infos[self.plugin]

    def test_entry_point_is_installed(self) -> None:
        entry_point = self._entry_point()
        assert entry_point.dist is not None
        assert _normalise(entry_point.dist.name) == _normalise(self.distribution)

    def test_plugin_loads(self) -> None:
        self._entry_point()
        info = self._info()
        assert info.distribution is not None
        assert _normalise(info.distribution) == _normalise(self.distribution)
        assert info.version == importlib.metadata.version(self.distribution)

    def test_registers_its_components(self) -> None:
        self._entry_point()
        missing = self.components - set(self._info().components)
        assert not missing, f"the plugin does not register {sorted(missing)}"

    def test_declares_the_core_versions_it_supports(self) -> None:
        self._entry_point()
        requirement = core_requirement(importlib.metadata.requires(self.distribution) or [])
        specifier = "" if requirement is None else str(requirement.specifier)
        assert specifier, (
            f"{self.distribution} declares no range of {CORE_DISTRIBUTION} versions: add "
            f'"{CORE_DISTRIBUTION}>=X.Y,<X.Y+1" to [project] dependencies in its pyproject.toml'
        )
        assert requirement is not None
        running = importlib.metadata.version(CORE_DISTRIBUTION)
        assert supports(requirement, running), (
            f"{self.distribution} supports {CORE_DISTRIBUTION} {requirement.specifier}, "
            f"not the installed {running}"
        )
