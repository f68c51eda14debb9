"""Which core versions a plugin distribution says it supports.

A plugin declares them as an ordinary dependency on ``lunasentri-core`` with a
version range in its ``pyproject.toml`` (``"lunasentri-core>=0.1,<0.2"``); see
docs/hooks.md, "Compatibility". The plugin manager reads that requirement from
the installed distribution's metadata when it loads the plugin and logs a
warning when the running core is outside the range (the plugin is loaded all
the same: pip, not the manager, decides what is installed).
"""

from __future__ import annotations

from collections.abc import Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

CORE_DISTRIBUTION = "lunasentri-core"


def core_requirement(requires: Iterable[str]) -> Requirement | None:
    """The requirement on ``lunasentri-core`` among a distribution's ``Requires-Dist``
    lines that applies here (its environment marker, if any, holds without extras)."""
    for line in requires:
        # Most lines name another project: skip them before parsing.
        if CORE_DISTRIBUTION.replace("-", "") not in line.lower().replace("-", "").replace("_", ""):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(requirement.name) != CORE_DISTRIBUTION:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        return requirement
    return None


def supports(requirement: Requirement, core_version: str) -> bool:
    """Whether ``core_version`` is inside the range of ``requirement`` (pre-releases
    and development versions of the core count as the release they lead to: 0.2.0.dev1
    as 0.2.0)."""
    try:
        release = Version(Version(core_version).base_version)
    except InvalidVersion:
        return True  # a core run from a source tree without a version: nothing to say
    return requirement.specifier.contains(release, prereleases=True)
