"""The agent's own distributions, served to new machines at ``/agent/dist/<file>``.

A registration's install command installs the agent from these wheels by URL: the
core and the plugins of the collectors the agent runs are not on a package index,
and a URL cannot be confused with a same-named project someone else publishes there.
Wheels come from ``[server] agent_wheels_dir`` when it is set, otherwise they are
built (``pip wheel --no-deps``) from the sources the server itself runs, once, on the
first download, in a worker thread, and kept under ``<data_dir>/agent-dist/`` by
version and content hash. A registration never builds: the file names of pure-Python
wheels are known from the project's name and version alone.
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
from anyio.abc import TaskGroup

from lunasentri_core.config import Settings

CORE = ("lunasentri-core", "lunasentri_core")
BUILD_TIMEOUT = 600.0
"""Seconds one ``pip wheel`` may take (it fetches the build backend from the index)."""
DOWNLOAD_WAIT = 10.0
"""Seconds a download waits for a running build before a 503 with Retry-After: under
pip's 15 s read timeout, and pip retries a 503 after the time Retry-After gives."""

# Built wheels by (project directory, content hash), so that servers started one after
# another in one process (tests, embedding) build each source tree once; each server
# still keeps its own copy under its data directory.
_built: dict[tuple[Path, str], Path] = {}
_built_lock = threading.Lock()


class DistError(Exception):
    """The agent's wheels cannot be had; the message says which and why."""


class StillBuilding(Exception):
    """The wheels are being built; a download should come back shortly."""


@attrs.frozen
class Wheel:
    """One wheel the install command names: the file ``path`` when it needs no build
    (``agent_wheels_dir``), else the project directory ``source`` to build it from."""

    project: str
    name: str
    path: Path | None = None
    source: Path | None = None


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


def plan(settings: Settings, collectors: Sequence[str]) -> list[Wheel]:
    """The wheels the agent needs, by file name, without building any (cheap: reads a
    few files and lists ``agent_wheels_dir``; blocking, so called in a worker thread)."""
    directory = settings.server.agent_wheels_dir
    wheels = []
    for project, package in agent_projects(collectors):
        if directory is not None:
            path = find_wheel(directory, project)
            wheels.append(Wheel(project, path.name, path=path))
        else:
            source = project_dir(project, package)
            wheels.append(Wheel(project, wheel_name(project, source), source=source))
    return wheels


def wheel_name(project: str, source: Path) -> str:
    """The file name ``pip wheel`` gives the project's pure-Python hatchling wheel
    (PEP 427); :func:`build_all` checks that the build gave that name."""
    return f"{normalize(project)}-{source_version(project, source)}-py3-none-any.whl"


def source_version(project: str, source: Path) -> str:
    """The version the sources declare, which the build gets; the installed metadata's
    when it is dynamic (it may be older than the sources if they changed since)."""
    version = _project_table(source / "pyproject.toml").get("version")
    return version if isinstance(version, str) else importlib.metadata.version(project)


def build_all(wheels: Sequence[Wheel], cache: Path) -> dict[str, Path]:
    """Build (or find in ``cache``) every wheel: file name -> path. Blocking."""
    files = {}
    for wheel in wheels:
        if wheel.path is not None:
            files[wheel.name] = wheel.path
            continue
        assert wheel.source is not None
        built = build_wheel(wheel.project, wheel.source, cache)
        if built.name != wheel.name:
            raise DistError(
                f"the wheel of {wheel.project} built from {wheel.source} is {built.name}, "
                f"not {wheel.name} as the install command names it (not a pure-Python "
                "wheel, or a version not in its normal form); set [server] agent_wheels_dir"
            )
        files[wheel.name] = built
    return files


def find_wheel(directory: Path, project: str) -> Path:
    version = importlib.metadata.version(project)
    pattern = f"{normalize(project)}-{version}-*.whl"
    found = sorted(directory.glob(pattern))
    if not found:
        raise DistError(f"no wheel of {project} {version} ({pattern}) in {directory}")
    return found[-1]


def build_wheel(project: str, source: Path, cache: Path) -> Path:
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
    name = _project_table(pyproject).get("name")
    return isinstance(name, str) and normalize(name) == normalize(project)


def _project_table(pyproject: Path) -> dict[str, object]:
    try:
        table = tomllib.loads(pyproject.read_text("utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}
    return table if isinstance(table, dict) else {}


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
    """The server's agent wheels: named at once, built on the first download, then kept.

    ``services`` is the server's task group: a build runs there, not in the request
    that started it, so a download that stops waiting leaves it running."""

    def __init__(self, settings: Settings, collectors: Sequence[str], services: TaskGroup) -> None:
        self.settings = settings
        self.collectors = tuple(collectors)
        self.services = services
        self._lock = anyio.Lock()
        self._planned: list[Wheel] | DistError | None = None
        self._started = False
        self._done = anyio.Event()
        self._files: dict[str, Path] | DistError | None = None

    async def wheels(self) -> list[Wheel]:
        """The wheels the install command names, without building; :class:`DistError`
        when they cannot be had. A failed build is kept until a restart, so it is not
        retried per download and registrations say how to install by hand."""
        if isinstance(self._files, DistError):
            raise self._files
        async with self._lock:
            if self._planned is None:
                try:
                    self._planned = await anyio.to_thread.run_sync(
                        plan, self.settings, self.collectors
                    )
                except DistError as error:
                    self._planned = error
        if isinstance(self._planned, DistError):
            raise self._planned
        return self._planned

    async def file(self, name: str) -> Path | None:
        """The served wheel called ``name`` (None for any other name), built first if
        need be; :class:`StillBuilding` if the build takes longer than DOWNLOAD_WAIT."""
        wheel = next((w for w in await self.wheels() if w.name == name), None)
        if wheel is None or wheel.path is not None:
            return None if wheel is None else wheel.path
        if not self._started:
            self._started = True
            self.services.start_soon(self._build)
        with anyio.move_on_after(DOWNLOAD_WAIT):
            await self._done.wait()
        if self._files is None:
            raise StillBuilding("the agent's wheels are being built; try again shortly")
        if isinstance(self._files, DistError):
            raise self._files
        return self._files[name]

    async def _build(self) -> None:
        cache = self.settings.data_dir / "agent-dist"
        try:
            planned = await self.wheels()
            # Abandoned at shutdown rather than holding the server up for a slow pip.
            self._files = await anyio.to_thread.run_sync(
                build_all, planned, cache, abandon_on_cancel=True
            )
        except (DistError, OSError) as error:  # never let a build end the server
            self._files = error if isinstance(error, DistError) else DistError(str(error))
        finally:
            self._done.set()


def manual_install(error: DistError) -> str:
    return (
        f"The server cannot serve the agent's wheels: {error}. Install the agent by hand: "
        "where LunaSentri's sources are, run `pip wheel --no-deps <project directory>` for "
        "lunasentri-core and each collector plugin the agent runs (lunasentri-psutil), "
        "`pip install` those wheels on the machine, then run the rest of the install command."
    )
