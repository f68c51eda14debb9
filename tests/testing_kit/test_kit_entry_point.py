"""EntryPointContract: the distribution declares the core versions it supports."""

from __future__ import annotations

import importlib
import textwrap

import pytest
from kit_support import KitRun, outcomes

pytest_plugins = ["pytester", "lunasentri_core.testing"]

PLUGIN = """
from lunasentri_core import Reading, hookimpl

class Collector:
    name = "{name}"
    settings_class = None

    def collect(self, target):
        return [Reading("cpu.percent", 1.0)]

@hookimpl
def lunasentri_register_collectors():
    return [Collector]
"""


def install(pytester: pytest.Pytester, name: str, requires: list[str]) -> None:
    """A distribution ``lunasentri-<name>`` with the entry point ``<name>``, on sys.path."""
    dist_info = pytester.path / f"lunasentri_{name}-1.0.dist-info"
    dist_info.mkdir()
    metadata = f"Metadata-Version: 2.1\nName: lunasentri-{name}\nVersion: 1.0\n"
    metadata += "".join(f"Requires-Dist: {line}\n" for line in requires)
    (dist_info / "METADATA").write_text(metadata)
    (dist_info / "entry_points.txt").write_text(f"[lunasentri]\n{name} = kit_{name}\n")
    (pytester.path / f"kit_{name}.py").write_text(textwrap.dedent(PLUGIN.format(name=name)))


def test_the_entry_point_suite_wants_a_range_holding_the_core(
    kit_run: KitRun, pytester: pytest.Pytester
) -> None:
    install(pytester, "ranged", ["attrs", "lunasentri-core>=0.1,<0.2"])
    install(pytester, "unranged", ["attrs", "lunasentri-core"])
    install(pytester, "undeclared", ["attrs"])
    install(pytester, "outdated", ["lunasentri-core>=0.0.1,<0.1"])
    pytester.syspathinsert()
    importlib.invalidate_caches()
    result = kit_run.run(
        """
        from lunasentri_core.testing import EntryPointContract

        class TestRanged(EntryPointContract):
            plugin = "ranged"
            distribution = "lunasentri-ranged"
            components = frozenset({"collector:ranged"})

        class TestUnranged(TestRanged):
            plugin = "unranged"
            distribution = "lunasentri-unranged"
            components = frozenset({"collector:unranged"})

        class TestUndeclared(TestRanged):
            plugin = "undeclared"
            distribution = "lunasentri-undeclared"
            components = frozenset({"collector:undeclared"})

        class TestOutdated(TestRanged):
            plugin = "outdated"
            distribution = "lunasentri-outdated"
            components = frozenset({"collector:outdated"})
        """
    )
    declares = "test_declares_the_core_versions_it_supports"
    assert outcomes(result, "TestRanged")["failed"] == set()
    assert declares in outcomes(result, "TestRanged")["passed"]
    for broken in ("TestUnranged", "TestUndeclared", "TestOutdated"):
        assert outcomes(result, broken)["failed"] == {declares}, broken
    result.stdout.fnmatch_lines(
        [
            "*lunasentri-unranged declares no range of lunasentri-core versions: add "
            '"lunasentri-core>=X.Y,<X.Y+1" to*',
            "*lunasentri-outdated supports lunasentri-core <0.1,>=0.0.1, not the installed*",
        ],
        consecutive=False,
    )
