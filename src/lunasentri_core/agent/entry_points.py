"""Entry points and versions of installed distributions, without importlib.metadata.

``importlib.metadata`` costs the agent about 0.9 MiB (the module, the email
parser it reads metadata with, and an object per installed distribution) to
find one or two entry points. This scan reads the same files the same way for
the usual layouts: the ``*.dist-info`` and ``*.egg-info`` directories of each
directory on ``sys.path`` (wheels, editable installs, ``setup.py develop``),
the first distribution of a name winning, entry points parsed as importlib
does. It returns ``None`` where it cannot see what importlib.metadata would —
an import hook that provides distributions itself (zipapps, PEX ...) — and the
caller asks importlib.metadata then. Zip archives and ``.egg`` directories on
``sys.path`` are not read; a collector installed that way is found by the
agent's fallback that loads every plugin through importlib.metadata.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# importlib.metadata's syntax: "module", "module:attr.sub", with optional "[extras]".
_VALUE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")
_METADATA_SUFFIXES = (".dist-info", ".egg-info")


class Distribution:
    """An installed distribution: its metadata directory, name and version."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._headers: dict[str, str] | None = None

    @property
    def name(self) -> str:
        return self._header("Name")

    @property
    def version(self) -> str:
        return self._header("Version")

    def _header(self, key: str) -> str:
        if self._headers is None:
            self._headers = _headers(self.path)
        return self._headers.get(key, "")


class EntryPoint:
    """One entry point; :meth:`load` imports it as importlib.metadata's does."""

    def __init__(self, name: str, value: str, group: str, dist: Distribution) -> None:
        self.name = name
        self.value = value
        self.group = group
        self.dist = dist

    def load(self) -> Any:
        match = _VALUE.match(self.value)
        if match is None:
            raise ValueError(f"invalid entry point value {self.value!r}")
        module = importlib.import_module(match.group("module"))
        attributes = filter(None, (match.group("attr") or "").split("."))
        return functools.reduce(getattr, attributes, module)

    def __repr__(self) -> str:
        return f"EntryPoint(name={self.name!r}, value={self.value!r}, group={self.group!r})"


def entry_points(group: str) -> list[EntryPoint] | None:
    """The entry points of ``group``; ``None`` if this scan cannot see every distribution."""
    if not _paths_only():
        return None
    found: list[EntryPoint] = []
    for dist in distributions():
        found.extend(_entry_points(dist, group))
    return found


def version(name: str) -> str | None:
    """The version of the distribution ``name`` (``None`` if not found by this scan)."""
    if not _paths_only():
        return None
    wanted = _normalize(name)
    for dist in distributions():
        if _normalize(_name_from_directory(dist.path.name)) == wanted:
            return dist.version or None
    return None


def distributions() -> Iterator[Distribution]:
    """Each distribution on ``sys.path`` once: the first of a name wins, as in importlib."""
    seen: set[str] = set()
    for entry in sys.path:
        try:
            children = os.listdir(entry or ".")
        except OSError:  # a zip archive, a missing directory
            continue
        by_name: dict[str, list[str]] = {}
        for child in children:
            if child.lower().endswith(_METADATA_SUFFIXES):
                by_name.setdefault(_normalize(_name_from_directory(child)), []).append(child)
        for name, directories in by_name.items():
            if name in seen:
                continue
            seen.add(name)
            for directory in directories:
                yield Distribution(Path(entry or ".", directory))


def _paths_only() -> bool:
    """Whether every finder that provides distributions is the standard path finder."""
    return all(
        finder is importlib.machinery.PathFinder
        or getattr(finder, "find_distributions", None) is None
        for finder in sys.meta_path
    )


def _entry_points(dist: Distribution, group: str) -> Iterator[EntryPoint]:
    text = _read(dist.path / "entry_points.txt")
    section = None
    for line in map(str.strip, text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")
            continue
        if section == group:
            name, _, value = line.partition("=")
            yield EntryPoint(name.strip(), value.strip(), group, dist)


def _headers(directory: Path) -> dict[str, str]:
    """The ``Name`` and ``Version`` of METADATA (PKG-INFO for egg-info): its first lines."""
    text = _read(directory / "METADATA") or _read(directory / "PKG-INFO")
    headers: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            break  # the body (the long description) starts after a blank line
        key, _, value = line.partition(":")
        if key in ("Name", "Version") and key not in headers:
            headers[key] = value.strip()
    return headers


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def _name_from_directory(directory: str) -> str:
    return directory.lower().rpartition(".")[0].partition("-")[0]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def agent_version() -> str:
    """This lunasentri-core's version, found by the scan if it can (else importlib's)."""
    found = version("lunasentri-core")
    if found is not None:
        return found
    from lunasentri_core import __version__

    return __version__
