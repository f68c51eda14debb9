"""Every first-party plugin and the example plugin declare the core versions they support.

The convention (docs/hooks.md, "Compatibility"): a dependency on lunasentri-core
with a lower bound and an upper bound at the next release that may break the
hook API (the next minor while the core is 0.x, the next major from 1.0 on).
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from lunasentri_core.compat import core_requirement, supports

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = sorted((ROOT / "plugins").glob("*/pyproject.toml"))
EXAMPLE = ROOT / "examples" / "third_party_plugin" / "pyproject.toml"
CORE = importlib.metadata.version("lunasentri-core")


def next_breaking(version: str) -> Version:
    release = Version(version).release
    major, minor = release[0], release[1] if len(release) > 1 else 0
    return Version(f"0.{minor + 1}") if major == 0 else Version(f"{major + 1}")


def declared(pyproject: Path) -> Requirement:
    dependencies = tomllib.loads(pyproject.read_text())["project"].get("dependencies", [])
    requirement = core_requirement(dependencies)
    assert requirement is not None, f"{pyproject}: no dependency on lunasentri-core"
    assert requirement.specifier, f"{pyproject}: lunasentri-core without a version range"
    return requirement


def check_range(requirement: Requirement, where: str) -> None:
    assert supports(requirement, CORE), (
        f"{where}: {requirement} excludes the installed lunasentri-core {CORE}"
    )
    upper = next_breaking(CORE)
    assert not requirement.specifier.contains(upper, prereleases=True), (
        f"{where}: {requirement} admits lunasentri-core {upper}, which may break the hook "
        "API: bound it below"
    )


def test_the_first_party_plugins_are_all_here() -> None:
    names = {path.parent.name for path in FIRST_PARTY}
    assert {"lunasentri-psutil", "lunasentri-sqlite", "lunasentri-webhooks"} <= names
    assert len(names) >= 7


@pytest.mark.parametrize("pyproject", FIRST_PARTY, ids=lambda path: path.parent.name)
def test_a_first_party_plugin_supports_the_installed_core(pyproject: Path) -> None:
    check_range(declared(pyproject), str(pyproject.relative_to(ROOT)))
    # And as installed: what the plugin manager reads when it loads the plugin.
    name = tomllib.loads(pyproject.read_text())["project"]["name"]
    installed = core_requirement(importlib.metadata.requires(name) or [])
    assert installed is not None, f"the installed {name} declares no lunasentri-core range"
    check_range(installed, f"installed {name}")


def test_the_example_plugin_declares_its_range() -> None:
    check_range(declared(EXAMPLE), str(EXAMPLE.relative_to(ROOT)))


@pytest.mark.parametrize(
    ("core", "upper"), [("0.1.0", "0.2"), ("0.9.3.dev1", "0.10"), ("1.4.2", "2"), ("2", "3")]
)
def test_next_breaking(core: str, upper: str) -> None:
    assert next_breaking(core) == Version(upper)
