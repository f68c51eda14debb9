"""The install command in a registration's answer works: the server serves the
agent's own distributions, and a fresh virtual environment installs and runs them."""

from __future__ import annotations

import io
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from lunasentri_core.config import Settings
from lunasentri_core.server import agent_dist
from lunasentri_core.server.agent_dist import AgentDist, DistError, agent_projects, project_dir

from .conftest import LiveServer, MakeServer

INSTALL_DEADLINE = 240.0  # seconds: pip resolves every dependency from the index
BUILD_DEADLINE = 240.0  # seconds: each build fetches hatchling from the index


def register(server: LiveServer, admin: str, name: str) -> dict[str, object]:
    with server.client(admin) as client:
        response = client.post("/api/v1/machines", json={"name": name})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def wheel_urls(command: str, base: str) -> list[str]:
    words = shlex.split(command.split(" && ")[0])
    return [word for word in words if word.startswith(f"{base}/agent/dist/")]


def download(client: httpx.Client, url: str) -> httpx.Response:
    """GET a wheel as pip does: a 503 "building" is retried (pip honours its
    Retry-After; here a short poll) until the build is done, within a deadline."""
    deadline = time.monotonic() + BUILD_DEADLINE
    while True:
        response = client.get(url)
        if response.status_code != 503 or response.json()["error"]["code"] != "building":
            return response
        assert time.monotonic() < deadline, "the wheels were not built in time"
        time.sleep(0.2)


@pytest.fixture
def admin(server: LiveServer) -> str:
    return server.login()


def test_the_install_command_installs_the_servers_own_wheels(
    server: LiveServer, admin: str
) -> None:
    body = register(server, admin, "web-1")
    command = str(body["install_command"])
    urls = wheel_urls(command, server.url)
    names = sorted(url.rsplit("/", 1)[1].split("-")[0] for url in urls)
    assert names == ["lunasentri_core", "lunasentri_psutil"]
    assert body.get("install_error") is None
    with httpx.Client(timeout=30) as client:  # public: a new machine has no credential yet
        for url in urls:
            response = download(client, url)
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/octet-stream"
            with zipfile.ZipFile(io.BytesIO(response.content)) as wheel:
                assert any(n.endswith(".dist-info/RECORD") for n in wheel.namelist())


def test_an_unknown_file_is_a_json_404(server: LiveServer) -> None:
    with server.client() as client:
        for name in ["nothing.whl", "..%2Flunasentri.db", "lunasentri_core.tar.gz"]:
            response = client.get(f"/agent/dist/{name}")
            assert response.status_code == 404, name
            assert response.json()["error"]["code"] == "not_found"


def test_wheels_that_cannot_be_had_leave_a_clear_manual_way(
    make_server: MakeServer, tmp_path: Path
) -> None:
    empty = tmp_path / "wheels"
    empty.mkdir()
    server = make_server(server={"agent_wheels_dir": str(empty)})
    body = register(server, server.login(), "web-1")
    error = str(body["install_error"])
    assert "lunasentri-core" in error
    assert str(empty) in error
    assert "pip wheel" in error  # how to install by hand
    command = str(body["install_command"])
    assert not wheel_urls(command, server.url)
    assert "LUNASENTRI_AGENT__API_KEY=" in command


