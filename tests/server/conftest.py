"""A real server on an ephemeral loopback port, and real HTTP clients for it."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import uvicorn

from lunasentri_core.config import Settings
from lunasentri_core.server import create_app
from lunasentri_core.server.serve import close_streams

ADMIN_PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the browser tests save screenshots of the pages, kept after the run and never
    committed: ``LUNASENTRI_TEST_SCREENSHOTS``, else ``screenshots/`` under pytest's base
    temporary directory (``--basetemp``)."""
    named = os.environ.get("LUNASENTRI_TEST_SCREENSHOTS")
    directory = Path(named) if named else tmp_path_factory.getbasetemp() / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@attrs.define
class LiveServer:
    """A running server: ``url`` for clients, ``stop()``/``start()`` to bounce it.

    ``plugins`` are registered on the server's hub next to the installed ones.
    """

    settings: Settings
    port: int
    plugins: Mapping[str, object] = attrs.field(factory=dict)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        app = create_app(settings=self.settings)
        for name, plugin in self.plugins.items():
            assert app.state.hub.plugins.register(plugin, name), f"plugin {name} is invalid"
        config = uvicorn.Config(
            app, lifespan="on", log_level="warning", timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only
        # when the listening socket says it is TCP (else each response waits ~40 ms).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        for _ in range(500):
            if self._server.started or not self._thread.is_alive():
                break
            threading.Event().wait(0.01)
        if not self._server.started:
            raise RuntimeError("the server did not start (see the log above)")

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            close_streams(self.app)
            self._server.should_exit = True
            self._thread.join(timeout=30)
            self._server = None

    @property
    def app(self) -> Any:
        assert self._server is not None
        return self._server.config.app

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def login(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> str:
        """A session token for ``username`` (the admin by default)."""
        with self.client() as client:
            response = client.post(
                "/api/v1/auth/login", json={"username": username, "password": password}
            )
        response.raise_for_status()
        token: str = response.json()["token"]
        return token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


MakeServer = Callable[..., LiveServer]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[MakeServer]:
    """Start servers with extra settings; every one is stopped at teardown."""
    started: list[LiveServer] = []

    def make(
        *,
        plugins: Mapping[str, object] | None = None,
        plugin_settings: Mapping[str, Mapping[str, Any]] | None = None,
        **overrides: Any,
    ) -> LiveServer:
        """``plugins`` are plugin objects to register; ``plugin_settings`` the
        ``[plugins.<name>]`` tables of the settings."""
        if plugin_settings is not None:
            overrides["plugins"] = plugin_settings
        port = free_port()
        server_overrides = {"host": "127.0.0.1", "port": port, **overrides.pop("server", {})}
        settings = Settings.load(
            environ={},
            data_dir=overrides.pop("data_dir", tmp_path / f"data{len(started)}"),
            admin_password=ADMIN_PASSWORD,
            server=server_overrides,
            **overrides,
        )
        live = LiveServer(settings, port=port, plugins=plugins or {})
        live.start()
        started.append(live)
        return live

    yield make
    for live in started:
        live.stop()


@pytest.fixture
def server(make_server: MakeServer) -> LiveServer:
    """A server with default settings and the first admin (``admin`` / ADMIN_PASSWORD)."""
    return make_server()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Subprocesses a test starts (servers, agents): killed if still running at the end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)  # also closes the pipes
