"""Development sessions for LunaSentri: ``nox`` runs the default set, ``nox -l`` lists all.

Every session installs the core and the first-party plugins in editable mode into its
own virtual environment under ``.nox/``. Environments are reused between runs, so a
later run only re-checks the installs; ``nox -R`` skips them altogether.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"
nox.options.sessions = [
    "tests",
    "plugins",
    "example",
    "lint",
    "typecheck",
    "docs",
    "schemathesis",
]
nox.options.reuse_venv = "yes"
# uv (``pip install "nox[uv]"``) builds the environments in seconds where pip takes most
# of a minute each; plain virtualenv + pip is the fallback.
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = False

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
PLUGINS = sorted(p.parent.name for p in (ROOT / "plugins").glob("*/pyproject.toml"))
EXAMPLE = Path("examples/third_party_plugin")
ENTRY_POINT_GROUP = "lunasentri"

# Tool versions live here and in requirements-dev.txt; keep the two in step.
TEST_REQUIREMENTS = [
    "pytest>=8.0",
    "hypothesis>=6.100",
    "coverage[toml]>=7.5",
    "httpx>=0.27",
    "jsonschema>=4.22",
    "openapi-spec-validator>=0.7",
    # The WS-Management test server's tests drive it with the real client.
    "pywinrm>=0.5",
    # tests/test_docs_blocks.py type-checks the documentation's Python blocks.
    "mypy>=2.3,<3",
    # tests/test_scaffold.py builds the projects `lunasentri plugin new` generates with
    # their build backend, offline (pip --no-build-isolation), and lints them with ruff.
    "hatchling>=1.24",
    "ruff>=0.16,<0.18",
    # The dashboard's browser tests drive the system's Chromium (never Playwright's own
    # browser download): .ci/run installs it with apt.
    "playwright>=1.49",
]
LINT_REQUIREMENTS = ["ruff>=0.16,<0.18"]  # also in TEST_REQUIREMENTS
# pytest: lunasentri_core.testing is a pytest plugin; nox: the noxfile is checked too.
TYPECHECK_REQUIREMENTS = ["mypy>=2.3,<3", "pytest>=8.0", "nox>=2025.2.9"]
# pytest: the test kit's reference imports lunasentri_core.testing.
# Pinned exactly: a new release may generate other cases, and CI must not change by itself.
SCHEMATHESIS_REQUIREMENTS = ["schemathesis==4.32.5", "httpx>=0.27"]
DOCS_REQUIREMENTS = ["sphinx>=8.1", "myst-parser>=4.0", "sphinx-click>=6.0", "pytest>=8.0"]

LINT_PATHS = ["src", "plugins", "tests", "examples", "benchmarks", "docs/conf.py", "noxfile.py"]
TYPECHECK_PATHS = ["src/lunasentri_core", "noxfile.py", "benchmarks/run.py", "docs/conf.py"]


def _available_pythons(supported: Sequence[str]) -> list[str]:
    """Supported versions with an interpreter on PATH, or the running one as a fallback.

    Sessions only ask for interpreters that exist, so a machine with one Python runs
    every session once instead of reporting the others as skipped.
    """
    found = [version for version in supported if _runs(f"python{version}")]
    return found or [f"{sys.version_info.major}.{sys.version_info.minor}"]


def _runs(command: str) -> bool:
    # A pyenv shim is on PATH for every installed version but fails unless that
    # version is selected, so finding the name is not enough.
    executable = shutil.which(command)
    if executable is None:
        return False
    probe = subprocess.run([executable, "-c", ""], capture_output=True, check=False)
    return probe.returncode == 0


PYTHONS = _available_pythons(nox.project.python_versions(PYPROJECT))
RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"
DEFAULT_PYTHON = RUNNING if RUNNING in PYTHONS else PYTHONS[-1]


def install_projects(
    session: nox.Session, *requirements: str, extra_projects: Sequence[Path] = ()
) -> None:
    """Install the core (with PostgreSQL support), every plugin and ``requirements``.

    One pip call, so the resolver sees every project's constraints at once.
    """
    # pip itself: the server builds the agent's wheels with ``python -m pip wheel``, and
    # uv's environments come without it.
    editables = ["pip", "-e", ".[postgres]"]
    for project in [*(Path("plugins") / name for name in PLUGINS), *extra_projects]:
        editables += ["-e", str(project)]
    session.install(*editables, *requirements)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Core tests under coverage. Arguments after ``--`` replace the test path."""
    install_projects(session, *TEST_REQUIREMENTS)
    session.run("coverage", "erase")
    # The slowest tests are listed so that the suite's run time stays watched.
    default = ["--durations=30", "tests"]
    session.run("coverage", "run", "-m", "pytest", *(session.posargs or default))
    session.run("coverage", "combine", "--quiet")
    session.run("coverage", "report", "--skip-covered", "--show-missing")