def test_wheels_from_the_configured_directory_are_served(
    make_server: MakeServer, tmp_path: Path
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in [
        "lunasentri_core-0.1.0-py3-none-any.whl",
        "lunasentri_psutil-0.1.0-py3-none-any.whl",
    ]:
        with zipfile.ZipFile(wheels / name, "w") as wheel:
            wheel.writestr("marker.txt", name)
    server = make_server(server={"agent_wheels_dir": str(wheels)})
    body = register(server, server.login(), "web-1")
    assert body.get("install_error") is None
    urls = wheel_urls(str(body["install_command"]), server.url)
    assert [url.rsplit("/", 1)[1] for url in sorted(urls)] == sorted(
        ["lunasentri_core-0.1.0-py3-none-any.whl", "lunasentri_psutil-0.1.0-py3-none-any.whl"]
    )
    with httpx.Client(timeout=30) as client:
        response = client.get(sorted(urls)[0])
    assert response.status_code == 200
    assert response.content == (wheels / "lunasentri_core-0.1.0-py3-none-any.whl").read_bytes()


def fake_build(
    builds: list[str], release: threading.Event | None = None, error: str | None = None
) -> object:
    """A stand-in for ``build_wheel`` that records each build, waits for ``release``,
    then fails with ``error`` or writes a wheel of the name the sources give."""

    def build(project: str, source: object, cache: Path) -> Path:
        builds.append(project)
        if release is not None:
            release.wait(timeout=60)
        if error is not None:
            raise DistError(f"building the wheel of {project} from {source} failed: {error}")
        assert isinstance(source, Path)
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / agent_dist.wheel_name(project, source)
        with zipfile.ZipFile(path, "w") as wheel:
            wheel.writestr("marker.txt", project)
        return path

    return build


def test_a_registration_names_the_wheels_without_building(
    make_server: MakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[str] = []
    reason = "ERROR: Could not find a version that satisfies the requirement hatchling"
    monkeypatch.setattr(agent_dist, "build_wheel", fake_build(builds, error=reason))
    server = make_server(data_dir=tmp_path / "data")
    admin = server.login()
    body = register(server, admin, "web-1")
    assert body.get("install_error") is None
    urls = wheel_urls(str(body["install_command"]), server.url)
    assert sorted(url.rsplit("/", 1)[1] for url in urls) == [
        "lunasentri_core-0.1.0-py3-none-any.whl",
        "lunasentri_psutil-0.1.0-py3-none-any.whl",
    ]
    assert builds == []  # nothing built, nothing fetched from the index
    with httpx.Client(timeout=30) as client:
        for _ in range(2):
            response = client.get(sorted(urls)[0])
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "unavailable"
            assert reason in response.json()["error"]["message"]
    assert builds == ["lunasentri-core"]  # built on the first download, not retried
    later = register(server, admin, "web-2")
    assert reason in str(later["install_error"])
    assert not wheel_urls(str(later["install_command"]), server.url)


def test_a_download_waits_for_the_build_then_retries_after(
    make_server: MakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[str] = []
    release = threading.Event()
    monkeypatch.setattr(agent_dist, "build_wheel", fake_build(builds, release))
    monkeypatch.setattr(agent_dist, "DOWNLOAD_WAIT", 0.2)
    server = make_server(data_dir=tmp_path / "data")
    urls = sorted(
        wheel_urls(str(register(server, server.login(), "web-1")["install_command"]), server.url)
    )
    try:
        with httpx.Client(timeout=30) as client:
            for url in urls:  # both wait on the one build
                response = client.get(url)
                assert response.status_code == 503
                assert response.json()["error"]["code"] == "building"
                assert int(response.headers["retry-after"]) > 0
            release.set()
            deadline = time.monotonic() + 60
            while (response := client.get(urls[1])).status_code == 503:
                assert time.monotonic() < deadline, response.text
                time.sleep(0.05)
    finally:
        release.set()
    assert response.status_code == 200
    assert zipfile.ZipFile(io.BytesIO(response.content)).read("marker.txt") == b"lunasentri-psutil"
    assert builds == ["lunasentri-core", "lunasentri-psutil"]  # one build of each


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def fresh_venv(tmp_path: Path) -> Path:
    directory = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(directory)
    return directory


def clean_environment(tmp_path: Path, venv_dir: Path) -> dict[str, str]:
    """A shell as a new machine has it: the venv first on PATH, nothing of ours."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "LUNASENTRI_", "VIRTUAL_ENV"))
    }
    bin_dir = venv_dir / ("Scripts" if sys.platform == "win32" else "bin")
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(venv_dir)
    env["XDG_DATA_HOME"] = str(tmp_path / "agent-home")  # the agent's spool
    return env


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="runs the command in a POSIX shell")
def test_the_returned_command_runs_the_agent_in_a_fresh_environment(
    server: LiveServer,
    admin: str,
    fresh_venv: Path,
    tmp_path: Path,
    shell: list[subprocess.Popen[bytes]],
) -> None:
    body = register(server, admin, "fresh-1")
    assert body.get("install_error") is None, body.get("install_error")
    machine_id = str(body["machine"]["id"])  # type: ignore[index]
    log = tmp_path / "install.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["/bin/sh", "-c", str(body["install_command"])],
            cwd=tmp_path,
            env=clean_environment(tmp_path, fresh_venv),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    shell.append(process)
    deadline = time.monotonic() + INSTALL_DEADLINE
    with server.client(admin) as client:
        while client.get(f"/api/v1/machines/{machine_id}").json()["last_seen"] is None:
            ended = process.poll() is not None
            assert not ended, f"the command ended ({process.returncode}):\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no sample in time:\n{log.read_text()}"
            time.sleep(0.5)
    installed = subprocess.run(
        [str(fresh_venv / "bin" / "python"), "-m", "pip", "show", "-f", "lunasentri-core"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_environment(tmp_path, fresh_venv),
    ).stdout
    assert "Editable project location" not in installed  # a real wheel, not a link back


# --------------------------------------------------------------------------- units


def test_a_wheel_that_cannot_be_built_says_which_and_why(tmp_path: Path) -> None:
    source = tmp_path / "lunasentri-broken"
    (source / "src").mkdir(parents=True)
    (source / "pyproject.toml").write_text('[project\nname = "lunasentri-broken"\n')
    target = tmp_path / "cache" / "lunasentri_broken-0"
    with pytest.raises(DistError) as caught:
        agent_dist.cached_or_built("lunasentri-broken", source, target)
    message = str(caught.value)
    assert message.startswith(f"building the wheel of lunasentri-broken from {source} failed:")
    assert "Expected ']'" in message  # pip's own reason, not just "failed"
    assert not target.exists()
    assert not list(target.parent.iterdir())  # no half-built leftovers


def test_a_distribution_installed_without_its_sources_asks_for_a_wheels_dir() -> None:
    with pytest.raises(
        DistError,
        match=r"attrs was not installed from its sources.*"
        r"agent_wheels_dir",
    ):
        project_dir("attrs", "attrs")


def test_an_unknown_collector_is_named() -> None:
    with pytest.raises(DistError, match="no installed plugin provides the collector 'nope'"):
        agent_projects(["psutil", "nope"])


@pytest.mark.anyio
async def test_a_failure_is_kept_not_retried_per_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []

    def failing(*args: object) -> list[object]:
        calls.append(args)
        raise DistError("no wheel")

    monkeypatch.setattr(agent_dist, "plan", failing)
    async with anyio.create_task_group() as services:
        dist = AgentDist(Settings.load(environ={}, data_dir=tmp_path), ["psutil"], services)
        for _ in range(3):
            with pytest.raises(DistError, match="no wheel"):
                await dist.wheels()
    assert len(calls) == 1


def download_all(server: LiveServer) -> list[str]:
    """Register a machine and download every wheel its command names: the file names."""
    urls = wheel_urls(str(register(server, server.login(), "web-1")["install_command"]), server.url)
    with httpx.Client(timeout=120) as client:
        for url in urls:
            assert download(client, url).status_code == 200
    return sorted(url.rsplit("/", 1)[1] for url in urls)


def test_wheels_are_kept_under_the_data_directory_and_reused(
    make_server: MakeServer, tmp_path: Path
) -> None:
    first = make_server(data_dir=tmp_path / "one")
    named = download_all(first)
    cached = sorted(p.name for p in (tmp_path / "one" / "agent-dist").glob("*/*.whl"))
    assert cached == named
    second = make_server(data_dir=tmp_path / "two")  # its own copy, not the first's files
    assert download_all(second) == named
    assert sorted(p.name for p in (tmp_path / "two" / "agent-dist").glob("*/*.whl")) == cached
    assert not list((tmp_path / "two" / "agent-dist").glob(".build-*"))
