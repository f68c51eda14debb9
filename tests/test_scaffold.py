"""``lunasentri plugin new``: refuses what it cannot generate; what it generates works.

The slow tests install a project of every kind into one fresh virtual environment
and run each project's own tests there, unchanged. To stay fast and offline they
download nothing: the environment is made by :mod:`venv` without pip, and a
``.pth`` file in its site-packages appends this interpreter's ``sys.path`` after
its own, so the dependencies (attrs, pytest, httpx, SQLAlchemy, pip, hatchling)
come from the running environment. Then ``pip install --no-deps
--no-build-isolation --no-index`` really installs the core from this checkout and
the four generated projects into the new environment, as wheels that hatchling
builds (editable installs would need hatchling's optional "editables" package
too); a test checks their entry points through importlib.metadata there. Each
project's pytest runs in the new environment, without PYTHONPATH, the four at
once. That the generated ``pyproject.toml`` resolves from an index is left to the
ranges it declares, which the fast tests check.

The generated code is also checked with ``ruff check``, ``ruff format --check``
and ``mypy --strict`` (with the project's own settings); those checks are skipped,
saying so, when ruff or mypy is not installed in the running environment, and
the installed tests are skipped when hatchling is not.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
from click.testing import CliRunner

from lunasentri_core.cli import main
from lunasentri_core.scaffold import (
    BadNameError,
    Kind,
    ScaffoldError,
    core_requirement,
    generate,
    plugin_names,
)

CHECKOUT = Path(__file__).resolve().parent.parent
KINDS = list(Kind)
# One project per kind, with names of several words, as most real plugins have.
PROJECTS = {
    Kind.COLLECTOR: "lunasentri-disk-usage",
    Kind.NOTIFIER: "lunasentri-http-post",
    Kind.AUTHENTICATOR: "lunasentri-proxy-auth",
    Kind.STORAGE: "lunasentri-file-store",
}
TIMEOUT = 300


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "lunasentri-tcp-check",
            ("lunasentri-tcp-check", "lunasentri_tcp_check", "tcp_check", "tcp-check", "TcpCheck"),
        ),
        ("lunasentri_ping", ("lunasentri-ping", "lunasentri_ping", "ping", "ping", "Ping")),
        (
            "acme-sentri2",
            ("acme-sentri2", "acme_sentri2", "acme_sentri2", "acme-sentri2", "AcmeSentri2"),
        ),
    ],
)
def test_names_derive_from_the_distribution_name(name: str, expected: tuple[str, ...]) -> None:
    assert attrs.astuple(plugin_names(name)) == expected


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "not a valid plugin distribution name"),
        ("Lunasentri-Foo", "use lower case: 'lunasentri-foo'"),
        ("2fa", "not a valid plugin distribution name"),
        ("lunasentri--foo", "not a valid plugin distribution name"),
        ("lunasentri-foo-", "not a valid plugin distribution name"),
        ("lunasentri.foo", "not a valid plugin distribution name"),
        ("lunasentri foo", "not a valid plugin distribution name"),
        ("../evil", "not a valid plugin distribution name"),
        ("lunasentri-core", "LunaSentri's own name"),
        ("lunasentri", "LunaSentri's own name"),
        ("class", "a Python keyword"),
        ("json", "shadow the standard library"),
        ("lunasentri-2fa", "starts with a digit"),
        ("x" * 31, "longer than 30 characters"),
        (
            "lunasentri-" + "x" * 31,
            "gives the plugin name 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx', longer",
        ),
    ],
)
def test_unusable_names_are_refused_with_the_reason(name: str, reason: str) -> None:
    with pytest.raises(BadNameError, match=re.escape(reason)):
        plugin_names(name)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("attrs", "the package name 'attrs' is taken by an installed module"),
        ("sqlite", "a plugin named 'sqlite' is already installed (from lunasentri-sqlite)"),
    ],
)
def test_names_taken_in_this_environment_are_refused(
    name: str, reason: str, tmp_path: Path
) -> None:
    with pytest.raises(BadNameError, match=re.escape(reason)):
        generate(name, Kind.COLLECTOR, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("version", "requirement"),
    [
        ("0.1.0", "lunasentri-core>=0.1,<0.2"),
        ("0.12.3.dev4", "lunasentri-core>=0.12,<0.13"),
        ("1.3.2", "lunasentri-core>=1.3,<2"),
        ("2.0.0rc1", "lunasentri-core>=2.0,<3"),
    ],
)
def test_the_core_range_follows_the_versioning_of_the_hook_api(
    version: str, requirement: str
) -> None:
    assert core_requirement(version) == requirement


def test_the_default_range_is_that_of_the_installed_core() -> None:
    import importlib.metadata

    installed = importlib.metadata.version("lunasentri-core")
    assert core_requirement() == core_requirement(installed)
    major, minor = installed.split(".")[:2]
    assert core_requirement().startswith(f"lunasentri-core>={major}.{minor},<")


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_every_kind_is_a_complete_distribution(kind: Kind, tmp_path: Path) -> None:
    project = tmp_path / "out"
    written = generate("lunasentri-tcp-check", kind, project, core_version="0.4.1")

    assert {p.as_posix() for p in written} >= {
        "pyproject.toml",
        "README.md",
        "noxfile.py",
        ".gitignore",
        "src/lunasentri_tcp_check/__init__.py",
        "src/lunasentri_tcp_check/py.typed",
        "tests/conftest.py",
        "tests/test_contract.py",
        "tests/test_tcp_check.py",
    }
    assert all((project / p).is_file() for p in written)
    text = "\n".join((project / p).read_text(encoding="utf-8") for p in written)
    assert "$" not in text.replace("$ python", "").replace("$ lunasentri", "")
    pyproject = _toml(project / "pyproject.toml")
    assert pyproject["build-system"]["build-backend"] == "hatchling.build"
    assert pyproject["project"]["name"] == "lunasentri-tcp-check"
    assert "lunasentri-core>=0.4,<0.5" in pyproject["project"]["dependencies"]
    assert pyproject["project"]["entry-points"]["lunasentri"] == {
        "tcp_check": "lunasentri_tcp_check"
    }
    contract = (project / "tests/test_contract.py").read_text(encoding="utf-8")
    suite = {
        Kind.COLLECTOR: "CollectorContract",
        Kind.NOTIFIER: "NotifierContract",
        Kind.AUTHENTICATOR: "AuthenticatorContract",
        Kind.STORAGE: "StorageContract",
    }[kind]
    assert "class TestTcpCheck" in contract
    assert suite in contract
    assert "EntryPointContract" in contract
    assert f'components = frozenset({{"{kind.value}:tcp_check"}})' in contract


def test_an_empty_directory_is_used(tmp_path: Path) -> None:
    generate("lunasentri-ping", Kind.COLLECTOR, tmp_path)
    assert (tmp_path / "src" / "lunasentri_ping" / "__init__.py").is_file()


def test_a_directory_that_is_not_empty_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ScaffoldError, match="exists and is not empty"):
        generate("lunasentri-ping", Kind.COLLECTOR, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "lunasentri-ping").write_text("a file")
    with pytest.raises(ScaffoldError, match="is not a directory"):
        generate("lunasentri-ping", Kind.COLLECTOR, tmp_path / "lunasentri-ping")


@pytest.mark.parametrize(
    "name", ["ab", "lunasentri-tcp-check", "z" * 30, "lunasentri-" + "y" * 25 + "-x2y4"]
)
def test_the_code_is_clean_for_ruff_with_short_and_long_names(name: str, tmp_path: Path) -> None:
    # Lines hold the names, so their lengths vary: the templates keep clear of the limit
    # up to the longest plugin name allowed, with magic trailing commas where a
    # statement is split (so that ruff format leaves short names split too).
    ruff = _ruff()
    for kind in KINDS:
        generate(name, kind, tmp_path / kind.value)
    _run([ruff, "check", "--no-cache", "."], cwd=tmp_path)
    _run([ruff, "format", "--check", "--no-cache", "."], cwd=tmp_path)


def _ruff() -> str:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed in the running environment")
    return ruff


# --------------------------------------------------------------------------- command


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["plugin", "new", *args])
    return result.exit_code, result.output


def test_the_command_writes_into_a_directory_named_after_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, output = _invoke("lunasentri-ping", "--kind", "notifier")
    assert code == 0, output
    assert output.startswith("created lunasentri-ping (")
    assert "  src/lunasentri_ping/__init__.py\n" in output
    assert "NotifierContract" in Path("lunasentri-ping/tests/test_contract.py").read_text()


def test_the_command_takes_a_directory(tmp_path: Path) -> None:
    code, output = _invoke("lunasentri-ping", "--kind", "storage", "--dir", str(tmp_path / "x"))
    assert code == 0, output
    assert (tmp_path / "x" / "pyproject.toml").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Ping", "--kind", "collector"], "Invalid value for NAME: 'Ping' is not a valid"),
        (["lunasentri-core", "--kind", "collector"], "LunaSentri's own name"),
        (["lunasentri-ping", "--kind", "exporter"], "Invalid value for '--kind'"),
        (["lunasentri-ping"], "Missing option '--kind'"),
    ],
)
def test_the_command_refuses_bad_input_with_status_2(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, output = _invoke(*args)
    assert code == 2
    assert message in output
    assert list(tmp_path.iterdir()) == []


def test_the_command_refuses_a_directory_in_use_with_status_2(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    code, output = _invoke("lunasentri-ping", "--kind", "collector", "--dir", str(tmp_path))
    assert code == 2
    assert f"Error: directory {tmp_path} exists and is not empty" in output
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


# --------------------------------------------------------------------------- installed


@attrs.frozen
class Installed:
    python: Path
    projects: Mapping[Kind, Path]
    env: Mapping[str, str]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Every kind generated, then installed with the core into one new environment."""
    if importlib.util.find_spec("hatchling") is None:
        pytest.skip("hatchling (the generated projects' build backend) is not installed")
    root = tmp_path_factory.mktemp("scaffold")
    projects = {kind: root / name for kind, name in PROJECTS.items()}
    for kind, directory in projects.items():
        generate(PROJECTS[kind], kind, directory)
    environment = root / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(environment)
    python = environment / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    env = _clean_environment(environment)
    site_packages = _run([python, "-c", _PURELIB], env=env).strip()
    # Last in name order, so the new environment's own packages come first.
    # Not this checkout's root or tests (pytest put them there): only what is installed.
    running = [
        p
        for p in sys.path
        if p and Path(p).is_dir() and Path(p) not in (CHECKOUT, CHECKOUT / "tests")
    ]
    (Path(site_packages) / "zz_running_environment.pth").write_text("\n".join(running) + "\n")
    # Wheels, not editable installs: hatchling's need the "editables" package too.
    _run(
        [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", CHECKOUT, *projects.values()],
        env=env,
    )  # fmt: skip
    return Installed(python, projects, env)


_PURELIB = "import sysconfig; print(sysconfig.get_path('purelib'))"


def _clean_environment(environment: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env["VIRTUAL_ENV"] = str(environment)
    scripts = environment / ("Scripts" if os.name == "nt" else "bin")
    env["PATH"] = os.pathsep.join([str(scripts), env.get("PATH", "")])
    env["PIP_NO_INPUT"] = "1"
    return env


def _run(command: list[str | Path], **kwargs: object) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return str(result.stdout)


_WHERE = """
import importlib.metadata, json, lunasentri_core
found = {ep.name: ep.dist.name for ep in importlib.metadata.entry_points(group="lunasentri")}
print(json.dumps({"core": lunasentri_core.__file__, "plugins": found}))
"""


@pytest.mark.slow
def test_the_projects_are_installed_with_their_entry_points(installed: Installed) -> None:
    report = json.loads(_run([installed.python, "-c", _WHERE], env=installed.env))
    # The core is the wheel built from this checkout, inside the new environment.
    assert Path(report["core"]).is_relative_to(installed.python.parent.parent)
    for kind, name in PROJECTS.items():
        assert report["plugins"][plugin_names(name).plugin] == name, kind


@pytest.mark.slow
def test_the_installed_core_ships_the_templates(installed: Installed, tmp_path: Path) -> None:
    # The wheel of the core holds the templates: its command writes the same files.
    command = [installed.python, "-m", "lunasentri_core", "plugin", "new", "lunasentri-ping"]
    for kind in KINDS:
        _run([*command, "--kind", kind.value, "--dir", tmp_path / kind.value], env=installed.env)
        generate("lunasentri-ping", kind, tmp_path / f"{kind.value}-here")
        assert _files(tmp_path / kind.value) == _files(tmp_path / f"{kind.value}-here")


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()}


@attrs.define
class Runs:
    """Each project's pytest, started at once; most of their time is spent waiting."""

    processes: dict[Kind, tuple[subprocess.Popen[bytes], Path]] = attrs.field(factory=dict)

    def result(self, kind: Kind) -> tuple[int, str]:
        process, log = self.processes[kind]
        process.wait(timeout=TIMEOUT)
        return process.returncode, log.read_text()


@pytest.fixture(scope="module")
def own_tests(installed: Installed) -> Iterator[Runs]:
    runs = Runs()
    try:
        for kind, project in installed.projects.items():
            log = project.parent / f"{kind.value}-pytest.log"
            # A temporary directory of its own: the runs never share pytest's numbered ones.
            basetemp = project.parent / f"{kind.value}-tmp"
            command = [installed.python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [*map(str, command), f"--basetemp={basetemp}"],
                    cwd=project,
                    env=installed.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            runs.processes[kind] = (process, log)
        yield runs
    finally:
        for process, _ in runs.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_the_generated_project_is_clean_for_ruff(
    installed: Installed, own_tests: Runs, kind: Kind
) -> None:
    ruff = _ruff()
    project = installed.projects[kind]
    _run([ruff, "check", "--no-cache", "."], cwd=project)
    _run([ruff, "format", "--check", "--no-cache", "."], cwd=project)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_the_generated_project_is_clean_for_mypy_strict(
    installed: Installed,
    own_tests: Runs,
    kind: Kind,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed in the running environment")
    project = installed.projects[kind]
    # The project's [tool.mypy] (strict) applies; nox is left out when it is not
    # installed, since only its noxfile imports it.
    paths = ["src", "tests"] + (["noxfile.py"] if importlib.util.find_spec("nox") else [])
    cache = tmp_path_factory.getbasetemp() / "mypy-cache"  # shared: the core is read once
    _run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache),
         "--python-executable", str(installed.python), *paths],
        cwd=project,
        env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_the_generated_project_passes_its_own_tests(own_tests: Runs, kind: Kind) -> None:
    returncode, output = own_tests.result(kind)
    assert returncode == 0, output
    summary = output.strip().splitlines()[-1]
    assert " passed" in summary, summary
    assert "failed" not in summary, summary
    assert "error" not in summary, summary


def _toml(path: Path) -> dict[str, Any]:
    import tomllib

    with path.open("rb") as file:
        return tomllib.load(file)
