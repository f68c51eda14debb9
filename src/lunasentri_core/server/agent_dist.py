"""The agent's own distributions, served to new machines at ``/agent/dist/<file>``.

A registration's install command installs the agent from these wheels by URL: the
core and the plugins of the collectors the agent runs are not on a package index,
and a URL cannot be confused with a same-named project someone else publishes there.
Wheels come from ``[server] agent_wheels_dir`` when it is set, otherwise they are
built (``pip wheel --no-deps``) from the sources the server itself runs, once, in a
worker thread, and kept under ``<data_dir>/agent-dist/`` by version and content hash.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

import anyio
import attrs

from lunasentri_core.config import Settings

CORE = ("lunasentri-core", "lunasentri_core")
BUILD_TIMEOUT = 600.0
"""Seconds one ``pip wheel`` may take (it fetches the build backend from the index)."""

# Built wheels by (project directory, content hash), so that servers started one after
# another in one process (tests, embedding) build each source tree once; each server
# still keeps its own copy under its data directory.
_built: dict[tuple[Path, str], Path] = {}
_built_lock = threading.Lock()


class DistError(Exception):
    """The agent's wheels cannot be had; the message says which and why."""


@attrs.frozen
class Wheel:
    project: str
    path: Path


def normalize(name: str) -> str:
    """A project name as wheel file names spell it (PEP 427 / 503)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def agent_projects(collectors: Iterable[str]) -> list[tuple[str, str]]:
    """(distribution, import package) of the core and of each collector's plugin."""
    found = [CORE]
    for name in collectors:
        points = importlib.metadata.entry_points(group="lunasentri", name=name)
        point = next(iter(points), None)
        if point is None or point.dist is None:
            raise DistError(f"no installed plugin provides the collector {name!r}")
        project = (point.dist.name, point.module.split(".")[0])
        if project not in found:
            found.append(project)
    return found


def obtain(settings: Settings, collectors: Sequence[str]) -> list[Wheel]:
    """Every wheel the agent needs (blocking: call it in a worker thread)."""
    directory = settings.server.agent_wheels_dir
    cache = settings.data_dir / "agent-dist"
    wheels = []
    for project, package in agent_projects(collectors):
        if directory is not None:
            wheels.append(Wheel(project, find_wheel(directory, project)))
        else:
            wheels.append(Wheel(project, build_wheel(project, package, cache)))
    return wheels


def find_wheel(directory: Path, project: str) -> Path:
    version = importlib.metadata.version(project)
    pattern = f"{normalize(project)}-{version}-*.whl"
    found = sorted(directory.glob(pattern))
    if not found:
        raise DistError(f"no wheel of {project} {version} ({pattern}) in {directory}")
    return found[-1]


def build_wheel(project: str, package: str, cache: Path) -> Path:
    source = project_dir(project, package)
    digest = content_hash(source)
    with _built_lock:
        earlier = _built.get((source, digest))
        target = cache / f"{normalize(project)}-{digest}"
        built = cached_or_built(project, source, target, earlier)
        _built[(source, digest)] = built
    return built


def project_dir(project: str, package: str) -> Path:
    """The source tree ``package`` is imported from, found by its pyproject.toml."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DistError(f"{project} is not importable")
    for parent in Path(spec.origin).resolve().parents:
        pyproject = parent / "pyproject.toml"
        if pyproject.is_file() and _names(pyproject, project):
            return parent
    raise DistError(
        f"{project} was not installed from its sources, so the server cannot build its wheel; "
        "set [server] agent_wheels_dir to a directory holding the agent's wheels"
    )


def _names(pyproject: Path, project: str) -> bool:
    try:
        name = tomllib.loads(pyproject.read_text("utf-8")).get("project", {}).get("name", "")
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False
    return isinstance(name, str) and normalize(name) == normalize(project)


def content_hash(source: Path) -> str:
    """What the wheel is built from: the project file, the readme and ``src/``."""
    digest = hashlib.sha256()
    files = [source / "pyproject.toml", source / "README.md", *sorted((source / "src").rglob("*"))]
    for path in files:
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(source).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cached_or_built(project: str, source: Path, target: Path, earlier: Path | None = None) -> Path:
    """The wheel in ``target``; else a copy of ``earlier`` (the same sources, built by
    another server in this process), else a new build."""
    existing = sorted(target.glob("*.whl")) if target.is_dir() else []
    if existing:
        return existing[-1]
    target.parent.mkdir(parents=True, exist_ok=True)
    # Made beside the target and renamed into place: a crash leaves no half a wheel.
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
    try:
        if earlier is not None and earlier.is_file():
            shutil.copy2(earlier, scratch / earlier.name)
        else:
            _pip_wheel(project, source, scratch)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return sorted(target.glob("*.whl"))[-1]


def _pip_wheel(project: str, source: Path, into: Path) -> None:
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet"]
    command += ["--wheel-dir", str(into), str(source)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DistError(f"building the wheel of {project} from {source} failed: {error}") from None
    if done.returncode != 0 or not any(into.glob("*.whl")):
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise DistError(f"building the wheel of {project} from {source} failed: {tail}")


class AgentDist:
    """The server's agent wheels, obtained on first use and then kept."""

    def __init__(self, settings: Settings, collectors: Sequence[str]) -> None:
        self.settings = settings
        self.collectors = tuple(collectors)
        self._lock = anyio.Lock()
        self._result: list[Wheel] | DistError | None = None

    async def wheels(self) -> list[Wheel]:
        """The wheels, or :class:`DistError`; a failure is kept until a restart, so a
        broken build is not retried on every registration."""
        async with self._lock:
            if self._result is None:
                try:
                    self._result = await anyio.to_thread.run_sync(
                        obtain, self.settings, self.collectors
                    )
                except DistError as error:
                    self._result = error
        if isinstance(self._result, DistError):
            raise self._result
        return self._result

    async def file(self, name: str) -> Path | None:
        """The served wheel called ``name``; None for any other name."""
        return next((w.path for w in await self.wheels() if w.path.name == name), None)


def manual_install(error: DistError) -> str:
    return (
        f"The server cannot serve the agent's wheels: {error}. Install the agent by hand: "
        "where LunaSentri's sources are, run `pip wheel --no-deps <project directory>` for "
        "lunasentri-core and each collector plugin the agent runs (lunasentri-psutil), "
        "`pip install` those wheels on the machine, then run the rest of the install command."
    )