@nox.session(python=PYTHONS)
@nox.parametrize("plugin", PLUGINS, ids=PLUGINS)
def plugins(session: nox.Session, plugin: str) -> None:
    """One plugin's own tests, run from its directory so its pytest settings apply."""
    install_projects(session, *TEST_REQUIREMENTS)
    session.chdir(Path("plugins") / plugin)
    session.run("pytest", *(session.posargs or ["tests"]))


def _entry_point_names(project: Path) -> list[str]:
    with (project / "pyproject.toml").open("rb") as file:
        entry_points = tomllib.load(file)["project"].get("entry-points", {})
    return sorted(entry_points.get(ENTRY_POINT_GROUP, {}))


def _check_plugins_load(session: nox.Session, names: Sequence[str]) -> None:
    """Fail unless ``lunasentri plugins`` lists every one of ``names`` and no failure."""
    # stderr stays on the terminal so that log lines cannot corrupt the JSON.
    output = session.run("lunasentri", "plugins", "--json", silent=True, stderr=None)
    report = json.loads(str(output))
    failures = [f"{f['name']} [{f['stage']}]: {f['reason']}" for f in report["failures"]]
    if failures:
        session.error("plugins failed to load: " + "; ".join(failures))
    loaded = {plugin["name"] for plugin in report["plugins"]}
    missing = sorted(set(names) - loaded)
    if missing:
        session.error(f"`lunasentri plugins` does not list {', '.join(missing)}")


@nox.session(python=DEFAULT_PYTHON)
def example(session: nox.Session) -> None:
    """The third-party example: installs through its entry point, passes its tests."""
    if not (EXAMPLE / "pyproject.toml").is_file():
        session.error(f"{EXAMPLE} has no pyproject.toml")
    names = _entry_point_names(EXAMPLE)
    if not names:
        session.error(f"{EXAMPLE} declares no '{ENTRY_POINT_GROUP}' entry point")
    install_projects(session, *TEST_REQUIREMENTS, extra_projects=[EXAMPLE])
    session.run("lunasentri", "plugins")
    _check_plugins_load(session, names)
    session.chdir(EXAMPLE)
    session.run("pytest", *(session.posargs or ["tests"]))


@nox.session(python=DEFAULT_PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(*LINT_REQUIREMENTS)
    paths = [path for path in LINT_PATHS if Path(path).exists()]
    session.run("ruff", "check", *session.posargs, *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session(python=DEFAULT_PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict (settings in pyproject.toml) on the core and the tooling scripts."""
    install_projects(session, *TYPECHECK_REQUIREMENTS)
    paths = [path for path in TYPECHECK_PATHS if Path(path).exists()]
    session.run("mypy", *session.posargs, *paths)


@nox.session(python=DEFAULT_PYTHON)
def docs(session: nox.Session) -> None:
    """Build the HTML documentation; any warning fails the build."""
    install_projects(session, *DOCS_REQUIREMENTS)
    # A fresh environment re-reads every page, so warnings of unchanged pages count too.
    build = ["sphinx-build", "-W", "--keep-going", "-E", "-b", "html"]
    session.run(*build, *session.posargs, "docs", "docs/_build/html")


@nox.session(python=DEFAULT_PYTHON)
def schemathesis(session: nox.Session) -> None:
    """Fuzz a real server against its OpenAPI document: both modes, all checks, 2 users.

    Arguments after ``--`` go to every ``schemathesis run`` (e.g. ``-- --max-examples 5``).
    """
    install_projects(session, *SCHEMATHESIS_REQUIREMENTS)
    session.run("python", "tests/fuzz/run_schemathesis.py", *session.posargs)


@nox.session(python=DEFAULT_PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Every benchmarks/bench_*.py in turn; ``-- NAME`` runs only those matching NAME."""
    install_projects(session)
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session(python=DEFAULT_PYTHON, default=False)
def demo(session: nox.Session) -> None:
    """The reference server on SQLite with an admin, this machine and an in-process agent.

    Arguments after ``--`` go to ``lunasentri serve`` (e.g. ``-- --host 0.0.0.0 --port 9000``).
    """
    install_projects(session)
    session.run("lunasentri", "serve", "--demo", "--data-dir", ".lunasentri-demo", *session.posargs)


@nox.session(python=DEFAULT_PYTHON, default=False)
def embed(session: nox.Session) -> None:
    """The embedding example: a small anyio app that collects and queries this machine."""
    install_projects(session)
    session.run("python", "examples/embed_in_app.py", *session.posargs)
